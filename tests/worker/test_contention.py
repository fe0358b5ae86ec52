"""Batches on documents that clients keep writing: the reads come before the transaction, a
client write that lands between them and the batch's writes is never overwritten, and a batch
that conflicts with client writes is applied in smaller transactions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient, monitoring

from transforms import Patch
from worker.engine._applier import _overwritten, _written_paths
from worker.engine._writes import TargetWrite
from worker.state import id_key

from .engine_helpers import (
    BOTH_VERSIONS,
    PEOPLE_MODULE,
    CommandStarts,
    applier_in_process,
    events_of,
)

BOTH = pytest.mark.parametrize("mongo_uri", BOTH_VERSIONS, indirect=True)

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
    async with applier_in_process(
        mongo_uri, tmp_path, PEOPLE_MODULE, prefix="busy", appname=APP
    ) as (db, applier):
        yield {"db": db, "applier": applier}


@BOTH
async def test_client_write_between_the_batch_read_and_its_write_is_not_overwritten(
    people: dict[str, Any],
) -> None:
    """A client sets a target field after the batch read the target and before it writes it:
    the batch notices once its writes hold the document, plans again, and the client's newer
    value stays; the batch's change to another field still goes through."""
    db, applier = people["db"], people["applier"]
    await applier.refresh_pairs()
    seed = await events_of(
        db, 1, lambda: db.people.insert_one({"_id": 1, "name": "old", "email": "old@x"})
    )
    async with applier.opened():
        await applier.apply(seed)
        batch = await events_of(
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


async def _apply_with_client_writes_during(
    people: dict[str, Any], count: int, client_writes: dict[int, int]
) -> tuple[Any, list[tuple[Any, int]]]:
    """Apply a batch of `count` updates, one per document 0 to `count - 1`; right after the
    look-ahead call numbered N in `client_writes` (1: the first attempt's, after its reads), a
    client writes the target of document `client_writes[N]`. Returns the result and, per
    look-ahead call, its `since` and how many events its attempt planned."""
    db, applier = people["db"], people["applier"]
    await applier.refresh_pairs()
    seed = await events_of(
        db,
        count,
        lambda: db.people.insert_many([{"_id": i, "name": f"n{i}"} for i in range(count)]),
    )
    async with applier.opened():
        await applier.apply(seed)

        async def updates() -> None:
            for i in range(count):
                await db.people.update_one({"_id": i}, {"$set": {"name": f"batch {i}"}})

        batch = await events_of(db, count, updates)
        looks: list[tuple[Any, int]] = []
        original_peek = applier._peek_ahead

        async def peek_then_client_writes(work: Any, *args: Any, **kwargs: Any) -> Any:
            found = await original_peek(work, *args, **kwargs)
            looks.append((kwargs.get("since"), len(work)))
            document = client_writes.get(len(looks))
            if document is not None:
                await db.people_v2.update_one(
                    {"_id": document}, {"$set": {"full_name": f"client {document}"}}
                )
            return found

        applier._peek_ahead = peek_then_client_writes  # type: ignore[method-assign]
        result = await applier.apply(batch)
    return result, looks


@BOTH
async def test_a_stale_read_splits_the_batch(people: dict[str, Any]) -> None:
    """A client write lands between a batch's reads and its writes: the batch is halved, as
    after a write conflict (planned again whole, a large batch meets another client write in
    its longer window as often as not), and every event is still applied once or lost to the
    newer write."""
    db, applier = people["db"], people["applier"]
    result, looks = await _apply_with_client_writes_during(people, 10, {1: 1})
    # The event on document 1 only changed the name, which the newer client write wins.
    assert (result.applied, result.conflicts) == (9, 1)
    # Two looks per attempt (before planning, after the writes): the whole batch, stale, then
    # its two halves.
    assert [size for _, size in looks] == [10, 10, 5, 5, 5, 5]
    assert looks[1][0] is not None
    # Halved to 5, then grown by one after each of the two transactions.
    assert applier.batch_limit == 7
    names = {doc["_id"]: doc["full_name"] async for doc in db.people_v2.find()}
    assert names == {i: "client 1" if i == 1 else f"batch {i}" for i in range(10)}


@BOTH
async def test_batch_that_conflicts_with_client_writes_is_applied_in_smaller_transactions(
    people: dict[str, Any], mongo_uri: str
) -> None:
    """A write conflict on a batch of many events halves the events per transaction; every
    event is applied once, the checkpoint ends at the last one, and the limit grows back."""
    db, applier = people["db"], people["applier"]
    count = 40
    await applier.refresh_pairs()
    batch = await events_of(
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
                    # The target writes' command: one bulkWrite from MongoDB 8.0.
                    "failCommands": ["bulkWrite" if applier.combined_writes else "update"],
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


class _TargetWrites(CommandStarts):
    """The target collections written, in the order of the writes: by `update`/`insert`/
    `delete` commands, or by the operations of a `bulkWrite` (consecutive repeats once)."""

    def __init__(self, targets: set[str]) -> None:
        self.targets = targets
        self.order: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        name = event.command_name
        if name == "bulkWrite":
            namespaces = [info["ns"].partition(".")[2] for info in event.command["nsInfo"]]
            for op in event.command["ops"]:
                kind = next(k for k in ("insert", "update", "delete") if k in op)
                self._note(namespaces[op[kind]])
        elif name in ("update", "insert", "delete"):
            self._note(event.command.get(name))

    def _note(self, collection: str) -> None:
        if collection in self.targets and (not self.order or self.order[-1] != collection):
            self.order.append(collection)


@BOTH
async def test_the_namespace_with_more_writes_is_written_first(
    mongo_uri: str, tmp_path: Path
) -> None:
    """The transaction's snapshot is taken at its first command: only the documents of later
    commands can meet a client write after it, so the larger bulk write goes first."""
    writes = _TargetWrites({"people", "people_v2"})
    async with applier_in_process(
        mongo_uri, tmp_path, PEOPLE_MODULE, prefix="order", event_listeners=[writes]
    ) as (db, applier):
        await applier.refresh_pairs()

        async def both_sides() -> None:
            await db.people_v2.insert_one({"_id": 100, "full_name": "one partner write"})
            await db.people.insert_many([{"_id": i, "name": f"n{i}"} for i in range(3)])

        batch = await events_of(db, 4, both_sides)
        assert batch[0]["ns"]["coll"] == "people_v2"  # the smaller side comes first in the batch
        async with applier.opened():
            writes.order.clear()
            await applier.apply(batch)
    # Three partner writes (from the original's inserts) before the one original write.
    assert writes.order == ["people_v2", "people"]
