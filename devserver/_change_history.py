"""The change history (the development server's oplog) and the change stream cursors reading it.

The core appends one entry per committed write (or all the writes of a committed transaction
at once); cursors read from a position, render entries into MongoDB-shaped change events, and
wait on an asyncio event that every append sets. Entries are BSON-encodable dicts so the core
can persist them; the history keeps at most `max_bytes` of them, dropping the oldest.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import bson
from bson import Int64, ObjectId, Timestamp

from devserver._change_diff import describe_update
from devserver._change_options import StreamOptions, parse_options
from devserver._change_pipeline import MAX_EVENT_BYTES, EventPipeline
from devserver._change_token import EVENT, ResumeToken, entry_key, next_timestamp
from devserver._errors import CommandError

__all__ = ["ChangeHistory", "ChangeRecord", "ChangeStreamCursor", "history_lost"]

DOCUMENT_OPS = frozenset({"insert", "update", "replace", "delete"})
# Events only a stream with `showExpandedEvents` shows (MongoDB 6.0).
EXPANDED_OPS = frozenset({"create", "createIndexes", "dropIndexes", "modify"})
_IMAGE_OPS = frozenset({"update", "replace", "delete"})
_INTERNAL_DBS = frozenset({"admin", "config", "local"})
_DEFAULT_AWAIT_MS = 1000
# A stream's scan of the history lets other commands run this often (checking the clock every
# `_SCAN_CHECK_EVERY` entries).
_SCAN_SLICE_S = 0.005
_SCAN_CHECK_EVERY = 64
# Keep a reply below the 16 MiB message limit with room for the envelope.
_BATCH_BYTES = MAX_EVENT_BYTES - 64 * 1024
_COMPACT_AT = 1024

Lookup = Callable[[str, str, dict[str, Any]], "dict[str, Any] | None"]


class ChangeRecord(NamedTuple):
    """One committed write, as the core reports it to the history.

    The history keeps the documents by reference: they must not be mutated afterwards. (A
    named tuple: as immutable as a frozen dataclass, and made in a third of the time, once per
    written document.)
    """

    op: str
    db: str
    coll: str | None
    document_key: dict[str, Any] | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    update_spec: Any = None
    to: tuple[str, str] | None = None
    images_enabled: bool = False
    # BSON size of `after` when the caller knows it (the document's bytes in the request); the
    # history then estimates the entry's size instead of encoding it.
    after_size: int | None = None
    # The writer compared the encoded documents before and after and they differ (an update is
    # then no no-op, and its description need not test that again).
    changed: bool = False
    # The `operationDescription` of a DDL event only expanded events show (create, ...); for
    # `modify` (collMod), `before` holds its `stateBeforeChange`.
    description: dict[str, Any] | None = None
    # The collection's UUID when the history cannot look it up at commit (a drop's collection
    # is gone by then); expanded events show it as `collectionUUID`.
    collection_uuid: Any = None


def history_lost() -> CommandError:
    """ChangeStreamHistoryLost (286), worded as MongoDB words it."""
    return CommandError(
        286,
        "ChangeStreamHistoryLost",
        "Resume of change stream was not possible, as the resume point may no longer be in "
        "the oplog.",
    )


class ChangeHistory:
    """A bounded, ordered log of change entries that change stream cursors read."""

    def __init__(
        self,
        *,
        max_bytes: int,
        lookup: Lookup,
        collection_uuid: Callable[[str, str], Any] | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self._lookup = lookup
        # The UUID of a collection as it is now (None when it does not exist): what the oplog
        # records as each write's `ui`, and expanded events show as `collectionUUID`.
        self._collection_uuid = collection_uuid or (lambda db, coll: None)
        self._entries: list[dict[str, Any] | None] = []
        self._keys: list[int] = []
        self._sizes: list[int] = []
        # Each entry's token hex, made when a reader first needs it and then kept for the others.
        self._hexes: list[str | None] = []
        self._offset = 0  # sequence number of _entries[0]
        self._first_seq = 0  # oldest retained entry
        self._next_seq = 0
        self._bytes = 0
        # Key of the newest dropped entry: resuming at or before it has lost history.
        self._lost_key: int | None = None
        self._last_ts: Timestamp | None = None
        # The last entry's cluster time as one integer (seconds << 32 | increment).
        self._last_time = -1
        self._last_index = -1
        self._appended = asyncio.Event()
        # Cursors waiting on `_appended`: with none, an append need not wake anybody.
        self._waiting = 0

    # ---- writing --------------------------------------------------------------------------

    def append(
        self,
        records: Sequence[ChangeRecord],
        *,
        cluster_time: Timestamp,
        wall_time: datetime,
        lsid: dict[str, Any] | None = None,
        txn_number: int | None = None,
    ) -> list[dict[str, Any]]:
        """Record the changes of one committed operation or transaction; wake waiting cursors.

        Returns the stored entries (none for no-op updates) for the core to persist.
        """
        index = 0
        if wall_time.tzinfo is not None:
            # BSON dates carry no zone: keep naive UTC, as documents decoded off the wire are.
            wall_time = wall_time.astimezone(UTC).replace(tzinfo=None)
        seconds, increment = cluster_time.time, cluster_time.inc
        time_key = (seconds << 32) | increment
        if time_key < self._last_time:
            raise ValueError(
                f"cluster time {cluster_time} is older than the last change {self._last_ts}"
            )
        if time_key == self._last_time:
            index = self._last_index + 1
        envelope = _ENVELOPE_BYTES
        if lsid is not None:
            envelope += _TXN_FIELDS_BYTES + len(bson.encode(lsid))
        stored: list[dict[str, Any]] = []
        for record in records:
            entry = _make_entry(record, cluster_time, wall_time, index, lsid, txn_number)
            if entry is None:
                continue
            ui = self._ui(record)
            if ui is not None:
                entry["ui"] = ui
            entry["seq"] = self._next_seq
            self._push(entry, _entry_size(entry, record, envelope))
            stored.append(entry)
            index += 1
        if stored:
            self._last_ts = cluster_time
            self._last_time = time_key
            self._last_index = index - 1
            self._trim()
            self._wake()
        return stored

    def restore(self, entries: Iterable[dict[str, Any]]) -> None:
        """Reload persisted entries (as `append` returned them) at start-up."""
        ordered = sorted(entries, key=lambda e: int(e["seq"]))
        for entry in ordered:
            seq = int(entry["seq"])
            if seq < self._next_seq:
                continue
            if not self._entries and seq > 0:
                # Entries before the first persisted one are gone.
                self._lost_key = entry_key(entry["ts"], int(entry["txnOpIndex"])) - 1
            if self._entries and seq != self._next_seq:
                self._lost_key = entry_key(entry["ts"], int(entry["txnOpIndex"])) - 1
                self._drop_all()
            if not self._entries:
                self._offset = self._first_seq = seq
            self._next_seq = seq
            restored = dict(entry)
            self._push(restored, len(bson.encode(restored)))
            ts: Timestamp = entry["ts"]
            self._last_ts = ts
            self._last_time = (ts.time << 32) | ts.inc
            self._last_index = int(entry["txnOpIndex"])
        self._trim()
        self._wake()

    def _push(self, entry: dict[str, Any], size: int) -> None:
        self._entries.append(entry)
        self._keys.append(entry_key(entry["ts"], entry["txnOpIndex"]))
        self._sizes.append(size)
        self._hexes.append(None)
        self._bytes += size
        self._next_seq += 1

    def _trim(self) -> None:
        # Keep the newest entry even when it alone exceeds the bound, like a capped oplog.
        while self._bytes > self.max_bytes and self._next_seq - self._first_seq > 1:
            position = self._first_seq - self._offset
            self._bytes -= self._sizes[position]
            self._lost_key = self._keys[position]
            self._entries[position] = None
            self._first_seq += 1
        dead = self._first_seq - self._offset
        if dead >= _COMPACT_AT and dead * 2 >= len(self._entries):
            del self._entries[:dead], self._keys[:dead], self._sizes[:dead], self._hexes[:dead]
            self._offset = self._first_seq

    def _drop_all(self) -> None:
        self._entries.clear()
        self._keys.clear()
        self._sizes.clear()
        self._hexes.clear()
        self._bytes = 0

    def _wake(self) -> None:
        if self._waiting:
            self._appended.set()
            self._appended = asyncio.Event()

    async def _wait_appended(self, seconds: float) -> None:
        """Wait up to `seconds` for the next append (TimeoutError when none came)."""
        self._waiting += 1
        try:
            await asyncio.wait_for(self._appended.wait(), seconds)
        finally:
            self._waiting -= 1

    # ---- reading --------------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        """Approximate BSON size of the retained entries."""
        return self._bytes

    @property
    def retained(self) -> list[dict[str, Any]]:
        """The retained entries, oldest first (what a persisted copy should hold)."""
        start = self._first_seq - self._offset
        return [e for e in self._entries[start:] if e is not None]

    def open(
        self,
        *,
        db: str,
        coll: str | None,
        spec: dict[str, Any],
        pipeline: list[dict[str, Any]],
        batch_size: int | None,
        cluster_time: Timestamp,
        disambiguates_paths: bool = True,
    ) -> ChangeStreamCursor:
        """Open a change stream cursor; raises CommandError for bad options or lost history.

        `disambiguates_paths` False: a server before MongoDB 6.1, whose update events have no
        `disambiguatedPaths` even with expanded events."""
        options = parse_options(spec, db=db, coll=coll)
        if not disambiguates_paths:
            options = dataclasses.replace(options, disambiguates_paths=False)
        return ChangeStreamCursor(
            self,
            options,
            EventPipeline(pipeline),
            db=db,
            coll=coll,
            batch_size=batch_size,
            cluster_time=cluster_time,
        )

    def _seq_at_or_after(self, key: int) -> int:
        start = self._first_seq - self._offset
        return self._offset + bisect.bisect_left(self._keys, key, lo=start)

    def _entry(self, seq: int) -> dict[str, Any]:
        entry = self._entries[seq - self._offset]
        assert entry is not None
        return entry

    def _key(self, seq: int) -> int:
        return self._keys[seq - self._offset]

    def _size(self, seq: int) -> int:
        return self._sizes[seq - self._offset]

    def _token(self, seq: int) -> tuple[ResumeToken, str]:
        position = seq - self._offset
        key = self._keys[position]
        token = ResumeToken(key >> 64, (key >> 32) & 0xFFFFFFFF, EVENT, key & 0xFFFFFFFF)
        token_hex = self._hexes[position]
        if token_hex is None:
            token_hex = self._hexes[position] = token.hex()
        return token, token_hex

    def _ui(self, record: ChangeRecord) -> Any:
        """The UUID of the collection a record changed (a rename's: the collection it became)."""
        if record.collection_uuid is not None:
            return record.collection_uuid
        if record.op == "dropDatabase" or record.coll is None:
            return None
        if record.op == "rename" and record.to is not None:
            return self._collection_uuid(*record.to)
        return self._collection_uuid(record.db, record.coll)

    def _check_retained(self, after_key: int) -> None:
        """Raise 286 when an entry with a key above `after_key` has been dropped."""
        if self._lost_key is not None and self._lost_key > after_key:
            raise history_lost()


# Fixed BSON bytes of a document entry (the header and the names, types and fixed-width values
# of ts, wall, txnOpIndex, op, db, coll, documentKey, fullDocument and seq).
_ENVELOPE_BYTES = 122
# txnNumber and the lsid field's name and type (the lsid document is measured).
_TXN_FIELDS_BYTES = 25
# The `ui` field: type, name, length, subtype and a 16-byte UUID.
_UI_BYTES = 1 + 3 + 4 + 1 + 16


def _entry_size(entry: dict[str, Any], record: ChangeRecord, envelope: int) -> int:
    """The entry's BSON size: estimated from the document's known size for inserts and
    replaces without images (the commonest entries), measured otherwise.

    The history's byte bound and reply batching only need an approximation; encoding every
    entry cost as much as the rest of an insert.
    """
    op = record.op
    if record.after_size is None or (op != "insert" and op != "replace") or "preImage" in entry:
        return len(bson.encode(entry))
    coll = record.coll or ""
    size = envelope + len(op) + len(record.db) + len(coll) + _id_size(entry) + record.after_size
    return size + _UI_BYTES if "ui" in entry else size


def _id_size(entry: dict[str, Any]) -> int:
    """BSON bytes of the documentKey's `_id` value (cheap for the common types)."""
    value = entry["documentKey"]["_id"]
    kind = type(value)
    if kind is ObjectId:
        return 12
    if kind is int:
        return 4 if -(2**31) <= value < 2**31 else 8
    if kind is str:
        return len(value.encode()) + 5
    return len(bson.encode(entry["documentKey"])) - 10


def _make_entry(
    record: ChangeRecord,
    ts: Timestamp,
    wall: datetime,
    index: int,
    lsid: dict[str, Any] | None,
    txn_number: int | None,
) -> dict[str, Any] | None:
    op = record.op
    entry: dict[str, Any] = {"ts": ts, "wall": wall, "txnOpIndex": index, "op": op, "db": record.db}
    if record.coll is not None:
        entry["coll"] = record.coll
    if op in DOCUMENT_OPS:
        entry["documentKey"] = record.document_key
        if op == "update":
            if record.before is None or record.after is None:
                raise ValueError("an update record needs the documents before and after")
            description = describe_update(
                record.before, record.after, record.update_spec, changed=record.changed
            )
            if description is None:
                op = entry["op"] = "replace"
            elif description.is_empty():
                return None
            else:
                entry["updateDescription"] = description.document()
                disambiguated = description.disambiguated_paths()
                if disambiguated:
                    entry["disambiguatedPaths"] = disambiguated
        if op in ("insert", "replace") or (op == "update" and record.images_enabled):
            entry["fullDocument"] = record.after
        if record.images_enabled and op in _IMAGE_OPS:
            entry["images"] = True
            entry["preImage"] = record.before
    elif op == "rename":
        if record.to is None:
            raise ValueError("a rename record needs its target namespace")
        entry["to"] = {"db": record.to[0], "coll": record.to[1]}
    elif op in EXPANDED_OPS:
        entry["operationDescription"] = record.description or {}
        if op == "modify":
            entry["stateBeforeChange"] = record.before or {}
    elif op not in ("drop", "dropDatabase"):
        raise ValueError(f"unknown change operation {op!r}")
    if lsid is not None:
        entry["lsid"] = lsid
    if txn_number is not None:
        entry["txnNumber"] = Int64(txn_number)
    return entry


# A rendered event: its resume token, the document, and its (approximate) BSON size.
Shown = tuple[ResumeToken, dict[str, Any], int]


class ChangeStreamCursor:
    """One open change stream: a position in the history plus the stream's options."""

    def __init__(
        self,
        history: ChangeHistory,
        options: StreamOptions,
        pipeline: EventPipeline,
        *,
        db: str,
        coll: str | None,
        batch_size: int | None,
        cluster_time: Timestamp,
    ) -> None:
        self._history = history
        self._options = options
        self._pipeline = pipeline
        # An event can outgrow its history entry only through the stages or the images it is
        # given: without either, one from an entry under _LARGE_ENTRY cannot reach 16 MiB, and
        # encoding it to learn its size (once per event read) is skipped.
        self._measure_events = pipeline.splits_large_events and not (
            pipeline.filters_only
            and options.full_document == "default"
            and options.full_document_before_change == "off"
        )
        self._db = db
        self._coll = coll
        self.batch_size = batch_size
        self.ns = f"{db}.{coll}" if coll is not None else f"{db}.$cmd.aggregate"
        self.exhausted = False
        self._closed = False
        # Events rendered but not yet returned (the rest of a split event, an invalidate).
        self._pending: deque[Shown] = deque()
        self._invalidated = False
        self._batch_bytes = 0
        self._min_key = 0
        self._next_seq = history._next_seq
        self._last_token = ResumeToken.high_water_mark(cluster_time)
        self._start()

    # ---- positioning ----------------------------------------------------------------------

    def _start(self) -> None:
        options = self._options
        if options.start_at_operation_time is not None:
            self._start_at(options.start_at_operation_time)
            return
        token = options.resume_after or options.start_after
        if token is None:
            return
        if token.is_high_water_mark:
            self._start_at(token.timestamp)
            return
        history = self._history
        key = token.key
        history._check_retained(key - 1)
        seq = history._seq_at_or_after(key)
        if seq >= history._next_seq or history._key(seq) != key:
            if seq == history._first_seq:
                # Older than everything retained (e.g. a server restarted without --dbpath):
                # the event was in a history this server no longer has.
                raise history_lost()
            raise CommandError(
                280,
                "ChangeStreamFatalError",
                f'cannot resume stream; the resume token was not found. {{_data: "{token.hex()}"}}',
            )
        self._next_seq = seq + 1
        self._last_token = token
        if token.from_invalidate:
            # startAfter an invalidate: a new stream that begins after the invalidating event.
            return
        entry = history._entry(seq)
        shown, invalidates = self._classify(entry)
        if shown and token.fragment:
            self._pending.extend(f for f in self._render(entry, seq) if f[0] > token)
        if invalidates:
            self._queue_invalidate(entry)

    def _start_at(self, start: Timestamp) -> None:
        history = self._history
        key = entry_key(start, 0)
        history._check_retained(key - 1)
        self._next_seq = history._seq_at_or_after(key)
        self._min_key = key
        self._last_token = ResumeToken.high_water_mark(start)

    # ---- reading --------------------------------------------------------------------------

    @property
    def post_batch_resume_token(self) -> dict[str, str]:
        """Where a client resumes to continue after the last batch returned."""
        history = self._history
        token = self._last_token
        caught_up = not self._pending and self._next_seq >= history._next_seq
        if caught_up and not self._invalidated and history._last_ts is not None:
            # Past every entry: a high-water mark lets the client resume without re-reading.
            mark = ResumeToken.high_water_mark(next_timestamp(history._last_ts))
            if mark > token:
                token = mark
        return token.document()

    async def next_batch(
        self, max_docs: int | None, max_time_ms: int | None
    ) -> list[dict[str, Any]]:
        """Up to `max_docs` events; waits up to `max_time_ms` (default 1 s) for the first one."""
        batch = await self._collect(max_docs)
        if batch or max_time_ms == 0 or self.exhausted or self._closed:
            return batch
        timeout = (_DEFAULT_AWAIT_MS if max_time_ms is None else max_time_ms) / 1000
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not batch and not self.exhausted and not self._closed:
            if self._next_seq >= self._history._next_seq:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    await self._history._wait_appended(remaining)
                except TimeoutError:
                    break
            batch = await self._collect(max_docs)
        return batch

    def close(self) -> None:
        """Release the cursor; later calls return nothing."""
        self._closed = True
        self._pending.clear()

    async def _collect(self, max_docs: int | None) -> list[dict[str, Any]]:
        """The next batch: scans the history until the batch is full or the history ends.

        mongod scans the oplog for one stream while it serves everyone else. Here the scan
        pauses every `_SCAN_SLICE_S` to let the other connections' commands run: a stream that
        skips most of a long history (a look-ahead on a few documents) held every client back
        for over a second."""
        batch: list[dict[str, Any]] = []
        self._batch_bytes = 0
        while True:
            more = self._scan(batch, max_docs, time.perf_counter() + _SCAN_SLICE_S)
            if not more:
                return batch
            await asyncio.sleep(0)  # the other connections' turn

    def _scan(self, batch: list[dict[str, Any]], max_docs: int | None, until: float) -> bool:
        """Fill `batch` from the history; True when it stopped at `until` with more to scan."""
        if self._closed or self.exhausted:
            return False
        history = self._history
        limit = max_docs if max_docs is not None and max_docs > 0 else None
        self._drain(batch, limit)
        if self._pending or self._invalidated:
            self._finish()
            return False
        if self._next_seq < history._first_seq:
            lost = history._lost_key
            if lost is not None and lost >= self._min_key:
                raise history_lost()
            # Only entries before the stream's start time were dropped: nothing it needed.
            self._next_seq = history._first_seq
        scanned = 0
        while (
            (limit is None or len(batch) < limit)
            and not self._pending
            and self._next_seq < history._next_seq
        ):
            scanned += 1
            if scanned % _SCAN_CHECK_EVERY == 0 and time.perf_counter() >= until:
                return True
            seq = self._next_seq
            self._next_seq += 1
            if history._key(seq) < self._min_key:
                continue
            entry = history._entry(seq)
            shown, invalidates = self._classify(entry)
            if shown:
                self._pending.extend(self._render(entry, seq))
            if invalidates:
                self._queue_invalidate(entry)
            self._drain(batch, limit)
            if self._invalidated:
                break
        self._finish()
        return False

    def _drain(self, batch: list[dict[str, Any]], limit: int | None) -> None:
        """Move pending events into the batch while it has room in count and in bytes."""
        while self._pending and (limit is None or len(batch) < limit):
            token, event, size = self._pending[0]
            # Like mongod, keep a reply under 16 MiB: an event that does not fit waits.
            if batch and self._batch_bytes + size > _BATCH_BYTES:
                return
            self._pending.popleft()
            self._batch_bytes += size
            self._last_token = token
            batch.append(event)

    def _finish(self) -> None:
        if self._invalidated and not self._pending:
            self.exhausted = True

    def _queue_invalidate(self, entry: dict[str, Any]) -> None:
        self._invalidated = True
        ts: Timestamp = entry["ts"]
        token = ResumeToken(ts.time, ts.inc, txn_op_index=entry["txnOpIndex"], from_invalidate=True)
        event = {
            "_id": token.document(),
            "operationType": "invalidate",
            "clusterTime": ts,
            "wallTime": entry["wall"],
        }
        shown = self._pipeline.apply(event)
        if shown is None:
            self._last_token = token
        else:
            self._pending.append((token, shown, _INVALIDATE_BYTES))

    # ---- which entries a stream sees, and how ---------------------------------------------

    def _classify(self, entry: dict[str, Any]) -> tuple[bool, bool]:
        """(shown to this stream, invalidates this stream)."""
        db = entry["db"]
        coll = entry.get("coll")
        op = entry["op"]
        to = entry.get("to")
        if op in EXPANDED_OPS and not self._options.show_expanded_events:
            return False, False
        if self._coll is not None:
            if op in ("drop", "rename"):
                hit = (db == self._db and coll == self._coll) or (
                    to is not None and to["db"] == self._db and to["coll"] == self._coll
                )
                return hit, hit
            return db == self._db and coll == self._coll and op != "dropDatabase", False
        if _is_system(coll):
            return False, False
        if self._options.all_changes_for_cluster:
            return db not in _INTERNAL_DBS, False
        in_db = db == self._db or (to is not None and to["db"] == self._db)
        return in_db, in_db and op == "dropDatabase"

    def _render(self, entry: dict[str, Any], seq: int) -> list[Shown]:
        history = self._history
        token, token_hex = history._token(seq)
        pipeline = self._pipeline
        options = self._options
        if (
            not pipeline.reads_images
            and options.full_document != "required"
            and options.full_document_before_change != "required"
            and pipeline.rejects_early(self._event(entry, token_hex, images=False))
        ):
            # Dropped by a `$match` that reads no image: no post-image lookup for it.
            return []
        event = self._event(entry, token_hex)
        shown = pipeline.apply(event)
        if shown is None:
            return []
        if (
            self._measure_events
            or history._size(seq) > _LARGE_ENTRY
            or (entry["op"] == "update" and self._options.full_document == "updateLookup")
        ):
            return _split(token, shown, allowed=self._pipeline.splits_large_events)
        return [(token, shown, history._size(seq))]

    def _event(self, entry: dict[str, Any], token_hex: str, images: bool = True) -> dict[str, Any]:
        op = entry["op"]
        event: dict[str, Any] = {}
        # mongod puts the transaction's identity first, ahead of the resume token.
        if "txnNumber" in entry:
            event["txnNumber"] = entry["txnNumber"]
        if "lsid" in entry:
            event["lsid"] = entry["lsid"]
        event["_id"] = {"_data": token_hex}
        event["operationType"] = op
        event["clusterTime"] = entry["ts"]
        event["wallTime"] = entry["wall"]
        options = self._options
        if options.show_expanded_events and "ui" in entry:
            event["collectionUUID"] = entry["ui"]
        if op in ("insert", "replace"):
            event["fullDocument"] = entry["fullDocument"]
        elif op == "update" and options.full_document != "default" and images:
            event["fullDocument"] = self._post_image(entry)
        ns: dict[str, Any] = {"db": entry["db"]}
        if "coll" in entry:
            ns["coll"] = entry["coll"]
        event["ns"] = ns
        if op in DOCUMENT_OPS:
            event["documentKey"] = entry["documentKey"]
        if op == "update":
            event["updateDescription"] = entry["updateDescription"]
            if options.show_expanded_events and options.disambiguates_paths:
                # MongoDB 6.1: with expanded events every update says which of its paths
                # hold dotted or numeric field names, an empty document when none does.
                event["updateDescription"] = {
                    **entry["updateDescription"],
                    "disambiguatedPaths": entry.get("disambiguatedPaths", {}),
                }
        if op in _IMAGE_OPS and options.full_document_before_change != "off" and images:
            event["fullDocumentBeforeChange"] = self._pre_image(entry)
        if op == "rename":
            event["to"] = entry["to"]
        if op in EXPANDED_OPS:
            event["operationDescription"] = entry["operationDescription"]
            if op == "modify":
                event["stateBeforeChange"] = entry["stateBeforeChange"]
        return event

    def _post_image(self, entry: dict[str, Any]) -> dict[str, Any] | None:
        mode = self._options.full_document
        if mode == "updateLookup":
            return self._history._lookup(entry["db"], entry["coll"], entry["documentKey"])
        image: dict[str, Any] | None = entry.get("fullDocument")
        if image is None and mode == "required":
            raise CommandError(
                47,
                "NoMatchingDocument",
                "Change stream was configured to require a post-image for all update events, "
                f"but the post-image was not found for event: {_describe_missing(entry)}",
            )
        return image

    def _pre_image(self, entry: dict[str, Any]) -> dict[str, Any] | None:
        image: dict[str, Any] | None = entry.get("preImage")
        if image is None and self._options.full_document_before_change == "required":
            raise CommandError(
                47,
                "NoMatchingDocument",
                "Change stream was configured to require a pre-image for all update, delete and "
                "replace events, but the pre-image was not found for event: "
                f"{_describe_missing(entry)}",
            )
        return image


_INVALIDATE_BYTES = 200
# Entries this large may render into events over the reply limit; measure their events.
_LARGE_ENTRY = 4 * 1024 * 1024


def _describe_missing(entry: dict[str, Any]) -> str:
    ts: Timestamp = entry["ts"]
    return (
        f'{{operationType: "{entry["op"]}", ns: "{entry["db"]}.{entry.get("coll")}", '
        f"clusterTime: Timestamp({ts.time}, {ts.inc}), documentKey: {entry.get('documentKey')}}}"
    )


def _is_system(coll: str | None) -> bool:
    return coll is not None and coll.startswith("system.")


def _split(token: ResumeToken, event: dict[str, Any], *, allowed: bool) -> list[Shown]:
    """The event, or its fragments when it exceeds 16 MiB and the pipeline allows splitting."""
    size = len(bson.encode(event))
    if size <= MAX_EVENT_BYTES:
        return [(token, event, size)]
    if not allowed:
        raise CommandError(
            10334,
            "BSONObjectTooLarge",
            f"BSONObj size: {size} (0x{size:X}) is invalid. Size must be between 0 and "
            f"16793600(16MB) First element: _id: {event['_id']}",
        )
    overhead = len(bson.encode({"_id": event["_id"], "splitEvent": {"fragment": 1, "of": 1}}))
    groups: list[list[tuple[str, Any]]] = [[]]
    sizes = [overhead]
    used = overhead
    for name, value in event.items():
        if name == "_id":
            continue
        field_size = len(bson.encode({name: value})) - 5
        if overhead + field_size > MAX_EVENT_BYTES:
            raise CommandError(
                7182803,
                "Location7182803",
                f"Cannot split the event into fragments under 16MB: field '{name}' is too large",
            )
        if used + field_size > MAX_EVENT_BYTES and groups[-1]:
            groups.append([])
            sizes.append(overhead)
            used = overhead
        groups[-1].append((name, value))
        sizes[-1] += field_size
        used += field_size
    fragments: list[Shown] = []
    for number, (group, fragment_size) in enumerate(zip(groups, sizes, strict=True), start=1):
        fragment_token = token._replace(fragment=number)
        fragment: dict[str, Any] = {
            "_id": fragment_token.document(),
            "splitEvent": {"fragment": number, "of": len(groups)},
        }
        fragment.update(group)
        fragments.append((fragment_token, fragment, fragment_size))
    return fragments
