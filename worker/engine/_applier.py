"""The applier: one transaction per batch holding the patches, the merge base and the checkpoint.

For each batch it loads the merge base and the current documents the batch touches, plans every
event in stream order with the pure core (`_plan.plan_event`), then opens the transaction,
writes one net change per target document, and stores merge base, counters, dead letters and
the checkpoint in it, fenced by the lease: all in one bulkWrite command from MongoDB 8.0, one
command per collection before (`_commands`). The reads and the planning come before the
transaction so that its window for write conflicts is only as long as its target writes; a
client write that landed on a written path between the reads and the writes is found in the
stream once the writes hold their documents, and the batch is planned again (a chain's batches
read inside the transaction, see `Applier.chained`). A write conflict, or such a stale read,
retries the batch in smaller transactions (`batch_limit`); a write the server refuses for good
(validation, size, duplicate key) is retried one event at a time and the refused event goes to
dead letters.

Behind a backlog the runner hands over several batches' events at once (`DELIVERY_PARTS`), and
they are applied in order, one transaction of at most `batch.max_docs` events each; while one is
written and committed, the next is read and planned (`_apply_part`), outside the worker's
session and on the documents and merge base records the one being written leaves. Its writes go
out only after that one has committed, once the documents it took from that plan are found on
the server as planned; anything else (a retry, a client write to one of them) and it is read and
planned again in its turn. The transactions, their checkpoints and their order are what they
would be one after the other: only the reading and planning overlap the writing. While a
delivery's last part is written, the next delivery's first part is planned from the reader's
oldest unread events (`_carry`), for the next `apply` to take if it begins with them.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import itertools
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import bson
from bson import Timestamp
from bson.raw_bson import RawBSONDocument
from pymongo import AsyncMongoClient, DeleteMany, DeleteOne, InsertOne, ReplaceOne, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import (
    ConnectionFailure,
    OperationFailure,
    PyMongoError,
)

from transforms import Pair, Registry, TransformFailed, diff_documents, named_fields
from worker.engine._ahead import (
    AHEAD_LIMIT,
    HELD_FIELDS,
    HELD_ORDER,
    HeldAhead,
    WritesAhead,
    held_record,
)
from worker.engine._commands import BatchWrites, Refused, is_transient, supports_bulk_write
from worker.engine._lease import Lease
from worker.engine._plan import (
    EventPlan,
    changed_paths,
    direction_of,
    other_side,
    overlaps,
    plan_event,
    without_tag,
)
from worker.engine._stream import (
    DOCUMENT_EVENTS,
    UnreadEvents,
    document_of,
    token_time,
    watch_target,
)
from worker.engine._writes import TargetWrite, plan_target_write, write_operation
from worker.errors import LeaseLost
from worker.logs import get_logger
from worker.metrics import Metrics
from worker.state import (
    ACTIVE_STATES,
    StateStore,
    id_key,
    merge_base_id,
    same_apart_from,
    settle_record,
    state_taken_up,
    utcnow,
)

__all__ = ["Applier", "BatchResult"]

log = get_logger(__name__)

LIFECYCLE_EVENTS = frozenset({"drop", "rename", "dropDatabase"})
# How many worker session ids to remember, so echoes written before a restart are still known.
REMEMBERED_SESSIONS = 16
# Bound on remembered outstanding echoes (document keys), so lost events cannot grow memory.
MAX_PENDING_ECHOES = 200_000
# The server refusing the bulkWrite command itself: Unauthorized, CommandNotFound,
# CommandNotSupported (not one of its writes, which are write errors).
BULK_WRITE_REFUSED = frozenset({13, 59, 115})
# MongoDB's WriteConflict: a client wrote a document of the transaction after its snapshot.
WRITE_CONFLICT = 112
# Past this, a grown `batch_limit` no longer bounds anything and is dropped.
MAX_BATCH_LIMIT = 100_000
# Most held events whose ids one pass of a replay reads (the rest in the next pass).
REPLAY_WINDOW = 100_000
# The first transaction of a replay: small, so that it goes out soon after `resume`.
REPLAY_FIRST_DOCS = 100
# How often (in records) a replay's read of the held changes sees whether the states are due.
HELD_READ_CHECK_EVERY = 1000
# A replay drops the ids it has replayed from its order once there are this many (its order
# grows with the changes held while it runs).
REPLAY_TRIM_AT = 10_000
# A replay runs at least this long before it lets a delivery through for the other pairs
# (their changes wait in the stream behind the replayed pair's otherwise).
REPLAY_STEP_S = 0.1
# Longest a batch's look-ahead waits for a busy stream reader to pass its horizon.
READER_WAIT_S = 0.02
# A reader this many seconds of cluster time behind a batch's read time has a long stretch of
# history still to read (a backlog starting, before its buffer has filled): a summary is read.
AHEAD_AFTER_SECONDS = 2
# Events planned between two yields to other tasks (see `_apply_part`).
PLAN_YIELD_EVERY = 50
# Events per server round trip when a batch looks ahead in the change stream.
PEEK_BATCH = 10_000
# Marks an event made up for a chain's other pair from a worker write (never on the wire).
VIRTUAL = "__partner_sync_virtual__"
# Most chain hops one batch may cascade through (a ring of pairs must still end).
MAX_CASCADES = 100_000
# A merge base record holds both sides of a document; keep it under MongoDB's 16 MiB limit.
MAX_BASE_BYTES = 15 * 1024 * 1024
# Without transactions, the attempts of a batch whose target writes carry preconditions (the
# document still as read); the attempts after them write as planned.
PRECONDITION_TRIES = 5
# Dead letters keep the error's first characters and events up to this size whole.
MAX_ERROR_CHARS = 2000
MAX_DEAD_LETTER_EVENT_BYTES = 4 * 1024 * 1024


@dataclass
class BatchResult:
    """What one applied batch did, for logs and tests."""

    events: int = 0
    applied: int = 0
    echoes: int = 0
    conflicts: int = 0
    dead_letters: int = 0
    held: int = 0
    writes: int = 0
    # Wall time in seconds of the attempt that applied it, per phase: "read" (merge base and
    # documents), "look_ahead", "plan", "write", "check" (for client writes after the reads)
    # and "commit". The `batch_applied` debug log carries them.
    phases: dict[str, float] = field(default_factory=dict)


class _Laps:
    """Wall time per phase of one attempt: each `lap` closes the phase that ran since the last."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._at = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - self._at
        self._at = now


@dataclass
class _PairTally:
    applied_forward: int = 0
    applied_backward: int = 0
    echoes_skipped: int = 0
    conflicts: int = 0
    dead_letters: int = 0
    last_client_write: dict[str, dt.datetime] = field(default_factory=dict)
    lag_seconds: float | None = None


@dataclass
class _Replay:
    """A pair's held changes as a replay goes through them, carried from one step to the next
    (and, `complete`, across a pause: see `_held_logs`)."""

    # The held ids of the current window, in `HELD_ORDER`, replayed up to `start`; `base`
    # ids replayed before them were dropped (`order[i]` is the window's change `base + i`).
    order: list[Any] = field(default_factory=list)
    start: int = 0
    base: int = 0
    # The summary of every change held when the window was read, and of those held since
    # (None: each transaction asks the server for its later held changes).
    ahead: HeldAhead | None = None
    transactions: int = 0
    # Whether `order` lists every change held for the pair (and `ahead`, when there is one,
    # sums all of them up, each at its place in `order`): the changes held from now on are
    # added to both as they are held.
    complete: bool = False


class _Split(Exception):
    """The batch met client writes; apply it in smaller transactions (see `batch_limit`)."""


class _CombinedRefused(Exception):
    """The server refused the combined bulkWrite command itself: send per-collection commands."""


@dataclass
class _Landed:
    """A target document whose write landed in an attempt cut short by a stale read: the
    document before that attempt's first write of it, the document as its writes left it (the
    change a chain carries is before -> left; the document as read now may hold newer client
    writes, whose own events carry them), and the cluster time of the last event of that
    attempt (once a batch through it commits, every event that wrote it has been planned
    again)."""

    before: dict[str, Any] | None
    left: dict[str, Any] | None
    until: Timestamp | None
    # The pairs whose events wrote it and have not carried it along yet: an event of one of
    # them carries it to the collection's other pairs (one of another would carry it back).
    writers: set[str]


class _StaleRead(Exception):
    """A client wrote a path of a target document between the batch's read and its write."""

    def __init__(
        self,
        documents: Sequence[tuple[str, Any]],
        landed: Mapping[tuple[str, Any], _Landed] | None = None,
        echoes: Sequence[tuple[tuple[str, Any], frozenset[str]]] = (),
    ) -> None:
        super().__init__(f"{len(documents)} target document(s) changed while the batch was planned")
        self.documents = documents
        # The batch's other target writes, which landed (`until` not known here).
        self.landed = dict(landed or {})
        # The echoes the writes that landed will bring, in order (`_landed_echoes`).
        self.echoes = list(echoes)


# A merge base record's `echo`: per side ("o", "p"), the worker's deletes of that side whose
# events have not come yet, each as {after, until} (`settle_record`).
Echo = dict[str, list[dict[str, Any]]]

Echoes = tuple[
    dict[tuple[str, Any], list[frozenset[str]]],
    list[tuple[tuple[str, Any], frozenset[str]]],
]


@dataclass
class _Prepared:
    """A batch read and planned, with the writes of its transaction built but not sent."""

    events: list[Mapping[str, Any]]
    result: BatchResult
    tallies: dict[str, _PairTally]
    laps: _Laps
    work: list[tuple[Pair, str, Mapping[str, Any], int]]
    checkpoint: tuple[Mapping[str, Any], Timestamp | None] | None
    read_ahead: bool
    beyond: Sequence[Mapping[str, Any]]
    # The cluster time every read of the batch reflects (None without sessions).
    read_at: Timestamp | None
    # The target writes (refusable), then the state writes: merge base, dead letters, held
    # events, counters, checkpoint. Without transactions, `intents` go before the target
    # writes: the merge base records of the documents they write, pending (`settle_record`).
    targets: BatchWrites
    writes: BatchWrites
    intents: BatchWrites
    # Field tags: merge base records remembering a delete of the batch (`echo`), whose bound
    # (`until`) is the time of the target writes' reply; written with `writes`.
    late_records: list[dict[str, Any]]
    # Per target document written: the paths set or unset, and (namespace, key, _id) each.
    written: dict[tuple[str, Any], frozenset[str]]
    written_ids: list[tuple[str, Any, Any]]
    resync: dict[str, str]
    # The pending echoes the batch consumed, and the echoes its writes will bring.
    echoes: Echoes
    # What the batch's writes leave, for a batch read while it is written (`_prepare(previous=)`):
    # each target document written (None: deleted), each merge base record (None: removed).
    leaves: dict[tuple[str, Any], dict[str, Any] | None]
    bases_left: dict[tuple[str, Any], dict[str, Any] | None]
    # Documents this batch took from the plan of the batch before instead of reading them:
    # (namespace, id key) -> (_id, document or None).
    carried: dict[tuple[str, Any], tuple[Any, dict[str, Any] | None]]
    committed: bool = False
    # `Applier.routing_changes` when it was planned (the pair states it routed its events by).
    routing_seen: int = 0
    # The changes it holds for paused or replaying pairs (`held_record`s).
    held: list[dict[str, Any]] = field(default_factory=list)
    # Its target writes carry preconditions, to be read back (`_verify_written`).
    verify: bool = False
    # Per target document written: the document before the batch's first write of it.
    befores: dict[tuple[str, Any], dict[str, Any] | None] = field(default_factory=dict)
    # Field tags: the tag token of each echo in `echoes`' expected ones, in the same order.
    echo_tokens: list[str | None] = field(default_factory=list)
    # The documents of `Applier._landed_before` it carried along the chain, each with the
    # pair whose event carried it.
    landed_hops: set[tuple[tuple[str, Any], str]] = field(default_factory=set)
    # Per target document written: the pairs whose events wrote it (chains only).
    writers: dict[tuple[str, Any], frozenset[str]] = field(default_factory=dict)


class Applier:
    """Applies batches of change events for every pair of a registry."""

    def __init__(
        self,
        client: AsyncMongoClient[dict[str, Any]],
        store: StateStore,
        registry: Registry,
        *,
        lease: Lease,
        metrics: Metrics,
        origin_tag: str = "session",
        tag_field: str = "_psync",
    ) -> None:
        self.client = client
        self.store = store
        self.registry = registry
        self.lease = lease
        self.metrics = metrics
        self.transactions = origin_tag == "session"
        self.tag_field = tag_field if origin_tag == "field" else None
        self.pair_states: dict[str, dict[str, Any]] = {}
        self.session: AsyncClientSession | None = None
        self.own_sessions: list[Any] = []
        # With session tags: the sessions of the pairs' backfills and repairs (`writer_sessions`
        # in their records), each naming the pair it wrote for. A backfill copies a document as
        # it read it, maybe before a change the stream brings after; its write is the worker's
        # own, an echo for that pair, never a newer client write that wins over that change.
        self.writer_sessions: dict[Any, str] = {}
        self._token_counter = 0
        # Worker writes whose change events have not come back yet, per (namespace, document
        # key), oldest first, naming the pair that wrote them: an echo belongs to that pair only.
        self.pending_echoes: dict[tuple[str, Any], list[frozenset[str]]] = {}
        # While a chained batch without transactions is retried after a stale read: the target
        # documents an attempt wrote, whose write landed, each as it was before
        # (`_StaleRead.landed`).
        self._landed_before: dict[tuple[str, Any], _Landed] = {}
        self._pairs = {pair.original: pair for pair in registry.pairs}
        # With session tags and no chains, the worker's own writes need no attribution: the
        # stream can leave them out server-side (see `StreamReader.skip_sessions`). A chain
        # needs them: a paused pair holds the echo of the other pair's write for later.
        namespaces = [ns for pair in registry.pairs for ns in (pair.original, pair.partner)]
        # A collection in two pairs. Without chains a batch reads and plans before its
        # transaction starts, so the window for write conflicts with clients is only its
        # target writes. A chain's batch writes documents that it reads while planning (a write
        # for one pair is a change for the other), so it reads them inside the transaction's
        # snapshot, as one consistent view; its look-ahead covers every collection it reaches.
        self.chained = len(namespaces) != len(set(namespaces))
        # The collections in two pairs (another pair writes them too).
        self._shared = {ns for ns in namespaces if namespaces.count(ns) > 1}
        # Per namespace, every collection a write to it reaches along a chain (itself first).
        self._reach = {ns: _chain_from(registry, ns) for ns in namespaces}
        self.echoes_filtered = self.transactions and not self.chained
        # The stream reader's events not yet taken (set by the runner): a batch from `apply`
        # looks for newer writes to its targets there first.
        self.unread: UnreadEvents | None = None
        # The client writes past the reader, read once for the batches of a worker far behind.
        self._ahead: WritesAhead | None = None
        # A summary gave up (too large) at this cluster time: none again until the reader is there.
        self._ahead_refused: Timestamp | None = None
        self.ahead_limit = AHEAD_LIMIT
        # Summaries are for a reader held back by a full buffer (set by the runner to half the
        # buffer) or far behind in time: a reader close behind passes a batch's horizon soon,
        # and the batch's own filtered read of that short stretch costs less than reading all.
        self.ahead_after_unread = 0
        # Events read into summaries so far (they replace a server read per batch).
        self.ahead_events_read = 0
        self._namespaces = frozenset(namespaces)
        self._watched = watch_target(client, namespaces)
        # Most events one transaction applies (None: a whole delivery). Halved when a batch
        # conflicts with client writes, grown again by an eighth after every applied batch.
        self.batch_limit: int | None = None
        # Most events one transaction applies in any case (the runner's `batch.max_docs`; None:
        # a whole delivery). A delivery of several such parts is pipelined (`_apply_part`).
        self.max_batch: int | None = None
        # Set by the runner when the worker stops: a delivery in parts ends after the part in
        # flight (the rest is read again from the checkpoint).
        self.stopping: anyio.Event | None = None
        # The next delivery's first part, planned from the reader's unread events while the
        # last part of a delivery was written (`_apply_part`); `apply` takes it if the next
        # delivery begins with those events and no pair changed state or start point since.
        self._carry: _Prepared | None = None
        # Counts the refreshes that found what `_route` goes by changed (a pair's state or
        # start point): a part planned before one routed its events by what no longer holds.
        self.routing_changes = 0
        # How often pair states are re-read while a delivery of several parts is applied (set
        # by the runner; None: only where the runner refreshes, between deliveries). A pause or
        # resume takes effect between two parts, not after a whole delivery behind a backlog.
        self.refresh_interval: float | None = None
        # When the pair states were last read (`anyio.current_time()`).
        self.refreshed_at = -math.inf
        # Per pair, the state change whose acknowledgement last failed (logged once each).
        self._ack_failed: dict[str, int] = {}
        # One summary of the history ahead, shared by a batch's check and the next one's reads.
        self._ahead_lock = anyio.Lock()
        # Whether a batch's writes go out as one bulkWrite command (MongoDB 8.0 and later; see
        # `_commands`). Found out when the applier opens.
        self.combined_writes = False
        # Active pairs whose held changes are still to replay: their changes from the stream
        # are held behind them (`_route`), so that each is applied after the older ones.
        self._replays: dict[str, _Replay] = {}
        # Active pairs found to hold nothing since they last became active.
        self._held_checked: set[str] = set()
        # Per paused pair: every change held for it, as this worker held them (a `_Replay`
        # that is `complete`), for its replay to start from without reading them back; or
        # None when changes it does not know of were held (before a restart, by another
        # worker, by a transaction whose commit failed).
        self._held_logs: dict[str, _Replay | None] = {}

    @contextlib.asynccontextmanager
    async def opened(self) -> AsyncIterator[Applier]:
        """Open the worker's session (its writes' origin tag) for the applier's lifetime."""
        checkpoint = await self.store.checkpoint()
        remembered = list((checkpoint or {}).get("sessions", []))
        self.combined_writes = await supports_bulk_write(self.client)
        async with self.client.start_session(causal_consistency=False) as session:
            self.session = session
            own_id = session.session_id["id"]
            self.own_sessions = [own_id, *[s for s in remembered if s != own_id]]
            self.own_sessions = self.own_sessions[:REMEMBERED_SESSIONS]
            await self.lease.record_session(session.session_id)
            try:
                yield self
            finally:
                self.session = None

    async def refresh_pairs(self) -> dict[str, dict[str, Any]]:
        """Re-read every pair's record (state, start point) from the state database, and find
        the pairs that became active with changes held (`replaying`)."""
        before = _routing(self.pair_states)
        self.pair_states = await self.store.pair_docs()
        self.refreshed_at = anyio.current_time()
        self.writer_sessions = {
            session: original
            for original, doc in self.pair_states.items()
            if original in self._pairs
            for session in doc.get("writer_sessions") or ()
        }
        for original, doc in self.pair_states.items():
            if original in self._pairs:
                self.metrics.set_state(original, doc.get("state", "NOT_STARTED"))
        # Nothing is applied before the replays are found: the commands waiting for this
        # record need not wait for that look at the held changes too.
        await self._acknowledge_states()
        replays_changed = await self._find_replays()
        if _routing(self.pair_states) != before or replays_changed:
            self.routing_changes += 1
            self._carry = None
        return self.pair_states

    async def _find_replays(self) -> bool:
        """Start a replay for each pair found active for the first time since it was not, if it
        has changes held; stop those of pairs no longer active. Returns whether any started or
        stopped.

        Done as the states are read, before anything is routed by them: a resumed pair's
        changes from the stream are held until its older held changes are replayed. A
        delivery applied between the refresh and the replay applied them first, and the
        replayed older change then overwrote the newer one.

        A pair paused with nothing held, or in the middle of a replay that knows all its held
        changes, keeps an account of every change held for it (`_held_logs`): resumed, its
        replay starts from that rather than from reading them all back."""
        changed = False
        for original in self._pairs:
            state = self.pair_states.get(original, {}).get("state")
            if state not in ACTIVE_STATES:
                self._held_checked.discard(original)
                replay = self._replays.pop(original, None)
                changed |= replay is not None
                if state != "PAUSED":
                    self._held_logs.pop(original, None)
                elif original not in self._held_logs:
                    self._held_logs[original] = await self._held_log(original, replay)
                continue
            if original in self._held_checked or original in self._replays:
                continue
            known = self._held_logs.pop(original, None)
            if known is not None and known.start < len(known.order):
                known.transactions = 0
                self._replays[original] = known
            elif oldest := await self._oldest_held(original, REPLAY_FIRST_DOCS):
                # (Looked for even when the account says none is held.) The oldest few are
                # the replay's first window: the first transaction need not look again.
                known = None
                self._replays[original] = _Replay(order=oldest)
            else:
                self._held_checked.add(original)
                continue
            log.info("replay_started", pair=original, known=known is not None)
            changed = True
        return changed

    async def _held_log(self, original: str, replay: _Replay | None) -> _Replay | None:
        """The account of a pair's held changes kept from its pause on: the replay it was
        paused in, if that knows them all, or a new one if none is held; None otherwise."""
        if replay is not None:
            return replay if replay.complete else None
        if await self._oldest_held(original, 1):
            return None
        return _Replay(ahead=HeldAhead(self.ahead_limit), complete=True)

    @property
    def replaying(self) -> bool:
        """Whether an active pair has held changes still to replay (`replay_held`)."""
        return bool(self._replays)

    def forget_replays(self) -> None:
        """Read the pair states before anything else is applied, and look for held changes
        again then, on the server (a stream opened again)."""
        self.refreshed_at = -math.inf
        self._replays.clear()
        self._held_checked.clear()
        self._held_logs.clear()

    async def _acknowledge_states(self) -> None:
        """Record, for each pair whose state changed since the last refresh, that this worker
        acts on the new state from now on (`StateStore.acknowledge_state`): `pause`, `resume`,
        `complete` and `rollback` return once it has.

        Pair states are refreshed only where no transaction is in flight: between deliveries,
        between the parts of one, between the transactions of a replay. A part planned under
        the states before is dropped (`routing_seen`), so nothing is applied under them after
        this. A pair this worker has no transforms for is acknowledged too: it is not synced here.

        A record that cannot be written never stops the sync (the worker acts on the state all
        the same): it is tried again at the next refresh, and the command that waits for it
        says, after its wait, that the worker has not taken the change up.
        """
        for original, doc in self.pair_states.items():
            if state_taken_up(doc):
                continue
            serial = doc["state_serial"]
            try:
                await self.store.acknowledge_state(original, serial, self.lease.holder)
            except PyMongoError as exc:
                if self._ack_failed.get(original) != serial:
                    self._ack_failed[original] = serial
                    log.warning(
                        "state_ack_failed",
                        pair=original,
                        state=doc.get("state"),
                        error=type(exc).__name__,
                        detail=str(exc)[:300],
                    )
                continue
            doc["seen_serial"] = serial

    # -- public entry points ---------------------------------------------------------------------

    async def apply(self, events: Sequence[Mapping[str, Any]]) -> BatchResult:
        """Apply a batch from the stream and advance the checkpoint past its last event."""
        if not events:
            return BatchResult()
        if self._touches_idle_pair(events):
            # A pair not applied a moment ago may have become active since (a backfill or a
            # resume): its changes must not be passed over on a state up to a refresh old.
            await self.refresh_pairs()
        events = list(events)
        total = BatchResult()
        done = 0
        # The next part, read and planned while the part before it was written.
        ready, self._carry = self._carry, None
        while done < len(events):
            if done and self.stopping is not None and self.stopping.is_set():
                break  # stopping: the parts applied so far are committed with their checkpoints
            if done and self.refresh_due() and await self._refresh_between_parts(events[done:]):
                ready = None  # planned before the held events replayed were written
            if ready is not None and ready.routing_seen != self.routing_changes:
                ready = None  # routed by pair states that no longer hold
            size = self._part_size(len(events) - done)
            chunk = events[done : done + size]
            beyond = events[done + size :]
            if ready is not None and (len(ready.events) != size or ready.events[0] is not chunk[0]):
                ready = None  # the parts changed size (a conflict lowered `batch_limit`)
            if ready is None and beyond and self._pipelined():
                ready = await self._prepare_ahead(chunk, beyond)
            try:
                result, ready = await self._apply_part(chunk, beyond, ready)
            except _Split:
                ready = None
                continue  # the limit was lowered: apply a smaller first part
            _add_results(total, result)
            done += size
            if self.batch_limit is not None:
                grown = self.batch_limit + max(1, self.batch_limit // 8)
                self.batch_limit = None if grown >= MAX_BATCH_LIMIT else grown
        return total

    async def _refresh_between_parts(self, beyond: Sequence[Mapping[str, Any]]) -> bool:
        """Re-read the pair states between two parts of a delivery (`refresh_due`), and replay
        the held events of a pair found resumed: they are older than the rest of the delivery
        (`beyond`). Returns whether held events were replayed."""
        await self.refresh_pairs()
        return await self.replay_held(self.max_batch or MAX_BATCH_LIMIT, beyond) > 0

    def refresh_due(self) -> bool:
        """Whether `refresh_interval` has passed since the pair states were read."""
        interval = self.refresh_interval
        return interval is not None and anyio.current_time() - self.refreshed_at >= interval

    def _part_size(self, remaining: int) -> int:
        """Events in the next transaction of a delivery: at most `max_batch` and `batch_limit`."""
        size = remaining
        for limit in (self.max_batch, self.batch_limit):
            if limit is not None:
                size = min(size, limit)
        return size

    def _pipelined(self) -> bool:
        """Whether a delivery's next part may be read and planned while one is written: with
        session tags, no chain (a chain reads inside its transaction) and echoes left out by
        the server (no pending echoes carried from one batch to the next): `echoes_filtered`."""
        return self.echoes_filtered

    async def _apply_part(
        self,
        chunk: list[Mapping[str, Any]],
        beyond: list[Mapping[str, Any]],
        ready: _Prepared | None,
    ) -> tuple[BatchResult, _Prepared | None]:
        """Apply one part of a delivery (`ready`: already planned); meanwhile read and plan the
        part after it on what this one's writes leave. Returns the result, and that next part
        when it is still good: this part committed as planned, and the documents the next one
        took from its plan are on the server as planned."""
        checkpoint = _end_of(chunk)
        following: list[Mapping[str, Any]] = (
            beyond[: self._part_size(len(beyond))] if ready is not None else []
        )
        # The delivery's last part: the next delivery begins with the reader's oldest unread
        # events, and its first part is planned now from them (taken by `apply` if so). Only a
        # whole part, as a backlog has: a worker keeping up finds a few events unread, and the
        # next delivery, which waits for more, would not begin with exactly those.
        unread = self.unread
        full = self._part_size(MAX_BATCH_LIMIT)
        unread_own = (
            not following and ready is not None and unread is not None and len(unread) >= full
        )
        if unread_own:
            assert unread is not None
            following = unread.peek(full)
        outcome: dict[str, Any] = {}

        # This part's writes wait for the next part's reads, so that the server answers those
        # first and the worker plans while the server writes.
        read = anyio.Event()

        async def apply_chunk() -> None:
            try:
                if following:
                    await read.wait()
                outcome["result"] = await self._apply_with_retries(
                    chunk,
                    checkpoint=checkpoint,
                    read_ahead=True,
                    beyond=beyond,
                    splittable=True,
                    prepared=ready,
                )
            except Exception as exc:
                outcome["error"] = exc
                group.cancel_scope.cancel()

        async def prepare_following() -> None:
            try:
                outcome["next"] = await self._prepare_ahead(
                    following,
                    [] if unread_own else beyond[len(following) :],
                    previous=ready,
                    read=read,
                    unread_own=unread_own,
                )
            finally:
                read.set()

        async with anyio.create_task_group() as group:
            if following:
                group.start_soon(prepare_following)
            group.start_soon(apply_chunk)
        if "error" in outcome:
            raise outcome["error"]
        following_ready: _Prepared | None = outcome.get("next")
        if following_ready is not None and not (
            ready is not None and ready.committed and await self._still_as_planned(following_ready)
        ):
            log.debug("prepared_part_dropped", events=len(following_ready.events))
            following_ready = None
        if unread_own:
            self._carry, following_ready = following_ready, None
        return outcome["result"], following_ready

    async def _prepare_ahead(
        self,
        events: list[Mapping[str, Any]],
        beyond: list[Mapping[str, Any]],
        *,
        previous: _Prepared | None = None,
        read: anyio.Event | None = None,
        unread_own: bool = False,
    ) -> _Prepared | None:
        """Read and plan a part of a delivery outside the worker's session (its transaction
        may be open), or None when that fails: the part is then prepared again in its turn,
        where the failure meets the retry policy."""
        try:
            async with self.client.start_session(causal_consistency=False) as reader:
                return await self._prepare(
                    events,
                    session=reader,
                    checkpoint=_end_of(events),
                    held_ids=None,
                    replay_pair=None,
                    refused=None,
                    read_ahead=True,
                    beyond=beyond,
                    previous=previous,
                    read=read,
                    unread_own=unread_own,
                )
        except Exception as exc:
            log.debug("prepare_ahead_failed", error=type(exc).__name__, detail=str(exc)[:200])
            return None

    async def _still_as_planned(self, prepared: _Prepared) -> bool:
        """Whether the target documents `prepared` took from the plan of the batch before it
        (now committed) are on the server as that plan left them. A client write to one of
        them since that batch's reads makes this batch read and plan again, and so does a
        failed read (in its turn, where the failure meets the retry policy)."""
        try:
            return await self._carried_as_planned(prepared)
        except PyMongoError as exc:
            log.debug("carried_check_failed", error=type(exc).__name__, detail=str(exc)[:200])
            return False

    async def _carried_as_planned(self, prepared: _Prepared) -> bool:
        found = await self._read_back(
            (namespace, key, document_id)
            for (namespace, key), (document_id, _) in prepared.carried.items()
        )
        for document, actual in found.items():
            left = prepared.carried[document][1]
            if (left is None) != (actual is None):
                return False
            if left is not None and actual is not None:
                if not diff_documents(left, actual).is_empty():
                    return False
        return True

    async def _read_back(
        self, documents: Iterable[tuple[str, Any, Any]]
    ) -> dict[tuple[str, Any], dict[str, Any] | None]:
        """The documents ((namespace, id key, _id) each) as the server has them now, None for
        those it does not have: one read per namespace."""
        wanted: dict[str, dict[Any, Any]] = {}
        for namespace, key, document_id in documents:
            wanted.setdefault(namespace, {})[key] = document_id
        found: dict[tuple[str, Any], dict[str, Any] | None] = {}
        for namespace, ids in wanted.items():
            found.update(((namespace, key), None) for key in ids)
            query = {"_id": {"$in": list(ids.values())}}
            async for document in self._collection(namespace).find(query):
                found[(namespace, id_key(document["_id"]))] = document
        return found

    def _touches_idle_pair(self, events: Sequence[Mapping[str, Any]]) -> bool:
        """Whether a document event belongs to a pair the worker last saw neither active nor
        paused (its changes would be passed over)."""
        for event in events:
            if event.get("operationType") not in DOCUMENT_EVENTS:
                continue
            ns = event.get("ns") or {}
            for pair, _ in self.registry.by_namespace(f"{ns.get('db')}.{ns.get('coll')}"):
                if self._state(pair) not in ACTIVE_STATES | {"PAUSED"}:
                    return True
        return False

    async def save_idle_checkpoint(self, resume_token: Mapping[str, Any]) -> None:
        """Advance the checkpoint while idle (fenced) and report zero lag for every pair.

        Its cluster time is the token's own (MongoDB's and the development server's tokens
        begin with it): stored as None, `verify` and anything else waiting for the checkpoint
        to pass a time saw an idle worker as behind for good."""
        self._carry = None
        await self._save_checkpoint((resume_token, token_time(resume_token)), None)
        for original in self._pairs:
            self.metrics.lag_seconds.labels(pair=original).set(0.0)
        await self.store.pairs.update_many(
            {"_id": {"$in": list(self._pairs)}, "lag_seconds": {"$ne": 0.0}},
            {"$set": {"lag_seconds": 0.0}},
        )

    async def replay_held(self, max_docs: int, beyond: Sequence[Mapping[str, Any]] = ()) -> int:
        """Apply the held changes of pairs that are active again (`replaying`); returns how
        many were replayed.

        Every event the stream brought since is newer than the held ones: `beyond`, those
        taken from the reader and not applied yet (the rest of a delivery), then the reader's
        unread events and the history past them, as for a batch from `apply`. (Read from the
        server from the checkpoint instead, a replay behind a backlog read the whole backlog
        twice per batch.) The changes held after a transaction's are newer writes too
        (`HeldAhead`, or `_held_after`).

        Pair states are read again between transactions (every `refresh_interval`): a pair
        paused again stops replaying at once, its remaining held changes before the ones it
        holds next.

        The first transaction does not wait for the summary of every held change: it takes at
        most `REPLAY_FIRST_DOCS` changes and reads their newer held changes itself
        (`_held_after`); the summary is read after it. A pause of a few seconds behind a busy
        collection holds tens of thousands of changes, and reading them all first put seconds
        between `resume` and the first change replayed.

        A long replay is done in steps when other active pairs have changes waiting (in
        `beyond` or the reader's buffer): after `REPLAY_STEP_S` it returns, the caller applies
        a delivery, and the next call goes on where this one stopped. The replaying pair's
        changes in that delivery are held behind the rest (`_route`). Without others waiting
        it replays to the end: holding the pair's new changes only to replay them would cost
        it twice.
        """
        replayed = 0
        started = time.monotonic()
        for original in list(self._replays):
            pair = self._pairs[original]
            while (replay := self._replays.get(original)) is not None:
                if replay.start >= len(replay.order):
                    await self._next_window(original, replay)
                    if self._replays.get(original) is not replay:
                        break  # paused again during the read
                    if not replay.order:
                        self._finish_replay(original)
                        break
                if replayed and await self._stopped_since(original):
                    return self._replayed(replayed)
                # The first transaction small, so that it goes out soon after `resume`.
                size = max_docs if replay.transactions else min(max_docs, REPLAY_FIRST_DOCS)
                wanted = replay.order[replay.start : replay.start + size]
                found = {
                    h["_id"]: h async for h in self.store.held_events.find({"_id": {"$in": wanted}})
                }
                held = [found[held_id] for held_id in wanted if held_id in found]
                if held:
                    events: list[Mapping[str, Any]] = [dict(h["event"]) for h in held]
                    if replay.ahead is not None:
                        keys = {id_key(e["documentKey"]["_id"]) for e in events}
                        # The transaction's last position in the window.
                        end = replay.base + replay.start + len(wanted) - 1
                        later = replay.ahead.after(end, (pair.original, pair.partner), keys)
                    else:
                        later = await self._held_after(original, held[-1], events)
                    await self._apply_with_retries(
                        events,
                        checkpoint=None,
                        held_ids=[h["_id"] for h in held],
                        replay_pair=original,
                        read_ahead=True,
                        beyond=[*later, *beyond],
                    )
                    replayed += len(held)
                replay.start += len(wanted)
                replay.transactions += 1
                if replay.start >= REPLAY_TRIM_AT:
                    del replay.order[: replay.start]
                    replay.base, replay.start = replay.base + replay.start, 0
                if time.monotonic() - started >= REPLAY_STEP_S and self._others_waiting(beyond):
                    log.debug("replay_step", pair=original, replayed=replayed)
                    return self._replayed(replayed)
        return self._replayed(replayed)

    async def _next_window(self, original: str, replay: _Replay) -> None:
        """The next held ids to replay (after the first few, or what the account listed): all
        the rest, with their summary (`_read_held`)."""
        replay.order, replay.ahead, replay.complete = await self._read_held(original)
        replay.start = replay.base = 0

    def _finish_replay(self, original: str) -> None:
        """Nothing is held for the pair any more: its changes are applied again as they come."""
        del self._replays[original]
        self._held_checked.add(original)
        self.routing_changes += 1
        self._carry = None
        log.info("replay_finished", pair=original)

    def _others_waiting(self, beyond: Sequence[Mapping[str, Any]]) -> bool:
        """Whether a change of an active pair that is not replaying is in `beyond` or among the
        reader's unread events (it waits for the replay otherwise)."""
        namespaces: set[str] = set()
        for original, pair in self._pairs.items():
            state = self.pair_states.get(original, {}).get("state")
            if original not in self._replays and state in ACTIVE_STATES:
                namespaces.update((pair.original, pair.partner))
        if not namespaces:
            return False
        unread = self.unread.peek(len(self.unread)) if self.unread is not None else []
        for event in itertools.chain(beyond, unread):
            ns = event.get("ns") or {}
            if f"{ns.get('db')}.{ns.get('coll')}" in namespaces:
                return True
        return False

    def _note_held(self, held: Sequence[Mapping[str, Any]]) -> None:
        """After a commit: the changes it held for a replaying pair are newer than every one
        in that replay's summary, and count as later held changes from now on; so are those
        held for a paused pair whose held changes the worker knows (`_held_logs`). Where the
        account lists every held change (`complete`), they are added to its order too."""
        for record in held:
            original = record["pair"]
            replay = self._replays.get(original) or self._held_logs.get(original)
            if replay is None:
                continue
            if replay.complete and len(replay.order) - replay.start >= REPLAY_WINDOW:
                replay.complete = False  # the rest is read when the replay gets there
            if replay.complete:
                replay.order.append(record["_id"])
            if replay.ahead is not None and not replay.ahead.add(record, replay.ahead.end):
                log.info("held_ahead_dropped", pair=original, paths=replay.ahead.size)
                replay.ahead = None

    def _lost_track(self, held: Sequence[Mapping[str, Any]]) -> None:
        """After a failed attempt that held changes (its commit may have been done, and without
        transactions some of its writes were): what this worker knows of those pairs' held
        changes may miss some, so their replays read them from the server."""
        for original in {record["pair"] for record in held}:
            if original in self._held_logs:
                self._held_logs[original] = None
            replay = self._replays.get(original)
            if replay is not None:
                replay.ahead = None
                replay.complete = False

    def _replayed(self, replayed: int) -> int:
        if replayed:
            self._carry = None  # planned before these writes
        return replayed

    async def _stopped_since(self, original: str) -> bool:
        """Whether the pair is no longer active, reading the pair states again first when they
        are due (`refresh_due`): a replay stops there, the rest of its changes still held."""
        if self.refresh_due():
            await self.refresh_pairs()
        return self.pair_states.get(original, {}).get("state") not in ACTIVE_STATES

    async def _oldest_held(self, original: str, count: int) -> list[Any]:
        """The ids of the pair's `count` oldest held events, in stream order (`HELD_ORDER`)."""
        cursor = self.store.held_events.find({"pair": original}, {"_id": 1})
        return [held["_id"] async for held in cursor.sort(HELD_ORDER).limit(count)]

    async def _read_held(self, original: str) -> tuple[list[Any], HeldAhead | None, bool]:
        """The ids of the pair's held events in stream order (`HELD_ORDER`, at most
        REPLAY_WINDOW of them), the summary of all of them (None when too large: each batch
        then reads its own), and whether the ids are all of them.

        The pair states are read again during the read too (every `refresh_interval`, checked
        every `HELD_READ_CHECK_EVERY` records): reading 100,000 held changes takes seconds, and
        a pause in that time is taken up at once. The pair paused again, nothing is returned
        and the replay stops, its changes still held."""
        started = time.perf_counter()
        order: list[Any] = []
        read = 0
        ahead: HeldAhead | None = HeldAhead(self.ahead_limit)
        cursor = self.store.held_events.find({"pair": original}, HELD_FIELDS).sort(HELD_ORDER)
        # In batches of that many: one reply of all of them (up to 16 MiB) left no point to
        # look at the states before it had all arrived.
        cursor = cursor.batch_size(HELD_READ_CHECK_EVERY)
        async for position, held in _enumerated(cursor):
            checks = position % HELD_READ_CHECK_EVERY == HELD_READ_CHECK_EVERY - 1
            if checks and await self._stopped_since(original):
                log.debug("held_read_stopped", pair=original, events=position + 1)
                return [], None, False
            read += 1
            if len(order) < REPLAY_WINDOW:
                order.append(held["_id"])
            if ahead is not None and "paths" not in held:
                ahead = None  # held by an earlier version
            elif ahead is not None and not ahead.add(held, position):
                log.info("held_ahead_dropped", pair=original, paths=ahead.size)
                ahead = None
            if ahead is None and len(order) >= REPLAY_WINDOW:
                break
        if order:
            seconds = round(time.perf_counter() - started, 4)
            log.debug("held_read", pair=original, events=len(order), seconds=seconds)
        return order, ahead, len(order) == read

    async def _held_after(
        self, original: str, after: Mapping[str, Any], events: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """The pair's changes held after the held record `after` (in `HELD_ORDER`) on the
        documents of `events`, oldest first, with what a look-ahead reads of them (instead of
        `HeldAhead`, when the summary was too large)."""
        ids = list(
            {id_key(e["documentKey"]["_id"]): e["documentKey"]["_id"] for e in events}.values()
        )
        at = after["event"]["clusterTime"]
        fields = ["_id", "operationType", "ns", "documentKey", "clusterTime", "updateDescription"]
        fields.append("lsid" if self.tag_field is None else f"fullDocument.{self.tag_field}")
        projection = {"_id": 1, **{f"event.{name}": 1 for name in fields}}
        query = {
            "pair": original,
            "event.documentKey._id": {"$in": ids},
            # Past `after` in HELD_ORDER.
            "$or": [
                {"event.clusterTime": {"$gt": at}},
                {"event.clusterTime": at, "_id": {"$gt": after["_id"]}},
            ],
        }
        cursor = self.store.held_events.find(query, projection).sort(HELD_ORDER)
        return [dict(h["event"]) async for h in cursor]

    # -- retry policy ------------------------------------------------------------------------------

    async def _apply_with_retries(
        self,
        events: list[Mapping[str, Any]],
        *,
        checkpoint: tuple[Mapping[str, Any], Timestamp | None] | None,
        held_ids: list[Any] | None = None,
        replay_pair: str | None = None,
        read_ahead: bool = False,
        beyond: Sequence[Mapping[str, Any]] = (),
        splittable: bool = False,
        prepared: _Prepared | None = None,
    ) -> BatchResult:
        """Apply `events` in one transaction, retrying transient failures.

        `read_ahead`: the events are the oldest the reader handed over and not applied (a
        batch from `apply`), so `beyond` and then the reader's unread events follow them.
        `splittable`: on a conflict with client writes, lower `batch_limit` and raise _Split
        instead of retrying the same events (a large transaction on busy documents would
        conflict again and again).
        `prepared`: the events already read and planned, for the first attempt.
        """
        delay = 0.01
        outage_logged = False
        stale_reads = 0
        started = time.monotonic()
        while True:
            if not self.lease.held:
                raise LeaseLost("the lease expired before the batch could be applied")
            try:
                first, prepared = prepared, None
                result = await self._attempt(
                    events,
                    checkpoint=checkpoint,
                    held_ids=held_ids,
                    replay_pair=replay_pair,
                    read_ahead=read_ahead,
                    beyond=beyond,
                    prepared=first,
                    # A document that never reads back as written (one the server compares
                    # otherwise than Python does) must not hold the batch up for ever.
                    preconditions=stale_reads < PRECONDITION_TRIES,
                )
            except _CombinedRefused:
                continue  # the same batch again, one command per collection
            except _StaleRead as exc:
                log.debug("batch_retry", reason="stale_read", documents=len(exc.documents))
                if self.chained:
                    self._keep_landed(exc, _end_of(events)[1])
                for document, owners in exc.echoes:
                    self.pending_echoes.setdefault(document, []).append(owners)
                # Halved even the first time: a large batch planned again whole meets another
                # client write in its longer window as often as not, and a worker behind on
                # busy documents stayed behind (see docs/benchmarks.md, "Tried and not kept").
                if splittable:
                    self._split_smaller(events)
                stale_reads += 1
                if stale_reads == PRECONDITION_TRIES and not self.transactions:
                    # From here a client write between the read and the write is overwritten.
                    log.warning(
                        "preconditions_given_up",
                        attempts=stale_reads,
                        documents=[str(key) for _, key in exc.documents[:10]],
                    )
                if stale_reads == 1:
                    continue  # the newer writes are known now: plan again at once
            except Refused as exc:
                if len(events) > 1:
                    return await self._apply_one_by_one(events, checkpoint, held_ids, replay_pair)
                return await self._attempt(
                    events,
                    checkpoint=checkpoint,
                    held_ids=held_ids,
                    replay_pair=replay_pair,
                    refused=exc.error,
                )
            except OperationFailure as exc:
                if not is_transient(exc):
                    raise
                log.debug("batch_retry", code=exc.code, error=str(exc)[:200])
                if exc.code == WRITE_CONFLICT and splittable:
                    self._split_smaller(events)
            except (ConnectionFailure, PyMongoError) as exc:
                if not outage_logged:
                    log.warning(
                        "apply_interrupted", error=type(exc).__name__, detail=str(exc)[:300]
                    )
                    outage_logged = True
            else:
                if outage_logged:
                    log.info("apply_recovered", seconds=round(time.monotonic() - started, 3))
                return result
            await anyio.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 2.0)

    async def _apply_one_by_one(
        self,
        events: list[Mapping[str, Any]],
        checkpoint: tuple[Mapping[str, Any], Timestamp | None] | None,
        held_ids: list[Any] | None,
        replay_pair: str | None,
    ) -> BatchResult:
        total = BatchResult()
        for index, event in enumerate(events):
            point = _end_of([event]) if checkpoint is not None else None
            if checkpoint is not None and replay_pair is not None:
                point = None
            result = await self._apply_with_retries(
                [event],
                checkpoint=point,
                held_ids=[held_ids[index]] if held_ids else None,
                replay_pair=replay_pair,
            )
            _add_results(total, result)
        return total

    def _unknown_written(
        self,
        tokens: Mapping[tuple[str, Any], str | None],
        bases: Mapping[tuple[str, Any], Any],
        document_ids: Mapping[tuple[str, Any], Any],
    ) -> set[tuple[str, Any]]:
        """Without transactions: the records of documents the batch writes (with a tag token)
        and has no merge base for. They get a pending record too, so that a retry after a cut
        knows which of their changes its writes applied (`settle_record`'s `folded`): planned
        again by cluster time, an older change lost to no write of the worker's own, and a
        chain's newer change brought along to the document was overwritten."""
        if self.transactions:
            return set()
        unknown: set[tuple[str, Any]] = set()
        for (namespace, key), token in tokens.items():
            if token is None:
                continue
            for pair, _ in self.registry.by_namespace(namespace):
                record_key = (pair.original, key)
                if bases.get(record_key) is None and record_key in document_ids:
                    unknown.add(record_key)
        return unknown

    def _keep_landed(
        self,
        stale: _StaleRead,
        until: Timestamp | None,
    ) -> None:
        """Remember the chain writes an attempt cut short landed (`carry_landed` in
        `_prepare`), across its retries and the smaller parts a split makes of its events: the
        event that made one may be planned again in any of them."""
        for document, landed in stale.landed.items():
            kept = self._landed_before.get(document)
            if kept is None:
                landed.until = until
                self._landed_before[document] = landed
                continue
            kept.left = landed.left  # the first attempt's document before, the later one's after
            if until is not None and (kept.until is None or kept.until < until):
                kept.until = until
            kept.writers |= landed.writers

    def _forget_landed(self, prepared: _Prepared) -> None:
        """After a commit: the landed writes it carried along, and those whose events it has
        all planned again, are done with."""
        if not self._landed_before:
            return
        end = _end_of(prepared.events)[1] if prepared.events else None
        for document, original in prepared.landed_hops:
            if document in self._landed_before:
                self._landed_before[document].writers.discard(original)
        for document in list(self._landed_before):
            landed = self._landed_before[document]
            done = landed.until is None or (end is not None and landed.until <= end)
            if done or not landed.writers:
                del self._landed_before[document]

    def _split_smaller(self, events: Sequence[Mapping[str, Any]]) -> None:
        """After a conflict with client writes, halve the events per transaction and raise
        _Split for `apply` to take a smaller first part (a lone event is retried as it is)."""
        if len(events) > 1:
            self.batch_limit = max(1, len(events) // 2)
            log.debug("batch_limit_lowered", limit=self.batch_limit)
            raise _Split()

    # -- one attempt -------------------------------------------------------------------------------

    async def _attempt(
        self,
        events: list[Mapping[str, Any]],
        *,
        checkpoint: tuple[Mapping[str, Any], Timestamp | None] | None,
        held_ids: list[Any] | None,
        replay_pair: str | None,
        refused: OperationFailure | None = None,
        read_ahead: bool = False,
        beyond: Sequence[Mapping[str, Any]] = (),
        prepared: _Prepared | None = None,
        preconditions: bool = True,
    ) -> BatchResult:
        """One transaction for `events`: read and plan them (unless `prepared` already did,
        while the batch before was written), write, check and commit. `preconditions`: see
        `_prepare`."""
        session = self.session
        assert session is not None, "use `async with applier.opened()`"
        txn_session = session if self.transactions else None
        started = time.perf_counter()
        # The batch once its writes may have landed without this attempt seeing it through:
        # sent without a transaction, or committing.
        in_doubt: _Prepared | None = None
        try:
            if prepared is None:
                prepared = await self._prepare(
                    events,
                    session=txn_session,
                    checkpoint=checkpoint,
                    held_ids=held_ids,
                    replay_pair=replay_pair,
                    refused=refused,
                    read_ahead=read_ahead,
                    beyond=beyond,
                    preconditions=preconditions,
                )
            if not self.transactions:
                in_doubt = prepared
            await self._execute(prepared, txn_session, refused)
            result, tallies = prepared.result, prepared.tallies
            committing = time.perf_counter()
            if self.transactions:
                in_doubt = prepared
                await session.commit_transaction()
            result.phases["commit"] = time.perf_counter() - committing
            prepared.committed = True
            self._forget_landed(prepared)
            self._remember_echoes(prepared.echoes)
            self._note_held(prepared.held)
            in_doubt = None
        except BaseException:
            if in_doubt is not None and in_doubt.held:
                self._lost_track(in_doubt.held)
            if self.transactions and session.in_transaction:
                with contextlib.suppress(PyMongoError), anyio.CancelScope(shield=True):
                    await session.abort_transaction()
            raise
        # A replay's events were counted when they were read and held.
        self._record_metrics(
            events if held_ids is None else (), result, tallies, time.perf_counter() - started
        )
        return result

    def _chain_hops(
        self,
        work: Sequence[tuple[Pair, str, Mapping[str, Any], int]],
        ids_by_pair: Mapping[str, Mapping[Any, Any]],
    ) -> dict[str, dict[Any, Any]]:
        """Per pair: the documents of `work` a hop along the chain may reach in it, beyond
        those its own events name (`ids_by_pair`)."""
        hops: dict[str, dict[Any, Any]] = {}
        for pair, side, event, _ in work:
            document_id = event["documentKey"]["_id"]
            key = id_key(document_id)
            target_ns = pair.partner if side == "original" else pair.original
            for namespace in self._reach[target_ns]:
                for other, _ in self.registry.by_namespace(namespace):
                    if key in ids_by_pair.get(other.original, {}):
                        continue
                    if self._state(other) in ACTIVE_STATES:
                        hops.setdefault(other.original, {})[key] = document_id
        return hops

    async def _prepare(
        self,
        events: list[Mapping[str, Any]],
        *,
        session: AsyncClientSession | None,
        checkpoint: tuple[Mapping[str, Any], Timestamp | None] | None,
        held_ids: list[Any] | None,
        replay_pair: str | None,
        refused: OperationFailure | None,
        read_ahead: bool = False,
        beyond: Sequence[Mapping[str, Any]] = (),
        previous: _Prepared | None = None,
        read: anyio.Event | None = None,
        unread_own: bool = False,
        preconditions: bool = True,
    ) -> _Prepared:
        """Read what the batch touches, plan every event and build the transaction's writes.

        `session` reads (inside the transaction for a chain, see `chained`). `previous`: a batch
        being written while this one is read: the documents and merge base records its writes
        leave are taken from its plan instead of the server (whose committed state does not
        have them yet), and `_still_as_planned` checks those documents once it has committed.
        `read`: set once the batch has read all it reads from the server (its look-ahead too).
        `unread_own`: the events are the reader's oldest unread ones, not taken yet (`_carry`).
        `preconditions`: without transactions, each target write applies only to the document
        still as the batch read it (`_verify_written` then finds those a client changed).
        """
        result = BatchResult(events=len(events))
        # Without a transaction, the target writes expect the documents as read.
        guarded = preconditions and not self.transactions
        laps = _Laps()
        result.phases = laps.phases
        tallies: dict[str, _PairTally] = {}
        work: list[tuple[Pair, str, Mapping[str, Any], int]] = []
        # (pair, target namespace, document key, before, after, pairs whose echo it is) per
        # applied event, in order
        event_writes: list[tuple[str, str, Any, Any, Any, set[str]]] = []
        held: list[dict[str, Any]] = []
        resync: dict[str, str] = {}

        pending = {key: list(queue) for key, queue in self.pending_echoes.items()}
        # Per event: the paths it changed, and which pair (if any) it is the echo of; a later
        # event on a pair's target is a newer write that wins over an earlier source change.
        later: list[tuple[str, Any, frozenset[str], frozenset[str] | None]] = []
        for event in events:
            echo_of = self._echo_owner(event, pending)
            if event.get("operationType") in DOCUMENT_EVENTS:
                ns = event.get("ns") or {}
                later.append(
                    (
                        f"{ns.get('db')}.{ns.get('coll')}",
                        id_key(event["documentKey"]["_id"]),
                        changed_paths(event),
                        echo_of,
                    )
                )
            else:
                later.append(("", None, frozenset(), None))
            for pair, side, action in self._route(event, replay_pair):
                if action == "apply" and echo_of is not None and pair.original in echo_of:
                    tally = tallies.setdefault(pair.original, _PairTally())
                    tally.echoes_skipped += 1
                    result.echoes += 1
                elif action == "apply":
                    work.append((pair, side, event, len(later) - 1))
                elif action == "hold":
                    held.append(
                        held_record(
                            pair.original,
                            event,
                            later[-1][2],
                            ours=self._is_ours(event),
                            at=utcnow(),
                        )
                    )
                elif action == "resync":
                    resync[pair.original] = (
                        f"{event['operationType']} of {side} collection at "
                        f"{event.get('clusterTime')}"
                    )

        # The batch's events by document, so each event finds its newer writes without a scan
        # of the whole batch (that was quadratic in the batch size).
        later_by_doc: dict[
            tuple[str, Any], list[tuple[int, frozenset[str], frozenset[str] | None]]
        ] = {}
        for index, (namespace, other_key, changed, echo_of) in enumerate(later):
            if namespace:
                later_by_doc.setdefault((namespace, other_key), []).append(
                    (index, changed, echo_of)
                )

        if session is not None and self.chained:
            await session.start_transaction()
        # Load everything the batch touches (inside the transaction's snapshot when it has
        # started already).
        ids_by_pair: dict[str, dict[Any, Any]] = {}
        # Per (namespace, id key) the batch reads as a source: whether an update without a
        # post-image needs the document (when the merge base lacks it). A target is read anyway.
        as_source: dict[tuple[str, Any], bool] = {}
        targets_read: set[tuple[str, Any]] = set()
        for pair, side, event, _ in work:
            document_id = event["documentKey"]["_id"]
            key = id_key(document_id)
            ids_by_pair.setdefault(pair.original, {})[key] = document_id
            source = (pair.original if side == "original" else pair.partner, key)
            targets_read.add((pair.partner if side == "original" else pair.original, key))
            needs = event.get("operationType") == "update" and event.get("fullDocument") is None
            as_source[source] = as_source.get(source, False) or needs
        only_source = {doc: needs for doc, needs in as_source.items() if doc not in targets_read}
        bases: dict[tuple[str, Any], dict[str, Any]] = {}
        # The merge base records as read (settled: `settle_record`), before planning changes
        # them: what a batch without transactions writes first, beside what it will leave.
        prior_bases: dict[tuple[str, Any], dict[str, Any]] = {}
        # Records this batch writes again even if their merge base is unchanged: settled
        # (left pending by a batch cut short), or their `echo` changed.
        rewrite: set[tuple[str, Any]] = set()
        # Field tags: the worker's own deletes whose events may still come (`settle_record`),
        # as read and as this batch leaves them (it forgets those whose events it meets).
        echoes_read: dict[tuple[str, Any], Echo] = {}
        echoes_due: dict[tuple[str, Any], Echo] = {}
        # (pair, id key) -> the document's _id, for every document whose record is read.
        document_ids: dict[tuple[str, Any], Any] = {}
        # Records settled as written by a batch cut short (`settle_record`): (pair, id key) ->
        # the cluster time of the last change that batch folded in, and how many of the
        # document's changes at that very time it applied (None: all). Those changes are in
        # the record (and in the documents) already: planned again, a delete the batch had
        # overruled with a newer write took the document out of the merge base once more.
        folded: dict[tuple[str, Any], tuple[Timestamp, int | None]] = {}
        # Per (pair, id key): how many of the document's changes in this batch carry each
        # cluster time (a client transaction's changes share one).
        at_counts: dict[tuple[str, Any], collections.Counter[Timestamp]] = {}
        docs: dict[tuple[str, Any], dict[str, Any] | None] = {}
        initial: dict[tuple[str, Any], dict[str, Any] | None] = {}
        loaded: set[tuple[str, Any]] = set()
        # Documents taken from the plan of the batch before (`previous`), as it will leave them:
        # (namespace, id key) -> (_id, document or None).
        carried: dict[tuple[str, Any], tuple[Any, dict[str, Any] | None]] = {}
        if previous is not None:
            for original, ids in ids_by_pair.items():
                pair = self._pairs[original]
                for key, document_id in ids.items():
                    for namespace in (pair.original, pair.partner):
                        if (namespace, key) in previous.leaves:
                            left = previous.leaves[(namespace, key)]
                            carried[(namespace, key)] = (document_id, left)
                            docs[(namespace, key)] = initial[(namespace, key)] = left
                    if (original, key) in previous.bases_left:
                        loaded.add((original, key))
                        record = previous.bases_left[(original, key)]
                        if record is not None:
                            bases[(original, key)] = record

        # Outside a transaction the batch's reads are independent: they go out side by side,
        # each on a session of its own, and `session` takes the newest of their times.
        side_by_side = session is None or not session.in_transaction

        def remember_echo(original: str, key: Any, echo: Echo) -> None:
            echoes_read[(original, key)] = {
                side: [dict(mark) for mark in marks] for side, marks in echo.items()
            }
            echoes_due[(original, key)] = echo

        async def read_bases(pair: Pair, ids: list[Any], read_session: Any) -> None:
            records = await self.store.load_bases(pair.original, ids, session=read_session)
            for key, record in records.items():
                if "pending" in record:
                    bases[(pair.original, key)] = record  # settled once both sides are read
                    continue
                settled = settle_record(record, None, None, self.tag_field)
                base, echo = settled.base, settled.echo
                if echo:
                    remember_echo(pair.original, key, echo)
                if settled.folded is not None:
                    folded[(pair.original, key)] = (settled.folded, settled.folded_left)
                if base is not None:
                    bases[(pair.original, key)] = prior_bases[(pair.original, key)] = base

        async def read_documents(namespace: str, fetch: dict[Any, Any], read_session: Any) -> None:
            for key in fetch:
                docs[(namespace, key)] = None
            query = {"_id": {"$in": list(fetch.values())}}
            async for document in self._collection(namespace).find(query, session=read_session):
                docs[(namespace, id_key(document["_id"]))] = document
            for key in fetch:
                initial[(namespace, key)] = docs[(namespace, key)]

        async def load(
            pair: Pair,
            ids: Mapping[Any, Any],
            sources: Mapping[tuple[str, Any], bool] | None = None,
        ) -> None:
            """Merge base and current documents of these ids, each read once per batch.

            `sources` ((namespace, id key) -> needed without a merge base): documents the batch
            reads only as a source. Planning takes an insert's or replace's source from the
            event, and an update's from the merge base and the event; such a document is read
            only for an update the merge base cannot place, once the base has been read.
            Without `sources`, both sides of every id are read (a chain's hop into its next
            pair).
            """
            sources = sources or {}
            for key, document_id in ids.items():
                document_ids[(pair.original, key)] = document_id
            reads: list[Callable[[Any], Coroutine[Any, Any, None]]] = []
            wanted = [v for k, v in ids.items() if (pair.original, k) not in loaded]
            if wanted:
                reads.append(partial(read_bases, pair, wanted))
                loaded.update((pair.original, key) for key in ids)
            for namespace in (pair.original, pair.partner):
                fetch = {
                    k: v
                    for k, v in ids.items()
                    if (namespace, k) not in docs and (namespace, k) not in sources
                }
                if fetch:
                    reads.append(partial(read_documents, namespace, fetch))
            await self._read_all(reads, session, side_by_side)
            for namespace, side_field in ((pair.original, "o"), (pair.partner, "p")):
                fetch = {
                    k: v
                    for k, v in ids.items()
                    if sources.get((namespace, k))
                    and (namespace, k) not in docs
                    and (bases.get((pair.original, k)) or {}).get(side_field) is None
                }
                if fetch:
                    await read_documents(namespace, fetch, session)
            await settle(pair, ids)

        async def settle(pair: Pair, ids: Mapping[Any, Any]) -> None:
            """Settle the records a batch without transactions left pending (cut short by a
            crash or a stale read) against both sides' documents, read for it if need be."""
            unsettled = [k for k in ids if "pending" in bases.get((pair.original, k), {})]
            if not unsettled:
                return
            for namespace in (pair.original, pair.partner):
                fetch = {k: ids[k] for k in unsettled if (namespace, k) not in docs}
                if fetch:
                    await read_documents(namespace, fetch, session)
            now_time: Timestamp | None = None
            for key in unsettled:
                record = bases.pop((pair.original, key))
                rewrite.add((pair.original, key))
                settled = settle_record(
                    record, docs[(pair.original, key)], docs[(pair.partner, key)], self.tag_field
                )
                now, echo, outcome = settled.base, settled.echo, settled.outcome
                unbounded = [m for marks in echo.values() for m in marks if m.get("until") is None]
                if unbounded:
                    # Deletes of the batch cut short that landed: their events come before now.
                    now_time = now_time or await self._server_time()
                    for mark in unbounded:
                        mark["until"] = now_time
                if echo:
                    remember_echo(pair.original, key, echo)
                if settled.folded is not None:
                    folded[(pair.original, key)] = (settled.folded, settled.folded_left)
                log.info(
                    "merge_base_settled",
                    pair=pair.original,
                    document_id=record["_id"].get("id"),
                    outcome=outcome,
                )
                if now is not None:
                    bases[(pair.original, key)] = prior_bases[(pair.original, key)] = now

        def own_delete(namespace: str, key: Any, stamp: Timestamp | None) -> bool:
            """Whether a delete of this document at `stamp` is the worker's own (field tags:
            a delete carries no tag, its record's `echo` tells)."""
            for other, side in self.registry.by_namespace(namespace):
                marks = (echoes_due.get((other.original, key)) or {}).get(
                    "o" if side == "original" else "p", []
                )
                if _echo_index(marks, stamp) is not None:
                    return True
            return False

        laps.lap("plan")  # routing the events
        for original, ids in ids_by_pair.items():
            await load(self._pairs[original], ids, only_source)
        if self.chained and self.tag_field is not None:
            # The pairs further along a chain, whose records a hop reads while planning: with
            # field tags only a record tells the worker's own delete from a client's, and the
            # look-ahead below must know them. Taken for a client's newer delete, the worker's
            # own delete of a document further along dropped the copy a hop re-creates there,
            # and the chain's ends stayed apart.
            for original, ids in self._chain_hops(work, ids_by_pair).items():
                await load(self._pairs[original], ids)
        if echoes_due:
            # The worker's own deletes later in the batch are echoes, not newer writes.
            for (namespace, key), entries in later_by_doc.items():
                for n, (index, changed, echo_of) in enumerate(entries):
                    event = events[index]
                    if (
                        echo_of is None
                        and event.get("operationType") == "delete"
                        and own_delete(namespace, key, event.get("clusterTime"))
                    ):
                        pairs_of = self.registry.by_namespace(namespace)
                        entries[n] = (index, changed, frozenset(p.original for p, _ in pairs_of))
        laps.lap("read")
        # Field tags read without the session: the look-ahead then reads to the stream's end.
        read_at = session.operation_time if session is not None else None
        peeked = await self._peek_ahead(
            work,
            checkpoint,
            read_ahead=read_ahead,
            beyond=beyond,
            until=read_at,
            unread_own=len(events) if unread_own else 0,
            # A replay writes no checkpoint; its held events are older than all the rest.
            batch_time=_end_of(events)[1] if checkpoint is None and events else None,
            own_delete=own_delete if echoes_due else None,
        )
        laps.lap("look_ahead")
        if read is not None:
            read.set()
        touched_bases: set[tuple[str, Any]] = set()
        dead_letters: list[dict[str, Any]] = []

        queue = collections.deque(work)
        # `folded` as read: planning counts off the changes it skips, and a batch that does
        # not land leaves them to be skipped again.
        folded_read = dict(folded)
        cascades = 0
        # Targets whose landed write (`_landed_before`) this batch carried along the chain.
        landed_hops: set[tuple[tuple[str, Any], str]] = set()

        async def hop(
            pair: Pair,
            target_ns: str,
            key: Any,
            before: dict[str, Any] | None,
            after: dict[str, Any] | None,
            event: Mapping[str, Any],
            position: int,
            owners: set[str],
        ) -> None:
            """A collection in two pairs (a chain): a write to it is a change for the other pair
            too, at this event's place in the order; apply it there now (its echo will belong
            to both pairs: `owners`)."""
            nonlocal cascades
            document_id = event["documentKey"]["_id"]
            for other, other_side_name in self.registry.by_namespace(target_ns):
                if other.original == pair.original or self._state(other) not in ACTIVE_STATES:
                    continue
                if cascades >= MAX_CASCADES:
                    log.warning("chain_cascade_limit", pair=other.original)
                    break
                cascades += 1
                owners.add(other.original)
                await load(other, {key: document_id})
                virtual = _virtual_event(target_ns, document_id, before, after, event)
                queue.appendleft((other, other_side_name, virtual, position))

        async def carry_landed(
            pair: Pair, target_ns: str, key: Any, event: Mapping[str, Any], position: int
        ) -> None:
            """Carry along the chain, once, what an attempt of this batch cut short by a stale
            read wrote to this target already (its write landed, one further along did not):
            the event, planned again, finds it done or folded in."""
            document = (target_ns, key)
            landed = self._landed_before.get(document)
            if landed is None or pair.original not in landed.writers:
                return
            if (document, pair.original) in landed_hops:
                return
            before = without_tag(landed.before, self.tag_field)
            left = without_tag(landed.left, self.tag_field)
            if before != left:
                landed_hops.add((document, pair.original))
                await hop(pair, target_ns, key, before, left, event, position, {pair.original})

        planned_events = 0
        while queue:
            planned_events += 1
            if planned_events % PLAN_YIELD_EVERY == 0:
                # Planning is all CPU: let a batch being written meanwhile go on (its commands'
                # replies and its commit wait for this loop otherwise).
                await anyio.lowlevel.checkpoint()
            pair, side, event, position = queue.popleft()
            tally = tallies.setdefault(pair.original, _PairTally())
            document_id = event["documentKey"]["_id"]
            key = id_key(document_id)
            source_ns = pair.original if side == "original" else pair.partner
            target_ns = pair.partner if side == "original" else pair.original
            base = bases.get((pair.original, key))
            source_field, target_field = ("o", "p") if side == "original" else ("p", "o")
            stamp = event.get("clusterTime")
            if not self.transactions and stamp is not None and not event.get(VIRTUAL):
                # For the records written before the target writes (`_intent`).
                at_counts.setdefault((pair.original, key), collections.Counter())[stamp] += 1
            if _folded_in(folded, (pair.original, key), stamp, event):
                # Applied by the attempt that left its record pending, the newest one too:
                # planned again, a delete it overruled took the document out of the record.
                # That attempt's counters were never written: the change counts here (one
                # that attempt found in conflict counts as applied too).
                rewrite.add((pair.original, key))  # it keeps the count left
                if not self._is_ours(event):
                    if direction_of(side).value == "forward":
                        tally.applied_forward += 1
                    else:
                        tally.applied_backward += 1
                    result.applied += 1
                if self._landed_before:
                    await carry_landed(pair, target_ns, key, event, position)
                continue
            marks = (echoes_due.get((pair.original, key)) or {}).get(source_field, [])
            mine = (
                _echo_index(marks, stamp)
                if marks and event.get("operationType") == "delete" and not event.get(VIRTUAL)
                else None
            )
            if mine is not None:
                # The worker's own delete (for this pair), made before a restart or by a batch
                # before: its record forgets it now.
                del marks[mine]
                rewrite.add((pair.original, key))
                tally.echoes_skipped += 1
                result.echoes += 1
                continue
            plan = plan_event(
                pair,
                side,
                event,
                base_source=base.get(source_field) if base else None,
                base_target=base.get(target_field) if base else None,
                current_source=docs.get((source_ns, key)),
                current_target=docs.get((target_ns, key)),
                tag_field=self.tag_field,
                ahead=_ahead(pair.original, target_ns, key, position, later_by_doc, peeked),
                shared_target=target_ns in self._shared,
            )
            ours = bool(event.get(VIRTUAL)) or self._is_ours(event)
            if plan.failure is not None or (refused is not None and plan.applied):
                dead_letters.append(self._dead_letter(pair, side, event, plan, refused))
                tally.dead_letters += 1
                result.dead_letters += 1
                plan.target_after = docs.get((target_ns, key))
                plan.base_target = base.get(target_field) if base else None
            elif plan.echo:
                tally.echoes_skipped += 1
                result.echoes += 1
            else:
                if plan.applied:
                    before = docs.get((target_ns, key))
                    owners = {pair.original}
                    event_writes.append(
                        (pair.original, target_ns, key, before, plan.target_after, owners)
                    )
                    docs[(target_ns, key)] = plan.target_after
                    await hop(
                        pair, target_ns, key, before, plan.target_after, event, position, owners
                    )
                elif self._landed_before:
                    await carry_landed(pair, target_ns, key, event, position)
                if plan.applied:
                    if direction_of(side).value == "forward":
                        tally.applied_forward += 1
                    else:
                        tally.applied_backward += 1
                    result.applied += 1
                if plan.conflict_paths:
                    tally.conflicts += 1
                    result.conflicts += 1
                    log.info(
                        "conflict",
                        pair=pair.original,
                        document_id=document_id,
                        side=side,
                        paths=plan.conflict_paths,
                        event_time=event.get("clusterTime"),
                        reason=plan.reason,
                        winner=other_side(side),
                    )
            if not ours and not plan.echo and event.get("wallTime") is not None:
                last_write = tally.last_client_write.get(side)
                if last_write is None or event["wallTime"] > last_write:
                    tally.last_client_write[side] = event["wallTime"]
            if event.get("wallTime") is not None:
                tally.lag_seconds = max(0.0, (utcnow() - _aware(event["wallTime"])).total_seconds())
            new_base = {
                source_field: plan.base_source,
                target_field: plan.base_target,
            }
            if base is not None and all(base.get(k) == v for k, v in new_base.items()):
                continue  # nothing new learnt about this document (an echo, mostly)
            if base is None and plan.base_source is None and plan.base_target is None:
                continue  # a document still known on neither side (see plan_event)
            bases[(pair.original, key)] = {
                "_id": merge_base_id(pair.original, document_id),
                **new_base,
                "at": event.get("clusterTime"),
            }
            touched_bases.add((pair.original, key))

        # One net write per target document when one pair wrote it in this batch; in order, one
        # per event, when several pairs did (a chain), so each echo is attributed to its pair.
        writers: dict[tuple[str, Any], set[str]] = {}
        echo_owners: dict[tuple[str, Any], set[str]] = {}
        for pair_original, namespace, key, _, _, owners in event_writes:
            writers.setdefault((namespace, key), set()).add(pair_original)
            echo_owners.setdefault((namespace, key), set()).update(owners)
        planned: list[tuple[frozenset[str], str, Any, Any, Any]] = []
        netted: set[tuple[str, Any]] = set()
        for _, namespace, key, before, after, owners in event_writes:
            if len(writers[(namespace, key)]) == 1:
                if (namespace, key) in netted:
                    continue
                netted.add((namespace, key))
                before, after = initial.get((namespace, key)), docs.get((namespace, key))
                owners = echo_owners[(namespace, key)]
            planned.append((frozenset(owners), namespace, key, before, after))
        echoes_expected: list[tuple[tuple[str, Any], frozenset[str]]] = []
        echo_tokens: list[str | None] = []
        operations: dict[str, list[Any]] = {}
        # Per target document written: the paths the write sets or unsets ("" for all).
        written: dict[tuple[str, Any], frozenset[str]] = {}
        written_ids: list[tuple[str, Any, Any]] = []
        # Per target document written: the document as the write leaves it (None: deleted).
        leaves: dict[tuple[str, Any], dict[str, Any] | None] = {}
        befores: dict[tuple[str, Any], dict[str, Any] | None] = {}
        # Per target document written: the tag token its write leaves (None: deleted, or
        # session tags).
        tokens: dict[tuple[str, Any], str | None] = {}
        # Field tags: per record, the sides this batch deletes; their events come after the
        # batch's last event and before the writes' reply (`until`, set by `_execute`).
        fresh: dict[tuple[str, Any], Echo] = {}
        after_batch = _end_of(events)[1] if events else None
        for write_owners, namespace, key, before, after in planned:
            # What the server holds when this write runs, fields in its order (a precondition
            # compares them): as read, or as this batch's write before it left it. The model
            # planning kept may order them otherwise (a chain writes a document once per event).
            if (namespace, key) in leaves:
                before = leaves[(namespace, key)]
            elif (namespace, key) in initial:
                before = initial[(namespace, key)]
            if before is None and after is None:
                continue  # created and deleted again within the batch: nothing to write
            try:
                write = plan_target_write(
                    before, after, self._owns_for_write, document_id=_document_id(after, before)
                )
            except TransformFailed as exc:
                # Planning dead-letters such a change event by event. Should one still reach
                # the write, the batch goes one event at a time and it is dead-lettered there.
                raise Refused(OperationFailure(str(exc))) from exc
            if write is None:
                continue
            absent = guarded and before is None
            befores.setdefault((namespace, key), before)
            leaves[(namespace, key)] = write.result(before, absent=absent)
            expect = without_tag(before, self.tag_field) if guarded else None
            tag = self._tag()
            tokens[(namespace, key)] = (
                None if tag is None or write.kind == "delete" else next(iter(tag.values()))
            )
            operations.setdefault(namespace, []).append(
                write_operation(
                    write,
                    tag=tag,
                    namespace=namespace,
                    expect=expect,
                    tag_field=self.tag_field,
                    absent=absent,
                )
            )
            # A chain may write one document several times in a batch: all their paths count.
            written[(namespace, key)] = written.get((namespace, key), frozenset()) | (
                _written_paths(write)
            )
            written_ids.append((namespace, key, write.document_id))
            if self.tag_field is not None and write.kind == "delete":
                # Untagged: its record remembers it (`echo`), for this worker and the next.
                for owner in write_owners:
                    field_of = "o" if namespace == self._pairs[owner].original else "p"
                    fresh.setdefault((owner, key), {}).setdefault(field_of, []).append(
                        {"after": after_batch}
                    )
            else:
                echoes_expected.append(((namespace, key), write_owners))
                echo_tokens.append(tokens[(namespace, key)])
            result.writes += 1
            if self.echoes_filtered:
                # The stream leaves this write's event out: its echo is skipped right here.
                for owner in write_owners:
                    tallies.setdefault(owner, _PairTally()).echoes_skipped += 1
                result.echoes += 1
        laps.lap("plan")
        targets = BatchWrites(self.client, combined=self.combined_writes)
        # The namespace with the most writes first: the snapshot is taken at the first command,
        # and a later command's documents stay open to a conflicting client write for longer
        # (with one combined command, none do).
        for namespace, ops in sorted(operations.items(), key=lambda item: -len(item[1])):
            targets.add(namespace, ops, refusable=True)

        writes = BatchWrites(self.client, combined=self.combined_writes)
        bases_ns = self.store.merge_base.full_name
        base_ops: list[Any] = []
        bases_left: dict[tuple[str, Any], dict[str, Any] | None] = {}
        # Without transactions: the records of the documents the batch writes, as they were
        # with what the batch leaves beside them, written before its target writes.
        intents = BatchWrites(self.client, combined=self.combined_writes)
        intent_ops: list[Any] = []
        # Records remembering a delete this batch makes: written once it has been sent.
        late: list[dict[str, Any]] = []
        first_time = events[0].get("clusterTime") if events else None
        for record_key in (
            touched_bases
            | rewrite
            | fresh.keys()
            | self._unknown_written(tokens, bases, document_ids)
        ):
            pair_original, key = record_key
            record_id = merge_base_id(pair_original, document_ids[record_key])
            stored = bases.get(record_key)
            if stored is not None and stored.get("o") is None and stored.get("p") is None:
                stored = None  # known absent on both sides: no merge base
            echo: Echo = {}
            for side, marks in (echoes_due.get(record_key) or {}).items():
                kept = [mark for mark in marks if not _expired(mark, first_time)]
                if kept:
                    echo[side] = kept
            new_marks = fresh.get(record_key, {})
            folding = folded.get(record_key)
            bases_left[record_key] = None
            if not self.transactions:
                intent = self._intent(
                    self._pairs[pair_original],
                    key,
                    record_id,
                    prior_bases.get(record_key),
                    stored,
                    tokens,
                    echo=echoes_read.get(record_key),
                    deletes=new_marks,
                    folded=folded_read.get(record_key),
                    at=after_batch,
                    at_counts=at_counts.get(record_key),
                )
                if intent is not None:
                    intent_ops.append(intent)
            if folding is not None and _folded_done(folding, first_time, after_batch):
                folding = None  # no change it folded in can be read again (see `_expired`)
            notes = _folded_notes(folding)
            if notes and stored is not None:
                stored = {**stored, **notes}
            encoded: _EncodedRecord | None = None
            if stored is not None:
                # Measured by encoding it, and the encoding is what is sent.
                encoded = _EncodedRecord(bson.encode(stored))
                if len(encoded.raw) > MAX_BASE_BYTES:
                    # Both sides of a very large document do not fit one record: keep none,
                    # so the document syncs without the newer-write guard rather than not at all.
                    log.warning("merge_base_too_large", pair=pair_original, document_id=key)
                    stored = encoded = None
            if stored is not None:
                bases_left[record_key] = stored
            if not echo and not new_marks and (folding is None or stored is not None):
                if encoded is None:
                    base_ops.append(DeleteOne({"_id": record_id}, namespace=bases_ns))
                else:
                    base_ops.append(
                        ReplaceOne({"_id": record_id}, encoded, upsert=True, namespace=bases_ns)
                    )
                continue
            record = (
                dict(stored)
                if stored is not None
                else {
                    "_id": record_id,
                    "o": None,
                    "p": None,
                    "at": after_batch,
                    **notes,
                }
            )
            if echo or new_marks:
                record["echo"] = {
                    side: [*echo.get(side, []), *new_marks.get(side, [])]
                    for side in sorted(echo.keys() | new_marks.keys())
                }
            if new_marks:
                late.append(record)
            else:
                base_ops.append(
                    ReplaceOne({"_id": record_id}, record, upsert=True, namespace=bases_ns)
                )
        intents.add(bases_ns, intent_ops)
        store = self.store
        writes.add(bases_ns, base_ops)
        writes.add(
            store.dead_letters.full_name,
            [InsertOne(d, namespace=store.dead_letters.full_name) for d in dead_letters],
        )
        writes.add(
            store.held_events.full_name,
            [InsertOne(h, namespace=store.held_events.full_name) for h in held],
        )
        result.held = len(held)
        if held_ids:
            writes.add(
                store.held_events.full_name,
                [DeleteMany({"_id": {"$in": held_ids}}, namespace=store.held_events.full_name)],
            )
        pairs_ns = store.pairs.full_name
        for original, reason in resync.items():
            update = store.state_update("RESYNC_REQUIRED", resync_reason=reason)
            writes.add(pairs_ns, [UpdateOne({"_id": original}, update, namespace=pairs_ns)])
        for original, tally in tallies.items():
            update = _tally_update(tally)
            writes.add(pairs_ns, [UpdateOne({"_id": original}, update, namespace=pairs_ns)])
        if checkpoint is not None:
            self._queue_checkpoint(writes, checkpoint)
        laps.lap("plan")  # the state writes
        return _Prepared(
            events=events,
            result=result,
            tallies=tallies,
            laps=laps,
            work=work,
            checkpoint=checkpoint,
            read_ahead=read_ahead,
            beyond=beyond,
            read_at=read_at,
            targets=targets,
            writes=writes,
            intents=intents,
            late_records=late,
            written=written,
            written_ids=written_ids,
            resync=resync,
            echoes=(pending, [] if self.echoes_filtered else echoes_expected),
            leaves=leaves,
            befores=befores,
            echo_tokens=[] if self.echoes_filtered else echo_tokens,
            landed_hops=landed_hops,
            writers=(
                {document: frozenset(pairs) for document, pairs in writers.items()}
                if self.chained
                else {}
            ),
            bases_left=bases_left,
            carried=carried,
            routing_seen=self.routing_changes,
            held=held,
            verify=guarded,
        )

    async def _execute(
        self,
        prepared: _Prepared,
        session: AsyncClientSession | None,
        refused: OperationFailure | None,
    ) -> None:
        """Send a prepared batch's writes in its transaction and check for client writes
        that landed on what they set since the batch's reads (committing is the caller's)."""
        laps = prepared.laps
        for original, reason in prepared.resync.items():
            log.error("resync_required", pair=original, reason=reason)
        # The transaction starts here, not before the reads: its snapshot is taken at its first
        # command, and a client write to a target document after the snapshot and before the
        # worker's own write of it is a write conflict. Started at the writes, that window is
        # one bulk write long instead of the whole batch's reads, look-ahead and planning.
        # (A chain's batch started it before its reads: see `chained`.)
        if session is not None and not session.in_transaction:
            if prepared.read_at is not None:
                session.advance_operation_time(prepared.read_at)
            await session.start_transaction()
        if prepared.targets.combined and self.transactions:
            prepared.targets.extend(prepared.writes)
            await self._send(prepared.targets, session, refused)
            await self._check_overwritten(prepared, session)
            laps.lap("check")
            return
        # Separate commands: the target writes first (without transactions, after the merge
        # base records saying what they will leave), and the batch's other writes only once no
        # newer client write makes it plan again.
        await self._send(prepared.intents, session, refused)
        if prepared.late_records:
            # Sent on the worker's session, whose operation time then bounds the deletes.
            await self._send(prepared.targets, self.session, refused)
        else:
            await self._send(prepared.targets, session, refused)
        if prepared.verify:
            await self._verify_written(prepared)
        await self._check_overwritten(prepared, session)
        laps.lap("check")
        writes = prepared.writes
        if prepared.late_records:
            assert self.session is not None
            until = self.session.operation_time
            namespace = self.store.merge_base.full_name
            writes = BatchWrites(self.client, combined=self.combined_writes)
            ops = []
            for record in prepared.late_records:
                for marks in record["echo"].values():
                    for mark in marks:
                        mark.setdefault("until", until)
                ops.append(
                    ReplaceOne({"_id": record["_id"]}, record, upsert=True, namespace=namespace)
                )
            writes.add(namespace, ops)
            writes.extend(prepared.writes)
        await self._send(writes, session, refused)
        laps.lap("write")

    async def _verify_written(self, prepared: _Prepared) -> None:
        """Without a transaction: every target document reads back as the batch wrote it, or
        `_StaleRead` names those that do not. A write planned on a document a client changed
        since the batch read it matched nothing (its precondition), and a client may have
        written one since: either way the batch plans again, before its merge base records and
        its checkpoint are written."""
        found = await self._read_back(prepared.written_ids)
        stale: list[tuple[str, Any]] = []
        for document, actual in found.items():
            if not same_apart_from(prepared.leaves.get(document), actual, self.tag_field):
                stale.append(document)
        if stale:
            landed = {
                d: _Landed(
                    prepared.befores[d],
                    prepared.leaves.get(d),
                    None,
                    set(prepared.writers.get(d, ())),
                )
                for d in found
                if d not in stale
            }
            raise _StaleRead(stale, landed, self._landed_echoes(prepared, found))

    def _landed_echoes(
        self,
        prepared: _Prepared,
        found: Mapping[tuple[str, Any], Mapping[str, Any] | None],
    ) -> list[tuple[tuple[str, Any], frozenset[str]]]:
        """The echoes that the writes of an attempt cut short will bring although it never
        commits: per document read back, its writes up to the one whose tag token it holds (each
        write's precondition is the document as the one before left it, so they landed in
        order, and no later one did). A chain needs them: its shared collection's echo would
        otherwise be taken for a client change by both pairs (`_echo_owner`)."""
        _, expected = prepared.echoes
        holds = {
            document: actual.get(self.tag_field)
            for document, actual in found.items()
            if actual is not None and self.tag_field is not None
        }
        last: dict[tuple[str, Any], int] = {}
        for index, ((document, _), token) in enumerate(
            zip(expected, prepared.echo_tokens, strict=True)
        ):
            if token is not None and holds.get(document) == token:
                last[document] = index
        return [
            (document, owners)
            for index, (document, owners) in enumerate(expected)
            if index <= last.get(document, -1)
        ]

    async def _check_overwritten(
        self, prepared: _Prepared, session: AsyncClientSession | None
    ) -> None:
        """The documents were read before the transaction: a client write that landed between
        that read and these writes, on a path they set, is newer and must win. The written
        documents are held now, so the stream up to here has every such write."""
        prepared.laps.lap("write")
        if session is None or not prepared.written or self.chained:
            return
        newer = await self._peek_ahead(
            prepared.work,
            prepared.checkpoint,
            read_ahead=prepared.read_ahead,
            beyond=prepared.beyond,
            since=prepared.read_at,
            until=session.operation_time,
            documents=prepared.written_ids,
        )
        overwritten = _overwritten(prepared.written, newer)
        if overwritten:
            raise _StaleRead(overwritten)

    async def _send(
        self,
        writes: BatchWrites,
        session: AsyncClientSession | None,
        refused: OperationFailure | None,
    ) -> None:
        """Send the queued writes; a target refusing one for good raises `Refused`, except on
        the attempt that already dead-letters the refused event (`refused`)."""
        try:
            await writes.send(session)
        except Refused as exc:
            if refused is not None:
                raise exc.error from exc
            raise
        except OperationFailure as exc:
            if not writes.combined or exc.code not in BULK_WRITE_REFUSED:
                raise
            # A server that has the command may still refuse it to this user (a role without
            # the bulkWrite action) or have it disabled: the per-collection commands need
            # only the privileges the operations guide lists.
            log.warning(
                "bulk_write_refused",
                code=exc.code,
                error=str(exc)[:300],
                action="sending one command per collection from now on",
            )
            self.combined_writes = False
            raise _CombinedRefused() from exc

    # -- helpers -----------------------------------------------------------------------------------

    async def _read_all(
        self,
        reads: Sequence[Callable[[Any], Coroutine[Any, Any, None]]],
        session: AsyncClientSession | None,
        side_by_side: bool,
    ) -> None:
        """Run `reads` (each given the session to read on): inside a transaction one after the
        other on `session`; outside one, side by side on sessions of their own, after which
        `session`'s operation time is the newest of theirs (the time every read reflects)."""
        if not side_by_side or len(reads) < 2:
            for read in reads:
                await read(session)
            return
        if session is None:
            async with anyio.create_task_group() as group:
                for read in reads:
                    group.start_soon(read, None)
            return
        helpers = [self.client.start_session(causal_consistency=False) for _ in reads]
        try:
            async with anyio.create_task_group() as group:
                for read, helper in zip(reads, helpers, strict=True):
                    group.start_soon(read, helper)
            for helper in helpers:
                if helper.operation_time is not None:
                    session.advance_operation_time(helper.operation_time)
                if helper.cluster_time is not None:
                    session.advance_cluster_time(helper.cluster_time)
        finally:
            for helper in helpers:
                await helper.end_session()

    async def _peek_ahead(
        self,
        work: Sequence[tuple[Pair, str, Mapping[str, Any], int]],
        checkpoint: tuple[Mapping[str, Any], Timestamp | None] | None,
        *,
        read_ahead: bool = False,
        beyond: Sequence[Mapping[str, Any]] = (),
        since: Timestamp | None = None,
        until: Timestamp | None = None,
        documents: Sequence[tuple[str, Any, Any]] | None = None,
        unread_own: int = 0,
        batch_time: Timestamp | None = None,
        own_delete: Callable[[str, Any, Timestamp | None], bool] | None = None,
    ) -> dict[tuple[str, Any], frozenset[str]]:
        """Target paths that client writes after the batch, up to `until`, have changed.

        Called after the batch's documents were read (`until` is that read's time), so it
        covers every write those documents reflect that is newer than the batch: such a write
        wins (G2). Called again once the batch's target writes hold their documents, with
        `since` the first call's `until`, it finds the writes that landed in between. `beyond`:
        events of the same delivery after this batch (it was split). With `read_ahead`, the
        reader's unread events come next and the server is asked only for what follows them;
        otherwise the server is read from the batch's end. `documents` ((namespace, id key,
        _id) each) replaces the batch's targets: the second call asks about every document
        the batch wrote, a chain's other collections included. `unread_own`: the batch is the
        reader's oldest unread events, planned before they were taken (`_carry`).
        `batch_time`: the batch's last cluster time when it stores no checkpoint (a replay).
        `own_delete(namespace, id key, cluster time)`: whether a delete is the worker's own
        (field tags, whose deletes carry no tag).
        """
        if not work and not documents:
            return {}
        targets: dict[str, dict[Any, Any]] = {}
        if documents is not None:
            for namespace, key, document_id in documents:
                targets.setdefault(namespace, {})[key] = document_id
        for pair, side, event, _ in work if documents is None else ():
            target_ns = pair.partner if side == "original" else pair.original
            document_id = event["documentKey"]["_id"]
            # A chain's batch writes the collections further along too (a write to the target
            # is a change for its other pair): their newer client writes count as well. Missed,
            # a client's insert and delete there after the batch's event let the batch re-create
            # the document with the event's older content, and the chain's ends stayed apart.
            for namespace in self._reach[target_ns] if self.chained else (target_ns,):
                targets.setdefault(namespace, {})[id_key(document_id)] = document_id
        found: dict[tuple[str, Any], set[str]] = {}
        # Every newer write must be seen: giving up after N events and calling every target
        # "written ahead" dropped the batch's changes to targets nobody else wrote. A write
        # after the transaction's snapshot conflicts with the batch's own write of that
        # document (and the batch is retried), so the scan ends at the snapshot's time.

        def note(event: Mapping[str, Any]) -> bool:
            """Record a newer client write to a target; False once past the horizon."""
            stamp = event.get("clusterTime")
            if until is not None and stamp is not None and stamp > until:
                return False
            if since is not None and stamp is not None and stamp <= since:
                return True
            if event.get("operationType") not in DOCUMENT_EVENTS or self._is_ours(event):
                return True
            ns = event.get("ns") or {}
            namespace = f"{ns.get('db')}.{ns.get('coll')}"
            key = id_key(event["documentKey"]["_id"])
            if (
                own_delete is not None
                and event.get("operationType") == "delete"
                and own_delete(namespace, key, stamp)
            ):
                return True
            if key in targets.get(namespace, {}):
                found.setdefault((namespace, key), set()).update(changed_paths(event))
            return True

        after: Mapping[str, Any] | None = None
        past_snapshot = False
        if since is None:
            # `beyond` came before the reads: only the first look needs it, and only the
            # events on this batch's targets (a delivery split in many parts repeats it).
            for event in beyond:
                document = document_of(event)
                if document is not None and document[1] in targets.get(document[0], ()):
                    note(event)
        if read_ahead and self.unread is not None:
            unread = self.unread
            # A busy reader passes the horizon within a round trip or two: then every newer
            # write up to it is in memory, and the server is not asked at all. A reader far
            # behind (a full buffer, or seconds of history still to read) cannot pass it in
            # that time: waiting for it cost a backlog's batches 20 ms each, and a summary
            # of the history past it answers instead.
            if until is not None and self._far_behind(unread, until):
                past_snapshot = unread.covers(until)
            elif until is not None:
                past_snapshot = await unread.wait_covers(until, within=READER_WAIT_S)
            after = unread.resume_point
            if unread.has_invalidate():
                after = None  # a stream cannot resume after an invalidate: read from the batch
            wanted = [(ns, key) for ns, ids in targets.items() for key in ids]
            for event in unread.for_documents(wanted, skip=unread_own):
                note(event)
        if read_ahead and self.unread is not None and until is not None:
            async with self._ahead_lock:
                answer = await self._writes_ahead(
                    self.unread,
                    past_snapshot=past_snapshot,
                    targets=targets,
                    batch_time=checkpoint[1] if checkpoint is not None else batch_time,
                    since=since,
                    until=until,
                    own_delete=own_delete,
                )
            if answer is not None:
                for document, paths in answer.items():
                    found.setdefault(document, set()).update(paths)
                past_snapshot = True
        if not past_snapshot:
            if after is None and checkpoint is not None:
                after = checkpoint[0]
            elif after is None:
                stored = await self.store.checkpoint()
                after = (stored or {}).get("resume_token")
            if after:
                await self._read_newer_writes(targets, after, note)
        return {key: frozenset(paths) for key, paths in found.items()}

    async def _writes_ahead(
        self,
        unread: UnreadEvents,
        *,
        past_snapshot: bool,
        targets: Mapping[str, Mapping[Any, Any]],
        batch_time: Timestamp | None,
        since: Timestamp | None,
        until: Timestamp,
        own_delete: Callable[[str, Any, Timestamp | None], bool] | None = None,
    ) -> dict[tuple[str, Any], set[str]] | None:
        """The newer writes past the reader from the summary of that history (`WritesAhead`),
        or None when the server must be asked for this batch's documents alone."""
        ahead = self._ahead
        passed = ahead is not None and ahead.covered is not None and unread.covers(ahead.covered)
        if ahead is not None and (ahead.unread is not unread or passed):
            # The reader has passed all of it (or is a new reader): the events are in memory.
            self._ahead = ahead = None
        start = unread.resume_point
        if past_snapshot or unread.has_invalidate() or start is None:
            return None
        if ahead is None and not self._far_behind(unread, until):
            return None
        if ahead is None:
            if self._ahead_refused is not None and not unread.covers(self._ahead_refused):
                return None
            ahead = self._ahead = WritesAhead(
                unread,
                self._watched,
                self._namespaces,
                start,
                skip_sessions=list(self.own_sessions) if self.transactions else [],
                is_ours=self._is_ours,
                keeps_documents=self.tag_field is not None,
                limit=self.ahead_limit,
            )
        before = ahead.events_read
        extended = await ahead.extend(until)
        self.ahead_events_read += ahead.events_read - before
        if not extended:
            if ahead.broken is not None:
                log.info("writes_ahead_dropped", reason=ahead.broken, events=ahead.events_read)
                self._ahead_refused = until
                self._ahead = None
            return None
        return ahead.newer(
            targets,
            batch_time=batch_time,
            batch_time_handed_over=batch_time is not None and unread.covers(batch_time),
            since=since,
            until=until,
            unsure=own_delete,
        )

    def _far_behind(self, unread: UnreadEvents, until: Timestamp) -> bool:
        """Whether the reader is held back by a full buffer (half full or more) or is
        `AHEAD_AFTER_SECONDS` or more of cluster time behind `until`: it will not pass `until`
        soon, and the history past it is read once into a summary (`WritesAhead`)."""
        return (
            len(unread) >= self.ahead_after_unread
            or unread.seconds_behind(until) >= AHEAD_AFTER_SECONDS
        )

    async def _read_newer_writes(
        self,
        targets: Mapping[str, Mapping[Any, Any]],
        after: Mapping[str, Any],
        note: Callable[[Mapping[str, Any]], bool],
    ) -> None:
        """Pass the server's events after `after` on these target documents to `note`, until
        it returns False (past the snapshot) or the stream has nothing more."""
        clauses = [
            {
                "ns.db": ns.partition(".")[0],
                "ns.coll": ns.partition(".")[2],
                "documentKey._id": {"$in": list(ids.values())},
            }
            for ns, ids in targets.items()
        ]
        watched = watch_target(self.client, targets)
        match: dict[str, Any] = {"$or": clauses}
        if self.transactions and self.own_sessions:
            match["lsid.id"] = {"$nin": list(self.own_sessions)}
        async with await watched.watch(
            [{"$match": match}],
            resume_after=after,
            max_await_time_ms=1,
            batch_size=PEEK_BATCH,
        ) as stream:
            while True:
                event = await stream.try_next()
                if event is None or not note(event):
                    break

    def _remember_echoes(self, echoes: Echoes) -> None:
        """After a commit: the echoes consumed by the batch are gone, its own writes expected."""
        pending, expected = echoes
        for key, owner in expected:
            pending.setdefault(key, []).append(owner)
        if len(pending) > MAX_PENDING_ECHOES:
            # Echoes that never came back (lost history): forget them; the merge base decides.
            log.warning("pending_echoes_dropped", count=len(pending))
            pending = {}
        self.pending_echoes = pending

    def _echo_owner(
        self, event: Mapping[str, Any], pending: dict[tuple[str, Any], list[frozenset[str]]]
    ) -> frozenset[str] | None:
        """The pairs whose own write this event reports, or None for a change to propagate."""
        op = event.get("operationType")
        if op not in DOCUMENT_EVENTS:
            return None
        ns = event.get("ns") or {}
        namespace = f"{ns.get('db')}.{ns.get('coll')}"
        key = (namespace, id_key(event["documentKey"]["_id"]))
        queue = pending.get(key)
        if not self._is_ours(event):
            # (With field tags a delete carries no tag: planning tells the worker's own by
            # its merge base record's `echo`.)
            return None
        if self.writer_sessions and self.tag_field is None:
            written_for = self.writer_sessions.get(event["lsid"]["id"])
            if written_for is not None:
                return frozenset({written_for})
        if queue:
            owner = queue.pop(0)
            if not queue:
                del pending[key]
            return owner
        routes = self.registry.by_namespace(namespace)
        if len(routes) == 1:
            return frozenset({routes[0][0].original})
        return None  # a chain namespace whose write was made before a restart: the base decides

    def _route(
        self, event: Mapping[str, Any], replay_pair: str | None
    ) -> list[tuple[Pair, str, str]]:
        """(pair, side, action) for every pair the event's namespace belongs to."""
        ns = event.get("ns") or {}
        op = event.get("operationType")
        routes: list[tuple[Pair, str, str]] = []
        if op == "dropDatabase":
            for pair in self.registry.pairs:
                for side, namespace in (("original", pair.original), ("partner", pair.partner)):
                    if namespace.partition(".")[0] == ns.get("db"):
                        routes.append((pair, side, "resync"))
                        break
            return [r for r in routes if self._state(r[0]) in ACTIVE_STATES]
        namespace = f"{ns.get('db')}.{ns.get('coll')}"
        for pair, side in self.registry.by_namespace(namespace):
            if replay_pair is not None and pair.original != replay_pair:
                continue
            state = self._state(pair)
            if op in LIFECYCLE_EVENTS:
                if state in ACTIVE_STATES or state == "PAUSED":
                    routes.append((pair, side, "resync"))
                continue
            if op not in DOCUMENT_EVENTS:
                continue
            start_at = self.pair_states.get(pair.original, {}).get("start_at")
            event_time = event.get("clusterTime")
            if start_at is not None and event_time is not None and event_time <= start_at:
                continue
            if replay_pair is not None:
                routes.append((pair, side, "apply"))
            elif state in ACTIVE_STATES and pair.original in self._replays:
                routes.append((pair, side, "hold"))  # behind its held changes
            elif state in ACTIVE_STATES:
                routes.append((pair, side, "apply"))
            elif state == "PAUSED":
                routes.append((pair, side, "hold"))
        return routes

    def _state(self, pair: Pair) -> str:
        return str(self.pair_states.get(pair.original, {}).get("state", "NOT_STARTED"))

    def _collection(self, namespace: str) -> Any:
        database, _, collection = namespace.partition(".")
        return self.client[database][collection]

    def _owns_for_write(self, path: str) -> bool:
        if self.tag_field and (path == self.tag_field or path.startswith(self.tag_field + ".")):
            return False
        return path != "_id"

    def _tag(self) -> dict[str, Any] | None:
        if self.tag_field is None:
            return None
        self._token_counter += 1
        return {self.tag_field: f"{self.lease.holder}#{self._token_counter}"}

    def _is_ours(self, event: Mapping[str, Any]) -> bool:
        if self.tag_field is None:
            lsid = event.get("lsid")
            if not isinstance(lsid, Mapping):
                return False
            session = lsid.get("id")
            return session in self.own_sessions or session in self.writer_sessions
        description = event.get("updateDescription") or {}
        if self.tag_field in (description.get("updatedFields") or {}):
            return True
        full = event.get("fullDocument") or {}
        return event.get("operationType") in ("insert", "replace") and self.tag_field in full

    def _dead_letter(
        self,
        pair: Pair,
        side: str,
        event: Mapping[str, Any],
        plan: EventPlan,
        refused: OperationFailure | None,
    ) -> dict[str, Any]:
        failure = plan.failure
        error = str(failure) if failure is not None else _refusal(refused)
        log.warning(
            "dead_letter",
            pair=pair.original,
            document_id=event["documentKey"]["_id"],
            side=side,
            error=error[:500],
        )
        return {
            "pair": pair.original,
            "side": side,
            "direction": direction_of(side).value,
            "document_id": event["documentKey"]["_id"],
            "event": _dead_letter_event(event),
            "error": error[:MAX_ERROR_CHARS],
            "code": _refusal_code(refused),
            "mapping": getattr(failure, "mapping", None),
            "field": getattr(failure, "field", None),
            "at": utcnow(),
            "retries": 0,
        }

    def _intent(
        self,
        pair: Pair,
        key: Any,
        record_id: Any,
        prior: Mapping[str, Any] | None,
        after: Mapping[str, Any] | None,
        tokens: Mapping[tuple[str, Any], str | None],
        *,
        echo: Mapping[str, Any] | None,
        deletes: Mapping[str, Any],
        folded: tuple[Timestamp, int | None] | None,
        at: Timestamp | None,
        at_counts: Mapping[Timestamp, int] | None,
    ) -> DeleteOne | ReplaceOne[Any] | None:
        """The write of a merge base record before the batch's target writes of its document
        (None when the batch writes neither side): `prior` (and the `echo` it was read with)
        with `after` pending (None: no merge base), the tag token of each side written and the
        sides deleted (`settle_record` reads them back). A record too large for both is
        dropped instead: the document then syncs without a merge base until its next whole
        write."""
        tags = {
            side: tokens[(namespace, key)]
            for side, namespace in (("o", pair.original), ("p", pair.partner))
            if (namespace, key) in tokens
        }
        if not tags:
            return None
        namespace = self.store.merge_base.full_name
        was: dict[str, Any] = (
            {"o": prior.get("o"), "p": prior.get("p"), "at": prior.get("at")}
            if prior
            else {"unknown": True}
        )
        was.update(_folded_notes(folded))
        pending_at = (after or {}).get("at", at)
        record = {
            "_id": record_id,
            **was,
            "pending": {
                "o": (after or {}).get("o"),
                "p": (after or {}).get("p"),
                "at": pending_at,
                # How many of the document's changes at `at` the batch applies: on a replay, a
                # later one of a client transaction sharing that time is new.
                "n": (at_counts or {}).get(pending_at, 0),
                "tags": tags,
                **({"echo": dict(deletes)} if deletes else {}),
            },
            **({"echo": dict(echo)} if echo else {}),
        }
        encoded = _EncodedRecord(bson.encode(record))
        if len(encoded.raw) > MAX_BASE_BYTES:
            return DeleteOne({"_id": record_id}, namespace=namespace)
        return ReplaceOne({"_id": record_id}, encoded, upsert=True, namespace=namespace)

    async def _server_time(self) -> Timestamp | None:
        """The server's cluster time now (a round trip on the worker's session)."""
        assert self.session is not None
        await self.client.admin.command("ping", session=self.session)
        return self.session.operation_time

    def _checkpoint_write(
        self, checkpoint: tuple[Mapping[str, Any], Timestamp | None]
    ) -> tuple[UpdateOne, Callable[[int], None]]:
        """The checkpoint's write, fenced by the lease, and the check of its matched count."""
        token, cluster_time = checkpoint
        fence = self.lease.fence
        namespace = self.store.checkpoints.full_name
        write = UpdateOne(
            {"_id": self.store.stream, "fence": fence},
            {
                "$set": {
                    "resume_token": dict(token),
                    "cluster_time": cluster_time,
                    "sessions": self.own_sessions,
                    "updated_at": utcnow(),
                }
            },
            namespace=namespace,
        )

        def check(matched: int) -> None:
            if matched != 1:
                raise LeaseLost(
                    f"the checkpoint is fenced by a newer lease holder (our fence {fence});"
                    " another worker took over"
                )

        return write, check

    def _queue_checkpoint(
        self, writes: BatchWrites, checkpoint: tuple[Mapping[str, Any], Timestamp | None]
    ) -> None:
        write, check = self._checkpoint_write(checkpoint)
        writes.add(self.store.checkpoints.full_name, [write], check=check)

    async def _save_checkpoint(
        self,
        checkpoint: tuple[Mapping[str, Any], Timestamp | None],
        session: AsyncClientSession | None,
    ) -> None:
        write, check = self._checkpoint_write(checkpoint)
        result = await self.store.checkpoints.bulk_write([write], session=session)
        check(result.matched_count)

    def _record_metrics(
        self,
        events: Sequence[Mapping[str, Any]],
        result: BatchResult,
        tallies: Mapping[str, _PairTally],
        seconds: float,
    ) -> None:
        metrics = self.metrics
        metrics.batch_size.observe(len(events))
        metrics.apply_seconds.observe(seconds)
        # Counted per (namespace, kind) first: a labelled counter costs a lookup per call.
        kinds: collections.Counter[tuple[Any, Any, str]] = collections.Counter()
        for event in events:
            ns = event.get("ns") or {}
            kinds[(ns.get("db"), ns.get("coll"), event.get("operationType", ""))] += 1
        for (db, coll, op), count in kinds.items():
            for pair, side in self.registry.by_namespace(f"{db}.{coll}"):
                metrics.events.labels(pair=pair.original, side=side, op=op).inc(count)
        for original, tally in tallies.items():
            metrics.applied.labels(pair=original, direction="forward").inc(tally.applied_forward)
            metrics.applied.labels(pair=original, direction="backward").inc(tally.applied_backward)
            metrics.echoes_skipped.labels(pair=original).inc(tally.echoes_skipped)
            metrics.conflicts.labels(pair=original).inc(tally.conflicts)
            metrics.dead_letters.labels(pair=original).inc(tally.dead_letters)
            if tally.lag_seconds is not None:
                metrics.lag_seconds.labels(pair=original).set(tally.lag_seconds)
        if result.applied or result.dead_letters or result.conflicts:
            log.debug(
                "batch_applied",
                events=result.events,
                applied=result.applied,
                echoes=result.echoes,
                conflicts=result.conflicts,
                dead_letters=result.dead_letters,
                seconds=round(seconds, 4),
                phases={phase: round(spent, 4) for phase, spent in result.phases.items()},
            )


class _EncodedRecord(RawBSONDocument):
    """A merge-base record as sent. It is never empty, and PyMongo's replacement check tests its
    truth, which for a RawBSONDocument decodes the whole record to count its fields."""

    def __bool__(self) -> bool:
        return True


async def _enumerated(items: AsyncIterator[Any]) -> AsyncIterator[tuple[int, Any]]:
    """`enumerate` for an async iterator."""
    position = 0
    async for item in items:
        yield position, item
        position += 1


def _virtual_event(
    namespace: str,
    document_id: Any,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    cause: Mapping[str, Any],
) -> dict[str, Any]:
    """The change event a worker write in a chain is for the collection's other pair."""
    database, _, collection = namespace.partition(".")
    event: dict[str, Any] = {
        "_id": cause["_id"],
        "ns": {"db": database, "coll": collection},
        "documentKey": {"_id": document_id},
        "clusterTime": cause.get("clusterTime"),
        "wallTime": cause.get("wallTime"),
        VIRTUAL: True,
    }
    if after is None:
        event["operationType"] = "delete"
    elif before is None:
        event["operationType"] = "insert"
        event["fullDocument"] = dict(after)
    else:
        patch = diff_documents(before, after)
        event["operationType"] = "update"
        event["updateDescription"] = {
            "updatedFields": dict(patch.set),
            "removedFields": list(patch.unset),
            "truncatedArrays": [],
        }
        dotted = [name for name in named_fields(patch, before, after) if "." in name]
        if dotted:
            # Such a path names one field: said as MongoDB 6.1 says it, so that the other pair
            # places it on its merge base by name, not as nested fields.
            event["updateDescription"]["disambiguatedPaths"] = {name: [name] for name in dotted}
    return event


def _echo_index(marks: Sequence[Mapping[str, Any]], stamp: Timestamp | None) -> int | None:
    """Which of a record's `echo` marks (one side's) a delete at `stamp` is the event of: the
    first whose delete came after the batch that made it and no later than that batch's
    writes' reply. None: a client's delete."""
    if stamp is None:
        return None
    for index, mark in enumerate(marks):
        after, until = mark.get("after"), mark.get("until")
        if (after is None or stamp > after) and (until is None or stamp <= until):
            return index
    return None


def _folded_in(
    folded: dict[tuple[str, Any], tuple[Timestamp, int | None]],
    record_key: tuple[str, Any],
    stamp: Timestamp | None,
    event: Mapping[str, Any],
) -> bool:
    """Whether a change is one a batch cut short applied already (`folded`): older than the
    last change it applied to the document, or one of the as many changes at that very
    cluster time as it applied (each counted off here, in the stream's order)."""
    done = folded.get(record_key)
    if done is None or stamp is None or event.get(VIRTUAL):
        return False
    until, left = done
    if stamp < until:
        return True
    if stamp > until or left == 0:
        return False
    if left is not None:
        folded[record_key] = (until, left - 1)
    return True


def _folded_done(
    folded: tuple[Timestamp, int | None], first: Timestamp | None, last: Timestamp | None
) -> bool:
    """Whether no change a batch cut short folded in (`folded`: up to and at `until`, how many
    at it are left) can come again after a batch from `first` to `last`: that batch began after
    `until`, or got past it, or reached it and counted off every change at it. A batch that
    ends before `until` (the first part of a split) leaves the older changes to a later part;
    its count at `until` may be none from the start (that time a change another pair brought
    along a chain)."""
    until, left = folded
    if first is not None and until < first:
        return True
    if last is None:
        return False
    return last > until or (last == until and left == 0)


def _folded_notes(folded: tuple[Timestamp, int | None] | None) -> dict[str, Any]:
    """A merge base record's fields for `folded` (see `settle_record`)."""
    if folded is None:
        return {}
    until, left = folded
    return {"folded": until} if left is None else {"folded": until, "folded_left": left}


def _expired(mark: Mapping[str, Any], first: Timestamp | None) -> bool:
    """Whether a record's `echo` mark is past: its delete's event, if any, came before
    `first` (the stream is in cluster time order)."""
    until = mark.get("until")
    return until is not None and first is not None and until < first


def _ahead(
    pair_original: str,
    target_ns: str,
    key: Any,
    position: int,
    later_by_doc: Mapping[
        tuple[str, Any], Sequence[tuple[int, frozenset[str], frozenset[str] | None]]
    ],
    peeked: Mapping[tuple[str, Any], frozenset[str]],
) -> frozenset[str]:
    """Paths of the target document that newer writes (later in the batch, or peeked) change."""
    paths: set[str] = set(peeked.get((target_ns, key), frozenset()))
    for other_position, changed, echo_of in later_by_doc.get((target_ns, key), ()):
        if other_position > position and (echo_of is None or pair_original not in echo_of):
            paths.update(changed)
    return frozenset(paths)


def _chain_from(registry: Registry, namespace: str) -> list[str]:
    """`namespace` and every collection a write to it reaches along the chain."""
    reached = [namespace]
    for current in reached:
        for pair, _ in registry.by_namespace(current):
            for other in (pair.original, pair.partner):
                if other not in reached:
                    reached.append(other)
    return reached


def _routing(pair_states: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[Any, Any, Any]]:
    """What routing and echo finding read of each pair's record: its state, its start point
    and its one-shot commands' sessions (a part planned before one was known took its writes
    for a client's)."""
    return {
        original: (doc.get("state"), doc.get("start_at"), doc.get("writer_sessions"))
        for original, doc in pair_states.items()
    }


def _end_of(events: Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any], Timestamp | None]:
    """The checkpoint past the last of `events`: its resume token and cluster time."""
    last = events[-1]
    return last["_id"], last.get("clusterTime")


def _add_results(total: BatchResult, result: BatchResult) -> None:
    for name in ("events", "applied", "echoes", "conflicts", "dead_letters", "held", "writes"):
        setattr(total, name, getattr(total, name) + getattr(result, name))
    for phase, spent in result.phases.items():
        total.phases[phase] = total.phases.get(phase, 0.0) + spent


def _written_paths(write: TargetWrite) -> frozenset[str]:
    """The paths a target write sets or unsets; "" when it writes the whole document."""
    if write.kind != "update" or write.patch is None:
        return frozenset({""})
    return frozenset(write.patch.set) | frozenset(write.patch.unset)


def _overwritten(
    written: Mapping[tuple[str, Any], frozenset[str]],
    newer: Mapping[tuple[str, Any], frozenset[str]],
) -> list[tuple[str, Any]]:
    """The written documents on which a newer client write changed a path the write touched."""
    hit: list[tuple[str, Any]] = []
    for document, changed in newer.items():
        paths = written.get(document)
        if paths is None:
            continue
        if "" in paths or "" in changed or any(overlaps(path, changed) for path in paths):
            hit.append(document)
    return hit


def _tally_update(tally: _PairTally) -> dict[str, Any]:
    update: dict[str, Any] = {
        "$inc": {
            "counters.applied_forward": tally.applied_forward,
            "counters.applied_backward": tally.applied_backward,
            "counters.echoes_skipped": tally.echoes_skipped,
            "counters.conflicts": tally.conflicts,
            "counters.dead_letters": tally.dead_letters,
        }
    }
    fields: dict[str, Any] = {}
    if tally.lag_seconds is not None:
        fields["lag_seconds"] = tally.lag_seconds
    if fields:
        update["$set"] = fields
    if tally.last_client_write:
        update["$max"] = {
            f"last_client_write.{side}": when for side, when in tally.last_client_write.items()
        }
    return update


def _document_id(final: Mapping[str, Any] | None, before: Mapping[str, Any] | None) -> Any:
    source = final if final is not None else before
    assert source is not None
    return source["_id"]


def _refusal(refused: OperationFailure | None) -> str:
    """The server's reason for refusing a write, without the (possibly huge) documents."""
    if refused is None:
        return "target refused the write"
    details = refused.details or {}
    write_errors = details.get("writeErrors") or []
    if write_errors:
        first = write_errors[0]
        return f"target refused the write: {first.get('errmsg', '')} (code {first.get('code')})"
    return f"target refused the write: {str(refused)[:MAX_ERROR_CHARS]}"


def _refusal_code(refused: OperationFailure | None) -> int | None:
    if refused is None:
        return None
    write_errors = (refused.details or {}).get("writeErrors") or []
    return write_errors[0].get("code") if write_errors else refused.code


def _dead_letter_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """The event as a dead letter keeps it; whole documents are dropped when very large
    (`dlq retry` reads the current documents anyway)."""
    stored = dict(event)
    if _bson_size(stored) > MAX_DEAD_LETTER_EVENT_BYTES:
        for name in ("fullDocument", "fullDocumentBeforeChange"):
            if name in stored:
                stored[name] = None
                stored["truncated"] = True
    return stored


def _bson_size(document: Mapping[str, Any]) -> int:
    # The C encoder measures a merge-base record several times faster than any estimate
    # walked in Python, so every record is measured exactly.
    return len(bson.encode(document))


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)
