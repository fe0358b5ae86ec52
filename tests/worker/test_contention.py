"""Batches on documents that clients keep writing: the reads come before the transaction, a
client write that lands between them and the batch's writes is never overwritten, and a batch
that conflicts with client writes is applied in smaller transactions."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient, MongoClient

from transforms import Pair, Patch, load_registry
from worker.engine._applier import Applier, _overwritten, _written_paths
from worker.engine._lease import Lease
from worker.engine._writes import TargetWrite
from worker.metrics import Metrics
from worker.state import StateStore, id_key

from .engine_helpers import PEOPLE_MODULE, next_events, write_module

APP = "contention-test"


@pytest.mark.parametrize(
    ("written", "newer", "hit"),
    [
        pytest.param({"full_name"}, {"full_name"}, True, id="same-path"),
        pytest.param({"full_name"}, {"email"}, False, id="other-path"),
        pytest.param({"address.zip"}, {"address"}, True, id="newer-write-of-the-parent"),
        pytest.param({"address"}, {"address.zip"}, True, id="newer-write-inside"),
        pytest.param({"address.zip"}, {"address.city"}, False, id="sibling-path"),
        pytest.param({""}, {"email"}, True, id="whole-document-write"),
        pytest.param({"email"}, {""}, True, id="newer-replace-or-delete"),
    ],
)
def test_a_write_is_stale_only_where_a_newer_write_touched_its_paths(
    written: set[str], newer: set[str], hit: bool
) -> None:
    """A newer client write makes the batch's write of a document stale when their paths meet
    (one inside the other, or either covering the whole document); other paths are merged."""
    document = ("db.c", id_key(1))
    other = ("db.c", id_key(2))
    found = _overwritten(
        {document: frozenset(written), other: frozenset({"email"})},
        {document: frozenset(newer)},
    )
    assert found == ([document] if hit else [])


def test_written_paths_of_each_kind_of_target_write() -> None:
    """An update names the paths of its patch; an insert or delete covers the whole document."""
    update = TargetWrite("update", 1, patch=Patch(set={"a.b": 1}, unset=("c",)))
    assert _written_paths(update) == frozenset({"a.b", "c"})
    assert _written_paths(TargetWrite("insert", 1, document={"_id": 1})) == frozenset({""})
    assert _written_paths(TargetWrite("delete", 1)) == frozenset({""})


@pytest.fixture
async def people(mongo_uri: str, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """A pair `people` <-> `people_v2` in a database of its own, RUNNING, with an applier."""
    name = f"busy_{uuid.uuid4().hex[:8]}"
    registry = load_registry(
        [write_module(tmp_path, name, PEOPLE_MODULE, db=name)], entry_points=False
    )
    separator = "&" if "?" in mongo_uri else "?"
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        f"{mongo_uri}{separator}appName={APP}", tz_aware=True
    )
    store = StateStore(client[f"{name}_state"])
    await store.ensure_collections()
    await store.register(registry)
    pair: Pair = registry.pairs[0]
    await store.set_state(pair.original, "RUNNING")
    lease = Lease(store, "contention-test", 30.0)
    assert await lease.try_acquire()
    applier = Applier(client, store, registry, lease=lease, metrics=Metrics())
    try:
        yield {"client": client, "db": client[name], "applier": applier, "pair": pair}
    finally:
        await client.drop_database(name)
        await client.drop_database(f"{name}_state")
        await client.close()


async def _events(db: Any, count: int, write: Any) -> list[dict[str, Any]]:
    """The change events of the writes `write()` makes (at least `count` of them)."""
    async with await db.watch(max_await_time_ms=50) as stream:
        await write()
        return await next_events(stream, count, tries=count * 20)


async def test_client_write_between_the_batch_read_and_its_write_is_not_overwritten(
    people: dict[str, Any],
) -> None:
    """A client sets a target field after the batch read the target and before it writes it:
    the batch notices once its writes hold the document, plans again, and the client's newer
    value stays; the batch's change to another field still goes through."""
    db, applier = people["db"], people["applier"]
    await applier.refresh_pairs()
    seed = await _events(
        db, 1, lambda: db.people.insert_one({"_id": 1, "name": "old", "email": "old@x"})
    )
    async with applier.opened():
        await applier.apply(seed)
        batch = await _events(
            db,
            1,
            lambda: db.people.update_one(
                {"_id": 1}, {"$set": {"name": "from the batch", "email": "batch@x"}}
            ),
        )
        looks: list[Any] = []
        original_peek = applier._peek_ahead

        async def peek_then_client_writes(*args: Any, **kwargs: Any) -> Any:
            found = await original_peek(*args, **kwargs)
            looks.append(kwargs.get("since"))
            if len(looks) == 1:
                # After the batch read the target, before its transaction writes it.
                await db.people_v2.update_one({"_id": 1}, {"$set": {"full_name": "newer"}})
            return found

        applier._peek_ahead = peek_then_client_writes  # type: ignore[method-assign]
        result = await applier.apply(batch)
    target = await db.people_v2.find_one({"_id": 1})
    assert target is not None
    assert target["full_name"] == "newer"
    assert target["email"] == "batch@x"
    assert result.conflicts == 1
    # Looks: before the first plan, after its writes (stale), before the second, after it.
    assert len(looks) == 4 and looks[1] is not None


async def test_batch_that_conflicts_with_client_writes_is_applied_in_smaller_transactions(
    people: dict[str, Any], mongo_uri: str
) -> None:
    """A write conflict on a batch of many events halves the events per transaction; every
    event is applied once, the checkpoint ends at the last one, and the limit grows back."""
    db, applier = people["db"], people["applier"]
    count = 40
    await applier.refresh_pairs()
    batch = await _events(
        db,
        count,
        lambda: db.people.insert_many([{"_id": i, "name": f"n{i}"} for i in range(count)]),
    )
    sync: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
    try:
        async with applier.opened():
            sync.admin.command(
                "configureFailPoint",
                "failCommand",
                mode={"times": 1},
                data={
                    "failCommands": ["update"],
                    "errorCode": 112,
                    "errorLabels": ["TransientTransactionError"],
                    "appName": APP,
                },
            )
            result = await applier.apply(batch)
    finally:
        sync.admin.command("configureFailPoint", "failCommand", mode="off")
        sync.close()
    assert result.applied == count
    names = {doc["_id"]: doc["full_name"] async for doc in db.people_v2.find()}
    assert names == {i: f"n{i}" for i in range(count)}
    checkpoint = await applier.store.checkpoint()
    assert checkpoint is not None and checkpoint["resume_token"] == batch[-1]["_id"]
    # Halved to 20, then grown by an eighth after each of the two transactions.
    assert applier.batch_limit == 24
