"""Single-statement writes (insert one, update matching, delete matching) with every check.

Outside a transaction each document write is its own unit: applied, given a fresh cluster time,
announced to change streams and journaled before the next. Inside a transaction it is staged in
the overlay, and the document is held until the transaction ends.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import bson
from bson import ObjectId

from devserver._changes import ChangeRecord
from devserver._command import Context
from devserver._encoded import ENCODED
from devserver._engine import (
    check_modified_names,
    check_update_operators,
    is_operator_update,
    matches,
)
from devserver._errors import CommandError
from devserver._keys import id_key
from devserver._sessions import Transaction
from devserver._storage import ID_INDEX, CollectionMeta, creation_record, duplicate_key_error
from devserver._views import TransactionView, View

__all__ = [
    "MAX_BSON_SIZE",
    "UpdateResult",
    "Deadline",
    "insert_one",
    "stored_size",
    "update_matching",
    "delete_matching",
    "TOP_LEVEL_CODES",
]

MAX_BSON_SIZE = 16 * 1024 * 1024

# Commands whose unmeasured documents are inserts, as they came in the request.
_INSERTING = ("insert", "bulkWrite")

# Errors that fail the whole command rather than one statement.
TOP_LEVEL_CODES = frozenset({50, 112, 251, 225, 263})


class Deadline:
    """A command's maxTimeMS as an absolute event-loop time (None: no limit)."""

    def __init__(self, max_time_ms: Any) -> None:
        loop = asyncio.get_running_loop()
        self._at = None
        if isinstance(max_time_ms, int | float) and not isinstance(max_time_ms, bool):
            if max_time_ms > 0:
                self._at = loop.time() + max_time_ms / 1000

    def remaining(self) -> float | None:
        if self._at is None:
            return None
        return self._at - asyncio.get_running_loop().time()


def _expired() -> CommandError:
    return CommandError(50, "MaxTimeMSExpired", "operation exceeded time limit")


async def _wait_unheld(
    ctx: Context, db: str, coll: str, ids: list[Any], deadline: Deadline
) -> bool:
    """Outside a transaction: wait while an open transaction holds one of these documents.

    Returns True when it waited (the caller must look at the data again).
    """
    if ctx.txn is not None or not ctx.state.sessions.open:
        return False
    for doc_id in ids:
        holder = ctx.state.sessions.holder((db, coll, id_key(doc_id)))
        if holder is not None and holder.is_open:
            await _wait_for_end(holder, deadline)
            return True
    return False


async def _wait_for_end(txn: Transaction, deadline: Deadline) -> None:
    remaining = deadline.remaining()
    if remaining is not None and remaining <= 0:
        raise _expired()
    try:
        await asyncio.wait_for(txn.ended.wait(), remaining)
    except TimeoutError:
        raise _expired() from None


async def _wait_unique_keys_free(
    ctx: Context, db: str, coll: str, doc: dict[str, Any], deadline: Deadline
) -> bool:
    """Outside a transaction: wait while an open transaction's staged document holds one of
    `doc`'s unique index keys (MongoDB blocks such a write on the index key).

    Returns True when it waited.
    """
    sessions = ctx.state.sessions
    if ctx.txn is not None or not sessions.open:
        return False
    meta = ctx.state.storage.meta(db, coll)
    if meta is None or not meta.unique_maps:
        return False
    own = id_key(doc["_id"])
    for name in meta.unique_maps:
        spec = meta.indexes[name]
        entry = spec.entry(doc)
        if entry is None:
            continue
        for txn in list(sessions.open):
            for key, staged in txn.overlay.get((db, coll), {}).items():
                if staged is None or key == own:
                    continue
                staged_entry = spec.entry(staged)
                if staged_entry is not None and staged_entry[0] == entry[0]:
                    await _wait_for_end(txn, deadline)
                    return True
    return False


def _check_document(
    ctx: Context,
    view: View,
    db: str,
    coll: str,
    doc: dict[str, Any],
    before: dict[str, Any] | None = None,
    *,
    meta: CollectionMeta | None,
    size: int | None = None,
) -> None:
    """Size, validator and unique-index checks for a document about to be written (`meta`:
    the collection's catalog entry, looked up once by the caller; `size`: the document's BSON
    size when the caller has measured it)."""
    if size is None:
        # A document from a request smaller than the limit cannot exceed it (inserts are
        # checked that way; updates may grow a document, so they always measure).
        small_request = 0 < ctx.message_bytes <= MAX_BSON_SIZE and ctx.name in _INSERTING
        size = 0 if small_request else len(bson.encode(doc))
    if size > MAX_BSON_SIZE:
        raise CommandError(
            10334,
            "BSONObjectTooLarge",
            f"BSONObj size: {size} (0x{size:X}) is invalid. Size must be between 0 and "
            f"16793600(16MB) First element: _id: {doc.get('_id')!r}",
        )
    if meta is None:
        return  # a collection that does not exist yet has no validator and no unique index
    validator = meta.validator if meta is not None else None
    if validator is not None and not ctx.body.get("bypassDocumentValidation"):
        options = meta.options
        level = options.get("validationLevel", "strict")
        enforced = options.get("validationAction", "error") == "error" and level != "off"
        if level == "moderate" and before is not None and not matches(validator, before):
            enforced = False  # moderate: documents that were already invalid may be updated
        if enforced and not matches(validator, doc):
            raise CommandError(
                121,
                "DocumentValidationFailure",
                "Document failed validation",
                extra={"errInfo": {"failingDocumentId": doc.get("_id"), "details": {}}},
            )
    if not meta.unique_maps:
        return  # `_id` is checked by the caller; there is no other unique index
    conflict = view.unique_conflict(db, coll, doc)
    if conflict is not None:
        raise duplicate_key_error(db, coll, conflict[0], conflict[1])


def _apply(
    ctx: Context,
    view: View,
    db: str,
    coll: str,
    record: ChangeRecord,
    doc_id: Any,
    new_doc: dict[str, Any] | None,
) -> None:
    """Write one document (None: delete) and publish its change record."""
    state = ctx.state
    if isinstance(view, TransactionView):
        view.stage(db, coll, doc_id, new_doc)
        view.txn.records.append(record)
        return
    # Open transactions keep reading the version current at their snapshot.
    replaced = state.storage.get(db, coll, doc_id) if state.sessions.open else None
    if new_doc is None:
        state.storage.remove(db, coll, doc_id)
    else:
        state.storage.put(db, coll, new_doc)
    cluster_time = state.commit([record])
    if state.sessions.open:
        state.sessions.committed((db, coll, id_key(doc_id)), cluster_time, replaced)
    ctx.wrote(cluster_time)


def _hold(ctx: Context, db: str, coll: str, doc_id: Any) -> None:
    if ctx.txn is not None:
        ctx.state.sessions.hold(ctx.txn, (db, coll, id_key(doc_id)))


def _record(
    meta: CollectionMeta | None,
    op: str,
    db: str,
    coll: str,
    doc_id: Any,
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    update_spec: Any = None,
    after_size: int | None = None,
    changed: bool = False,
) -> ChangeRecord:
    """The change record of one document write."""
    return ChangeRecord(
        op=op,
        db=db,
        coll=coll,
        document_key={"_id": doc_id},
        before=before,
        after=after,
        update_spec=update_spec,
        images_enabled=meta is not None and meta.images_enabled,
        after_size=after_size,
        changed=changed,
    )


def prepare_insert(doc: Any) -> dict[str, Any]:
    """The document as MongoDB stores it: `_id` first, generated when absent."""
    if not isinstance(doc, dict):
        raise CommandError(14, "TypeMismatch", "documents to insert must be objects")
    doc_id = doc["_id"] if "_id" in doc else ObjectId()
    if isinstance(doc_id, list) or hasattr(doc_id, "pattern"):
        raise CommandError(2, "BadValue", f"can't use a {type(doc_id).__name__} for _id")
    if isinstance(doc_id, dict) and any(k.startswith("$") for k in doc_id):
        raise CommandError(
            52, "DollarPrefixedFieldName", "_id fields may not contain '$'-prefixed fields"
        )
    if next(iter(doc), None) == "_id":
        return doc  # already in stored form (the request's own dict, not shared elsewhere)
    stored = {"_id": doc_id}
    stored.update((k, v) for k, v in doc.items() if k != "_id")
    return stored


# BSON bytes an ObjectId `_id` field adds to a document that came without one.
_GENERATED_ID_BYTES = 17


def stored_size(doc: dict[str, Any], wire_size: int | None) -> int | None:
    """The BSON size of `prepare_insert(doc)` from the size `doc` had in the request."""
    if wire_size is None:
        return None
    return wire_size if "_id" in doc else wire_size + _GENERATED_ID_BYTES


async def insert_one(
    ctx: Context,
    db: str,
    coll: str,
    doc: dict[str, Any],
    deadline: Deadline,
    *,
    view: View | None = None,
    size: int | None = None,
) -> None:
    """Insert one prepared document (also the insert half of an upsert).

    `view` may be shared by the statements of one command; `size` is the document's BSON size
    when the request told it.
    """
    if view is None:
        view = ctx.view()
    doc_id = doc["_id"]
    if ctx.txn is None and ctx.state.sessions.open:
        while await _wait_unheld(ctx, db, coll, [doc_id], deadline) or (
            await _wait_unique_keys_free(ctx, db, coll, doc, deadline)
        ):
            pass
    if view.get(db, coll, doc_id) is not None:
        raise duplicate_key_error(db, coll, ID_INDEX, {"_id": doc_id})
    meta = ctx.state.storage.meta(db, coll)
    if meta is None and ctx.txn is None:
        meta = _create_implicitly(ctx, db, coll)
    _check_document(ctx, view, db, coll, doc, meta=meta, size=size)
    _hold(ctx, db, coll, doc_id)
    record = _record(meta, "insert", db, coll, doc_id, after=doc, after_size=size)
    _apply(ctx, view, db, coll, record, doc_id, doc)


def _create_implicitly(ctx: Context, db: str, coll: str) -> CollectionMeta:
    """Create the collection an insert or upsert writes to first, as MongoDB does: a `create`
    of its own before the write, which streams with expanded events show. (Inside a
    transaction the collection is made at the commit, with that event in the transaction:
    `_cmd_txn._with_creates`.)"""
    meta = ctx.state.storage.create_collection(db, coll)
    ctx.wrote(ctx.state.commit([creation_record(db, coll)]))
    return meta


@dataclass
class UpdateResult:
    """What one update statement did."""

    matched: int = 0
    modified: int = 0
    upserted_id: Any = None
    upserted: bool = False
    before: list[dict[str, Any]] = field(default_factory=list)
    after: list[dict[str, Any]] = field(default_factory=list)


def _id_equality(query: dict[str, Any]) -> bool:
    """Whether a query is `{_id: value}` and nothing else (an upsert mongod retries)."""
    if set(query) != {"_id"}:
        return False
    value = query["_id"]
    return not (isinstance(value, dict) and any(str(k).startswith("$") for k in value))


async def update_matching(
    ctx: Context,
    db: str,
    coll: str,
    query: dict[str, Any],
    update: Any,
    *,
    multi: bool,
    upsert: bool,
    array_filters: list[dict[str, Any]] | None,
    sort: list[tuple[str, int]] | None,
    deadline: Deadline,
    view: View | None = None,
) -> UpdateResult:
    """Apply one update statement (operators, pipeline or replacement; upsert; multi).

    `view` may be shared by the statements of one command.
    """
    if not isinstance(query, dict):
        raise CommandError(14, "TypeMismatch", "update 'q' must be an object")
    if not isinstance(update, dict | list):
        raise CommandError(14, "TypeMismatch", "update 'u' must be an object or an array")
    if is_operator_update(update):
        check_update_operators(update)  # parsed before any match, as mongod does
        replacing = False
    else:
        replacing = isinstance(update, dict)
    if replacing and multi:
        raise CommandError(
            9, "FailedToParse", "multi update is not supported for replacement-style update"
        )
    if view is None:
        view = ctx.view()
    engine = ctx.state.engine
    may_wait = ctx.txn is None
    while True:
        found = view.match(db, coll, query, sort=sort, limit=0 if multi else 1)
        if (
            may_wait
            and ctx.state.sessions.open
            and await _wait_unheld(ctx, db, coll, [d["_id"] for d in found], deadline)
        ):
            continue
        if found or not upsert:
            break
        new_doc = prepare_insert(engine.upsert_document(query, update, array_filters))
        try:
            raw = bson.encode(new_doc)
            await insert_one(ctx, db, coll, new_doc, deadline, view=view, size=len(raw))
            ENCODED.remember(new_doc, raw)
        except CommandError as exc:
            # Another write inserted the document while this upsert waited (for a
            # transaction holding its _id): mongod (4.2+) retries the upsert, which now
            # matches, when the query is an equality on _id alone.
            if exc.code == 11000 and _id_equality(query):
                continue
            raise
        result = UpdateResult(upserted=True, upserted_id=new_doc["_id"])
        result.after.append(new_doc)
        return result
    result = UpdateResult()
    if not found:
        return result
    if not replacing and isinstance(update, dict):
        check_modified_names(update)
    meta = ctx.state.storage.meta(db, coll)
    for before in found:
        current = before
        if multi:
            # An earlier document's write may have changed this one since it matched.
            latest = view.get(db, coll, before["_id"])
            if latest is None or (latest is not before and not matches(query, latest)):
                continue
            current = latest
        result.matched += 1
        new_doc = engine.apply_update(current, query, update, array_filters)
        result.before.append(current)
        result.after.append(new_doc)
        encoded = bson.encode(new_doc)
        if encoded == ENCODED.encode(current):
            continue  # a no-op update writes nothing and produces no event
        _check_document(ctx, view, db, coll, new_doc, current, meta=meta, size=len(encoded))
        _hold(ctx, db, coll, new_doc["_id"])
        op = "replace" if replacing else "update"
        record = _record(
            meta,
            op,
            db,
            coll,
            new_doc["_id"],
            before=current,
            after=new_doc,
            update_spec=update,
            after_size=len(encoded),
            changed=True,  # a no-op was skipped above, on the same bytes
        )
        _apply(ctx, view, db, coll, record, new_doc["_id"], new_doc)
        ENCODED.remember(new_doc, encoded)
        result.modified += 1
    return result


async def delete_matching(
    ctx: Context,
    db: str,
    coll: str,
    query: dict[str, Any],
    *,
    limit_one: bool,
    sort: list[tuple[str, int]] | None,
    deadline: Deadline,
) -> list[dict[str, Any]]:
    """Delete the documents a statement matches; returns them."""
    if not isinstance(query, dict):
        raise CommandError(14, "TypeMismatch", "delete 'q' must be an object")
    view = ctx.view()
    while True:
        found = view.match(db, coll, query, sort=sort, limit=1 if limit_one else 0)
        if not await _wait_unheld(ctx, db, coll, [d["_id"] for d in found], deadline):
            break
    deleted = []
    for doc in found:
        current = view.get(db, coll, doc["_id"])
        if current is None:
            continue
        _hold(ctx, db, coll, doc["_id"])
        meta = ctx.state.storage.meta(db, coll)
        record = _record(meta, "delete", db, coll, current["_id"], before=current)
        _apply(ctx, view, db, coll, record, current["_id"], None)
        deleted.append(current)
    return deleted
