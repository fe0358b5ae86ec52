"""A batch's writes go out in order: one bulkWrite command on MongoDB 8.0 and later, one command
per run of writes to a collection before; a refused target write is `Refused`, shaped as the dead
letter reads it, and the checkpoint's fence check sees its own matched count."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient, DeleteMany, InsertOne, UpdateOne, monitoring
from pymongo.errors import OperationFailure

from worker.engine._applier import _refusal, _refusal_code
from worker.engine._commands import BatchWrites, Refused, supports_bulk_write

from .engine_helpers import BOTH_VERSIONS, CommandStarts

pytestmark = pytest.mark.parametrize("mongo_uri", BOTH_VERSIONS, indirect=True)


class _Commands(CommandStarts):
    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in ("insert", "update", "delete", "bulkWrite"):
            self.names.append(event.command_name)


@pytest.fixture
async def setup(mongo_uri: str) -> AsyncIterator[tuple[Any, Any, _Commands, bool]]:
    """(client, database, the write commands sent, whether the server has bulkWrite)."""
    commands = _Commands()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_uri, event_listeners=[commands]
    )
    name = f"bw_{uuid.uuid4().hex[:8]}"
    try:
        yield client, client[name], commands, await supports_bulk_write(client)
    finally:
        await client.drop_database(name)
        await client.close()


def _ns(db: Any, collection: str) -> str:
    return f"{db.name}.{collection}"


async def test_writes_take_effect_in_order_in_as_few_commands_as_the_server_allows(
    setup: tuple[Any, Any, _Commands, bool],
) -> None:
    client, db, commands, combined = setup
    await db.a.insert_one({"_id": 1, "n": 0})
    commands.names.clear()
    writes = BatchWrites(client, combined=combined)
    a, b = _ns(db, "a"), _ns(db, "b")
    writes.add(a, [UpdateOne({"_id": 1}, {"$inc": {"n": 1}}, namespace=a)], refusable=True)
    writes.add(a, [InsertOne({"_id": 2, "n": 5}, namespace=a)], refusable=True)
    writes.add(b, [InsertOne({"_id": 1, "copied": True}, namespace=b)])
    writes.add(b, [DeleteMany({"copied": False}, namespace=b)])
    # Later in the queue, so it sees the earlier writes' effects.
    writes.add(a, [UpdateOne({"_id": 2}, {"$inc": {"n": 1}}, namespace=a)])
    assert len(writes) == 5
    async with client.start_session() as session, await session.start_transaction():
        await writes.send(session)
    assert len(writes) == 0
    assert await db.a.find({}, sort=[("_id", 1)]).to_list() == [
        {"_id": 1, "n": 1},
        {"_id": 2, "n": 6},
    ]
    assert await db.b.find({}).to_list() == [{"_id": 1, "copied": True}]
    if combined:
        assert commands.names == ["bulkWrite"]
    else:
        # Target writes, then b's insert and delete (different kinds, one bulk_write), then a.
        assert commands.names == ["update", "insert", "insert", "delete", "update"]


async def test_the_check_sees_its_own_matched_count(
    setup: tuple[Any, Any, _Commands, bool],
) -> None:
    client, db, _, combined = setup
    await db.checkpoints.insert_one({"_id": "s", "fence": 2})
    ns = _ns(db, "checkpoints")
    seen: list[int] = []
    for fence in (2, 1):
        writes = BatchWrites(client, combined=combined)
        writes.add(ns, [UpdateOne({"_id": "x"}, {"$set": {"v": 1}}, upsert=True, namespace=ns)])
        writes.add(
            ns,
            [UpdateOne({"_id": "s", "fence": fence}, {"$set": {"at": fence}}, namespace=ns)],
            check=seen.append,
        )
        await writes.send(None)
    assert seen == [1, 0]


async def test_a_refused_target_write_is_refused_with_the_servers_code(
    setup: tuple[Any, Any, _Commands, bool],
) -> None:
    client, db, _, combined = setup
    await db.create_collection("t", validator={"age": {"$lt": 150}})
    ns = _ns(db, "t")
    writes = BatchWrites(client, combined=combined)
    writes.add(ns, [InsertOne({"_id": 1, "age": 3}, namespace=ns)], refusable=True)
    writes.add(ns, [InsertOne({"_id": 2, "age": 200}, namespace=ns)], refusable=True)
    async with client.start_session() as session:
        await session.start_transaction()
        with pytest.raises(Refused) as refused:
            await writes.send(session)
        await session.abort_transaction()
    assert _refusal_code(refused.value.error) == 121
    assert "(code 121)" in _refusal(refused.value.error)
    assert await db.t.count_documents({}) == 0


async def test_a_refusal_of_another_write_is_the_drivers_error(
    setup: tuple[Any, Any, _Commands, bool],
) -> None:
    client, db, _, combined = setup
    await db.s.insert_one({"_id": 1})
    ns = _ns(db, "s")
    writes = BatchWrites(client, combined=combined)
    writes.add(ns, [InsertOne({"_id": 1}, namespace=ns)])
    with pytest.raises(OperationFailure) as raised:
        await writes.send(None)
    assert not isinstance(raised.value, Refused)
    assert raised.value.code == 11000 or "11000" in str(raised.value)


async def test_a_write_conflict_is_raised_as_a_transient_error(
    setup: tuple[Any, Any, _Commands, bool],
) -> None:
    client, db, _, combined = setup
    await db.c.insert_one({"_id": 1, "n": 0})
    ns = _ns(db, "c")
    async with client.start_session() as first, client.start_session() as second:
        await first.start_transaction()
        await db.c.update_one({"_id": 1}, {"$inc": {"n": 1}}, session=first)
        await second.start_transaction()
        writes = BatchWrites(client, combined=combined)
        writes.add(ns, [UpdateOne({"_id": 1}, {"$inc": {"n": 10}}, namespace=ns)], refusable=True)
        with pytest.raises(OperationFailure) as raised:
            await writes.send(second)
        assert not isinstance(raised.value, Refused)
        assert raised.value.code == 112
        assert raised.value.has_error_label("TransientTransactionError")
        await second.abort_transaction()
        await first.commit_transaction()
    assert await db.c.find_one({"_id": 1}) == {"_id": 1, "n": 1}
