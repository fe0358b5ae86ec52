"""Client writes in the server's history past the stream reader, summarised once for many batches.

A batch's look-ahead needs every client write newer than its events on the documents it
writes, up to the time of its reads (G2). The reader holds up to `READ_AHEAD_EVENTS` of them;
when the worker is further behind than that, the rest is still on the server. Asking the server
for it batch by batch re-reads the whole lag for every batch (twice: before the writes and after
them), so a worker far behind slowed down the further behind it was. `WritesAhead` reads that
stretch of history once, keeps the newest write's cluster time per document path, and is
extended from where it stopped when a later batch's horizon is newer. It is dropped once the
reader has passed the stretch it covers, so it holds only what lies beyond the reader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from bson import ObjectId, Timestamp
from pymongo.errors import OperationFailure

from worker.engine._plan import changed_paths
from worker.engine._stream import DOCUMENT_EVENTS, UnreadEvents, stream_filters
from worker.logs import get_logger
from worker.state import id_key

__all__ = ["AHEAD_LIMIT", "HELD_FIELDS", "HELD_ORDER", "HeldAhead", "WritesAhead", "held_record"]

log = get_logger(__name__)

# Most document paths one summary holds (about 150 bytes each); past it the batches ask the
# server for their own documents again, as before the summary existed.
AHEAD_LIMIT = 250_000
# Events per server round trip while the summary is read.
AHEAD_BATCH = 2_000
_RETRIED_LABELS = ("ResumableChangeStreamError", "TransientTransactionError", "RetryableWriteError")


class WritesAhead:
    """The newest client write to each (namespace, document, path) after a stream position.

    `extend(until)` reads the change stream from where the summary stopped up to cluster time
    `until`; `newer(...)` answers a batch's look-ahead from it. Whole-document writes (insert,
    replace, delete) are recorded on the path "" as `changed_paths` names them.
    """

    def __init__(
        self,
        unread: UnreadEvents,
        watched: Any,
        namespaces: frozenset[str],
        after: Mapping[str, Any],
        *,
        skip_sessions: list[Any],
        is_ours: Callable[[Mapping[str, Any]], bool],
        keeps_documents: bool,
        limit: int = AHEAD_LIMIT,
    ) -> None:
        #: The reader's unread events this summary continues (a new reader starts a new one).
        self.unread = unread
        self.watched = watched
        self.namespaces = namespaces
        self.skip_sessions = skip_sessions
        self.is_ours = is_ours
        # In field-tag mode a worker insert is known by the tag in its document.
        self.keeps_documents = keeps_documents
        self.limit = limit
        #: Resume token of the last event recorded: the next read starts after it.
        self.after: Mapping[str, Any] = after
        #: Every event up to this cluster time is recorded (None: nothing read yet).
        self.covered: Timestamp | None = None
        self.paths: dict[tuple[str, Any], dict[str, Timestamp]] = {}
        self.size = 0
        #: Why the summary cannot answer any more (an invalidate, too many paths, a refusal).
        self.broken: str | None = None
        self.events_read = 0

    async def extend(self, until: Timestamp) -> bool:
        """Record every event up to `until`; False if the summary cannot answer for it."""
        if self.broken is not None:
            return False
        if self.covered is not None and until <= self.covered:
            return until == self.covered
        pipeline = stream_filters(self.namespaces, self.skip_sessions)
        if not self.keeps_documents:
            pipeline.append({"$project": {"fullDocument": 0}})
        try:
            async with await self.watched.watch(
                pipeline,
                resume_after=self.after,
                max_await_time_ms=1,
                batch_size=AHEAD_BATCH,
            ) as stream:
                while True:
                    event = await stream.try_next()
                    if event is None:
                        # Nothing more: resume after the stream's own position, past the events
                        # the filters left out (the worker's writes), or they are read again.
                        if stream.resume_token is not None:
                            self.after = stream.resume_token
                        break
                    stamp = event.get("clusterTime")
                    if isinstance(stamp, Timestamp) and stamp > until:
                        break  # read again by the next extension
                    if not self._record(event):
                        return False
                    self.after = event["_id"]
        except OperationFailure as exc:
            if any(exc.has_error_label(label) for label in _RETRIED_LABELS):
                raise  # the batch is retried, and the summary goes on from where it stopped
            self.broken = f"the server refused the read: {exc}"[:300]
            return False
        self.covered = until
        return True

    def _record(self, event: Mapping[str, Any]) -> bool:
        self.events_read += 1
        kind = event.get("operationType")
        if kind == "invalidate":
            self.broken = "an invalidate"
            return False
        if kind not in DOCUMENT_EVENTS or self.is_ours(event):
            return True
        stamp = event.get("clusterTime")
        if not isinstance(stamp, Timestamp):
            self.broken = "an event without a cluster time"
            return False
        ns = event.get("ns") or {}
        document = (f"{ns.get('db')}.{ns.get('coll')}", id_key(event["documentKey"]["_id"]))
        paths = self.paths.setdefault(document, {})
        for path in changed_paths(event):
            if path not in paths:
                self.size += 1
            paths[path] = stamp
        if self.size > self.limit:
            self.broken = f"more than {self.limit} document paths"
            self.paths.clear()
            return False
        return True

    def newer(
        self,
        documents: Mapping[str, Mapping[Any, Any]],
        *,
        batch_time: Timestamp | None,
        batch_time_handed_over: bool,
        since: Timestamp | None,
        until: Timestamp,
        unsure: Callable[[str, Any, Timestamp], bool] | None = None,
    ) -> dict[tuple[str, Any], set[str]] | None:
        """Paths of `documents` (namespace -> id keys) written after the batch, up to `until`.

        A write counts if it is newer than `since` when given (the second look), else newer than
        the batch's last event (`batch_time`). None when the summary cannot tell: it covers a
        later time than `until` (it keeps only each path's newest write), or a path's newest
        write shares the batch's cluster time (the same client transaction) and the reader has
        not handed every event of that time over, so it is not known to come after the batch.
        None too when a document's newest whole-document write may be the worker's own
        delete (`unsure(namespace, id key, cluster time)`; field tags): only the events tell.
        """
        threshold = since if since is not None else batch_time
        if self.broken is not None or self.covered != until or threshold is None:
            return None
        found: dict[tuple[str, Any], set[str]] = {}
        for namespace, keys in documents.items():
            for key in keys:
                paths = self.paths.get((namespace, key))
                if not paths:
                    continue
                for path, stamp in paths.items():
                    if stamp < threshold:
                        continue
                    if path == "" and unsure is not None and unsure(namespace, key, stamp):
                        return None
                    if stamp == threshold:
                        if since is not None or batch_time_handed_over:
                            # Up to `since` the reads saw it; at the batch's time with every
                            # such event handed over, the exact look has counted it already.
                            continue
                        return None
                    found.setdefault((namespace, key), set()).add(path)
        return found


# The order held changes are replayed in: the stream's. Their `_id`s alone are not in that
# order across worker processes: an ObjectId orders by second, then by a per-process random
# value, so a worker that took over within the second its predecessor held its last change
# could sort its own first changes before those.
HELD_ORDER = [("event.clusterTime", 1), ("_id", 1)]
# What a replay's summary reads of a held change (not its documents or values).
HELD_FIELDS = {
    "paths": 1,
    "ours": 1,
    **{f"event.{name}": 1 for name in ("operationType", "ns", "documentKey", "clusterTime")},
}


def held_record(
    pair: str, event: Mapping[str, Any], paths: Iterable[str], *, ours: bool, at: Any
) -> dict[str, Any]:
    """A change held for a paused pair: the event, and for `HeldAhead` the paths it changed
    and whether it is the worker's own write (records held before these two were kept make
    each replay transaction read its later held changes instead). Its id is made here, so that
    the worker knows it once the record is written (ids made in one process grow)."""
    return {
        "_id": ObjectId(),
        "pair": pair,
        "event": dict(event),
        "paths": sorted(paths),
        "ours": ours,
        "at": at,
    }


class HeldAhead:
    """The newest held change to each (namespace, document, path) of one pair, by its
    position in `HELD_ORDER`.

    A replay applies a paused pair's held changes in several transactions; the changes held
    for the later ones are newer writes to a transaction's documents than its own (a partner
    insert replayed before the original's held delete re-created the original). Read once per
    replay, this answers each transaction without reading the held changes again; like
    `WritesAhead` it keeps only each path's newest change, which is all "is there a later one"
    needs, and gives up past `limit` paths.
    """

    def __init__(self, limit: int = AHEAD_LIMIT):
        self.limit = limit
        # (namespace, id key) -> (_id, {path: (position in HELD_ORDER, cluster time, whether
        # a delete)}): with field tags a delete of the worker's own is held as a client's (it
        # carries no tag), and the look-ahead tells it by the document's merge base record.
        self.paths: dict[tuple[str, Any], tuple[Any, dict[str, tuple[Any, Any, bool]]]] = {}
        self.size = 0
        # One past the last position recorded: where a change held after the read goes.
        self.end = 0

    def add(self, held: Mapping[str, Any], position: int) -> bool:
        """Record one held change, the `position`-th in `HELD_ORDER`, as `held_record` stored
        it and `HELD_FIELDS` reads it; False once past `limit` paths."""
        self.end = max(self.end, position + 1)
        event = held["event"]
        if event.get("operationType") not in DOCUMENT_EVENTS or held.get("ours"):
            return True
        ns = event.get("ns") or {}
        document_id = event["documentKey"]["_id"]
        document = (f"{ns.get('db')}.{ns.get('coll')}", id_key(document_id))
        _, paths = self.paths.setdefault(document, (document_id, {}))
        for path in held["paths"]:
            if path not in paths:
                self.size += 1
            paths[path] = (
                position,
                event.get("clusterTime"),
                event.get("operationType") == "delete",
            )
        return self.size <= self.limit

    def after(
        self, position: int, namespaces: Sequence[str], keys: Iterable[Any]
    ) -> list[dict[str, Any]]:
        """The changes held after `position` on these documents (id keys, in any of these
        namespaces), as the change events a look-ahead reads: one per changed path, each
        naming its path ("" for a whole document: a delete, or else a replace) and cluster
        time."""
        found: list[dict[str, Any]] = []
        for namespace in namespaces:
            db, _, coll = namespace.partition(".")
            for key in keys:
                entry = self.paths.get((namespace, key))
                if entry is None:
                    continue
                document_id, paths = entry
                for path, (later, stamp, deleted) in paths.items():
                    if later <= position:
                        continue
                    whole = "delete" if deleted else "replace"
                    event: dict[str, Any] = {
                        "operationType": "update" if path else whole,
                        "ns": {"db": db, "coll": coll},
                        "documentKey": {"_id": document_id},
                        "clusterTime": stamp,
                    }
                    if path:
                        event["updateDescription"] = {"updatedFields": {path: None}}
                    found.append(event)
        return found
