"""The batch look-ahead: newer client writes to a batch's targets, from the reader's unread
events first and from the server only after them."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from anyio import wait_all_tasks_blocked
from bson import Timestamp
from pymongo import AsyncMongoClient

from transforms import load_registry
from worker.engine._applier import Applier
from worker.engine._lease import Lease
from worker.engine._stream import UnreadEvents, token_time
from worker.metrics import Metrics
from worker.state import StateStore, id_key

from .engine_helpers import PEOPLE_MODULE, next_events, unread_events, write_module


@contextlib.asynccontextmanager
async def _applier_on(mongo_uri: str, tmp_path: Path, holder: str) -> AsyncIterator[Any]:
    """A pair of people collections in a database of their own, and an applier holding the
    lease for it; (pair, database, applier). Both databases are dropped afterwards."""
    name = f"ahead_{uuid.uuid4().hex[:8]}"
    registry = load_registry(
        [write_module(tmp_path, name, PEOPLE_MODULE, db=name)], entry_points=False
    )
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        store = StateStore(client[f"{name}_state"])
        await store.ensure_collections()
        lease = Lease(store, holder, 30.0)
        assert await lease.try_acquire()
        applier = Applier(client, store, registry, lease=lease, metrics=Metrics())
        yield registry.pairs[0], client[name], applier
    finally:
        await client.drop_database(name)
        await client.drop_database(f"{name}_state")
        await client.close()


async def test_unread_events_come_first_and_the_server_is_read_only_after_them(
    mongo_uri: str, tmp_path: Path
) -> None:
    """A batch's look-ahead takes newer writes from the reader's unread events, then asks the
    server only for what follows the newest of them, and stops at the snapshot's time."""
    async with _applier_on(mongo_uri, tmp_path, "look-ahead-test") as (pair, db, applier):
        client = db.client
        await db.people.insert_many([{"_id": i, "name": f"n{i}"} for i in (1, 2)])
        await db.people_v2.insert_many([{"_id": i, "full_name": f"n{i}"} for i in (1, 2)])
        async with await db.watch(max_await_time_ms=50) as stream:
            await db.people.update_one({"_id": 1}, {"$set": {"name": "batch"}})
            await db.people_v2.update_one({"_id": 1}, {"$set": {"full_name": "newer"}})
            await db.people_v2.update_one({"_id": 2}, {"$set": {"full_name": "not a target"}})
            await db.people_v2.update_one({"_id": 1}, {"$set": {"loyalty": 5}})
            batch_event, newer, other, tail = await next_events(stream, 4)
            past_tail = stream.resume_token
        work = [(pair, "original", batch_event, 0)]
        checkpoint = (batch_event["_id"], batch_event["clusterTime"])
        target = (pair.partner, id_key(1))
        # The reader holds `newer` (reported here with a path the server's event does not
        # have, to tell which copy was read) and `other`; the server holds `tail` after them.
        held = {**newer, "updateDescription": {"updatedFields": {"marker": 1}, "removedFields": []}}
        applier.unread = unread_events(held, other)
        async with applier.opened():
            assert applier.session is not None
            await client.admin.command("ping", session=applier.session)  # the read's time
            horizon = applier.session.operation_time
            assert horizon is not None
            read_ahead = await applier._peek_ahead(work, checkpoint, read_ahead=True, until=horizon)
            from_server = await applier._peek_ahead(
                work, checkpoint, read_ahead=False, until=horizon
            )
            # Only what came after `since`: the second look, once the writes hold the targets.
            since_newer = await applier._peek_ahead(
                work, checkpoint, read_ahead=False, since=newer["clusterTime"], until=horizon
            )
            # An unread event past the horizon ends the look-ahead: nothing newer is asked for.
            late = {**held, "clusterTime": Timestamp(horizon.time + 60, 1)}
            applier.unread = unread_events(other, late)
            past_snapshot = await applier._peek_ahead(
                work, checkpoint, read_ahead=True, until=horizon
            )
            # Events of the same delivery after a split batch come before the reader's.
            beyond = await applier._peek_ahead(
                work, checkpoint, read_ahead=True, beyond=[held], until=horizon
            )
            # A reader that drained its stream reports a position past its last event (past
            # writes its filters left out): the server is read from there, not from the event.
            applier.unread = unread_events(held, other)
            applier.unread.reached(past_tail)
            from_reached = await applier._peek_ahead(
                work, checkpoint, read_ahead=True, until=horizon
            )
            # The same for a batch's own read, when no summary of the history is kept.
            applier._ahead = None
            applier.ahead_after_unread = 1_000
            per_batch_from_reached = await applier._peek_ahead(
                work, checkpoint, read_ahead=True, until=horizon
            )
        assert read_ahead == {target: frozenset({"marker", "loyalty"})}
        assert from_server == {target: frozenset({"full_name", "loyalty"})}
        assert since_newer == {target: frozenset({"loyalty"})}
        assert past_snapshot == {}
        assert beyond == {target: frozenset({"marker"})}
        assert from_reached == {target: frozenset({"marker"})}
        assert per_batch_from_reached == {target: frozenset({"marker"})}
        assert tail["documentKey"] == {"_id": 1}


def _change(n: int, doc: int, op: str = "update", coll: str = "c") -> dict[str, Any]:
    event: dict[str, Any] = {
        "_id": {"_data": f"{n:04d}"},
        "operationType": op,
        "clusterTime": Timestamp(1000, n),
        "ns": {"db": "db", "coll": coll},
    }
    if op != "invalidate":
        event["documentKey"] = {"_id": doc}
    return event


def test_unread_events_are_found_by_document_and_forgotten_once_taken() -> None:
    """The reader's unread events answer per document, oldest first; taken events (even ones
    taken before the reader recorded them) are gone; invalidates and the newest time are known."""
    unread = UnreadEvents()
    events = [_change(1, 1), _change(2, 2), _change(3, 1, coll="d"), _change(4, 1)]
    unread.taken(1)  # the applier took the first event before the reader recorded it
    for event in events:
        unread.add(event)
    assert len(unread) == 3
    assert unread.for_documents([("db.c", id_key(1)), ("db.d", id_key(1))]) == events[2:]
    assert unread.for_documents([("db.c", id_key(2))]) == [events[1]]
    assert unread.last_token == events[-1]["_id"]
    assert unread.newest_time() == Timestamp(1000, 4)
    assert not unread.has_invalidate()
    unread.add(_change(5, 0, op="invalidate"))
    assert unread.has_invalidate()
    unread.taken(2)
    assert unread.for_documents([("db.c", id_key(1)), ("db.c", id_key(2))]) == [events[3]]
    unread.taken(2)
    assert len(unread) == 0 and not unread.has_invalidate() and unread.newest_time() is None
    assert unread.for_documents([("db.c", id_key(1))]) == []


def _token(seconds: int, increment: int) -> dict[str, str]:
    return {"_data": f"82{seconds:08X}{increment:08X}2B0229296E04"}


def test_the_history_beyond_the_reader_starts_at_the_newest_position_it_reached() -> None:
    """After the newest handed-over event, or after the stream's post-batch token when the
    reader drained the stream past events its filters left out; a later event takes over."""
    unread = UnreadEvents()
    assert unread.resume_point is None
    first = {**_change(4, 1), "_id": _token(1000, 4)}
    unread.add(first)
    assert unread.resume_point == first["_id"]
    unread.reached(_token(1000, 4))  # the post-batch token of that event's batch
    assert unread.resume_point == first["_id"]
    drained = _token(1000, 9)  # an empty getMore, past the worker's own writes
    unread.reached(drained)
    assert unread.resume_point == drained
    later = {**_change(12, 1), "_id": _token(1000, 12)}
    unread.add(later)
    assert unread.resume_point == later["_id"]
    unread.reached(_token(1000, 11))  # older than what it knows: ignored
    assert unread.resume_point == later["_id"]


def test_resume_tokens_give_their_cluster_time() -> None:
    """A resume token's leading Timestamp is read back; other formats give None."""
    assert token_time({"_data": "826B0E7C68000003FB8000000000000000"}) == Timestamp(
        0x6B0E7C68, 0x3FB
    )
    assert token_time({"_data": "01ABCDEF"}) is None
    assert token_time({"_data": "82zz"}) is None
    assert token_time(None) is None


async def test_look_ahead_waits_for_a_busy_reader_to_pass_its_horizon() -> None:
    """The reader covers a cluster time once it handed over a later event, or reached a later
    position; a busy reader is waited for, an idle one is not (the server answers then)."""
    unread = UnreadEvents()
    horizon = Timestamp(1000, 5)
    assert not await unread.wait_covers(horizon, within=0.01)  # idle: no wait
    unread.add(_change(4, 1))
    assert not unread.covers(horizon)

    async def reader() -> None:
        # Each step once the look-ahead waits for the reader.
        await wait_all_tasks_blocked()
        unread.add(_change(5, 2))  # the horizon's own time: not past it yet
        await wait_all_tasks_blocked()
        unread.reached({"_data": "82000003E8000000068000"})  # position (1000, 6)

    async with anyio.create_task_group() as group:
        group.start_soon(reader)
        with anyio.fail_after(5):
            assert await unread.wait_covers(horizon, within=5)
    assert unread.covers(horizon)
    assert not unread.covers(Timestamp(1000, 6))
    unread.add(_change(7, 1))
    assert unread.covers(Timestamp(1000, 6))


async def test_a_reader_far_behind_is_not_waited_for(mongo_uri: str, tmp_path: Path) -> None:
    """A batch's look-ahead waits for a busy reader only when it can pass the horizon soon: a
    reader held back by a full buffer is not waited for (a backlog's batches each waited the
    whole wait), and the newer write is still found, in a summary of the history past it."""
    async with _applier_on(mongo_uri, tmp_path, "far-behind-test") as (pair, db, applier):
        client = db.client
        await db.people.insert_one({"_id": 1, "name": "n1"})
        await db.people_v2.insert_one({"_id": 1, "full_name": "n1"})
        async with await db.watch(max_await_time_ms=50) as stream:
            await db.people.update_one({"_id": 1}, {"$set": {"name": "batch"}})
            await db.people_v2.insert_one({"_id": 2, "full_name": "unrelated"})
            await db.people_v2.update_one({"_id": 1}, {"$set": {"loyalty": 5}})
            batch_event, unrelated, _ = await next_events(stream, 3)
        work = [(pair, "original", batch_event, 0)]
        checkpoint = (batch_event["_id"], batch_event["clusterTime"])
        waits: list[Timestamp] = []

        def spied(unread: UnreadEvents) -> UnreadEvents:
            real = unread.wait_covers

            async def wait_covers(horizon: Timestamp, *, within: float) -> bool:
                waits.append(horizon)
                return await real(horizon, within=within)

            unread.wait_covers = wait_covers  # type: ignore[method-assign]
            return unread

        async with applier.opened():
            assert applier.session is not None
            await client.admin.command("ping", session=applier.session)
            horizon = applier.session.operation_time
            assert horizon is not None
            # The reader has handed over the unrelated write only, and is busy (it just moved).
            applier.unread = spied(unread_events(unrelated))
            applier.ahead_after_unread = 1  # its buffer is full
            held_back = await applier._peek_ahead(work, checkpoint, read_ahead=True, until=horizon)
            assert waits == []
            assert applier._ahead is not None  # answered by a summary
            # The same reader with room in its buffer, close behind: it is waited for.
            applier._ahead = None
            applier.unread = spied(unread_events(unrelated))
            applier.ahead_after_unread = 1_000
            close_behind = await applier._peek_ahead(
                work, checkpoint, read_ahead=True, until=horizon
            )
            assert waits == [horizon]
        target = (pair.partner, id_key(1))
        assert held_back == {target: frozenset({"loyalty"})}
        assert close_behind == {target: frozenset({"loyalty"})}
