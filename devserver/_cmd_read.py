"""find, getMore, killCursors, aggregate (including change streams), count and distinct."""

from __future__ import annotations

from collections import deque
from typing import Any

from bson import Int64

from devserver._change_pipeline import SPLIT_STAGE
from devserver._command import (
    Context,
    batch_size_arg,
    command,
    cursor_batch_size,
    document_arg,
    int_arg,
    namespace_arg,
    sort_arg,
)
from devserver._cursors import DEFAULT_FIRST_BATCH, DocumentCursor, take_batch
from devserver._errors import CommandError
from devserver._storage import validate_namespace

__all__ = ["cursor_reply", "open_cursor"]

_UNSUPPORTED_FIND = ("tailable", "awaitData", "min", "max", "returnKey", "oplogReplay")


def cursor_reply(
    ns: str, cursor_id: int, batch: list[dict[str, Any]], *, first: bool
) -> dict[str, Any]:
    return {
        "cursor": {
            ("firstBatch" if first else "nextBatch"): batch,
            "id": Int64(cursor_id),
            "ns": ns,
        }
    }


def open_cursor(
    ctx: Context,
    ns: str,
    docs: list[dict[str, Any]],
    batch_size: int | None,
    *,
    single_batch: bool = False,
) -> dict[str, Any]:
    """Reply with the first batch; keep the rest in a cursor unless everything fitted."""
    remaining = deque(docs)
    first_limit = DEFAULT_FIRST_BATCH if batch_size is None else batch_size
    batch = [] if batch_size == 0 else take_batch(remaining, first_limit)
    cursor_id = 0
    if remaining and not single_batch:
        cursor_id = ctx.state.cursors.register(
            DocumentCursor(ns=ns, remaining=remaining, lsid=ctx.lsid_key, batch_size=batch_size)
        )
    return cursor_reply(ns, cursor_id, batch, first=True)


@command("find", in_transaction=True)
async def find(ctx: Context) -> dict[str, Any]:
    coll = namespace_arg(ctx)
    validate_namespace(ctx.db, coll)
    body = ctx.body
    for option in _UNSUPPORTED_FIND:
        if body.get(option):
            raise CommandError(
                238,
                "NotImplemented",
                f"find option '{option}' is not supported by the development server",
            )
    collation = body.get("collation")
    if collation and collation.get("locale", "simple") != "simple":
        raise CommandError(
            238, "NotImplemented", "collations are not supported by the development server"
        )
    filter_doc = document_arg(ctx, "filter")
    limit = int_arg(ctx, "limit", 0, minimum=None)
    single_batch = bool(body.get("singleBatch", False))
    if limit < 0:
        limit, single_batch = -limit, True
    skip = int_arg(ctx, "skip", 0)
    batch_size = batch_size_arg(body)
    docs = ctx.view().find(
        ctx.db,
        coll,
        filter_doc,
        projection=body.get("projection"),
        sort=sort_arg(body.get("sort")),
        skip=skip,
        limit=limit,
    )
    if single_batch and batch_size is None and limit:
        batch_size = limit
    return open_cursor(ctx, f"{ctx.db}.{coll}", docs, batch_size, single_batch=single_batch)


@command("getMore", in_transaction=True)
async def get_more(ctx: Context) -> dict[str, Any]:
    cursor_id = ctx.body["getMore"]
    if isinstance(cursor_id, bool) or not isinstance(cursor_id, int):
        raise CommandError(14, "TypeMismatch", "getMore cursor id must be a long")
    coll = ctx.body.get("collection")
    if not isinstance(coll, str):
        raise CommandError(14, "TypeMismatch", "getMore 'collection' must be a string")
    ns = f"{ctx.db}.{coll}"
    cursor = ctx.state.cursors.get(int(cursor_id), ns)
    batch_size = batch_size_arg(ctx.body)
    if cursor.stream is not None:
        stream = cursor.stream
        max_time = ctx.body.get("maxTimeMS")
        batch = await stream.next_batch(batch_size, 1000 if max_time is None else int(max_time))
        reply = cursor_reply(ns, int(cursor_id), batch, first=False)
        reply["cursor"]["postBatchResumeToken"] = stream.post_batch_resume_token
        if stream.exhausted:
            ctx.state.cursors.close(int(cursor_id))
            reply["cursor"]["id"] = Int64(0)
        return reply
    batch = take_batch(cursor.remaining, batch_size)
    if not cursor.remaining:
        ctx.state.cursors.close(int(cursor_id))
        cursor_id = 0
    return cursor_reply(ns, int(cursor_id), batch, first=False)


@command("killCursors", in_transaction=True)
async def kill_cursors(ctx: Context) -> dict[str, Any]:
    ids = ctx.body.get("cursors")
    if not isinstance(ids, list):
        raise CommandError(14, "TypeMismatch", "killCursors 'cursors' must be an array")
    killed, not_found = [], []
    for cursor_id in ids:
        if ctx.state.cursors.close(int(cursor_id)):
            killed.append(Int64(cursor_id))
        else:
            not_found.append(Int64(cursor_id))
    return {
        "cursorsKilled": killed,
        "cursorsNotFound": not_found,
        "cursorsAlive": [],
        "cursorsUnknown": [],
    }


async def _change_stream(ctx: Context, coll: str | None, pipeline: list[Any]) -> dict[str, Any]:
    history = ctx.state.history
    if ctx.txn is not None:
        raise CommandError(
            263, "OperationNotSupportedInTransaction", "Cannot run a change stream in a transaction"
        )
    spec = pipeline[0]["$changeStream"]
    if not isinstance(spec, dict):
        raise CommandError(14, "TypeMismatch", "$changeStream stage spec must be an object")
    if spec.get("allChangesForCluster") and (ctx.db != "admin" or coll is not None):
        raise CommandError(
            73,
            "InvalidNamespace",
            "$changeStream may only be run with {allChangesForCluster: true} on the 'admin' "
            "database with {aggregate: 1}",
        )
    release = ctx.state.version
    if not release.at_least("7.0") and any(SPLIT_STAGE in stage for stage in pipeline[1:]):
        # A stage of MongoDB 7.0 and 6.0.9: MongoDB 6.0.0 does not know it.
        raise CommandError(
            40324, "Location40324", f"Unrecognized pipeline stage name: '{SPLIT_STAGE}'"
        )
    batch_size = cursor_batch_size(ctx)
    stream = history.open(
        db=ctx.db,
        coll=coll,
        spec=spec,
        pipeline=list(pipeline[1:]),
        batch_size=batch_size,
        cluster_time=ctx.state.clock.now,
        disambiguates_paths=release.at_least("7.0"),
    )
    batch = await stream.next_batch(batch_size, 0)
    cursor_id = 0
    if not stream.exhausted:
        cursor_id = ctx.state.cursors.register(
            DocumentCursor(ns=stream.ns, remaining=deque(), lsid=ctx.lsid_key, stream=stream)
        )
    else:
        stream.close()
    reply = cursor_reply(stream.ns, cursor_id, batch, first=True)
    reply["cursor"]["postBatchResumeToken"] = stream.post_batch_resume_token
    return reply


@command("aggregate", in_transaction=True)
async def aggregate(ctx: Context) -> dict[str, Any]:
    target = ctx.body["aggregate"]
    pipeline = ctx.body.get("pipeline")
    if not isinstance(pipeline, list) or not all(
        isinstance(s, dict) and len(s) == 1 for s in pipeline
    ):
        raise CommandError(
            14, "TypeMismatch", "'pipeline' must be an array of single-field stage objects"
        )
    if "cursor" not in ctx.body and not ctx.body.get("explain"):
        raise CommandError(
            9,
            "FailedToParse",
            "The 'cursor' option is required, except for aggregate with the explain argument",
        )
    if ctx.body.get("explain"):
        raise CommandError(
            238, "NotImplemented", "explain is not supported by the development server"
        )
    if pipeline and "$changeStream" in pipeline[0]:
        coll_name = None if target == 1 else target
        if coll_name is not None and not isinstance(coll_name, str):
            raise CommandError(
                73, "InvalidNamespace", "aggregate target must be a collection name or 1"
            )
        return await _change_stream(ctx, coll_name, pipeline)
    if not isinstance(target, str):
        raise CommandError(
            238,
            "NotImplemented",
            "collection-less aggregations are not supported by the development server",
        )
    validate_namespace(ctx.db, target)
    for stage in pipeline:
        name = next(iter(stage))
        if name in ("$out", "$merge"):
            raise CommandError(
                238, "NotImplemented", f"{name} is not supported by the development server"
            )
        if name == "$changeStream":
            raise CommandError(
                40602,
                "Location40602",
                "$changeStream is only valid as the first stage in a pipeline",
            )
    docs = ctx.view().aggregate(ctx.db, target, pipeline)
    batch_size = cursor_batch_size(ctx)
    return open_cursor(ctx, f"{ctx.db}.{target}", docs, batch_size)


@command("count", in_transaction=True)
async def count(ctx: Context) -> dict[str, Any]:
    coll = namespace_arg(ctx)
    query = document_arg(ctx, "query")
    skip = int_arg(ctx, "skip", 0)
    limit = abs(int_arg(ctx, "limit", 0, minimum=None))
    matched = ctx.view().match(ctx.db, coll, query)
    n = len(matched[skip:])
    if limit:
        n = min(n, limit)
    return {"n": n}


@command("distinct", in_transaction=True)
async def distinct(ctx: Context) -> dict[str, Any]:
    coll = namespace_arg(ctx)
    key = ctx.body.get("key")
    if not isinstance(key, str) or not key:
        raise CommandError(14, "TypeMismatch", "distinct 'key' must be a non-empty string")
    query = document_arg(ctx, "query")
    view = ctx.view()
    docs = view.match(ctx.db, coll, query)
    return {"values": ctx.state.engine.distinct(docs, key, {})}
