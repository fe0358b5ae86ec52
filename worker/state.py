"""The state database: pair records, checkpoint, merge base, lease, dead letters, held events.

Everything the worker must remember across restarts lives in one MongoDB database
(`state_db`), so that `status`, `pause` and the one-shot commands work from any machine and so
that the applier can write patches, merge base and checkpoint in one transaction.

Collections (documents sketched; `ns` is the pair's original namespace):

    pairs         {_id: ns, partner, state, transform_version, versions_seen, start_at,
                   backfill: {done, docs, direction, last_id, has_last_id, t0, written, adopted,
                              kept, synced, reconciled, dead_letters, restart, started_at,
                              finished_at, session},
                   writer_sessions (the session ids of the last backfills and repairs, newest
                   last: their writes are the worker's own, for this pair),
                   paused_from, completed_at, rolled_back_at,
                   state_serial (counts state changes), seen_serial, seen_by, seen_at (the
                   change the lease holder acts on: `acknowledge_state`),
                   counters: {applied_forward, applied_backward, echoes_skipped, conflicts,
                              dead_letters},
                   last_client_write: {original, partner}, lag_seconds, resync_reason, updated_at}
    checkpoints   {_id: stream key, resume_token, cluster_time, fence, sessions, updated_at}
    merge_base    {_id: {pair: ns, id: document _id}, o: original doc | None,
                   p: partner doc | None, at: Timestamp,
                   pending: {o, p, at, n, tags: {o | p: tag token | None}, echo},
                   unknown: bool, echo: {o | p: [{after: Timestamp, until: Timestamp}]},
                   folded: Timestamp, folded_left: int}
                   (`pending`, `unknown`, `echo`, `folded`, `folded_left`: without
                   transactions a batch writes its records before its target writes, and
                   remembers its deletes; see `settle_record`)
    leases        {_id: stream key, holder, fence, expires_at, since, sessions}
    dead_letters  {_id: ObjectId, pair, side, direction, document_id, event, error, code,
                   mapping, field, at, retries, last_retry_at}
    held_events   {_id: ObjectId, pair, event, paths, ours, at}: events of a paused pair,
                   replayed on resume (paths: what each changed; ours: the worker's own write)

The stream key names one change stream and its partition ("default" today); adding
partitions later means more keys, not a new layout.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import bson
from bson import Timestamp
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import CollectionInvalid, OperationFailure

from transforms import Pair, Registry
from worker.errors import StateRefused, VersionMismatch

__all__ = [
    "ACTIVE_STATES",
    "DEFAULT_STREAM",
    "STATES",
    "SettledRecord",
    "StateStore",
    "id_key",
    "merge_base_id",
    "settle_record",
    "same_apart_from",
    "settled_base",
    "state_taken_up",
    "utcnow",
]

STATES = (
    "NOT_STARTED",
    "BACKFILLING",
    "RUNNING",
    "PAUSED",
    "RESYNC_REQUIRED",
    "COMPLETED",
    "ROLLED_BACK",
)
# Pairs whose changes the worker applies. A BACKFILLING pair is streamed too, so that a backfill
# beside a running worker hands over without a gap.
ACTIVE_STATES = frozenset({"RUNNING", "BACKFILLING"})
DEFAULT_STREAM = "default"
# Sessions of past backfills and repairs a pair's record keeps: a worker that was down while
# several of them ran still meets their writes in its stream.
REMEMBERED_WRITER_SESSIONS = 8
# The server's code for "collection already exists".
NAMESPACE_EXISTS = 48

_ZERO_COUNTERS = {
    "applied_forward": 0,
    "applied_backward": 0,
    "echoes_skipped": 0,
    "conflicts": 0,
    "dead_letters": 0,
}


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


def merge_base_id(pair_ns: str, document_id: Any) -> dict[str, Any]:
    """The merge base `_id` of one logical document of a pair."""
    return {"pair": pair_ns, "id": document_id}


def settled_base(
    record: Mapping[str, Any] | None,
    original: Mapping[str, Any] | None,
    partner: Mapping[str, Any] | None,
    tag_field: str | None,
) -> dict[str, Any] | None:
    """The merge base a stored record stands for, given both sides' documents (None: no merge
    base). See `settle_record`."""
    return settle_record(record, original, partner, tag_field).base


# What a batch without transactions adds to a merge base record (`settle_record`).
_WORKER_NOTES = frozenset({"pending", "echo", "folded", "unknown"})


class SettledRecord(NamedTuple):
    """What a stored merge base record stands for (`settle_record`)."""

    base: dict[str, Any] | None
    echo: dict[str, list[dict[str, Any]]]
    # "stored" (nothing was pending), "written" (every pending write landed), "not written"
    # (none did) or "cut" (some did).
    outcome: str
    # The cluster time up to which the changes of the document are in the record already,
    # applied by a batch cut short whose writes all landed (`folded`): planned again, they
    # would be applied twice.
    folded: Timestamp | None = None
    # How many of the document's changes at exactly `folded` that batch applied (the changes
    # of a client transaction share one cluster time, and a batch can end between them); the
    # rest are new. None: every change at that time (a record of an older version).
    folded_left: int | None = None


def settle_record(
    record: Mapping[str, Any] | None,
    original: Mapping[str, Any] | None,
    partner: Mapping[str, Any] | None,
    tag_field: str | None,
) -> SettledRecord:
    """The merge base a stored record stands for (None: no merge base), and the worker's own
    deletes whose events may still come (`echo`: side -> [{after, until}], one per delete).

    Without transactions a batch writes its merge base records before its target writes, each
    as it was (`o`, `p`, `at`; `unknown` when there was none) with what the batch leaves beside
    it (`pending`, with the tag token of each side it writes, None for a delete, the deletes
    it makes, `echo`, and `n`, how many of the document's changes at its `at` it applied);
    its last write replaces them with what it leaves. A record
    still pending was left by a batch cut short (a killed worker, a stale read): when every
    side it wrote holds that write (its token, or the very document; absent for a delete), it
    is what the batch leaves; when none does, it is what it was before. A batch cut between
    the writes of a document's two sides leaves no merge base (the document then syncs by
    cluster time, as one never synced). A record known absent on both sides is kept only for
    its `echo` (a delete carries no tag field, so nothing else tells the worker's own from a
    client's) or its `folded`; it stands for no merge base. A pending delete that landed is
    returned with `until` None: the caller bounds it.
    """
    if record is None:
        return SettledRecord(None, {}, "stored")
    if not record.keys() & _WORKER_NOTES:
        # The common record (a batch with a transaction, or one seen through): as stored.
        plain = record.get("o") is not None or record.get("p") is not None
        return SettledRecord(dict(record) if plain else None, {}, "stored")
    stored_echo: Mapping[str, list[Mapping[str, Any]]] = record.get("echo") or {}
    echo = {side: [dict(mark) for mark in marks] for side, marks in stored_echo.items()}
    pending = record.get("pending")
    outcome = "stored"
    folded = record.get("folded")
    folded_left = record.get("folded_left")
    if pending is None:
        settled = {"o": record.get("o"), "p": record.get("p"), "at": record.get("at")}
    else:
        current = {"o": original, "p": partner}
        landed = {
            side: _holds(current[side], pending.get(side), token, tag_field)
            for side, token in (pending.get("tags") or {}).items()
        }
        for side, marks in (pending.get("echo") or {}).items():
            if landed.get(side):
                echo.setdefault(side, []).extend(dict(mark) for mark in marks)
        if landed and all(landed.values()):
            outcome = "written"
            settled = {"o": pending.get("o"), "p": pending.get("p"), "at": pending.get("at")}
            if pending.get("at") is not None:
                folded, folded_left = pending["at"], pending.get("n")
        elif not any(landed.values()):
            outcome = "not written"
            settled = {"o": record.get("o"), "p": record.get("p"), "at": record.get("at")}
        else:
            return SettledRecord(None, echo, "cut", folded, folded_left)
    if settled["o"] is None and settled["p"] is None:
        # Known absent on both sides: no merge base.
        return SettledRecord(None, echo, outcome, folded, folded_left)
    return SettledRecord({"_id": record["_id"], **settled}, echo, outcome, folded, folded_left)


def _holds(
    document: Mapping[str, Any] | None,
    written: Mapping[str, Any] | None,
    token: str | None,
    tag_field: str | None,
) -> bool:
    """Whether `document` holds a worker write that left `written` with `token` (`written`
    None with a token: a write of a document the batch left without a merge base)."""
    if tag_field and token is not None and document is not None:
        if document.get(tag_field) == token:
            return True
    if written is None or document is None:
        return written is None and document is None
    return same_apart_from(document, written, tag_field)


def same_apart_from(
    left: Mapping[str, Any] | None, right: Mapping[str, Any] | None, field: str | None
) -> bool:
    """Whether two documents (None: absent) are equal with top-level `field` left aside: the
    same BSON (NaN equals NaN, as MongoDB compares it), or equal as Python compares them
    (fields in another order)."""
    if left is None or right is None:
        return left is None and right is None
    if field:
        left = {k: v for k, v in left.items() if k != field}
        right = {k: v for k, v in right.items() if k != field}
    return bson.encode(left) == bson.encode(right) or left == right


class StateStore:
    """Typed access to the state database; every method takes an optional session."""

    def __init__(self, database: AsyncDatabase[dict[str, Any]], *, stream: str = DEFAULT_STREAM):
        self.database = database
        self.stream = stream
        self.pairs = database["pairs"]
        self.checkpoints = database["checkpoints"]
        self.merge_base = database["merge_base"]
        self.leases = database["leases"]
        self.dead_letters = database["dead_letters"]
        self.held_events = database["held_events"]

    async def ensure_collections(self) -> None:
        """Create the collections and indexes up front: transactions cannot create them."""
        existing = set(await self.database.list_collection_names())
        for name in ("pairs", "checkpoints", "merge_base", "leases", "dead_letters", "held_events"):
            if name not in existing:
                try:
                    await self.database.create_collection(name)
                except CollectionInvalid:
                    pass  # another worker starting at the same moment created it first
                except OperationFailure as exc:
                    if exc.code != NAMESPACE_EXISTS:
                        raise
        await self.dead_letters.create_index([("pair", 1), ("at", 1)])
        # A replay reads a pair's held changes in stream order (`_ahead.HELD_ORDER`).
        await self.held_events.create_index([("pair", 1), ("event.clusterTime", 1), ("_id", 1)])
        # and, for one transaction, the held changes to its documents after its own.
        await self.held_events.create_index(
            [("pair", 1), ("event.documentKey._id", 1), ("event.clusterTime", 1)]
        )

    # -- pairs ---------------------------------------------------------------------------------

    async def register(
        self, registry: Registry, *, reconcile: bool = False
    ) -> dict[str, dict[str, Any]]:
        """Record every pair of the registry, refusing transforms that differ from the state's.

        A pair seen for the first time is recorded NOT_STARTED. A pair whose recorded version
        differs: an older version than the newest recorded one is refused outright; an unknown
        (newer) one is refused unless `reconcile` (a backfill --restart re-converts everything).
        """
        docs = await self.pair_docs()
        for pair in registry.pairs:
            doc = docs.get(pair.original)
            if doc is None:
                doc = new_pair_doc(pair)
                await self.pairs.update_one(
                    {"_id": pair.original}, {"$setOnInsert": doc}, upsert=True
                )
                docs[pair.original] = doc
                continue
            if doc.get("partner") != pair.partner:
                raise StateRefused(
                    f"pair {pair.original}: the state database records partner {doc.get('partner')}"
                    f" but the transforms name {pair.partner}; roll the old pair back first"
                    f" (partner-sync rollback --pair {pair.original})"
                )
            recorded = doc.get("transform_version")
            if recorded == pair.version:
                continue
            seen = list(doc.get("versions_seen", []))
            if pair.version in seen:
                raise VersionMismatch(
                    f"pair {pair.original}: transforms version {pair.version} is older than the"
                    f" version {recorded} the state was synced with; deploy the newer transforms"
                )
            if not reconcile:
                raise VersionMismatch(
                    f"pair {pair.original}: transforms version {pair.version} differs from the"
                    f" recorded version {recorded}; run `partner-sync backfill --restart --pair"
                    f" {pair.original}` to reconcile both collections with the new transforms"
                )
            await self.pairs.update_one(
                {"_id": pair.original},
                {
                    "$set": {"transform_version": pair.version, "updated_at": utcnow()},
                    "$addToSet": {"versions_seen": pair.version},
                },
            )
            doc["transform_version"] = pair.version
        return docs

    async def pair_docs(
        self, session: AsyncClientSession | None = None
    ) -> dict[str, dict[str, Any]]:
        """Every recorded pair, by original namespace."""
        return {doc["_id"]: doc async for doc in self.pairs.find({}, session=session)}

    async def pair_doc(self, original: str) -> dict[str, Any] | None:
        """One pair's record, or None when it was never registered."""
        return await self.pairs.find_one({"_id": original})

    async def set_state(
        self,
        original: str,
        state: str,
        *,
        session: AsyncClientSession | None = None,
        expect: Iterable[str] | None = None,
        **fields: Any,
    ) -> bool:
        """Move a pair to `state` (only from one of `expect` states when given)."""
        update = self.state_update(state, **fields)  # refuses an unknown state first
        query: dict[str, Any] = {"_id": original}
        if expect is not None:
            query["state"] = {"$in": list(expect)}
        result = await self.pairs.update_one(query, update, session=session)
        return result.matched_count == 1

    @staticmethod
    def state_update(state: str, **fields: Any) -> dict[str, Any]:
        """The update that moves a pair's record to `state` (with `fields` beside it).

        Every state change counts up the record's `state_serial`; the worker holding the lease
        records the serial it acts on as `seen_serial` (`acknowledge_state`), which is how a
        command that changed the state knows it has taken effect."""
        if state not in STATES:
            raise ValueError(f"unknown pair state {state!r}")
        return {
            "$set": {"state": state, "updated_at": utcnow(), **fields},
            "$inc": {"state_serial": 1},
        }

    async def record_writer_session(
        self, original: str, session_id: Mapping[str, Any], **fields: Any
    ) -> None:
        """Record a session a one-shot command writes the pair's collections in (last among
        `writer_sessions`; `fields` are set beside it), counting up `state_serial` so that the
        running worker acknowledges it: from then on it takes those writes for its own."""
        await self.pairs.update_one(
            {"_id": original},
            {
                "$set": {**fields, "updated_at": utcnow()},
                "$push": {
                    "writer_sessions": {
                        "$each": [session_id["id"]],
                        "$slice": -REMEMBERED_WRITER_SESSIONS,
                    }
                },
                "$inc": {"state_serial": 1},
            },
        )

    async def acknowledge_state(self, original: str, serial: int, holder: str) -> None:
        """Record that the worker `holder` acts on the pair's state change `serial` from now on
        (not when the state has changed again since: that change is acknowledged in its turn)."""
        await self.pairs.update_one(
            {"_id": original, "state_serial": serial},
            {"$max": {"seen_serial": serial}, "$set": {"seen_by": holder, "seen_at": utcnow()}},
        )

    # -- checkpoint ----------------------------------------------------------------------------

    async def checkpoint(self, session: AsyncClientSession | None = None) -> dict[str, Any] | None:
        """The stream's last applied position, or None before the first batch."""
        return await self.checkpoints.find_one({"_id": self.stream}, session=session)

    async def save_checkpoint(
        self,
        resume_token: Mapping[str, Any],
        cluster_time: Timestamp | None,
        *,
        session: AsyncClientSession | None = None,
    ) -> None:
        """Record the position after the last applied or dead-lettered event."""
        await self.checkpoints.update_one(
            {"_id": self.stream},
            {
                "$set": {
                    "resume_token": dict(resume_token),
                    "cluster_time": cluster_time,
                    "updated_at": utcnow(),
                }
            },
            upsert=True,
            session=session,
        )

    async def clear_checkpoint(self) -> None:
        """Forget the stream position (after history was lost and every pair resynced)."""
        await self.checkpoints.delete_one({"_id": self.stream})

    # -- merge base ----------------------------------------------------------------------------

    async def load_bases(
        self,
        pair_ns: str,
        document_ids: Iterable[Any],
        *,
        session: AsyncClientSession | None = None,
    ) -> dict[Any, dict[str, Any]]:
        """Merge base records of some documents of one pair, keyed by the document `_id`."""
        ids = [merge_base_id(pair_ns, i) for i in document_ids]
        found: dict[Any, dict[str, Any]] = {}
        async for doc in self.merge_base.find({"_id": {"$in": ids}}, session=session):
            found[id_key(doc["_id"]["id"])] = doc
        return found

    # -- counters and dead letters --------------------------------------------------------------

    async def dead_letter_count(self, pair_ns: str | None = None) -> int:
        """How many dead letters wait (for one pair, or all)."""
        query = {} if pair_ns is None else {"pair": pair_ns}
        return await self.dead_letters.count_documents(query)


def state_taken_up(doc: Mapping[str, Any]) -> bool:
    """Whether the lease holder has recorded that it acts on the pair record's latest state
    change (`StateStore.acknowledge_state`)."""
    return (doc.get("seen_serial") or 0) >= (doc.get("state_serial") or 0)


def new_pair_doc(pair: Pair) -> dict[str, Any]:
    """The record of a pair the state database has never seen."""
    return {
        "_id": pair.original,
        "partner": pair.partner,
        "state": "NOT_STARTED",
        "transform_version": pair.version,
        "versions_seen": [pair.version],
        "start_at": None,
        "backfill": {"done": False, "docs": 0},
        "counters": dict(_ZERO_COUNTERS),
        # absent until the first client write: $max then sets it
        "last_client_write": {},
        "lag_seconds": None,
        "resync_reason": None,
        "updated_at": utcnow(),
    }


def id_key(value: Any) -> Any:
    """A hashable stand-in for a document `_id` (ids may be sub-documents or lists)."""
    if isinstance(value, dict):
        return ("__doc__", tuple((k, id_key(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("__list__", tuple(id_key(v) for v in value))
    return value
