"""The stream options the reader asks for, what it does when a server refuses one, and the
events expanded events bring."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import anyio
from bson import Binary
from pymongo.errors import OperationFailure

from tests.worker.engine_helpers import (
    PEOPLE_MODULE,
    applier_in_process,
    events_of,
    next_events,
)
from worker.engine._stream import StreamPosition, StreamReader


class _Stream:
    """An open stream with nothing to deliver."""

    resume_token = None

    async def __aenter__(self) -> _Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def try_next(self) -> None:
        await anyio.sleep(0.01)


class _ServerBefore60:
    """A client (and its database) whose server does not know showExpandedEvents."""

    def __init__(self) -> None:
        self.opened: list[dict[str, Any]] = []

    def __getitem__(self, name: str) -> _ServerBefore60:
        return self

    async def watch(self, pipeline: list[dict[str, Any]], **options: Any) -> _Stream:
        self.opened.append(options)
        if options.get("show_expanded_events"):
            raise OperationFailure(
                "BSON field '$changeStream.showExpandedEvents' is an unknown field.", code=40415
            )
        return _Stream()


async def test_the_reader_asks_for_expanded_events_and_drops_them_when_refused() -> None:
    """Expanded events carry `disambiguatedPaths`; a server before MongoDB 6.0 refuses the
    option, and the reader opens the stream again without it instead of failing."""
    server = _ServerBefore60()
    reader = StreamReader(server, ["db.c"], batch_size=10)  # type: ignore[arg-type]
    send, receive = anyio.create_memory_object_stream[dict[str, Any]](max_buffer_size=10)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            await group.start(reader.run, StreamPosition(), send)
            group.cancel_scope.cancel()
    receive.close()
    assert [options.get("show_expanded_events") for options in server.opened] == [True, None]
    assert reader.expanded_events is False


def _expanded_ddl_events(db: str, coll: str, after: dict[str, Any]) -> list[dict[str, Any]]:
    """The DDL events a stream with expanded events carries on MongoDB (not produced by the
    development server), in MongoDB's shape, placed at `after`'s position in the history."""
    common = {
        "_id": after["_id"],
        "clusterTime": after["clusterTime"],
        "wallTime": after["wallTime"],
        "ns": {"db": db, "coll": coll},
        "collectionUUID": Binary(uuid.uuid4().bytes, 4),
    }
    return [
        {**common, "operationType": "create", "operationDescription": {"idIndex": ID_INDEX}},
        {
            **common,
            "operationType": "createIndexes",
            "operationDescription": {"indexes": [{"v": 2, "key": {"email": 1}, "name": "e_1"}]},
        },
        {
            **common,
            "operationType": "modify",
            "operationDescription": {"changeStreamPreAndPostImages": {"enabled": True}},
            "stateBeforeChange": {"collectionOptions": {}},
        },
    ]


ID_INDEX = {"v": 2, "key": {"_id": 1}, "name": "_id_"}


async def test_expanded_ddl_events_are_passed_over(mongo_uri: str, tmp_path: Path) -> None:
    """Expanded events bring create, createIndexes and modify events on the pair's collections
    into the batch: they are not document events, and the documents around them still sync."""
    async with applier_in_process(mongo_uri, tmp_path, PEOPLE_MODULE, prefix="ddl") as (
        db,
        applier,
    ):
        async with applier.opened():
            inserted = await events_of(
                db, 1, lambda: db.people.insert_one({"_id": 1, "name": "Ada", "email": "a@x"})
            )
            updated = await events_of(
                db, 1, lambda: db.people.update_one({"_id": 1}, {"$set": {"email": "ada@x"}})
            )
            batch = [
                *inserted,
                *_expanded_ddl_events(db.name, "people_v2", inserted[-1]),
                *updated,
            ]
            result = await applier.apply(batch)
        target = await db.people_v2.find_one({"_id": 1})
        pair = await applier.store.pair_doc(f"{db.name}.people")
    assert result.events == 5 and result.applied == 2 and result.dead_letters == 0
    assert target is not None and target["full_name"] == "Ada" and target["email"] == "ada@x"
    assert pair is not None and pair["state"] == "RUNNING"


async def test_a_collmod_between_two_changes_is_passed_over(mongo_uri: str, tmp_path: Path) -> None:
    """A collMod of the partner collection between an insert and an update: with expanded
    events the server reports it as a `modify` event, which the batch passes over."""
    async with applier_in_process(mongo_uri, tmp_path, PEOPLE_MODULE, prefix="collmod") as (
        db,
        applier,
    ):
        await db.create_collection("people_v2")
        async with applier.opened():
            async with await db.watch(max_await_time_ms=50, show_expanded_events=True) as stream:
                await db.people.insert_one({"_id": 1, "name": "Ada", "email": "a@x"})
                await db.command(
                    "collMod", "people_v2", changeStreamPreAndPostImages={"enabled": True}
                )
                await db.people.update_one({"_id": 1}, {"$set": {"email": "ada@x"}})
                batch = await next_events(stream, 4, tries=80)
            # The first insert creates `people` (its own `create` event comes first).
            kinds = [e["operationType"] for e in batch]
            assert kinds == ["create", "insert", "modify", "update"]
            result = await applier.apply(batch)
        target = await db.people_v2.find_one({"_id": 1})
    assert result.applied == 2 and result.dead_letters == 0
    assert target is not None and target["full_name"] == "Ada" and target["email"] == "ada@x"
