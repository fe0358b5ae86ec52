"""A worker further behind than its reader holds: the client writes past the reader are read
once into a summary (`WritesAhead`) for many batches, not once per batch, and answer each
batch's look-ahead exactly as the server would."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pymongo import AsyncMongoClient, monitoring

from worker.config import BatchConfig
from worker.engine import _runner
from worker.engine._applier import AHEAD_AFTER_SECONDS, Applier
from worker.engine._stream import UnreadEvents

from .engine_helpers import (
    PEOPLE_MODULE,
    CommandStarts,
    applier_in_process,
    events_of,
    eventually,
    make_config,
    running_worker,
    write_module,
)


class _ChangeStreamOpens(CommandStarts):
    """Counts the change streams opened: a batch's own look-ahead filters on its documents."""

    def __init__(self) -> None:
        self.per_batch = 0
        self.other = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name != "aggregate":
            return
        pipeline = event.command.get("pipeline") or []
        if not pipeline or "$changeStream" not in pipeline[0]:
            return
        if "documentKey._id" in repr(pipeline):
            self.per_batch += 1
        else:
            self.other += 1


@pytest.fixture
async def people(mongo_uri: str, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """The people pair RUNNING, two documents synced to both sides, an applier in this process
    and a database handle of a client of its own."""
    opens = _ChangeStreamOpens()
    # The clients write through a client of their own: one client's pool hands the applier's
    # session a server session the test's writes used, and they would look like its own.
    writer: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        async with applier_in_process(
            mongo_uri, tmp_path, PEOPLE_MODULE, prefix="ahead", event_listeners=[opens]
        ) as (db, applier):
            db = writer[db.name]

            async def seed() -> None:
                await db.people.insert_many(
                    [{"_id": doc_id, "name": f"n{doc_id}", "tier": "basic"} for doc_id in (1, 2)]
                )

            inserts = await events_of(db, 2, seed)
            async with applier.opened():
                await applier.apply(inserts)
            assert await _names(db, 2) == ("n2", "n2")
            opens.per_batch = opens.other = 0
            yield {"db": db, "applier": applier, "opens": opens}
    finally:
        await writer.close()


def _hand_over(unread: UnreadEvents, *events: Any) -> list[Any]:
    """The reader hands `events` over and the applier takes them at once."""
    for event in events:
        unread.add(event)
    unread.taken(len(events))
    return list(events)


async def _names(db: Any, doc_id: int) -> tuple[Any, Any]:
    original = await db.people.find_one({"_id": doc_id})
    partner = await db.people_v2.find_one({"_id": doc_id})
    return original.get("name"), partner.get("full_name")


async def test_one_summary_answers_many_batches_like_the_server(people: dict[str, Any]) -> None:
    """The reader has handed over one event; four newer client writes are still on the server.
    The first batch reads them into the summary and leaves the newer partner name alone; the
    next batches are answered from it without reading those events again, and without any
    look-ahead of their own on the server."""
    db, applier, opens = people["db"], people["applier"], people["opens"]

    async def writes() -> None:
        await db.people.update_one({"_id": 1}, {"$set": {"name": "older"}})
        await db.people_v2.update_one({"_id": 1}, {"$set": {"full_name": "newer"}})
        await db.people_v2.update_one({"_id": 1}, {"$set": {"full_name": "n1"}})
        await db.people.update_one({"_id": 2}, {"$set": {"name": "second"}})
        await db.people_v2.update_one({"_id": 2}, {"$set": {"loyalty": 5}})

    first, newer, back, second, loyalty = await events_of(db, 5, writes)
    unread = applier.unread = UnreadEvents()
    async with applier.opened():
        await applier.apply(_hand_over(unread, first))
        # The partner's name was written later, and back to what the merge base holds: only
        # the look-ahead knows the partner's value is the newer one.
        assert await _names(db, 1) == ("older", "n1")
        summary = applier._ahead
        assert summary is not None
        assert applier.ahead_events_read == 4
        await applier.apply(_hand_over(unread, newer, back, second))
        assert applier._ahead is summary
        assert applier.ahead_events_read == 4, "the summary read its events again"
        await applier.apply(_hand_over(unread, loyalty))
    assert await _names(db, 1) == ("n1", "n1")
    assert await _names(db, 2) == ("second", "second")
    assert (await db.people_v2.find_one({"_id": 2}))["loyalty"] == 5
    assert opens.per_batch == 0
    assert opens.other >= 3  # the summary's reads: one per look, each a short stream


async def test_a_write_in_the_batchs_own_transaction_is_asked_of_the_server(
    people: dict[str, Any],
) -> None:
    """A client transaction writes the original's name, then the partner's name to another value
    and back: its events share one cluster time, and the partner ends as the merge base knows
    it, so only the look-ahead can tell that the partner's write is the later one. With only the
    first event handed over, the summary cannot tell those writes from the batch's own time, so
    the batch asks the server, which knows their order."""
    db, applier, opens = people["db"], people["applier"], people["opens"]

    async def transaction() -> None:
        async with db.client.start_session() as session, await session.start_transaction():
            await db.people.update_one(
                {"_id": 1}, {"$set": {"name": "txn original"}}, session=session
            )
            for value in ("txn partner", "n1"):
                await db.people_v2.update_one(
                    {"_id": 1}, {"$set": {"full_name": value}}, session=session
                )

    events = await events_of(db, 3, transaction)
    assert len({event["clusterTime"] for event in events}) == 1
    unread = applier.unread = UnreadEvents()
    async with applier.opened():
        await applier.apply(_hand_over(unread, events[0]))
        assert await _names(db, 1) == ("txn original", "n1")
        assert opens.per_batch >= 1
        await applier.apply(_hand_over(unread, *events[1:]))
    assert await _names(db, 1) == ("n1", "n1")


async def test_a_summary_over_its_limit_gives_way_to_per_batch_reads(
    people: dict[str, Any],
) -> None:
    """Past `ahead_limit` document paths the summary is dropped and each batch reads its own
    documents' newer writes from the server, with the same outcome."""
    db, applier, opens = people["db"], people["applier"], people["opens"]
    applier.ahead_limit = 1

    async def writes() -> None:
        await db.people.update_one({"_id": 1}, {"$set": {"name": "older"}})
        await db.people_v2.update_one({"_id": 1}, {"$set": {"full_name": "newer"}})
        await db.people_v2.update_one({"_id": 2}, {"$set": {"full_name": "two", "loyalty": 1}})

    first, newer, two = await events_of(db, 3, writes)
    unread = applier.unread = UnreadEvents()
    async with applier.opened():
        await applier.apply(_hand_over(unread, first))
        assert applier._ahead is None
        assert applier._ahead_refused is not None
        assert opens.per_batch >= 1
        await applier.apply(_hand_over(unread, newer, two))
    assert await _names(db, 1) == ("newer", "newer")
    assert await _names(db, 2) == ("two", "two")


async def test_a_worker_far_behind_its_reader_converges_with_the_last_writes(
    mongo_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog many times what the reader may hold (30 events here), on both sides and the
    same documents, written while the worker was stopped: the next worker works it off through
    summaries and ends with every field's last write, on both sides."""
    monkeypatch.setattr(_runner, "READ_AHEAD_EVENTS", 30)
    db_name = f"behind_{uuid.uuid4().hex[:8]}"
    module = write_module(tmp_path, db_name, PEOPLE_MODULE, db=db_name)
    config = make_config(mongo_uri, db_name, module, batch=BatchConfig(max_docs=10, max_delay_ms=5))
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    db = client[db_name]
    try:
        async with running_worker(config):
            await db.people.insert_many(
                [{"_id": i, "name": f"n{i}", "tier": "basic"} for i in range(10)]
            )
            await eventually(
                lambda: _count(db.people_v2, 10), within=15, what="the seed on the partner"
            )
        expected: dict[int, str] = {}
        for step in range(400):
            doc_id = step * 7 % 10
            value = f"v{step}"
            if step % 3:
                await db.people.update_one({"_id": doc_id}, {"$set": {"name": value}})
            else:
                await db.people_v2.update_one({"_id": doc_id}, {"$set": {"full_name": value}})
            expected[doc_id] = value

        async def agreed() -> bool:
            for doc_id, value in expected.items():
                if await _names(db, doc_id) != (value, value):
                    return False
            return True

        async with running_worker(config) as worker:
            await eventually(agreed, within=60, what="both sides at the last writes")
            assert isinstance(worker.applier, Applier)
            assert worker.applier.ahead_events_read > 0
    finally:
        await client.drop_database(db_name)
        await client.drop_database(f"{db_name}_state")
        await client.close()


async def _count(collection: Any, wanted: int) -> bool:
    return await collection.count_documents({}) == wanted


async def test_a_reader_seconds_behind_uses_a_summary_before_its_buffer_fills(
    people: dict[str, Any],
) -> None:
    """The buffer is far from half full, as when a backlog has just started: a reader close
    behind the batch's read time leaves the look-ahead to the batch's own filtered read; one
    `AHEAD_AFTER_SECONDS` behind gets a summary."""
    db, applier, opens = people["db"], people["applier"], people["opens"]
    applier.ahead_after_unread = 1_000

    async def close_behind() -> None:
        await db.people.update_one({"_id": 1}, {"$set": {"name": "close"}})
        await db.people_v2.update_one({"_id": 1}, {"$set": {"loyalty": 1}})

    first, _ = await events_of(db, 2, close_behind)
    unread = applier.unread = UnreadEvents()
    async with applier.opened():
        await applier.apply(_hand_over(unread, first))
    assert applier._ahead is None
    assert opens.per_batch >= 1

    async def far_behind() -> None:
        await db.people.update_one({"_id": 2}, {"$set": {"name": "far"}})
        # The input is two writes this far apart in cluster time, which follows the wall clock
        # (a server's cluster time does not move while nothing is written, so there is no
        # condition to wait on instead).
        await anyio.sleep(AHEAD_AFTER_SECONDS + 0.5)
        await db.people_v2.update_one({"_id": 2}, {"$set": {"loyalty": 2}})

    first, _ = await events_of(db, 2, far_behind)
    opens.per_batch = 0
    unread = applier.unread = UnreadEvents()
    async with applier.opened():
        await applier.apply(_hand_over(unread, first))
    assert applier._ahead is not None
    assert opens.per_batch == 0
    assert await _names(db, 2) == ("far", "far")
