"""A delivery applied in several transactions: each part is read and planned while the part
before it is written, on the documents that part's writes leave."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from bson import Timestamp
from pymongo.errors import AutoReconnect, OperationFailure

from worker.engine._applier import Applier

from .engine_helpers import (
    BOTH_VERSIONS,
    PEOPLE_MODULE,
    applier_in_process,
    events_of,
    unread_events,
)

Prepare = Callable[..., Awaitable[Any]]

# From MongoDB 8.0 a part's writes go out in one command; before, the target writes first, the
# check for newer client writes, then the rest.
pytestmark = pytest.mark.parametrize("mongo_uri", BOTH_VERSIONS, indirect=True)


async def _client_writes(db: Any) -> None:
    """Eight changes; document 1 is changed in every part of two events."""
    await db.people.insert_many([{"_id": i, "name": f"n{i}"} for i in (1, 2)])
    await db.people.update_one({"_id": 1}, {"$set": {"name": "a"}})
    await db.people.insert_one({"_id": 3, "name": "n3"})
    await db.people.update_one({"_id": 1}, {"$set": {"name": "b"}})
    await db.people.update_one({"_id": 2}, {"$set": {"name": "m2"}})
    await db.people.update_one({"_id": 3}, {"$set": {"name": "m3"}})
    await db.people.update_one({"_id": 1}, {"$set": {"name": "c"}})


def _count_prepares(applier: Applier) -> list[tuple[bool, int]]:
    """Record each `_prepare` call: (planned on a part being written, documents carried)."""
    calls: list[tuple[bool, int]] = []
    prepare: Prepare = applier._prepare

    async def counted(*args: Any, **kwargs: Any) -> Any:
        prepared = await prepare(*args, **kwargs)
        calls.append((kwargs.get("previous") is not None, len(prepared.carried)))
        return prepared

    applier._prepare = counted  # type: ignore[method-assign]
    return calls


@contextlib.asynccontextmanager
async def _delivery(
    mongo_uri: str, tmp_path: Path
) -> AsyncIterator[tuple[Any, Applier, list[Any], list[tuple[bool, int]]]]:
    """The people pair, the eight changes of `_client_writes` as one delivery, and an applier
    taking two events per transaction: (database, applier, events, its `_prepare` calls)."""
    async with applier_in_process(mongo_uri, tmp_path, PEOPLE_MODULE, prefix="parts") as (
        db,
        applier,
    ):
        events = await events_of(db, 8, lambda: _client_writes(db))
        applier.max_batch = 2
        yield db, applier, events, _count_prepares(applier)


async def _partners(db: Any) -> dict[int, dict[str, Any]]:
    return {doc["_id"]: doc async for doc in db.people_v2.find({})}


async def test_each_part_is_planned_on_what_the_part_before_leaves(
    mongo_uri: str, tmp_path: Path
) -> None:
    async with _delivery(mongo_uri, tmp_path) as (db, applier, events, calls):
        async with applier.opened():
            result = await applier.apply(events)
        partners = await _partners(db)
        checkpoint = await applier.store.checkpoint()
    assert result.events == 8 and result.applied == 8 and result.dead_letters == 0
    assert {i: doc["full_name"] for i, doc in partners.items()} == {1: "c", 2: "m2", 3: "m3"}
    assert checkpoint is not None and checkpoint["resume_token"] == events[-1]["_id"]
    # One read and plan per part, none again: the first part alone, each later one while
    # the part before it was written, on document 1 as that part left it.
    assert len(calls) == 4
    assert [planned_ahead for planned_ahead, _ in calls] == [False, True, True, True]
    assert all(carried >= 1 for _, carried in calls[1:])


async def test_a_client_write_to_a_carried_document_makes_the_part_read_and_plan_again(
    mongo_uri: str, tmp_path: Path
) -> None:
    async with _delivery(mongo_uri, tmp_path) as (db, applier, events, calls):
        still_as_planned = applier._still_as_planned
        checked: list[bool] = []

        async def client_writes_first(prepared: Any) -> bool:
            if not checked:
                # After the first part committed, before the second is checked: a client
                # changes the partner document the second part took from the first's plan.
                await db.people_v2.update_one({"_id": 1}, {"$set": {"loyalty": 7}})
            checked.append(await still_as_planned(prepared))
            return checked[-1]

        applier._still_as_planned = client_writes_first  # type: ignore[method-assign]
        async with applier.opened():
            await applier.apply(events)
        partners = await _partners(db)
    assert checked[0] is False and all(checked[1:])
    # The second part was read and planned again, in its turn, from the server.
    assert len(calls) == 5 and calls[2] == (False, 0)
    assert partners[1]["loyalty"] == 7 and partners[1]["full_name"] == "c"


async def test_a_part_that_is_retried_drops_the_part_planned_on_it(
    mongo_uri: str, tmp_path: Path
) -> None:
    async with _delivery(mongo_uri, tmp_path) as (db, applier, events, calls):
        execute = applier._execute
        failed: list[int] = []

        async def fails_once(prepared: Any, *args: Any) -> None:
            if not failed:
                failed.append(len(prepared.events))
                raise OperationFailure("shutting down", code=91)
            await execute(prepared, *args)

        applier._execute = fails_once  # type: ignore[method-assign]
        async with applier.opened():
            result = await applier.apply(events)
        partners = await _partners(db)
    assert failed == [2] and result.applied == 8
    assert {i: doc["full_name"] for i, doc in partners.items()} == {1: "c", 2: "m2", 3: "m3"}
    # First part, the second planned on it, the first again (its retry), the second again.
    assert [planned_ahead for planned_ahead, _ in calls[:4]] == [False, True, False, False]


async def test_without_session_tags_parts_are_applied_one_after_the_other(
    mongo_uri: str, tmp_path: Path
) -> None:
    """With field tags the worker's own writes come back as echoes that one part expects
    and the next consumes: nothing is planned ahead."""
    async with _delivery(mongo_uri, tmp_path) as (db, applier, events, calls):
        applier.transactions = False
        applier.tag_field = "_psync"
        applier.echoes_filtered = False
        async with applier.opened():
            await applier.apply(events)
        partners = await _partners(db)
    assert {i: doc["full_name"] for i, doc in partners.items()} == {1: "c", 2: "m2", 3: "m3"}
    assert [planned_ahead for planned_ahead, _ in calls] == [False] * 4


async def test_a_stopping_worker_ends_a_delivery_after_the_part_in_flight(
    mongo_uri: str, tmp_path: Path
) -> None:
    async with _delivery(mongo_uri, tmp_path) as (db, applier, events, _):
        applier.stopping = anyio.Event()
        execute = applier._execute

        async def stop_during_the_first(prepared: Any, *args: Any) -> None:
            assert applier.stopping is not None
            applier.stopping.set()
            await execute(prepared, *args)

        applier._execute = stop_during_the_first  # type: ignore[method-assign]
        async with applier.opened():
            result = await applier.apply(events)
        checkpoint = await applier.store.checkpoint()
        partners = await _partners(db)
    # The part in flight committed with its checkpoint; the rest is read again after a restart.
    assert result.events == 2 and result.applied == 2
    assert checkpoint is not None and checkpoint["resume_token"] == events[1]["_id"]
    assert sorted(partners) == [1, 2]


@pytest.mark.parametrize("state_changed", [False, True], ids=["carried", "dropped"])
async def test_the_next_delivery_s_first_part_is_planned_from_the_reader_s_unread_events(
    mongo_uri: str, tmp_path: Path, state_changed: bool
) -> None:
    """While a delivery's last part is written, the next delivery's first part is planned from
    the events the reader holds unread, and used if that delivery begins with them and no pair
    changed state in between."""
    async with _delivery(mongo_uri, tmp_path) as (db, applier, events, calls):
        unread = applier.unread = unread_events(*events)
        async with applier.opened():
            unread.taken(4)  # the runner takes a delivery of four events
            first = await applier.apply(events[:4])
            if state_changed:
                applier.routing_changes += 1  # as a refresh that found a pair paused would
            unread.taken(4)
            second = await applier.apply(events[4:])
        partners = await _partners(db)
    assert first.applied == 4 and second.applied == 4
    assert {i: doc["full_name"] for i, doc in partners.items()} == {1: "c", 2: "m2", 3: "m3"}
    planned_ahead = [ahead for ahead, _ in calls]
    if state_changed:
        # The carried part is dropped; the second delivery plans its first part again.
        assert planned_ahead == [False, True, True, False, True]
    else:
        assert planned_ahead == [False, True, True, True]


async def test_a_carried_part_s_own_events_are_not_newer_writes_to_it(
    mongo_uri: str, tmp_path: Path
) -> None:
    """Planned while its events were still unread, the part must not take them for client
    writes after it: a partner change followed by a newer original change of the same field
    ends with the original's value on both sides."""
    async with _delivery(mongo_uri, tmp_path) as (db, applier, events, _):
        async with applier.opened():
            await applier.apply(events)  # documents 1 to 3 on both sides

            async def later_writes() -> None:
                for name in ("f1", "f2", "f3", "f4"):
                    await db.people.update_one({"_id": 2}, {"$set": {"name": name}})
                await db.people_v2.update_one({"_id": 1}, {"$set": {"full_name": "older"}})
                await db.people.update_one({"_id": 1}, {"$set": {"name": "newer"}})

            later = await events_of(db, 6, later_writes)
            unread = applier.unread = unread_events(*later)
            unread.taken(4)
            await applier.apply(later[:4])
            assert applier._carry is not None  # the partner and original changes, planned
            unread.taken(2)
            await applier.apply(later[4:])
        original = await db.people.find_one({"_id": 1})
        partner = await db.people_v2.find_one({"_id": 1})
    assert original is not None and partner is not None
    assert (original["name"], partner["full_name"]) == ("newer", "newer")


async def test_a_failed_check_of_the_carried_documents_plans_the_part_again(
    mongo_uri: str, tmp_path: Path
) -> None:
    """The part before has committed; the read that checks the next part's carried documents
    fails (a dropped connection): the next part is read and planned again in its turn."""
    async with _delivery(mongo_uri, tmp_path) as (db, applier, events, calls):
        carried_as_planned = applier._carried_as_planned
        failures: list[int] = []

        async def fails_once(prepared: Any) -> bool:
            if not failures:
                failures.append(len(prepared.carried))
                raise AutoReconnect("connection dropped")
            return await carried_as_planned(prepared)

        applier._carried_as_planned = fails_once  # type: ignore[method-assign]
        async with applier.opened():
            result = await applier.apply(events)
        partners = await _partners(db)
    assert failures and result.applied == 8
    assert {i: doc["full_name"] for i, doc in partners.items()} == {1: "c", 2: "m2", 3: "m3"}
    assert [ahead for ahead, _ in calls][:3] == [False, True, False]


async def test_a_new_start_point_drops_the_part_planned_for_the_next_delivery(
    mongo_uri: str, tmp_path: Path
) -> None:
    """A pair's start point (what a restarted backfill moves) decides which events apply, as
    its state does: a refresh between two deliveries that finds it moved, the state as before,
    drops the part planned from the reader's unread events."""
    async with _delivery(mongo_uri, tmp_path) as (db, applier, events, calls):
        unread = applier.unread = unread_events(*events)
        original = applier.registry.pairs[0].original
        async with applier.opened():
            unread.taken(4)
            await applier.apply(events[:4])
            assert applier._carry is not None
            await applier.store.pairs.update_one(
                {"_id": original}, {"$set": {"start_at": Timestamp(1, 1)}}
            )
            await applier.refresh_pairs()
            unread.taken(4)
            await applier.apply(events[4:])
        partners = await _partners(db)
    assert {i: doc["full_name"] for i, doc in partners.items()} == {1: "c", 2: "m2", 3: "m3"}
    assert [ahead for ahead, _ in calls] == [False, True, True, False, True]


async def test_a_pause_and_a_resume_take_effect_between_the_parts_of_a_delivery(
    mongo_uri: str, tmp_path: Path
) -> None:
    """Behind a backlog one delivery is several transactions: the pair states are read again
    between them, so a pause holds the next parts' events, and a resume replays the held
    events before the part after it."""
    async with _delivery(mongo_uri, tmp_path) as (db, applier, events, _):
        applier.refresh_interval = 0.0  # read the states before every part after the first
        original = applier.registry.pairs[0].original
        store = applier.store
        apply_part, replay_held = applier._apply_part, applier.replay_held
        parts: list[int] = []
        while_paused: list[tuple[int, dict[int, str]]] = []
        replays: list[tuple[int, int]] = []

        async def then_change_state(*args: Any) -> Any:
            outcome = await apply_part(*args)
            parts.append(len(args[0]))
            if len(parts) == 1:
                await store.set_state(original, "PAUSED", expect=["RUNNING"], paused_from="RUNNING")
            elif len(parts) == 3:
                held = await store.held_events.count_documents({})
                names = {i: doc["full_name"] for i, doc in (await _partners(db)).items()}
                while_paused.append((held, names))
                await store.set_state(original, "RUNNING", expect=["PAUSED"], paused_from=None)
            return outcome

        async def counted_replay(max_docs: int, beyond: Any = ()) -> int:
            replays.append((len(parts), await replay_held(max_docs, beyond)))
            return replays[-1][1]

        applier._apply_part = then_change_state  # type: ignore[method-assign]
        applier.replay_held = counted_replay  # type: ignore[method-assign]
        async with applier.opened():
            result = await applier.apply(events)
        held_after = await store.held_events.count_documents({})
        partners = await _partners(db)
    assert result.events == 8 and parts == [2, 2, 2, 2]
    # The two parts after the pause were held, not applied: the partners are as the first
    # part left them.
    assert while_paused == [(4, {1: "n1", 2: "n2"})]
    # The resume replayed the four held events before the last part, and the pair converged.
    assert (3, 4) in replays and held_after == 0
    assert {i: doc["full_name"] for i, doc in partners.items()} == {1: "c", 2: "m2", 3: "m3"}
