"""commitTransaction and abortTransaction (the session layer has already found the transaction)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from devserver._changes import ChangeRecord
from devserver._command import Context, command
from devserver._errors import CommandError
from devserver._keys import id_key
from devserver._sessions import DocRef, write_conflict
from devserver._storage import creation_record

__all__ = ["commit_transaction"]


def commit_transaction(ctx: Context) -> None:
    """Apply a transaction's staged writes at once: one cluster time, one change-history append."""
    txn = ctx.txn
    if txn is None:
        raise CommandError(251, "NoSuchTransaction", "no transaction in progress")
    state = ctx.state
    _check_unique_at_commit(ctx)
    others_open = len(state.sessions.open) > 1
    replaced: dict[DocRef, dict[str, Any] | None] = {}
    records = _with_creates(ctx, txn.records)
    for record in txn.records:
        if others_open and record.document_key is not None:
            ref = (record.db, record.coll or "", id_key(record.document_key["_id"]))
            if ref not in replaced:
                replaced[ref] = state.storage.get(ref[0], ref[1], record.document_key["_id"])
        if record.op == "delete":
            state.storage.remove(record.db, record.coll, record.document_key["_id"])
        else:
            state.storage.put(record.db, record.coll, record.after)
    cluster_time = state.commit(
        records,
        lsid=txn.session.lsid,
        txn_number=txn.txn_number,
        # Persisted with the writes: a commit retried after a restart is answered ok.
        outcome={"lsid": txn.session.lsid, "committed": txn.txn_number},
    )
    for ref, before in replaced.items():
        state.sessions.committed(ref, cluster_time, before)
    txn.commit_time = cluster_time
    state.sessions.end(txn, "committed")
    ctx.wrote(cluster_time)


def _with_creates(ctx: Context, records: Sequence[ChangeRecord]) -> list[ChangeRecord]:
    """The transaction's records with a `create` before the first write to each collection
    that does not exist yet, which is created here, at commit (its writes were staged against
    nothing). MongoDB creates such a collection inside the transaction, and a stream with
    expanded events shows its `create` with the transaction's session and number."""
    storage = ctx.state.storage
    out: list[ChangeRecord] = []
    created: set[tuple[str, str]] = set()
    for record in records:
        namespace = (record.db, record.coll or "")
        if record.coll is not None and namespace not in created:
            if storage.meta(record.db, record.coll) is None:
                storage.create_collection(record.db, record.coll)
                out.append(creation_record(record.db, record.coll))
            created.add(namespace)
        out.append(record)
    return out


def _check_unique_at_commit(ctx: Context) -> None:
    """A unique key a plain write took after this transaction checked it: WriteConflict."""
    txn = ctx.txn
    assert txn is not None
    storage = ctx.state.storage
    for (db, coll), overlay in txn.overlay.items():
        for doc in overlay.values():
            if doc is None:
                continue
            conflict = storage.unique_conflict(db, coll, doc)
            if conflict is not None and conflict[2] not in overlay:
                raise write_conflict()


@command("commitTransaction", admin_only=True, in_transaction=True)
async def commit(ctx: Context) -> dict[str, Any]:
    commit_transaction(ctx)
    return {}


@command("abortTransaction", admin_only=True, in_transaction=True)
async def abort(ctx: Context) -> dict[str, Any]:
    if ctx.txn is not None:
        ctx.state.abort(ctx.txn, "aborted by the client")
    return {}
