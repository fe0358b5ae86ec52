"""Fill a pair's target collection from its source while clients keep writing both.

The hand-off with the stream (DESIGN.md "Backfill hand-off"): the cluster time T0 is read first
and recorded as the pair's `start_at`, so the running (or next) worker applies every change from
T0 on; the scan then copies, in `_id` order and one transaction a batch, only documents the
worker has never seen (no merge base, no target document), recording a merge base for each. A
document with a merge base belongs to the stream; a target document without one is a version a
client wrote, never overwritten (`verify --repair` settles it). Progress is stored with each
batch, so a killed backfill resumes where it stopped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
from bson import Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.binary import Binary
from bson.decimal128 import Decimal128
from pymongo import DeleteOne, ReplaceOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import PyMongoError

from transforms import Pair, Side, TransformFailed, diff_documents
from worker.engine import (
    TargetWrite,
    cluster_time,
    direction_of,
    plan_target_write,
    write_operation,
)
from worker.errors import ResyncRequired, StateRefused
from worker.lifecycle import Workspace, introduce_session, run_transaction
from worker.state import id_key, merge_base_id, settled_base, utcnow

__all__ = [
    "BackfillOptions",
    "BackfillProgress",
    "Settled",
    "WouldDeadLetter",
    "after_id",
    "bson_sort_key",
    "read_cluster_time",
    "dead_letter_record",
    "last_writer",
    "run_backfill",
    "same_document",
    "settle",
    "write_settled",
]

_OTHER: dict[str, Side] = {"original": "partner", "partner": "original"}

# States in which a backfill may write; any other state seen mid-run stops it (exit 3).
_WRITABLE = ("BACKFILLING", "RUNNING", "PAUSED")


def _stripped(document: Mapping[str, Any], ignored: str | None) -> Mapping[str, Any]:
    if ignored is None or ignored not in document:
        return document
    return {k: v for k, v in document.items() if k != ignored}


def same_document(
    a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, ignored: str | None = None
) -> bool:
    """True when both are absent, or both present with the same fields and BSON values."""
    if a is None or b is None:
        return a is None and b is None
    return diff_documents(_stripped(a, ignored), _stripped(b, ignored)).is_empty()


def last_writer(
    original: Mapping[str, Any] | None,
    partner: Mapping[str, Any] | None,
    base: Mapping[str, Any] | None,
    *,
    tie: Side = "original",
    ignored: str | None = None,
) -> Side:
    """The side that wrote a drifted document last, judged from its merge base.

    The side whose current document differs from its merge base changed after the worker last
    synced it. With no merge base, a document present on one side only was written there (the
    other side never had it). Both changed, or nothing to tell by: `tie`.
    """
    if base is None:
        if original is None and partner is not None:
            return "partner"
        if partner is None and original is not None:
            return "original"
        return tie
    original_changed = not same_document(original, base.get("o"), ignored)
    partner_changed = not same_document(partner, base.get("p"), ignored)
    if original_changed != partner_changed:
        return "original" if original_changed else "partner"
    return tie


def dead_letter_record(
    pair: Pair, source: Side, failure: WouldDeadLetter, operation: str
) -> dict[str, Any]:
    """A dead letter for a document the transforms could not convert (state.py layout)."""
    return {
        "pair": pair.original,
        "side": source,
        "direction": direction_of(source).value,
        "document_id": failure.document_id,
        "event": {"operationType": operation, "documentKey": {"_id": failure.document_id}},
        "error": failure.error,
        "mapping": failure.mapping,
        "field": failure.field,
        "at": utcnow(),
        "retries": 0,
    }


@dataclass
class Settled:
    """One logical document brought in step: the writes to send and its new merge base."""

    document_id: Any
    writes: list[tuple[Side, TargetWrite]]
    original: dict[str, Any] | None
    partner: dict[str, Any] | None
    # No merge base existed when the transaction read it: the record can be inserted.
    new_base: bool = False


def settle(
    pair: Pair,
    winner: Side,
    document_id: Any,
    original: Mapping[str, Any] | None,
    partner: Mapping[str, Any] | None,
) -> Settled:
    """Convert the winner's document to the other side and plan the smallest write there.

    Pure: raises TransformFailed when the winner's document cannot be converted. Only paths the
    direction owns are written, and a write equal to the current value is never planned.
    """
    direction = direction_of(winner)
    source = original if winner == "original" else partner
    target = partner if winner == "original" else original
    desired = None if source is None else pair.convert(source, direction)
    write = plan_target_write(
        target,
        desired,
        lambda path: pair.owns(path, direction),
        document_id=document_id,
        pair=pair,
        direction=direction,
    )
    result = None if target is None else dict(target)
    if write is not None:
        result = write.result(target)
    source_doc = None if source is None else dict(source)
    if winner == "original":
        new_original, new_partner = source_doc, result
    else:
        new_original, new_partner = result, source_doc
    writes: list[tuple[Side, TargetWrite]] = [] if write is None else [(_OTHER[winner], write)]
    return Settled(document_id, writes, new_original, new_partner)


def merge_base_record(pair: Pair, settled: Settled, at: Timestamp | None) -> dict[str, Any]:
    """The merge base document recording both sides as just settled."""
    return {
        "_id": merge_base_id(pair.original, settled.document_id),
        "o": settled.original,
        "p": settled.partner,
        "at": at,
    }


async def read_cluster_time(workspace: Workspace) -> Timestamp:
    """The server's current cluster time (T0): every later write commits after it."""
    try:
        return await cluster_time(workspace.client)
    except RuntimeError as exc:
        raise StateRefused(
            f"{exc}; partner-sync needs a replica set or a sharded cluster (change streams and"
            " the backfill hand-off depend on it)"
        ) from exc


# BSON comparison order of types (MongoDB "Comparison/Sort Order"), for `_id` resumption.
_TYPE_ORDER: tuple[tuple[type, ...], ...] = (
    (MinKey,),
    (type(None),),
    (int, Int64, float, Decimal128),
    (str,),
    (dict,),
    (list,),
    (bytes, Binary),
    (ObjectId,),
    (bool,),
    (dt.datetime,),
    (Timestamp,),
    (Regex,),
    (MaxKey,),
)
# `$type` aliases of each rank, for the types a document `_id` takes in practice (an `_id` cannot
# be an array or a regex; MinKey, MaxKey, null and Timestamp ids are left out, some servers do not
# implement those aliases).
_ID_TYPE_ALIASES: dict[int, str] = {
    2: "number",
    3: "string",
    4: "object",
    6: "binData",
    7: "objectId",
    8: "bool",
    9: "date",
}


def type_rank(value: Any) -> int:
    """The position of a value's BSON type in MongoDB's comparison order."""
    if isinstance(value, bool):
        return 8
    for rank, types in enumerate(_TYPE_ORDER):
        if isinstance(value, types):
            return rank
    return len(_TYPE_ORDER)


def bson_sort_key(value: Any) -> tuple[Any, ...]:
    """A Python sort key that orders values as MongoDB sorts them (simple collation)."""
    rank = type_rank(value)
    inner: Any
    if isinstance(value, Decimal128):
        inner = value.to_decimal()
    elif isinstance(value, dict):
        inner = tuple((key, bson_sort_key(item)) for key, item in value.items())
    elif isinstance(value, list):
        inner = tuple(bson_sort_key(item) for item in value)
    elif isinstance(value, bytes | Binary):
        inner = (len(value), getattr(value, "subtype", 0), bytes(value))
    elif isinstance(value, ObjectId):
        inner = value.binary
    elif isinstance(value, Timestamp):
        inner = (value.time, value.inc)
    elif isinstance(value, Regex):
        inner = (value.pattern, str(value.flags))
    elif isinstance(value, MinKey | MaxKey) or value is None:
        inner = 0
    else:
        inner = value
    return (rank, inner)


def after_id(last_id: Any) -> list[dict[str, Any]]:
    """Filters for every `_id` after `last_id` in BSON order, to be read one after the other.

    `$gt` only matches values of the same type bracket, so the ids of the types sorting later
    come from a second filter by `$type`; a scan reads it only once the first runs dry, which
    keeps the usual single-type scan on the plain, index-friendly range.
    """
    rank = type_rank(last_id)
    later = [alias for later_rank, alias in _ID_TYPE_ALIASES.items() if later_rank > rank]
    filters: list[dict[str, Any]] = [{"_id": {"$gt": last_id}}]
    if later:
        # One clause per type: some servers (the development server) refuse a `$type` list.
        filters.append({"$or": [{"_id": {"$type": alias}} for alias in later]})
    return filters


@dataclass(frozen=True)
class BackfillOptions:
    """What the operator asked of one backfill run."""

    source: Side = "original"
    batch_size: int = 500
    max_rate: float | None = None
    dry_run: bool = False
    restart: bool = False


@dataclass
class BackfillProgress:
    """Counts of one pair's backfill so far; `done` on the last report."""

    pair: str
    source: Side
    total: int = 0
    scanned: int = 0
    written: int = 0
    adopted: int = 0
    kept: int = 0
    synced: int = 0
    reconciled: int = 0
    dead_letters: int = 0
    retries: int = 0
    batch_size: int = 0
    elapsed_s: float = 0.0
    resumed_from: int = 0
    done: bool = False
    dry_run: bool = False
    already_done: bool = False
    # Something the user must act on after the run (a worker that did not learn the session).
    warning: str = ""

    @property
    def rate(self) -> float:
        """Documents scanned per second in this run."""
        scanned = self.scanned - self.resumed_from
        return scanned / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "pair": self.pair,
            "direction": direction_of(self.source).value,
            "total": self.total,
            "scanned": self.scanned,
            "written": self.written,
            "adopted": self.adopted,
            "kept": self.kept,
            "synced": self.synced,
            "reconciled": self.reconciled,
            "dead_letters": self.dead_letters,
            "retries": self.retries,
            "elapsed_s": round(self.elapsed_s, 3),
            "rate": round(self.rate, 1),
            "done": self.done,
            "dry_run": self.dry_run,
            "already_done": self.already_done,
            **({"warning": self.warning} if self.warning else {}),
        }


@dataclass(frozen=True)
class WouldDeadLetter:
    """A document that fails to convert, reported by a dry run (or as it is dead-lettered)."""

    pair: str
    document_id: Any
    mapping: str
    field: str
    error: str

    @classmethod
    def from_error(cls, pair: Pair, document_id: Any, error: TransformFailed) -> WouldDeadLetter:
        """The failure a transform raised for one document."""
        return cls(pair.original, document_id, error.mapping, error.field, str(error))


@dataclass
class _Batch:
    """What one batch transaction decided, applied to the counters only once it committed."""

    last_id: Any = None
    count: int = 0
    written: int = 0
    adopted: int = 0
    kept: int = 0
    synced: int = 0
    reconciled: int = 0
    failures: list[WouldDeadLetter] = field(default_factory=list)


class _Throttle:
    """Keeps the scan under `max_rate` and halves the batch when the server shows pressure.

    Pressure is a transient error or conflict, or a batch much slower per document than the
    running average; the batch size then grows back by a tenth per calm batch.
    """

    def __init__(self, batch_size: int, max_rate: float | None) -> None:
        self.limit = max(1, batch_size)
        self.size = self.limit
        self.max_rate = max_rate
        self.started = anyio.current_time()
        self.docs = 0
        self.per_doc: float | None = None
        self.pressured = False

    def transient(self, _exc: PyMongoError) -> None:
        self.pressured = True

    async def after_batch(self, docs: int, seconds: float) -> None:
        self.docs += docs
        per_doc = seconds / max(1, docs)
        slow = self.per_doc is not None and per_doc > 4 * self.per_doc and seconds > 0.25
        if self.pressured or slow:
            self.size = max(10, self.size // 2)
            await anyio.sleep(min(2.0, seconds))
        else:
            self.size = min(self.limit, self.size + max(1, self.limit // 10))
        self.pressured = False
        self.per_doc = per_doc if self.per_doc is None else 0.8 * self.per_doc + 0.2 * per_doc
        if self.max_rate:
            ahead = self.docs / self.max_rate - (anyio.current_time() - self.started)
            if ahead > 0:
                await anyio.sleep(ahead)


def _check_state(doc: Mapping[str, Any], options: BackfillOptions) -> None:
    state = doc["state"]
    name = doc["_id"]
    if state == "RESYNC_REQUIRED" and not options.restart:
        raise ResyncRequired(
            f"pair {name} lost its change history ({doc.get('resync_reason') or 'resync'});"
            f" run `partner-sync backfill --restart --pair {name}` to reconcile it"
        )
    if state == "COMPLETED":
        raise StateRefused(f"pair {name} is COMPLETED; there is nothing to backfill")
    if state == "ROLLED_BACK" and not options.restart:
        raise StateRefused(
            f"pair {name} was rolled back; `partner-sync backfill --restart --pair {name}`"
            " starts its migration over"
        )


async def _begin(
    workspace: Workspace, pair: Pair, doc: Mapping[str, Any], options: BackfillOptions
) -> tuple[dict[str, Any], bool]:
    """Record a new backfill (T0, state) or pick up the unfinished one; (record, resumed)."""
    record = dict(doc.get("backfill") or {})
    direction = direction_of(options.source).value
    resumable = record.get("t0") is not None and not record.get("done")
    if resumable and not options.restart:
        if record.get("direction", "forward") != direction:
            raise StateRefused(
                f"pair {pair.original}: a {record.get('direction')} backfill is unfinished;"
                " run it to the end, or start over with --restart"
            )
        return record, True
    t0 = await read_cluster_time(workspace)
    record = {
        "done": False,
        "t0": t0,
        "docs": 0,
        "last_id": None,
        "has_last_id": False,
        "direction": direction,
        "written": 0,
        "adopted": 0,
        "kept": 0,
        "synced": 0,
        "reconciled": 0,
        "dead_letters": 0,
        "restart": options.restart,
        "started_at": utcnow(),
        "finished_at": None,
    }
    state = doc["state"]
    fields: dict[str, Any] = {"backfill": record, "resync_reason": None}
    keeps_streaming = state == "RUNNING" or (
        state == "PAUSED" and doc.get("paused_from") == "RUNNING"
    )
    if keeps_streaming:
        # The worker already applies this pair's changes from an earlier point; moving
        # start_at forward would only matter to a worker that has no checkpoint yet.
        if doc.get("start_at") is None:
            fields["start_at"] = t0
        updated = await workspace.store.set_state(pair.original, state, expect=[state], **fields)
    elif state == "PAUSED":
        updated = await workspace.store.set_state(
            pair.original,
            "PAUSED",
            expect=[state],
            start_at=t0,
            paused_from="BACKFILLING",
            **fields,
        )
    else:
        updated = await workspace.store.set_state(
            pair.original, "BACKFILLING", expect=[state], start_at=t0, **fields
        )
    if not updated:
        raise StateRefused(f"pair {pair.original} changed state while the backfill started")
    return record, False


async def _finish(workspace: Workspace, pair: Pair) -> None:
    store = workspace.store
    now = utcnow()
    await store.pairs.update_one(
        {"_id": pair.original},
        {"$set": {"backfill.done": True, "backfill.finished_at": now, "updated_at": now}},
    )
    if not await store.set_state(pair.original, "RUNNING", expect=["BACKFILLING"]):
        await store.pairs.update_one(
            {"_id": pair.original, "state": "PAUSED", "paused_from": "BACKFILLING"},
            {"$set": {"paused_from": "RUNNING"}},
        )


def _plan_batch(
    workspace: Workspace,
    pair: Pair,
    options: BackfillOptions,
    sources: list[dict[str, Any]],
    targets: Mapping[Any, dict[str, Any]],
    bases: Mapping[Any, dict[str, Any]],
    batch: _Batch,
) -> list[Settled]:
    """Decide, per source document, what the batch writes (pure apart from the counters)."""
    source: Side = options.source
    settled: list[Settled] = []
    for document in sources:
        document_id = document["_id"]
        key = id_key(document_id)
        target = targets.get(key)
        original, partner = (document, target) if source == "original" else (target, document)
        # A record a worker without transactions left pending reads as what it settles to.
        stored = bases.get(key)
        base = settled_base(stored, original, partner, workspace.ignored_field)
        try:
            if base is not None:
                if not options.restart:
                    batch.synced += 1
                    continue
                winner = last_writer(
                    original, partner, base, tie=source, ignored=workspace.ignored_field
                )
                outcome = settle(pair, winner, document_id, original, partner)
                unchanged = (
                    not outcome.writes
                    and same_document(outcome.original, base.get("o"))
                    and same_document(outcome.partner, base.get("p"))
                )
                if unchanged:
                    batch.synced += 1
                    continue
                batch.reconciled += 1
            else:
                outcome = settle(pair, source, document_id, original, partner)
                outcome.new_base = stored is None  # (else replaced, not inserted)
                if target is None:
                    batch.written += 1
                elif not outcome.writes:
                    batch.adopted += 1  # already equal through the transforms: adopt it
                else:
                    batch.kept += 1  # a client's version the worker never saw: keep it
                    continue
        except TransformFailed as exc:
            batch.failures.append(WouldDeadLetter.from_error(pair, document_id, exc))
            continue
        settled.append(outcome)
    return settled


async def _run_batch(
    workspace: Workspace,
    pair: Pair,
    options: BackfillOptions,
    sources: list[dict[str, Any]],
    session: AsyncClientSession | None,
) -> _Batch:
    """Decide and (unless a dry run) write one batch of source documents, with its progress.

    The source documents come from the scan's cursor, read just before; a change made to one
    since is after T0, so the worker applies it on top of the merge base written here.
    """
    store = workspace.store
    target_ns = pair.partner if options.source == "original" else pair.original
    batch = _Batch()
    if not sources:
        return batch
    batch.count = len(sources)
    batch.last_id = sources[-1]["_id"]
    ids = [doc["_id"] for doc in sources]
    target_cursor = workspace.collection(target_ns).find({"_id": {"$in": ids}}, session=session)
    targets = {id_key(doc["_id"]): doc async for doc in target_cursor}
    bases = await store.load_bases(pair.original, ids, session=session)
    settled = _plan_batch(workspace, pair, options, sources, targets, bases, batch)
    if options.dry_run:
        return batch
    await write_settled(workspace, pair, settled, session)
    dead = await _new_dead_letters(workspace, pair, options.source, batch.failures, session)
    progress: dict[str, Any] = {
        "backfill.docs": batch.count,
        "backfill.written": batch.written,
        "backfill.adopted": batch.adopted,
        "backfill.kept": batch.kept,
        "backfill.synced": batch.synced,
        "backfill.reconciled": batch.reconciled,
        "backfill.dead_letters": len(batch.failures),
        "counters.dead_letters": dead,
    }
    result = await store.pairs.update_one(
        {"_id": pair.original, "state": {"$in": list(_WRITABLE)}},
        {
            "$set": {"backfill.last_id": batch.last_id, "backfill.has_last_id": True},
            "$inc": progress,
        },
        session=session,
    )
    if result.matched_count != 1:
        raise StateRefused(
            f"pair {pair.original} left the backfilling states (completed, rolled back or"
            " resync required) while the backfill ran; stopped"
        )
    return batch


async def write_settled(
    workspace: Workspace,
    pair: Pair,
    settled: Sequence[Settled],
    session: AsyncClientSession | None,
    at: Timestamp | None = None,
) -> None:
    """Send the planned writes of settled documents and record their merge bases, in bulk.

    Inside a transaction a document found absent stays absent for it (a concurrent insert is a
    write conflict, and the batch is retried), so creations are sent as plain inserts, which
    cost a server about half an upsert.
    """
    if not settled:
        return
    tag = workspace.tag
    plain_inserts = session is not None
    for side in ("original", "partner"):
        inserts: list[dict[str, Any]] = []
        others: list[Any] = []
        for outcome in settled:
            for write_side, write in outcome.writes:
                if write_side != side:
                    continue
                if plain_inserts and write.kind == "insert":
                    inserts.append(
                        {**(write.document or {}), "_id": write.document_id, **(tag or {})}
                    )
                else:
                    others.append(write_operation(write, tag=tag))
        collection = workspace.collection(pair.original if side == "original" else pair.partner)
        if inserts:
            await collection.insert_many(inserts, ordered=True, session=session)
        if others:
            await collection.bulk_write(others, ordered=True, session=session)
    if at is None and session is not None:
        at = session.operation_time
    new_bases: list[dict[str, Any]] = []
    records: list[ReplaceOne[Any] | DeleteOne] = []
    for outcome in settled:
        base = merge_base_record(pair, outcome, at)
        if base["o"] is None and base["p"] is None:  # gone on both sides: nothing to remember
            if not outcome.new_base:
                records.append(DeleteOne({"_id": base["_id"]}))
        elif plain_inserts and outcome.new_base:
            new_bases.append(base)
        else:
            records.append(ReplaceOne({"_id": base["_id"]}, base, upsert=True))
    if new_bases:
        await workspace.store.merge_base.insert_many(new_bases, ordered=True, session=session)
    if records:
        await workspace.store.merge_base.bulk_write(records, ordered=True, session=session)


async def _new_dead_letters(
    workspace: Workspace,
    pair: Pair,
    source: Side,
    failures: list[WouldDeadLetter],
    session: AsyncClientSession | None,
) -> int:
    """Dead-letter the failures not already waiting (a restarted scan meets them again)."""
    if not failures:
        return 0
    waiting = {
        id_key(doc["document_id"])
        async for doc in workspace.store.dead_letters.find(
            {
                "pair": pair.original,
                "direction": direction_of(source).value,
                "document_id": {"$in": [failure.document_id for failure in failures]},
            },
            {"document_id": 1},
            session=session,
        )
    }
    records = []
    for failure in failures:
        if id_key(failure.document_id) in waiting:
            continue
        records.append(dead_letter_record(pair, source, failure, "backfill"))
    if records:
        await workspace.store.dead_letters.insert_many(records, session=session)
    return len(records)


async def run_backfill(
    workspace: Workspace,
    pair: Pair,
    options: BackfillOptions,
    *,
    on_progress: Callable[[BackfillProgress], None] = lambda progress: None,
    on_failure: Callable[[WouldDeadLetter], None] = lambda failure: None,
) -> BackfillProgress:
    """Backfill one pair to the end (or resume it), reporting after every batch.

    Memory holds one batch at a time. Raises StateRefused when the pair's state forbids it.
    """
    store = workspace.store
    doc = await store.pair_doc(pair.original)
    assert doc is not None, "open_workspace registers every loaded pair"
    _check_state(doc, options)
    source_ns = pair.original if options.source == "original" else pair.partner
    progress = BackfillProgress(pair.original, options.source, dry_run=options.dry_run)
    progress.total = await workspace.collection(source_ns).estimated_document_count()
    record = dict(doc.get("backfill") or {})
    if record.get("done") and not options.restart:
        progress.already_done = progress.done = True
        progress.scanned = progress.resumed_from = int(record.get("docs", 0))
        return progress
    after: tuple[bool, Any] = (False, None)
    if not options.dry_run:
        record, resumed = await _begin(workspace, pair, doc, options)
        if resumed:
            after = (bool(record.get("has_last_id")), record.get("last_id"))
            for name in ("written", "adopted", "kept", "synced", "reconciled", "dead_letters"):
                setattr(progress, name, int(record.get(name, 0)))
            progress.scanned = progress.resumed_from = int(record.get("docs", 0))
    async with workspace.client.start_session() as session:
        if not options.dry_run:
            progress.warning = await _claim_session(workspace, pair, record, session)
        await _scan(workspace, pair, options, after, progress, session, on_progress, on_failure)
    if not options.dry_run:
        await _finish(workspace, pair)
    progress.done = True
    on_progress(progress)
    return progress


async def _claim_session(
    workspace: Workspace, pair: Pair, record: Mapping[str, Any], session: AsyncClientSession
) -> str:
    """Record this run's session, first killing the one a killed run left behind, and wait
    until the worker holding the lease knows it (with session tags): "" once it does, else a
    sentence for the user.

    A process killed inside a batch leaves its transaction open on the server until the
    transaction lifetime runs out (a minute by default), and its locks make every write to
    those documents conflict meanwhile; killing its session aborts it at once.
    """
    previous = record.get("session")
    if previous:
        try:
            await workspace.client.admin.command("killSessions", [previous])
        except PyMongoError:
            pass  # gone already, or not ours to kill: the transaction lifetime ends it anyway
    # A running worker must know the session before the first write (`introduce_session`).
    return await introduce_session(
        workspace, pair, session, **{"backfill.session": session.session_id}
    )


async def _scan(
    workspace: Workspace,
    pair: Pair,
    options: BackfillOptions,
    after: tuple[bool, Any],
    progress: BackfillProgress,
    session: AsyncClientSession,
    on_progress: Callable[[BackfillProgress], None],
    on_failure: Callable[[WouldDeadLetter], None],
) -> None:
    """Read the source through one `_id`-ordered cursor, one transaction per batch taken."""
    throttle = _Throttle(options.batch_size, options.max_rate)
    started = anyio.current_time() - progress.elapsed_s
    source_ns = pair.original if options.source == "original" else pair.partner
    has_last, last_id = after
    for query in after_id(last_id) if has_last else [{}]:
        cursor = workspace.collection(source_ns).find(
            query, sort=[("_id", 1)], batch_size=options.batch_size
        )
        try:
            while True:
                sources = await cursor.to_list(throttle.size)
                if not sources:
                    break
                progress.batch_size = len(sources)
                batch_started = anyio.current_time()
                batch = await run_transaction(
                    workspace,
                    partial(_run_batch, workspace, pair, options, sources),
                    on_retry=throttle.transient,
                    session=session,
                )
                if throttle.pressured:
                    progress.retries += 1
                progress.scanned += batch.count
                progress.written += batch.written
                progress.adopted += batch.adopted
                progress.kept += batch.kept
                progress.synced += batch.synced
                progress.reconciled += batch.reconciled
                progress.dead_letters += len(batch.failures)
                for failure in batch.failures:
                    on_failure(failure)
                progress.elapsed_s = anyio.current_time() - started
                on_progress(progress)
                await throttle.after_batch(batch.count, anyio.current_time() - batch_started)
        finally:
            await cursor.close()
    progress.elapsed_s = anyio.current_time() - started
