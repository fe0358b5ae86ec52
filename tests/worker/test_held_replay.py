"""Replaying a resumed pair's held changes: they are older than everything the stream brought
since, whose newer writes the replay finds where a batch from the stream finds them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient, monitoring

import worker.engine._applier as applier_module
from worker.engine._ahead import HeldAhead
from worker.engine._applier import Applier
from worker.state import id_key

from .engine_helpers import (
    BOTH_VERSIONS,
    PEOPLE_MODULE,
    TWO_PAIRS_MODULE,
    CommandStarts,
    another_applier,
    applier_in_process,
    events_of,
    unread_events,
)

pytestmark = pytest.mark.parametrize("mongo_uri", BOTH_VERSIONS, indirect=True)


class _ChangeStreams(CommandStarts):
    """How many change streams the applier's client opened."""

    def __init__(self) -> None:
        self.opened = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "aggregate" and any(
            "$changeStream" in stage for stage in event.command.get("pipeline", [])
        ):
            self.opened += 1


@contextlib.asynccontextmanager
async def _paused_with_held(
    mongo_uri: str, tmp_path: Path, names: list[str], *, ahead_limit: int | None = None
) -> AsyncIterator[tuple[Any, Applier, str, _ChangeStreams]]:
    """Document 1 synced, then the pair paused and one update of its `name` per entry of
    `names` held: (database, applier opened, pair, change streams counter). `ahead_limit`:
    the applier's, from before the pause."""
    streams = _ChangeStreams()
    async with applier_in_process(
        mongo_uri, tmp_path, PEOPLE_MODULE, prefix="replay", event_listeners=[streams]
    ) as (db, applier):
        pair = applier.registry.pairs[0].original
        if ahead_limit is not None:
            applier.ahead_limit = ahead_limit
        async with applier.opened():
            inserted = await events_of(db, 1, lambda: db.people.insert_one({"_id": 1, "name": "n"}))
            await applier.apply(inserted)
            await applier.store.set_state(pair, "PAUSED", expect=["RUNNING"], paused_from="RUNNING")
            await applier.refresh_pairs()

            async def updates() -> None:
                for name in names:
                    await db.people.update_one({"_id": 1}, {"$set": {"name": name}})

            if names:
                await applier.apply(await events_of(db, len(names), updates))
            assert await applier.store.held_events.count_documents({}) == len(names)
            yield db, applier, pair, streams


async def _resume(applier: Applier, pair: str) -> None:
    await applier.store.set_state(pair, "RUNNING", expect=["PAUSED"], paused_from=None)
    await applier.refresh_pairs()


async def _as_if_restarted(applier: Applier) -> None:
    """Forget what the applier held itself: the replay reads the held changes from the server,
    as a worker started again (or one that took over the lease) does."""
    applier.forget_replays()
    await applier.refresh_pairs()


def _paused_after_the_first_transaction(applier: Applier, pair: str) -> list[int]:
    """Make the pair's state PAUSED (in the state database only) once the applier's first
    transaction from now on has committed; returns the sizes of its transactions, as they
    commit."""
    apply_with_retries = applier._apply_with_retries
    transactions: list[int] = []

    async def then_pause(events: Any, **kwargs: Any) -> Any:
        result = await apply_with_retries(events, **kwargs)
        transactions.append(len(events))
        if len(transactions) == 1:
            await applier.store.set_state(pair, "PAUSED", expect=["RUNNING"], paused_from="RUNNING")
        return result

    applier._apply_with_retries = then_pause  # type: ignore[method-assign]
    return transactions


def _conflicts(applier: Applier, pair: str) -> float:
    return applier.metrics.conflicts.labels(pair=pair)._value.get()


async def test_a_replay_finds_newer_writes_among_the_reader_s_events_and_the_delivery_s(
    mongo_uri: str, tmp_path: Path
) -> None:
    """The newer client write to the held change's target is in the delivery being applied
    (`beyond`), and the reader has handed over everything past the replay's reads: it is found
    there (a conflict the later write wins), and the server's history is not read at all."""
    async with _paused_with_held(mongo_uri, tmp_path, ["older"]) as (db, applier, pair, streams):
        newer = await events_of(
            db, 1, lambda: db.people_v2.update_one({"_id": 1}, {"$set": {"full_name": "newer"}})
        )
        await _resume(applier, pair)
        unread = applier.unread = unread_events()
        unread.reached({"_data": f"82{0xFFFFFFF0:08X}{1:08X}"})  # past any read's time
        peek_ahead = applier._peek_ahead
        found: list[Any] = []

        async def first_looks(*args: Any, **kwargs: Any) -> Any:
            newer_writes = await peek_ahead(*args, **kwargs)
            if kwargs.get("since") is None:
                found.append(newer_writes)
            return newer_writes

        applier._peek_ahead = first_looks  # type: ignore[method-assign]
        streams.opened = 0
        replayed = await applier.replay_held(10, beyond=newer)
        assert (replayed, streams.opened) == (1, 0)
        assert found == [{(f"{db.name}.people_v2", id_key(1)): frozenset({"full_name"})}]
        assert _conflicts(applier, pair) == 1
        await applier.apply(newer)
        original = await db.people.find_one({"_id": 1})
        partner = await db.people_v2.find_one({"_id": 1})
    assert original is not None and partner is not None
    assert (original["name"], partner["full_name"]) == ("newer", "newer")


async def test_a_pair_paused_again_stops_its_replay_between_batches(
    mongo_uri: str, tmp_path: Path
) -> None:
    """A replay of many held changes reads the pair states between its transactions: paused
    again, it stops, and the rest stays held (in order) for the next resume."""
    names = ["a", "b", "c"]
    async with _paused_with_held(mongo_uri, tmp_path, names) as (db, applier, pair, _):
        await _resume(applier, pair)
        applier.refresh_interval = 0.0  # read the states before every transaction
        transactions = _paused_after_the_first_transaction(applier, pair)
        assert await applier.replay_held(1) == 1
        partner = await db.people_v2.find_one({"_id": 1})
        assert partner is not None and partner["full_name"] == "a"
        left = [h["event"]["updateDescription"] async for h in applier.store.held_events.find()]
        assert [d["updatedFields"]["name"] for d in left] == ["b", "c"]
        await _resume(applier, pair)
        assert await applier.replay_held(1) == 2
        partner = await db.people_v2.find_one({"_id": 1})
    assert transactions == [1, 1, 1]
    assert partner is not None and partner["full_name"] == "c"


async def test_a_replay_with_no_reader_reads_the_server_s_history(
    mongo_uri: str, tmp_path: Path
) -> None:
    """Without the reader's events (`unread` unset), the newer writes come from the server's
    history past the checkpoint, as before."""
    async with _paused_with_held(mongo_uri, tmp_path, ["older"]) as (db, applier, pair, streams):
        await db.people_v2.update_one({"_id": 1}, {"$set": {"full_name": "newer"}})
        await _resume(applier, pair)
        streams.opened = 0
        assert await applier.replay_held(10) == 1
        assert streams.opened >= 1
        assert _conflicts(applier, pair) == 1
        partner = await db.people_v2.find_one({"_id": 1})
    assert partner is not None and partner["full_name"] == "newer"


@pytest.mark.parametrize(
    ("summary", "held_by"),
    [
        ("kept", "this-worker"),
        ("too-large", "this-worker"),
        ("kept", "before-a-restart"),
        ("too-large", "before-a-restart"),
        ("held-before-paths", "before-a-restart"),
    ],
)
@pytest.mark.parametrize("transaction", ["first", "later"])
async def test_a_replay_in_several_transactions_counts_the_later_held_changes_as_newer(
    mongo_uri: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    summary: str,
    held_by: str,
    transaction: str,
) -> None:
    """While paused: the partner document is deleted and inserted again, then the client
    deletes the original. Replayed two changes per transaction, the partner's insert must not
    re-create the original: the original's delete, held for the next transaction, is newer.

    Held by this worker, every transaction takes the newer ones from the summary it kept while
    it held them, or without one (too large) reads its own. Held before a restart, the first
    transaction reads its own newer held changes; a later one (two inserts of other documents
    held first) takes them from the summary of all of them read from the server, or without
    one (too large, or held without the paths they changed) reads its own too. (The first
    transaction's window is as large as a transaction here: two changes.)"""
    monkeypatch.setattr(applier_module, "REPLAY_FIRST_DOCS", 2)
    limit = 0 if summary == "too-large" else None
    async with _paused_with_held(mongo_uri, tmp_path, [], ahead_limit=limit) as (
        db,
        applier,
        pair,
        _,
    ):

        async def writes() -> None:
            if transaction == "later":
                await db.people.insert_many([{"_id": 2, "name": "b"}, {"_id": 3, "name": "c"}])
            await db.people_v2.delete_one({"_id": 1})
            await db.people_v2.insert_one({"_id": 1, "full_name": "again"})
            await db.people.delete_one({"_id": 1})

        count = 5 if transaction == "later" else 3
        await applier.apply(await events_of(db, count, writes))
        assert await applier.store.held_events.count_documents({}) == count
        if summary == "held-before-paths":
            await applier.store.held_events.update_many({}, {"$unset": {"paths": "", "ours": ""}})
        if held_by == "before-a-restart":
            await _as_if_restarted(applier)
        await _resume(applier, pair)
        assert await applier.replay_held(2) == count
        original = await db.people.find_one({"_id": 1})
        partner = await db.people_v2.find_one({"_id": 1})
        others = await db.people_v2.count_documents({"_id": {"$in": [2, 3]}})
    assert (original, partner) == (None, None)
    assert others == (2 if transaction == "later" else 0)


async def test_the_first_replayed_transaction_does_not_wait_for_the_summary_of_every_held_change(
    mongo_uri: str, tmp_path: Path
) -> None:
    """Resumed by a worker that did not hold them itself (after a restart), the first
    transaction goes out before the summary of all the held changes is read (reading tens of
    thousands of them took seconds), and still finds the newer held
    change to its target itself: the partner's later rename, held after the original's, wins
    on both sides."""
    async with _paused_with_held(mongo_uri, tmp_path, ["older"]) as (db, applier, pair, _):
        later = await events_of(
            db, 1, lambda: db.people_v2.update_one({"_id": 1}, {"$set": {"full_name": "newer"}})
        )
        await applier.apply(later)
        assert await applier.store.held_events.count_documents({}) == 2
        await _as_if_restarted(applier)
        await _resume(applier, pair)
        # The reader is past everything: the server's history is not read for newer writes.
        applier.unread = unread_events()
        applier.unread.reached({"_data": f"82{0xFFFFFFF0:08X}{1:08X}"})
        steps: list[str] = []
        read_held, apply_with_retries = applier._read_held, applier._apply_with_retries

        async def summary(original: str) -> Any:
            steps.append("summary")
            return await read_held(original)

        async def transaction(events: Any, **kwargs: Any) -> Any:
            steps.append("transaction")
            return await apply_with_retries(events, **kwargs)

        applier._read_held = summary  # type: ignore[method-assign]
        applier._apply_with_retries = transaction  # type: ignore[method-assign]
        assert await applier.replay_held(1) == 2
        assert _conflicts(applier, pair) == 1
        original = await db.people.find_one({"_id": 1})
        partner = await db.people_v2.find_one({"_id": 1})
    assert steps[0] == "transaction" and "summary" in steps
    assert original is not None and partner is not None
    assert (original["name"], partner["full_name"]) == ("newer", "newer")


async def test_a_pause_during_the_read_of_the_held_changes_stops_the_replay_at_once(
    mongo_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After its first transaction a replay reads the summary of every held change, which
    takes seconds for 100,000 of them. A pause in that time is taken up during the read: the
    read stops, nothing more is replayed, and the rest stays held, in order, for the next
    resume."""
    names = [f"n{i}" for i in range(6)]
    async with _paused_with_held(mongo_uri, tmp_path, names) as (db, applier, pair, _):
        monkeypatch.setattr(applier_module, "REPLAY_FIRST_DOCS", 1)
        monkeypatch.setattr(applier_module, "HELD_READ_CHECK_EVERY", 2)
        await _as_if_restarted(applier)
        await _resume(applier, pair)
        applier.refresh_interval = 0.0
        transactions = _paused_after_the_first_transaction(applier, pair)
        summarised: list[int] = []
        add = HeldAhead.add

        def counted(self: HeldAhead, held: Any, position: int) -> bool:
            summarised.append(position)
            return add(self, held, position)

        monkeypatch.setattr(HeldAhead, "add", counted)
        assert await applier.replay_held(10) == 1
        left = [h["event"]["updateDescription"] async for h in applier.store.held_events.find()]
        assert applier.pair_states[pair]["state"] == "PAUSED"
    assert transactions == [1]
    assert summarised == [0]  # the read stopped at its first check, after two records
    assert [d["updatedFields"]["name"] for d in left] == names[1:]


def _calls(applier: Applier, name: str) -> list[Any]:
    """Record the arguments of each later call of one of the applier's methods."""
    method = getattr(applier, name)
    calls: list[Any] = []

    async def recorded(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return await method(*args, **kwargs)

    setattr(applier, name, recorded)
    return calls


async def test_a_resume_replays_what_the_worker_held_without_reading_it_back_first(
    mongo_uri: str, tmp_path: Path
) -> None:
    """The worker that held a paused pair's changes kept their ids and their summary as it
    held them: resumed, it replays them at once, in transactions as large as any, and reads
    the held changes from the server only to see that none is left (the oldest ones and the
    whole summary took a read of every held change on the development server)."""
    async with _paused_with_held(mongo_uri, tmp_path, ["a", "b", "c"]) as (db, applier, pair, _):
        oldest, summaries = _calls(applier, "_oldest_held"), _calls(applier, "_read_held")
        transactions = _calls(applier, "_apply_with_retries")
        await _resume(applier, pair)
        assert await applier.replay_held(10) == 3
        partner = await db.people_v2.find_one({"_id": 1})
    assert (oldest, len(summaries)) == ([], 1)
    assert [len(events) for events, *_ in transactions] == [3]
    assert partner is not None and partner["full_name"] == "c"


async def test_a_replay_paused_again_keeps_its_account_of_the_held_changes(
    mongo_uri: str, tmp_path: Path
) -> None:
    """Paused again after its first transaction, a replay that knew every held change keeps
    that account while the pair holds more: the next resume goes on where it stopped, the
    change held since last, without reading the held changes back first."""
    async with _paused_with_held(mongo_uri, tmp_path, ["a", "b", "c"]) as (db, applier, pair, _):
        await _resume(applier, pair)
        applier.refresh_interval = 0.0  # read the states before every transaction
        _paused_after_the_first_transaction(applier, pair)
        assert await applier.replay_held(1) == 1
        update = lambda: db.people.update_one({"_id": 1}, {"$set": {"name": "d"}})  # noqa: E731
        assert (await applier.apply(await events_of(db, 1, update))).held == 1
        oldest, summaries = _calls(applier, "_oldest_held"), _calls(applier, "_read_held")
        await _resume(applier, pair)
        assert await applier.replay_held(10) == 3
        partner = await db.people_v2.find_one({"_id": 1})
    assert (oldest, len(summaries)) == ([], 1)
    assert partner is not None and partner["full_name"] == "d"


async def test_a_failed_commit_of_held_changes_makes_the_replay_read_them_from_the_server(
    mongo_uri: str, tmp_path: Path
) -> None:
    """A transaction that holds changes and fails at its commit may have committed all the same
    (without transactions, its writes land one by one): what the worker kept of the held
    changes may miss some, so the resume reads them from the server."""
    async with _paused_with_held(mongo_uri, tmp_path, []) as (db, applier, pair, _):
        sync: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
        try:
            sync.admin.command(
                "configureFailPoint",
                "failCommand",
                mode={"times": 1},
                data={
                    "failCommands": ["commitTransaction"],
                    "errorCode": 112,
                    "errorLabels": ["TransientTransactionError"],
                },
            )
            update = lambda: db.people.update_one({"_id": 1}, {"$set": {"name": "older"}})  # noqa: E731
            await applier.apply(await events_of(db, 1, update))
        finally:
            sync.admin.command("configureFailPoint", "failCommand", mode="off")
            sync.close()
        oldest = _calls(applier, "_oldest_held")
        await _resume(applier, pair)
        assert await applier.replay_held(10) == 1
        left = await applier.store.held_events.count_documents({})
        partner = await db.people_v2.find_one({"_id": 1})
    assert oldest and left == 0
    assert partner is not None and partner["full_name"] == "older"


async def test_without_transactions_a_failed_batch_that_held_changes_makes_the_replay_read_them(
    mongo_uri: str, tmp_path: Path
) -> None:
    """Without transactions (`origin_tag = "field"`) a batch's writes land as they are sent:
    one that fails after its held change was written leaves that record behind, and its retry
    holds the change again. The worker cannot tell how far a failed batch got, so its account
    is dropped and the resume reads the held changes from the server; the pair still ends with
    the held name."""
    async with applier_in_process(mongo_uri, tmp_path, PEOPLE_MODULE, prefix="field") as (
        db,
        session_applier,
    ):
        applier = another_applier(session_applier, origin_tag="field")
        pair = applier.registry.pairs[0].original
        async with applier.opened():
            await applier.refresh_pairs()
            insert = lambda: db.people.insert_one({"_id": 1, "name": "n"})  # noqa: E731
            await applier.apply(await events_of(db, 1, insert))
            await applier.store.set_state(pair, "PAUSED", expect=["RUNNING"], paused_from="RUNNING")
            await applier.refresh_pairs()
            update = lambda: db.people.update_one({"_id": 1}, {"$set": {"name": "held"}})  # noqa: E731
            held = await events_of(db, 1, update)
            sync: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
            try:
                # A held change's batch writes the held record, then the pair's counters (in
                # one bulkWrite from MongoDB 8.0, which fails before it writes anything here;
                # a real error part way through leaves the writes before it).
                command = "bulkWrite" if applier.combined_writes else "update"
                sync.admin.command(
                    "configureFailPoint",
                    "failCommand",
                    mode={"times": 1},
                    data={"failCommands": [command], "errorCode": 112},
                )
                await applier.apply(held)
            finally:
                sync.admin.command("configureFailPoint", "failCommand", mode="off")
                sync.close()
            records = await applier.store.held_events.count_documents({})
            oldest = _calls(applier, "_oldest_held")
            await _resume(applier, pair)
            await applier.replay_held(10)
            left = await applier.store.held_events.count_documents({})
            partner = await db.people_v2.find_one({"_id": 1})
            combined = applier.combined_writes
    # Per collection: the first attempt's record, and the retry's.
    assert records == (1 if combined else 2)
    assert oldest and left == 0
    assert partner is not None and partner["full_name"] == "held"


async def test_held_changes_replay_in_stream_order_whatever_their_ids(
    mongo_uri: str, tmp_path: Path
) -> None:
    """An ObjectId orders by second, then by a per-process random value: a worker that took
    over within the second its predecessor held its last change can hold its own first
    changes under smaller ids. The replay follows the stream's order, not the ids'."""
    async with _paused_with_held(mongo_uri, tmp_path, ["older", "newer"]) as (db, applier, pair, _):
        held = [h async for h in applier.store.held_events.find().sort("_id", 1)]
        # The same two records, the newer change under the smaller id.
        await applier.store.held_events.delete_many({})
        ids = sorted([ObjectId(), ObjectId()])
        for held_id, record in zip(ids, reversed(held), strict=True):
            await applier.store.held_events.insert_one({**record, "_id": held_id})
        await _as_if_restarted(applier)
        await _resume(applier, pair)
        assert await applier.replay_held(1) == 2
        original = await db.people.find_one({"_id": 1})
        partner = await db.people_v2.find_one({"_id": 1})
    assert original is not None and partner is not None
    assert (original["name"], partner["full_name"]) == ("newer", "newer")


async def test_a_pair_resumed_before_its_replay_holds_its_new_changes_behind_the_old(
    mongo_uri: str, tmp_path: Path
) -> None:
    """The states are read (the pair resumed) and a delivery comes before the replay: its
    change of the pair is newer than the held one, so it is held behind it rather than
    applied first (the older held rename then overwrote it). Once the replay has run, the
    pair's changes are applied as they come again."""
    async with _paused_with_held(mongo_uri, tmp_path, ["older"]) as (db, applier, pair, _):
        await _resume(applier, pair)
        assert applier.replaying
        newer = await events_of(
            db, 1, lambda: db.people.update_one({"_id": 1}, {"$set": {"name": "newer"}})
        )
        result = await applier.apply(newer)
        partner = await db.people_v2.find_one({"_id": 1})
        assert (result.held, partner and partner["full_name"]) == (1, "n")
        assert await applier.replay_held(10) == 2
        assert not applier.replaying
        partner = await db.people_v2.find_one({"_id": 1})
        assert partner is not None and partner["full_name"] == "newer"
        latest = await events_of(
            db, 1, lambda: db.people.update_one({"_id": 1}, {"$set": {"name": "latest"}})
        )
        result = await applier.apply(latest)
        partner = await db.people_v2.find_one({"_id": 1})
        left = await applier.store.held_events.count_documents({})
    assert (result.held, result.applied, left) == (0, 1, 0)
    assert partner is not None and partner["full_name"] == "latest"


@pytest.mark.parametrize("summary", ["kept", "kept-trimmed", "too-large"])
async def test_a_long_replay_lets_the_other_pairs_changes_through_in_steps(
    mongo_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, summary: str
) -> None:
    """people resumed with 12 changes held, orders active with a change waiting: the replay
    stops after a transaction (`REPLAY_STEP_S`), the delivery goes through (orders applied,
    people's change in it held), and the replay then goes on to the end.

    People's change in that delivery deletes original 1. It is newer than the partner's held
    delete and insert of 1, which the replay reaches only after it, and the summary of the held
    changes was read before it was held: added to the summary, it stops the partner's insert
    from re-creating the original (as when each transaction reads its own later changes).
    Trimmed: the replay drops the ids it has replayed after every transaction, as it does
    every `REPLAY_TRIM_AT`, and the summary still places the changes after each one."""
    monkeypatch.setattr(applier_module, "REPLAY_STEP_S", 0.0)
    if summary == "kept-trimmed":
        monkeypatch.setattr(applier_module, "REPLAY_TRIM_AT", 1)
    async with applier_in_process(mongo_uri, tmp_path, TWO_PAIRS_MODULE, prefix="steps") as (
        db,
        applier,
    ):
        if summary == "too-large":
            applier.ahead_limit = 0
        people, orders = (pair.original for pair in applier.registry.pairs)
        async with applier.opened():

            async def seed() -> None:
                await db.people.insert_many([{"_id": i, "name": f"p{i}"} for i in range(12)])
                await db.orders.insert_one({"_id": 1, "total": 10})

            await applier.apply(await events_of(db, 13, seed))
            await applier.store.set_state(
                people, "PAUSED", expect=["RUNNING"], paused_from="RUNNING"
            )
            await applier.refresh_pairs()

            async def while_paused() -> None:
                for i in range(2, 12):
                    await db.people.update_one({"_id": i}, {"$set": {"name": f"q{i}"}})
                await db.people_v2.delete_one({"_id": 1})
                await db.people_v2.insert_one({"_id": 1, "full_name": "again"})

            await applier.apply(await events_of(db, 12, while_paused))
            await _resume(applier, people)

            async def meanwhile() -> None:
                await db.orders.update_one({"_id": 1}, {"$set": {"total": 20}})
                await db.people.delete_one({"_id": 1})

            delivery = await events_of(db, 2, meanwhile)
            steps = [await applier.replay_held(5, beyond=delivery) for _ in range(2)]
            result = await applier.apply(delivery)
            order = await db.orders_v2.find_one({"_id": 1})
            assert (result.applied, result.held, order and order["amount"]) == (1, 1, 20)
            assert applier.replaying
            steps.append(await applier.replay_held(5))
            assert not applier.replaying
            original = await db.people.find_one({"_id": 1})
            partner = await db.people_v2.find_one({"_id": 1})
            renamed = await db.people_v2.count_documents({"full_name": {"$regex": "^q"}})
    assert steps == [5, 5, 3]
    assert (original, partner) == (None, None)
    assert renamed == 10


CHAIN_MODULE = """
from transforms import Pair

first = Pair(original="{db}.v1", partner="{db}.v2", unmapped="keep")
first.rename("name", "full_name")

second = Pair(original="{db}.v2", partner="{db}.v3", unmapped="keep")
second.rename("full_name", "display")
"""


@pytest.mark.parametrize("summary", ["kept", "too-large"])
async def test_a_chain_s_write_held_for_its_paused_pair_replays_as_the_newer_change(
    mongo_uri: str, tmp_path: Path, summary: str
) -> None:
    """v1 <-> v2 <-> v3 with the first pair paused: a client renames on v1, then later on v3.
    The second pair writes v3's name to v2 (the worker's own write), which the paused pair
    holds after v1's. Replayed one change per transaction, v1's older name must not reach v2
    and v3 over v3's newer one: the chain ends with v3's name everywhere."""
    async with applier_in_process(mongo_uri, tmp_path, CHAIN_MODULE, prefix="chain") as (
        db,
        applier,
    ):
        if summary == "too-large":
            applier.ahead_limit = 0
        first = applier.registry.pairs[0].original
        async with applier.opened():
            assert applier.chained
            inserted = await events_of(db, 1, lambda: db.v1.insert_one({"_id": 1, "name": "a"}))
            await applier.apply(inserted)
            await applier.store.set_state(
                first, "PAUSED", expect=["RUNNING"], paused_from="RUNNING"
            )
            await applier.refresh_pairs()
            older = await events_of(
                db, 1, lambda: db.v1.update_one({"_id": 1}, {"$set": {"name": "older"}})
            )
            await applier.apply(older)
            newer = await events_of(
                db, 1, lambda: db.v3.update_one({"_id": 1}, {"$set": {"display": "newer"}})
            )
            # Applying v3's change writes v2 (for the second pair): that write's event.
            ours = await events_of(db, 1, lambda: applier.apply(newer))
            await applier.apply(ours)
            held = [h async for h in applier.store.held_events.find().sort("_id", 1)]
            assert [(h["event"]["ns"]["coll"], h["ours"]) for h in held] == [
                ("v1", False),
                ("v2", True),
            ]
            await applier.store.set_state(first, "RUNNING", expect=["PAUSED"], paused_from=None)
            await applier.refresh_pairs()
            assert await applier.replay_held(1) == 2
            names = [
                (await db[coll].find_one({"_id": 1}) or {}).get(field)
                for coll, field in (("v1", "name"), ("v2", "full_name"), ("v3", "display"))
            ]
    assert names == ["newer", "newer", "newer"]


async def test_a_state_acknowledgement_that_fails_never_stops_the_sync(
    mongo_uri: str, tmp_path: Path
) -> None:
    """The record of the state change a worker acts on (`seen_serial`) is written when it
    reads the pair states. A failed write of it leaves the refresh (and the sync) going, under
    the new state; the record is written at the next refresh that can."""
    async with applier_in_process(mongo_uri, tmp_path, PEOPLE_MODULE, prefix="ack") as (
        db,
        applier,
    ):
        pair = applier.registry.pairs[0].original
        store = applier.store
        await store.set_state(pair, "PAUSED", expect=["RUNNING"], paused_from="RUNNING")
        serial = (await store.pair_doc(pair) or {})["state_serial"]
        admin = db.client.admin
        await admin.command(
            "configureFailPoint",
            "failCommand",
            mode="alwaysOn",
            data={"failCommands": ["update"], "errorCode": 2},
        )
        try:
            for _ in range(2):
                states = await applier.refresh_pairs()
                assert states[pair]["state"] == "PAUSED"
        finally:
            await admin.command("configureFailPoint", "failCommand", mode="off")
        assert (await store.pair_doc(pair) or {}).get("seen_serial", 0) < serial
        await applier.refresh_pairs()
        record = await store.pair_doc(pair) or {}
    assert record["seen_serial"] == serial
    assert record["seen_by"] == applier.lease.holder
