"""What a batch reads before it plans: the merge base and the target of every event, and a
source document only when the event and the merge base cannot tell what it holds."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import monitoring

from .engine_helpers import PEOPLE_MODULE, CommandStarts, applier_in_process, events_of


class _Finds(CommandStarts):
    """The collections of the `find` commands sent while `recording`."""

    def __init__(self) -> None:
        self.recording = False
        self.collections: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.recording and event.command_name == "find":
            self.collections.append(event.command["find"])


@pytest.fixture
async def people(mongo_uri: str, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """A RUNNING pair `people` <-> `people_v2` and an applier whose finds are recorded."""
    finds = _Finds()
    async with applier_in_process(
        mongo_uri, tmp_path, PEOPLE_MODULE, prefix="reads", event_listeners=[finds]
    ) as (db, applier):
        yield {"db": db, "applier": applier, "finds": finds}


async def _apply_recording(people: dict[str, Any], events: list[dict[str, Any]]) -> list[str]:
    finds: _Finds = people["finds"]
    finds.collections.clear()
    finds.recording = True
    try:
        await people["applier"].apply(events)
    finally:
        finds.recording = False
    # The look-ahead and the checkpoint are not reads of the batch's documents.
    return sorted(c for c in finds.collections if c in ("people", "people_v2", "merge_base"))


async def test_update_with_a_merge_base_reads_the_target_and_the_base_only(
    people: dict[str, Any],
) -> None:
    db = people["db"]
    async with people["applier"].opened():
        inserted = await events_of(
            db, 1, lambda: db.people.insert_one({"_id": 1, "name": "Ada", "email": "a@x"})
        )
        # An insert carries its whole source document: the source is not read either.
        assert await _apply_recording(people, inserted) == ["merge_base", "people_v2"]
        updated = await events_of(
            db, 1, lambda: db.people.update_one({"_id": 1}, {"$set": {"email": "ada@x"}})
        )
        assert await _apply_recording(people, updated) == ["merge_base", "people_v2"]
    target = await db.people_v2.find_one({"_id": 1})
    assert target is not None and target["email"] == "ada@x" and target["full_name"] == "Ada"


async def test_update_without_a_merge_base_reads_its_source(people: dict[str, Any]) -> None:
    """A document older than the sync: the update's fields alone do not make the target, so
    the source document is read and copied whole."""
    db = people["db"]
    await db.people.insert_one({"_id": 2, "name": "Grace", "email": "g@x"})
    async with people["applier"].opened():
        updated = await events_of(
            db, 1, lambda: db.people.update_one({"_id": 2}, {"$set": {"email": "grace@x"}})
        )
        assert await _apply_recording(people, updated) == ["merge_base", "people", "people_v2"]
    target = await db.people_v2.find_one({"_id": 2})
    assert target is not None and target["full_name"] == "Grace" and target["email"] == "grace@x"


async def test_documents_written_on_both_sides_in_one_batch_are_read_on_both(
    people: dict[str, Any],
) -> None:
    """Each side is the other's target: both are read, and each change reaches the other."""
    db = people["db"]
    async with people["applier"].opened():
        seed = await events_of(
            db, 1, lambda: db.people.insert_one({"_id": 3, "name": "Lin", "email": "l@x"})
        )
        await people["applier"].apply(seed)

        async def both() -> None:
            await db.people.update_one({"_id": 3}, {"$set": {"email": "lin@x"}})
            await db.people_v2.update_one({"_id": 3}, {"$set": {"full_name": "Lin Z"}})

        events = await events_of(db, 2, both)
        assert await _apply_recording(people, events) == ["merge_base", "people", "people_v2"]
    original = await db.people.find_one({"_id": 3})
    target = await db.people_v2.find_one({"_id": 3})
    assert original is not None and original["name"] == "Lin Z"
    assert target is not None and target["email"] == "lin@x"


async def test_merge_base_too_large_for_one_record_is_not_kept(people: dict[str, Any]) -> None:
    """Both sides of an 8 MiB document exceed a record: the document is synced all the same,
    and the merge base is left out (an older one removed) instead of failing the batch; the
    document's later changes go on syncing without it."""
    db, applier = people["db"], people["applier"]
    async with applier.opened():
        small = await events_of(
            db, 1, lambda: db.people.insert_one({"_id": 4, "name": "Big", "email": "b@x"})
        )
        await applier.apply(small)
        assert await applier.store.load_bases(applier.registry.pairs[0].original, [4])
        grown = await events_of(
            db,
            1,
            lambda: db.people.update_one({"_id": 4}, {"$set": {"notes": "x" * (8 << 20)}}),
        )
        result = await applier.apply(grown)
        assert result.applied == 1
        target = await db.people_v2.find_one({"_id": 4})
        assert target is not None and len(target["notes"]) == 8 << 20
        assert await applier.store.load_bases(applier.registry.pairs[0].original, [4]) == {}
        # Without a merge base, later changes still go over, each with the fields it touched.
        mailed = await events_of(
            db, 1, lambda: db.people.update_one({"_id": 4}, {"$set": {"email": "big@x"}})
        )
        assert (await applier.apply(mailed)).applied == 1
        renamed = await events_of(
            db, 1, lambda: db.people_v2.update_one({"_id": 4}, {"$set": {"full_name": "Large"}})
        )
        assert (await applier.apply(renamed)).applied == 1
    target = await db.people_v2.find_one({"_id": 4}, {"notes": 0})
    original = await db.people.find_one({"_id": 4}, {"notes": 0})
    assert target is not None and target["email"] == "big@x"
    assert original is not None and original["name"] == "Large" and original["email"] == "big@x"


async def test_reads_side_by_side_leave_the_batch_session_at_their_newest_time(
    people: dict[str, Any],
) -> None:
    """The batch's look-ahead starts from its session's operation time: reads made on
    sessions of their own must leave it at the newest of their times (or newer writes that
    the reads reflect would be taken for older ones)."""
    db, applier = people["db"], people["applier"]
    times: list[Any] = []

    async def read(read_session: Any) -> None:
        await db.people.find_one({}, session=read_session)
        times.append(read_session.operation_time)

    async def write_then_read(read_session: Any) -> None:
        await db.scratch.insert_one({"n": 1}, session=read_session)
        await db.people.find_one({}, session=read_session)
        times.append(read_session.operation_time)

    async with applier.client.start_session(causal_consistency=False) as session:
        await applier._read_all([read, write_then_read], session, side_by_side=True)
        assert len(times) == 2 and None not in times
        assert session.operation_time == max(times)


async def test_a_batch_says_where_its_time_went(
    people: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A batch's result, and its `batch_applied` debug log, give the wall time of each phase
    (what `bench/batch_phases.py` summarises)."""
    caplog.set_level(logging.DEBUG)
    db = people["db"]
    async with people["applier"].opened():
        inserted = await events_of(
            db, 1, lambda: db.people.insert_one({"_id": 3, "name": "Lin", "email": "l@x"})
        )
        result = await people["applier"].apply(inserted)
    assert set(result.phases) == {"read", "look_ahead", "plan", "write", "check", "commit"}
    assert all(spent >= 0 for spent in result.phases.values())
    [logged] = [r for r in caplog.records if getattr(r, "event_name", None) == "batch_applied"]
    phases = logged.__dict__["event_fields"]["phases"]
    assert phases == {phase: round(spent, 4) for phase, spent in result.phases.items()}
