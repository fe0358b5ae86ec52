"""One change stream over every registered namespace, so both sides arrive in one order.

The reader owns the stream: it opens it where the checkpoint says, filters server-side to the
pairs' namespaces, hands events to the applier through a bounded memory stream (backpressure),
and reopens it after a lost connection from the last event it handed over. It also keeps the
events handed over but not yet applied, by document, and how far into the stream it has read
(`UnreadEvents`): a batch's look-ahead for newer writes reads them there, and asks the server
only for what the reader has not reached.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream
from bson import Timestamp
from pymongo import AsyncMongoClient
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from worker.errors import HistoryLost
from worker.logs import get_logger
from worker.state import id_key

__all__ = [
    "DOCUMENT_EVENTS",
    "StreamPosition",
    "StreamReader",
    "UnreadEvents",
    "document_of",
    "namespace_filter",
    "token_time",
]

log = get_logger(__name__)

# The change events that carry one document's write.
DOCUMENT_EVENTS = frozenset({"insert", "update", "replace", "delete"})

# A reader that handed over an event or a position this recently is receiving events: the
# look-ahead waits for it rather than asking the server.
READER_BUSY_S = 0.05

# Server codes that mean the resume point is gone: ChangeStreamHistoryLost, and the older
# CappedPositionLost / OplogQueryMinTsMissing some versions report instead.
HISTORY_LOST_CODES = frozenset({286, 136, 326})


@dataclass(frozen=True)
class StreamPosition:
    """Where to open the stream: after a token, or at a cluster time, or now."""

    resume_after: Mapping[str, Any] | None = None
    start_at: Timestamp | None = None


class UnreadEvents:
    """Events the reader handed over and the applier has not taken yet, indexed by document.

    A batch's look-ahead asks for the newer writes to its own target documents; the index
    answers in the time of those documents' events, however far the reader runs ahead (a scan
    of everything unread made each batch slower the further the worker fell behind).
    """

    def __init__(self) -> None:
        self._events: collections.deque[tuple[int, dict[str, Any]]] = collections.deque()
        self._by_document: dict[tuple[str, Any], collections.deque[tuple[int, dict[str, Any]]]] = {}
        self._added = 0
        self._taken = 0
        self._invalidates = 0
        #: The newest handed-over event's resume token: the server holds what follows it.
        self.last_token: Mapping[str, Any] | None = None
        # Every event of a cluster time before this one has been handed over: the newest
        # event's time, or the stream's post-batch resume token's once the reader drained it.
        self._seen_before: Timestamp | None = None
        self._reached_token: Mapping[str, Any] | None = None
        self._last_event_time: Timestamp | None = None
        self._moved = anyio.Event()
        self._waiting = 0  # tasks in wait_covers
        self._moved_at = -1e9

    def add(self, event: dict[str, Any]) -> None:
        """The reader handed `event` over (after every event before it)."""
        self._added += 1
        self._events.append((self._added, event))
        key = document_of(event)
        if key is not None:
            self._by_document.setdefault(key, collections.deque()).append((self._added, event))
        if event.get("operationType") == "invalidate":
            self._invalidates += 1
        self.last_token = event["_id"]
        stamp = event.get("clusterTime")
        if isinstance(stamp, Timestamp):
            self._last_event_time = stamp
        self._drop_taken()
        self._advanced()

    def reached(self, resume_token: Mapping[str, Any] | None) -> None:
        """The stream's resume token once every event the reader received is handed over."""
        stamp = token_time(resume_token)
        if stamp is not None and (self._seen_before is None or stamp > self._seen_before):
            self._seen_before = stamp
            self._reached_token = resume_token
            self._advanced()

    @property
    def resume_point(self) -> Mapping[str, Any] | None:
        """Where the server's history beyond the reader begins: after the newest handed-over
        event, or after the stream's post-batch resume token when that is newer (the reader
        drained the stream past writes its filters leave out, the worker's own above all).
        A look-ahead read from the last event instead scanned all of those again."""
        reached, seen, last = self._reached_token, self._seen_before, self._last_event_time
        if reached is not None and seen is not None and (last is None or seen > last):
            return reached
        return self.last_token

    def _advanced(self) -> None:
        # A fresh event only when someone waits on the current one: made per event handed
        # over, it cost a few per cent of the worker's CPU.
        if self._waiting:
            self._moved.set()
            self._moved = anyio.Event()
        self._moved_at = time.monotonic()

    def covers(self, horizon: Timestamp) -> bool:
        """Whether every event up to cluster time `horizon` has been handed over."""
        last = self._last_event_time
        seen = self._seen_before
        return (last is not None and last > horizon) or (seen is not None and seen > horizon)

    def seconds_behind(self, horizon: Timestamp) -> int:
        """Whole seconds of cluster time between what has been handed over and `horizon`."""
        known = [t for t in (self._last_event_time, self._seen_before) if t is not None]
        if not known:
            return 0
        return max(0, horizon.time - max(known).time)

    async def wait_covers(self, horizon: Timestamp, *, within: float) -> bool:
        """Wait up to `within` seconds for `covers(horizon)`, if the reader is receiving
        events (an idle reader sits in a long getMore: the server answers sooner)."""
        if self.covers(horizon):
            return True
        if time.monotonic() - self._moved_at > READER_BUSY_S:
            return False
        self._waiting += 1
        try:
            with anyio.move_on_after(within):
                while not self.covers(horizon):
                    await self._moved.wait()
        finally:
            self._waiting -= 1
        return self.covers(horizon)

    def taken(self, count: int) -> None:
        """The applier took `count` more events off the stream."""
        self._taken += count
        self._drop_taken()

    def _drop_taken(self) -> None:
        # The applier may take an event before the reader has added it (the memory stream
        # hands it over first): such an event is dropped as soon as it is added.
        while self._events and self._events[0][0] <= self._taken:
            seq, event = self._events.popleft()
            key = document_of(event)
            if key is not None:
                queue = self._by_document[key]
                queue.popleft()
                if not queue:
                    del self._by_document[key]
            if event.get("operationType") == "invalidate":
                self._invalidates -= 1

    def __len__(self) -> int:
        return len(self._events)

    def has_invalidate(self) -> bool:
        """Whether an unread event is an invalidate (a stream cannot resume after one)."""
        return self._invalidates > 0

    def newest_time(self) -> Timestamp | None:
        """The cluster time of the newest unread event."""
        return self._events[-1][1].get("clusterTime") if self._events else None

    def for_documents(
        self, documents: Iterable[tuple[str, Any]], *, skip: int = 0
    ) -> list[dict[str, Any]]:
        """The unread events on these (namespace, id_key) documents, oldest first, leaving out
        the `skip` oldest unread events (a batch planned from them before they were taken)."""
        after = self._taken + skip
        found: list[tuple[int, dict[str, Any]]] = []
        for document in documents:
            found.extend(item for item in self._by_document.get(document, ()) if item[0] > after)
        found.sort(key=lambda item: item[0])
        return [event for _, event in found]

    def peek(self, count: int) -> list[Mapping[str, Any]]:
        """The `count` oldest unread events (fewer when fewer are unread): the next ones the
        applier will take, in the order it will take them."""
        return [event for _, event in itertools.islice(self._events, count)]


def token_time(token: Mapping[str, Any] | None) -> Timestamp | None:
    """The cluster time a resume token starts with, or None for a format not known here.

    MongoDB's tokens (and the development server's) are hex strings whose first byte 0x82
    tags the Timestamp that follows as 4 + 4 big-endian bytes.
    """
    data = (token or {}).get("_data")
    if not isinstance(data, str) or len(data) < 18 or not data.startswith("82"):
        return None
    try:
        return Timestamp(int(data[2:10], 16), int(data[10:18], 16))
    except ValueError:
        return None


def document_of(event: Mapping[str, Any]) -> tuple[str, Any] | None:
    """(namespace, id_key) of a document event; None for the others."""
    key = event.get("documentKey")
    if not key or "_id" not in key:
        return None
    ns = event.get("ns") or {}
    return f"{ns.get('db')}.{ns.get('coll')}", id_key(key["_id"])


def namespace_filter(namespaces: Iterable[str]) -> dict[str, Any]:
    """A `$match` stage keeping the events of these namespaces (and their databases' drops)."""
    clauses: list[dict[str, Any]] = []
    databases: set[str] = set()
    for namespace in sorted(namespaces):
        database, _, collection = namespace.partition(".")
        databases.add(database)
        clauses.append({"ns.db": database, "ns.coll": collection})
    clauses.append({"operationType": "dropDatabase", "ns.db": {"$in": sorted(databases)}})
    return {"$match": {"$or": clauses}}


def stream_filters(namespaces: Iterable[str], skip_sessions: Sequence[Any]) -> list[dict[str, Any]]:
    """The stages that keep these namespaces' events and leave out the transactions of these
    sessions (the worker's own writes)."""
    stages: list[dict[str, Any]] = [namespace_filter(namespaces)]
    if skip_sessions:
        stages.append({"$match": {"lsid.id": {"$nin": list(skip_sessions)}}})
    return stages


def watch_target(client: AsyncMongoClient[dict[str, Any]], namespaces: Iterable[str]) -> Any:
    """What to open a stream on for these namespaces: their database when they share one (a
    database-level stream needs only that database's privileges), else the whole cluster."""
    databases = {ns.partition(".")[0] for ns in namespaces}
    return client[next(iter(databases))] if len(databases) == 1 else client


class StreamReader:
    """Reads the change stream into `send` until cancelled; reconnects on lost connections."""

    def __init__(
        self,
        client: AsyncMongoClient[dict[str, Any]],
        namespaces: Iterable[str],
        *,
        batch_size: int,
        max_await_ms: int = 200,
        skip_sessions: Sequence[Any] = (),
    ) -> None:
        self.client = client
        # Session ids whose transactions' events the server leaves out (the worker's own writes).
        self.skip_sessions = list(skip_sessions)
        self.namespaces = frozenset(namespaces)
        self.batch_size = batch_size
        self.max_await_ms = max_await_ms
        self.last_token: Mapping[str, Any] | None = None
        self.is_open = False
        self.invalidated = False
        # Servers before 6.0.9 / 7.0 lack $changeStreamSplitLargeEvent; it is dropped on refusal.
        self.split_large_events = True
        # Expanded events (MongoDB 6.0) add `disambiguatedPaths` to updates (6.1), which tell a
        # field named "v1.2" from field 2 of v1; dropped on refusal. The DDL events they also
        # bring are not document events and are passed over.
        self.expanded_events = True
        # Events handed over so far, and the stream's latest resume token with that count when
        # it was idle: a checkpoint there skips nothing once that many events are applied.
        self.sent = 0
        self.idle_token: tuple[Mapping[str, Any], int] | None = None
        # Events handed over that the applier has not taken yet: the batch in flight reads
        # newer writes from here before it asks the server.
        self.unread = UnreadEvents()
        # When each event handed over and not taken yet was read (time.monotonic, which is
        # also asyncio's clock; anyio.current_time looks up the event loop's library at every
        # call, a few percent of the worker's time behind a backlog), oldest first: a batch
        # waits for more events only until its first event's wait reaches the delay.
        self.arrivals: collections.deque[float] = collections.deque()

    def taken(self, count: int) -> None:
        """The applier took `count` more events off the stream."""
        self.unread.taken(count)
        for _ in range(min(count, len(self.arrivals))):
            self.arrivals.popleft()

    def oldest_arrival(self) -> float | None:
        """When the oldest event the applier has not taken yet was read, if there is one."""
        return self.arrivals[0] if self.arrivals else None

    async def run(
        self,
        position: StreamPosition,
        send: MemoryObjectSendStream[dict[str, Any]],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Stream events into `send`; raises HistoryLost when the resume point is gone."""
        started = False
        outage_logged = False
        delay = 0.1
        async with send:
            while True:
                options: dict[str, Any] = {
                    "batch_size": self.batch_size,
                    "max_await_time_ms": self.max_await_ms,
                }
                if self.last_token is not None and self.invalidated:
                    options["start_after"] = self.last_token
                elif self.last_token is not None:
                    options["resume_after"] = self.last_token
                elif position.resume_after is not None:
                    options["resume_after"] = position.resume_after
                elif position.start_at is not None:
                    options["start_at_operation_time"] = position.start_at
                pipeline = stream_filters(self.namespaces, self.skip_sessions)
                if self.split_large_events:
                    pipeline.append({"$changeStreamSplitLargeEvent": {}})
                if self.expanded_events:
                    options["show_expanded_events"] = True
                try:
                    async with await watch_target(self.client, self.namespaces).watch(
                        pipeline, **options
                    ) as stream:
                        self.is_open = True
                        if not started:
                            started = True
                            task_status.started()
                        fragments: list[dict[str, Any]] = []
                        reads = 0
                        while True:
                            event = await stream.try_next()
                            reads += 1
                            if outage_logged and (event is not None or reads > 1):
                                # Over only once a read succeeds: a stream that reopens and
                                # fails again at once is the same outage, not a new one. The
                                # first read of a stream reopened empty can be answered by the
                                # open itself, without a getMore: it proves nothing yet.
                                log.info("stream_reconnected")
                                outage_logged = False
                                delay = 0.1
                            if event is None:
                                if not fragments and stream.resume_token is not None:
                                    # Everything before this point has been handed over.
                                    self.idle_token = (stream.resume_token, self.sent)
                                    self.unread.reached(stream.resume_token)
                                continue
                            split = event.get("splitEvent")
                            if split is not None:
                                fragments.append(event)
                                if split.get("fragment") != split.get("of"):
                                    continue
                                event = _reassemble(fragments)
                                fragments = []
                            self.arrivals.append(time.monotonic())
                            await send.send(event)
                            self.sent += 1
                            self.unread.add(event)
                            self.last_token = event["_id"]
                            if not fragments:
                                # After the last event of a batch: the post-batch token.
                                self.unread.reached(stream.resume_token)
                            self.invalidated = event["operationType"] == "invalidate"
                            if self.invalidated:
                                # The stream is over; start again after the invalidate.
                                break
                except OperationFailure as exc:
                    self.is_open = False
                    if self.split_large_events and _split_unsupported(exc):
                        log.info("split_large_events_unsupported", detail=str(exc)[:200])
                        self.split_large_events = False
                        continue
                    if self.expanded_events and _expanded_unsupported(exc):
                        log.info("expanded_events_unsupported", detail=str(exc)[:200])
                        self.expanded_events = False
                        continue
                    if exc.code in HISTORY_LOST_CODES or "history" in str(exc).lower():
                        raise HistoryLost(
                            f"the change stream cannot resume: {exc.details or exc}"
                        ) from exc
                    if not exc.has_error_label("ResumableChangeStreamError") and not (
                        exc.has_error_label("TransientTransactionError")
                    ):
                        raise
                    outage_logged = _log_outage(outage_logged, exc)
                except (ConnectionFailure, PyMongoError) as exc:
                    self.is_open = False
                    outage_logged = _log_outage(outage_logged, exc)
                if self.invalidated:
                    continue
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)


def _reassemble(fragments: list[dict[str, Any]]) -> dict[str, Any]:
    """One event from the fragments $changeStreamSplitLargeEvent cut it into."""
    event: dict[str, Any] = {}
    for fragment in fragments:
        event.update({k: v for k, v in fragment.items() if k != "splitEvent"})
    event["_id"] = fragments[-1]["_id"]
    return event


def _split_unsupported(exc: OperationFailure) -> bool:
    """The server does not know the $changeStreamSplitLargeEvent stage."""
    return "changeStreamSplitLargeEvent" in str(exc) and exc.code != 286


def _expanded_unsupported(exc: OperationFailure) -> bool:
    """The server does not know the showExpandedEvents option (before MongoDB 6.0)."""
    return "showExpandedEvents" in str(exc) and exc.code != 286


def _log_outage(already_logged: bool, exc: BaseException) -> bool:
    """Log an outage once, not once per reconnect attempt."""
    if not already_logged:
        log.warning("stream_interrupted", error=type(exc).__name__, detail=str(exc)[:300])
    return True
