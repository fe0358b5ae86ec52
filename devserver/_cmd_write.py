"""insert, update, delete and findAndModify: batches of statements and their replies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from devserver._command import Context, command, namespace_arg, sort_arg
from devserver._errors import CommandError
from devserver._storage import validate_namespace
from devserver._writes import (
    TOP_LEVEL_CODES,
    Deadline,
    delete_matching,
    insert_one,
    prepare_insert,
    stored_size,
    update_matching,
)

__all__ = ["reject_collation", "run_statements"]


def _statements(ctx: Context, key: str) -> list[Any]:
    statements = ctx.body.get(key)
    if not isinstance(statements, list):
        raise CommandError(
            40414, "Location40414", f"BSON field '{ctx.name}.{key}' is missing but a required field"
        )
    if len(statements) > 100_000:
        raise CommandError(
            16,
            "InvalidLength",
            f"Write batch sizes must be between 1 and 100000. Got {len(statements)} operations.",
        )
    return statements


def _batch_reply(reply: dict[str, Any], errors: list[dict[str, Any]]) -> dict[str, Any]:
    if errors:
        reply["writeErrors"] = errors
    return reply


def _write_error(index: int, error: CommandError) -> dict[str, Any]:
    entry: dict[str, Any] = {"index": index, "code": error.code, "errmsg": error.message}
    entry.update(error.extra)
    return entry


async def run_statements(
    ctx: Context,
    statements: list[Any],
    run_one: Callable[[int, Any], Awaitable[None]],
    failed: Callable[[int, CommandError], None],
) -> None:
    """Run statements in order; a statement's error goes to `failed`, and ordered (or any
    statement in a transaction) stops at it. Errors that fail the whole command are raised.

    The batch loop of insert, update, delete and bulkWrite.
    """
    ordered = ctx.body.get("ordered", True) is not False
    for index, statement in enumerate(statements):
        try:
            await run_one(index, statement)
        except CommandError as error:
            if error.code in TOP_LEVEL_CODES or ctx.txn is not None and error.code == 112:
                raise
            failed(index, error)
            if ordered or ctx.txn is not None:
                break


async def _run_batch(
    ctx: Context,
    statements: list[Any],
    run_one: Callable[[int, Any], Awaitable[None]],
) -> list[dict[str, Any]]:
    """Run statements in order; a statement's error becomes a writeError, ordered stops at it."""
    errors: list[dict[str, Any]] = []
    await run_statements(
        ctx, statements, run_one, lambda index, error: errors.append(_write_error(index, error))
    )
    return errors


def reject_collation(statement: dict[str, Any]) -> None:
    """Refuse a statement's non-simple collation: strings compare here by code point only."""
    collation = statement.get("collation")
    if collation and collation.get("locale", "simple") != "simple":
        raise CommandError(
            238, "NotImplemented", "collations are not supported by the development server"
        )


@command("insert", write=True, in_transaction=True)
async def insert(ctx: Context) -> dict[str, Any]:
    coll = namespace_arg(ctx)
    validate_namespace(ctx.db, coll)
    documents = _statements(ctx, "documents")
    sizes = ctx.sequence_sizes.get("documents")
    deadline = Deadline(ctx.body.get("maxTimeMS"))
    view = ctx.view()
    inserted = 0

    async def run_one(index: int, doc: Any) -> None:
        nonlocal inserted
        prepared = prepare_insert(doc)
        size = stored_size(doc, sizes[index]) if sizes is not None else None
        await insert_one(ctx, ctx.db, coll, prepared, deadline, view=view, size=size)
        inserted += 1

    errors = await _run_batch(ctx, documents, run_one)
    return _batch_reply({"n": inserted}, errors)


@command("update", write=True, in_transaction=True)
async def update(ctx: Context) -> dict[str, Any]:
    coll = namespace_arg(ctx)
    validate_namespace(ctx.db, coll)
    statements = _statements(ctx, "updates")
    deadline = Deadline(ctx.body.get("maxTimeMS"))
    view = ctx.view()
    matched = modified = 0
    upserted: list[dict[str, Any]] = []

    async def run_one(index: int, statement: Any) -> None:
        nonlocal matched, modified
        if not isinstance(statement, dict) or "q" not in statement or "u" not in statement:
            raise CommandError(9, "FailedToParse", "each update statement needs 'q' and 'u'")
        reject_collation(statement)
        result = await update_matching(
            ctx,
            ctx.db,
            coll,
            statement["q"],
            statement["u"],
            multi=bool(statement.get("multi", False)),
            upsert=bool(statement.get("upsert", False)),
            array_filters=statement.get("arrayFilters"),
            sort=sort_arg(statement.get("sort")),
            deadline=deadline,
            view=view,
        )
        matched += result.matched
        modified += result.modified
        if result.upserted:
            matched += 1
            upserted.append({"index": index, "_id": result.upserted_id})

    errors = await _run_batch(ctx, statements, run_one)
    reply: dict[str, Any] = {"n": matched, "nModified": modified}
    if upserted:
        reply["upserted"] = upserted
    return _batch_reply(reply, errors)


@command("delete", write=True, in_transaction=True)
async def delete(ctx: Context) -> dict[str, Any]:
    coll = namespace_arg(ctx)
    validate_namespace(ctx.db, coll)
    statements = _statements(ctx, "deletes")
    deadline = Deadline(ctx.body.get("maxTimeMS"))
    deleted = 0

    async def run_one(index: int, statement: Any) -> None:
        nonlocal deleted
        if not isinstance(statement, dict) or "q" not in statement or "limit" not in statement:
            raise CommandError(9, "FailedToParse", "each delete statement needs 'q' and 'limit'")
        if statement["limit"] not in (0, 1):
            raise CommandError(
                9, "FailedToParse", "The limit field in delete objects must be 0 or 1"
            )
        reject_collation(statement)
        removed = await delete_matching(
            ctx,
            ctx.db,
            coll,
            statement["q"],
            limit_one=statement["limit"] == 1,
            sort=None,
            deadline=deadline,
        )
        deleted += len(removed)

    errors = await _run_batch(ctx, statements, run_one)
    return _batch_reply({"n": deleted}, errors)


@command("findAndModify", "findandmodify", write=True, in_transaction=True)
async def find_and_modify(ctx: Context) -> dict[str, Any]:
    coll = namespace_arg(ctx)
    validate_namespace(ctx.db, coll)
    body = ctx.body
    query = body.get("query") or {}
    sort = sort_arg(body.get("sort"))
    remove = bool(body.get("remove", False))
    update_spec = body.get("update")
    reject_collation(body)
    if remove == (update_spec is not None):
        raise CommandError(9, "FailedToParse", "Either an update or remove=true must be specified")
    if remove and (body.get("new") or body.get("upsert")):
        raise CommandError(
            9,
            "FailedToParse",
            "Cannot specify both new=true and remove=true; 'remove' always returns the deleted "
            "document",
        )
    deadline = Deadline(body.get("maxTimeMS"))
    last_error: dict[str, Any]
    value: dict[str, Any] | None
    if remove:
        removed = await delete_matching(
            ctx, ctx.db, coll, query, limit_one=True, sort=sort, deadline=deadline
        )
        value = removed[0] if removed else None
        last_error = {"n": len(removed)}
    else:
        result = await update_matching(
            ctx,
            ctx.db,
            coll,
            query,
            update_spec,
            multi=False,
            upsert=bool(body.get("upsert", False)),
            array_filters=body.get("arrayFilters"),
            sort=sort,
            deadline=deadline,
        )
        if result.upserted:
            last_error = {"n": 1, "updatedExisting": False, "upserted": result.upserted_id}
            value = result.after[0] if body.get("new") else None
        elif result.matched:
            last_error = {"n": 1, "updatedExisting": True}
            value = result.after[0] if body.get("new") else result.before[0]
        else:
            last_error = {"n": 0, "updatedExisting": False}
            value = None
    fields = body.get("fields")
    if value is not None and fields:
        projected = ctx.state.engine.find([value], {}, projection=fields)
        value = projected[0] if projected else None
    return {"lastErrorObject": last_error, "value": value}
