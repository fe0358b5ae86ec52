"""A running worker replaying one pair's held changes keeps its other pairs in step meanwhile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from tests.worker.engine_helpers import (
    TWO_PAIRS_MODULE,
    eventually,
    make_config,
    running_worker,
    write_module,
)
from worker.config import BatchConfig
from worker.lifecycle import pause_pair, resume_pair
from worker.state import StateStore

HELD = 1000


async def test_a_long_replay_does_not_hold_up_the_other_pairs(
    mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    """people paused while all its 1,000 documents change, then resumed: the replay takes 100
    transactions of 10. An orders change made just after the resume reaches orders_v2 while
    people still has changes held, and people's own change made then is applied after its held
    ones (it wins over them)."""
    module = write_module(tmp_path, "two_pairs", TWO_PAIRS_MODULE, db=db_name)
    config = make_config(
        mongo_uri, db_name, module, batch=BatchConfig(max_docs=10, max_delay_ms=10)
    )
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    db, store = client[db_name], StateStore(client[config.state_db])
    people, orders = f"{db_name}.people", f"{db_name}.orders"
    try:
        async with running_worker(config):
            await db.people.insert_many([{"_id": i, "name": "a"} for i in range(HELD)])
            await db.orders.insert_one({"_id": 1, "total": 10})
            await eventually(
                lambda: db.people_v2.count_documents({}), within=60, what="people synced"
            )
            await eventually(
                lambda: _synced(db, HELD), within=60, what="every person and the order synced"
            )
            assert (await pause_pair(store, people)).changed
            await db.people.update_many({}, {"$set": {"name": "b"}})
            await eventually(lambda: _held(store, people, HELD), within=60, what="the updates held")
            assert (await resume_pair(store, people)).changed
            await db.orders.update_one({"_id": 1}, {"$set": {"total": 20}})
            await db.people.update_one({"_id": 0}, {"$set": {"name": "c"}})
            await eventually(
                lambda: db.orders_v2.count_documents({"_id": 1, "amount": 20}),
                within=30,
                what="the order's change applied",
            )
            held_then = await store.held_events.count_documents({"pair": people})
            await eventually(
                lambda: db.people_v2.count_documents({"full_name": "b"}),
                within=120,
                what="the held changes replayed",
            )
            await eventually(
                lambda: _replayed(db, store, people), within=60, what="the replay done"
            )
            first = await db.people_v2.find_one({"_id": 0})
            states = {d["_id"]: d["state"] async for d in store.pairs.find()}
    finally:
        await client.drop_database(db_name)
        await client.drop_database(config.state_db)
        await client.close()
    assert held_then > 0, "orders waited for the whole replay"
    assert first is not None and first["full_name"] == "c"
    assert states == {people: "RUNNING", orders: "RUNNING"}


async def _synced(db: Any, count: int) -> bool:
    people = await db.people_v2.count_documents({"full_name": "a"})
    order = await db.orders_v2.count_documents({"_id": 1, "amount": 10})
    return people == count and order == 1


async def _held(store: StateStore, pair: str, count: int) -> bool:
    return await store.held_events.count_documents({"pair": pair}) >= count


async def _replayed(db: Any, store: StateStore, pair: str) -> bool:
    if await store.held_events.count_documents({"pair": pair}):
        return False
    return await db.people_v2.count_documents({"full_name": "b"}) == HELD - 1
