"""The worker started as users start it: `python -m worker run --config F` subprocesses."""

from __future__ import annotations

import contextlib
import itertools
import random
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError

from tests.worker.engine_helpers import PEOPLE_MODULE, eventually, write_module
from tests.worker.process_helpers import ProcessGroup, WorkerProcess, process_group


@pytest.fixture
def people(mongo_uri: str, db_name: str, tmp_path: Path) -> Any:
    """A process group syncing `{db}.people` <-> `{db}.people_v2` (lease ttl from the env)."""
    module = write_module(tmp_path, "people_proc", PEOPLE_MODULE, db=db_name)
    with process_group(
        tmp_path,
        uri=mongo_uri,
        module=module,
        state_db=f"{db_name}_state",
        settings={"LEASE__TTL_S": 30, "BATCH__MAX_DELAY_MS": 10},
    ) as group:
        yield group


async def _copied(aclient: Any, db_name: str, document_id: Any, **fields: Any) -> bool:
    found = await aclient[db_name]["people_v2"].find_one({"_id": document_id})
    return found is not None and all(found.get(k) == v for k, v in fields.items())


@pytest.mark.parametrize(
    "signum",
    [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")],
)
async def test_signal_stops_cleanly_and_releases_the_lease(
    people: ProcessGroup, aclient: Any, db_name: str, signum: int
) -> None:
    """SIGTERM or SIGINT: exit 0 within seconds, lease released; the next worker takes over at
    once (the lease's 30 s time to live never has to pass) and syncs what came meanwhile."""
    first = people.start()
    await first.wait_for("stream_open")
    await aclient[db_name]["people"].insert_one({"_id": 1, "name": "Ann"})
    await eventually(lambda: _copied(aclient, db_name, 1, full_name="Ann"), what="first copy")

    first.send(signum)
    assert await first.wait_exit(within=8) == 0, first.log_text()[-2000:]
    assert first.events("lease_released"), first.log_text()[-2000:]
    status = await people.status()
    assert status["worker"]["lease_holder"] is None

    await aclient[db_name]["people"].insert_one({"_id": 2, "name": "Bo"})
    started = time.monotonic()
    second = people.start()
    await second.wait_for("lease_acquired", within=15)
    assert time.monotonic() - started < 15
    assert not second.events("standby")
    await eventually(lambda: _copied(aclient, db_name, 2, full_name="Bo"), what="copy after")
    second.send(signal.SIGTERM)
    assert await second.wait_exit(within=8) == 0


LEASE_TTL_S = 2.0
# A standby retries every third of the ttl; start-up, polling and a loaded machine add the rest.
TAKEOVER_SLACK_S = 4.0


@pytest.fixture
def people_short_lease(mongo_uri: str, db_name: str, tmp_path: Path) -> Any:
    """Like `people`, with a 2 s lease so that takeovers happen within the test."""
    module = write_module(tmp_path, "people_lease", PEOPLE_MODULE, db=db_name)
    with process_group(
        tmp_path,
        uri=mongo_uri,
        module=module,
        state_db=f"{db_name}_state",
        settings={"LEASE__TTL_S": LEASE_TTL_S, "BATCH__MAX_DELAY_MS": 10},
    ) as group:
        yield group


async def _holder_and_standby(
    first: WorkerProcess, second: WorkerProcess
) -> tuple[WorkerProcess, WorkerProcess]:
    """Which of two workers started together took the lease, once the other stands by."""

    async def settled() -> tuple[WorkerProcess, WorkerProcess] | None:
        for holder, standby in ((first, second), (second, first)):
            if holder.events("lease_acquired") and standby.events("standby"):
                return holder, standby
        return None

    pair: tuple[WorkerProcess, WorkerProcess] = await eventually(
        settled, within=20, what="one holder and one standby"
    )
    return pair


async def _session_ids_after(aclient: Any, db_name: str, since: Any) -> list[Any]:
    """The session ids of every write to the pair's collections after cluster time `since`."""
    sentinel = aclient[db_name]["sentinel"]
    marker = await sentinel.insert_one({"at": "end"})
    found: list[Any] = []
    async with await aclient[db_name].watch(
        start_at_operation_time=since, max_await_time_ms=100
    ) as stream:
        for _ in range(10_000):
            event = await stream.try_next()
            if event is None:
                continue
            if event["ns"]["coll"] == "sentinel" and event["documentKey"]["_id"] == (
                marker.inserted_id
            ):
                return found
            if event["ns"]["coll"] in ("people", "people_v2") and event.get("lsid"):
                found.append(event["lsid"]["id"])
    raise AssertionError("the change stream never reached the sentinel write")


async def _cluster_time(aclient: Any) -> Any:
    reply = await aclient.admin.command("ping")
    return reply["operationTime"]


async def test_two_workers_one_holds_and_the_standby_takes_over(
    people_short_lease: ProcessGroup, aclient: Any, db_name: str
) -> None:
    """Two workers started at once: one holds the lease (status names it) and applies, the
    other stands by; SIGKILL the holder and the standby takes over within the lease's time to
    live and continues from the checkpoint, including writes made while nobody held it."""
    group = people_short_lease
    holder, standby = await _holder_and_standby(group.start(), group.start())
    holder_id = holder.events("lease_acquired")[0]["holder"]
    status = await group.status()
    assert status["worker"]["lease_holder"] == holder_id
    original = aclient[db_name]["people"]
    await original.insert_one({"_id": 1, "name": "Ann"})
    await eventually(lambda: _copied(aclient, db_name, 1, full_name="Ann"), what="copy")
    assert not standby.events("stream_open") and not standby.events("lease_acquired")

    holder.kill()
    killed_at = time.monotonic()
    await original.insert_one({"_id": 2, "name": "Bo"})
    await aclient[db_name]["people_v2"].update_one({"_id": 1}, {"$set": {"full_name": "Anna"}})
    acquired = await standby.wait_for("lease_acquired", within=LEASE_TTL_S + TAKEOVER_SLACK_S)
    assert time.monotonic() - killed_at < LEASE_TTL_S + TAKEOVER_SLACK_S
    await standby.wait_for("stream_open")
    assert standby.events("stream_open")[0]["position"] == "after checkpoint"
    await eventually(lambda: _copied(aclient, db_name, 2, full_name="Bo"), what="gap synced")

    async def backward() -> bool:
        found = await original.find_one({"_id": 1})
        return found is not None and found.get("name") == "Anna"

    await eventually(backward, what="update made during the takeover synced backward")
    status = await group.status()
    assert status["worker"]["lease_holder"] == acquired["holder"] != holder_id


async def test_holder_stopped_past_its_lease_is_fenced_out(
    people_short_lease: ProcessGroup, aclient: Any, db_name: str
) -> None:
    """A holder frozen by SIGSTOP past its lease: the standby takes over; after SIGCONT the old
    holder logs lease_lost, stands by, and no write of its session lands after the takeover."""
    group = people_short_lease
    frozen = group.start()
    await frozen.wait_for("stream_open")
    standby = group.start()
    await standby.wait_for("standby")
    original = aclient[db_name]["people"]
    await original.insert_one({"_id": 0, "name": "Zed"})
    await eventually(lambda: _copied(aclient, db_name, 0, full_name="Zed"), what="first copy")
    checkpoint = await aclient[f"{db_name}_state"]["checkpoints"].find_one({"_id": "default"})
    frozen_session = checkpoint["sessions"][0]

    frozen.send(signal.SIGSTOP)
    try:
        await standby.wait_for("lease_acquired", within=LEASE_TTL_S + TAKEOVER_SLACK_S)
        taken_over = await _cluster_time(aclient)
        # Changes that wait in the frozen worker's stream: it will see them when it wakes.
        for i in range(1, 6):
            await original.insert_one({"_id": i, "name": f"n{i}"})
        await eventually(lambda: _copied(aclient, db_name, 5, full_name="n5"), what="copies")
    finally:
        frozen.send(signal.SIGCONT)
    await frozen.wait_for("lease_lost")
    await frozen.wait_for("standby")
    await original.insert_one({"_id": 6, "name": "n6"})
    await eventually(lambda: _copied(aclient, db_name, 6, full_name="n6"), what="later copy")
    sessions = await _session_ids_after(aclient, db_name, taken_over)
    assert sessions, "the new holder's writes should be in the stream"
    assert frozen_session not in sessions
    assert len(frozen.events("lease_acquired")) == 1


# -- kill -9 at random moments while clients write both sides --------------------------------

ITEMS_MODULE = """
from transforms import Pair

items = Pair(original="{db}.items", partner="{db}.items_v2", unmapped="keep")
items.rename("name", "title")
items.convert("qty", forward=int, backward=str)
"""
# Logical field -> field name on each side; `qty` is a string on the original, an int on the
# partner; `color` is unmapped and kept on both.
FIELDS = {"original": {"name": "name", "qty": "qty", "color": "color"}}
FIELDS["partner"] = {"name": "title", "qty": "qty", "color": "color"}
COLLECTIONS = {"original": "items", "partner": "items_v2"}
DOCUMENT_IDS = 24


def _logical_value(side: str, field: str, value: Any) -> Any:
    return int(value) if field == "qty" and side == "original" else value


def _logical(side: str, document: dict[str, Any] | None) -> dict[str, Any] | None:
    """A document as logical fields (the shape both sides agree on), without `_id`."""
    if document is None:
        return None
    names = {name: logical for logical, name in FIELDS[side].items()}
    return {names[k]: _logical_value(side, names[k], v) for k, v in document.items() if k in names}


def _side_value(side: str, field: str, n: int) -> Any:
    if field == "qty":
        return str(n) if side == "original" else n
    return f"{field[0]}{n}"


async def _write_randomly(
    collection: Any,
    side: str,
    rng: random.Random,
    counter: itertools.count[int],
    stop: anyio.Event,
    max_ops: int,
) -> int:
    """Random inserts, field updates, replaces and deletes on one side until `stop`; every
    value written is unique, so the survivor of each field names the write it came from."""
    fields = FIELDS[side]
    done = 0
    for _ in range(max_ops):
        if stop.is_set():
            break
        document_id = rng.randrange(DOCUMENT_IDS)
        n = next(counter)
        whole = {fields[f]: _side_value(side, f, n) for f in fields}
        roll = rng.random()
        if roll < 0.15:
            with contextlib.suppress(DuplicateKeyError):
                await collection.insert_one({"_id": document_id, **whole})
        elif roll < 0.27:
            if rng.random() < 0.5:
                del whole[fields["color"]]
            await collection.replace_one({"_id": document_id}, whole)
        elif roll < 0.40:
            await collection.delete_one({"_id": document_id})
        else:
            chosen = rng.sample(sorted(fields), rng.randint(1, 2))
            update: dict[str, Any] = {"$set": {fields[f]: whole[fields[f]] for f in chosen}}
            if "color" in chosen and rng.random() < 0.3:
                update = {"$unset": {"color": ""}}
            await collection.update_one({"_id": document_id}, update)
        done += 1
        # Spread the writes over the worker's restarts (load shaping, not synchronisation).
        await anyio.sleep(rng.uniform(0.002, 0.02))
    return done


async def _history(aclient: Any, db_name: str, since: Any) -> list[dict[str, Any]]:
    """Every change event of the test database after cluster time `since`, in stream order."""
    marker = await aclient[db_name]["sentinel"].insert_one({"at": "end"})
    events: list[dict[str, Any]] = []
    async with await aclient[db_name].watch(
        start_at_operation_time=since, max_await_time_ms=100
    ) as stream:
        for _ in range(100_000):
            event = await stream.try_next()
            if event is None:
                continue
            if event["ns"]["coll"] == "sentinel" and event["documentKey"]["_id"] == (
                marker.inserted_id
            ):
                return events
            events.append(event)
    raise AssertionError("the change stream never reached the sentinel write")


async def _disagreements(aclient: Any, db_name: str) -> dict[Any, tuple[Any, Any]]:
    """Documents whose two sides differ through the transforms (G1); empty when converged."""
    sides: dict[str, dict[Any, dict[str, Any]]] = {}
    for side, name in COLLECTIONS.items():
        sides[side] = {d["_id"]: d async for d in aclient[db_name][name].find({})}
    differing: dict[Any, tuple[Any, Any]] = {}
    for document_id in set(sides["original"]) | set(sides["partner"]):
        original = _logical("original", sides["original"].get(document_id))
        partner = _logical("partner", sides["partner"].get(document_id))
        if original != partner:
            differing[document_id] = (original, partner)
    return differing


def _side_of(event: dict[str, Any]) -> str:
    return "original" if event["ns"]["coll"] == COLLECTIONS["original"] else "partner"


def _expected_by_last_writer(
    client_events: list[dict[str, Any]],
) -> tuple[dict[Any, bool], dict[tuple[Any, str], Any]]:
    """From the clients' writes in cluster-time order: which documents must exist (G1 with
    deletes), and the value each field must hold where the last writer decides it (G2)."""
    by_document: dict[Any, list[dict[str, Any]]] = {}
    for event in client_events:
        by_document.setdefault(event["documentKey"]["_id"], []).append(event)
    exists: dict[Any, bool] = {}
    values: dict[tuple[Any, str], Any] = {}
    absent = object()
    for document_id, events in by_document.items():
        exists[document_id] = events[-1]["operationType"] != "delete"
        if not exists[document_id]:
            continue
        for field in ("name", "qty", "color"):
            for event in reversed(events):
                side, op = _side_of(event), event["operationType"]
                name = FIELDS[side][field]
                if op == "delete":
                    break  # re-created from the other side's document: not decided here
                if op in ("insert", "replace"):
                    full = event["fullDocument"]
                    values[(document_id, field)] = (
                        _logical_value(side, field, full[name]) if name in full else absent
                    )
                    break
                description = event["updateDescription"]
                if name in description["updatedFields"]:
                    value = description["updatedFields"][name]
                    values[(document_id, field)] = _logical_value(side, field, value)
                    break
                if name in description["removedFields"]:
                    values[(document_id, field)] = absent
                    break
    return exists, {k: (None if v is absent else v) for k, v in values.items()}


@pytest.fixture
def chaos_server(devserver_factory: Any) -> Any:
    """A server of its own: killed workers leave transactions behind that would slow others."""
    return devserver_factory()


async def _run_chaos(
    tmp_path: Path, uri: str, db_name: str, *, seed: int, kills: int, writers_per_side: int
) -> None:
    rng = random.Random(seed)
    module = write_module(tmp_path, "items", ITEMS_MODULE, db=db_name)
    aclient: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
    try:
        with process_group(
            tmp_path,
            uri=uri,
            module=module,
            state_db=f"{db_name}_state",
            settings={"LEASE__TTL_S": 1.5, "BATCH__MAX_DOCS": 20, "BATCH__MAX_DELAY_MS": 20},
        ) as group:
            worker = group.start()
            await worker.wait_for("stream_open")
            since = await _cluster_time(aclient)
            counter = itertools.count(1)
            stop = anyio.Event()
            async with anyio.create_task_group() as writers:
                for index in range(writers_per_side * 2):
                    side = "original" if index % 2 == 0 else "partner"
                    collection = aclient[db_name][COLLECTIONS[side]]
                    writer_rng = random.Random(rng.random())
                    writers.start_soon(
                        _write_randomly, collection, side, writer_rng, counter, stop, 400
                    )
                for _ in range(kills):
                    # Mostly while applying, sometimes during start-up; the moment itself is
                    # the random input here, not a wait for a condition.
                    if rng.random() < 0.75:
                        await worker.wait_for("stream_open")
                        await anyio.sleep(rng.uniform(0.0, 1.0))
                    else:
                        await anyio.sleep(rng.uniform(0.0, 1.5))
                    worker.kill()
                    worker = group.start()
                await anyio.sleep(rng.uniform(0.2, 1.0))
                stop.set()

            last: list[Any] = [None]

            async def converged() -> bool:
                last[0] = await _disagreements(aclient, db_name)
                return not last[0]

            try:
                await eventually(converged, within=45, what="both sides to agree")
            except AssertionError:
                raise AssertionError(f"seed {seed}: sides differ: {last[0]}") from None
            history = await _history(aclient, db_name, since)
            worker.send(signal.SIGTERM)
            assert await worker.wait_exit(within=10) == 0
        # Read again once the worker has stopped: nothing may have moved since convergence.
        assert not await _disagreements(aclient, db_name)
        sides_now = {
            d["_id"]: _logical("original", d) async for d in aclient[db_name]["items"].find({})
        }
    finally:
        await aclient.close()

    items = [e for e in history if e["ns"]["coll"] in COLLECTIONS.values()]
    client_events = [e for e in items if not e.get("lsid")]
    exists, values = _expected_by_last_writer(client_events)
    # A document exists (on both sides) exactly when its last client write was not a delete:
    # a later update on the other side re-creates it.
    wrong_existence = {
        i: (should, i in sides_now) for i, should in exists.items() if should != (i in sides_now)
    }
    assert not wrong_existence, f"seed {seed}: existence (expected, actual): {wrong_existence}"
    wrong_values = {
        (i, f): (value, (sides_now.get(i) or {}).get(f))
        for (i, f), value in values.items()
        if exists[i] and (sides_now.get(i) or {}).get(f) != value
    }
    assert not wrong_values, f"seed {seed}: last writer lost (expected, actual): {wrong_values}"
    # G3/G4: each client write causes at most one worker write, even across kills.
    per_document: dict[Any, list[int]] = {}
    for event in items:
        counts = per_document.setdefault(event["documentKey"]["_id"], [0, 0])
        counts[1 if event.get("lsid") else 0] += 1
    too_many = {i: c for i, c in per_document.items() if c[1] > c[0]}
    assert not too_many, f"seed {seed}: more worker than client writes: {too_many}"
    assert len(client_events) > 50 and len(items) > len(client_events), "too little traffic"


@pytest.mark.parametrize("seed", [pytest.param(1, id="seed1")])
async def test_kill_9_at_random_moments_loses_nothing(
    chaos_server: Any, tmp_path: Path, db_name: str, seed: int
) -> None:
    """Writers change both sides while the worker is SIGKILLed and restarted at random
    moments; afterwards both sides agree (G1), every field holds its last writer's value (G2),
    and no client write caused more than one worker write (G3, G4)."""
    await _run_chaos(tmp_path, chaos_server.uri, db_name, seed=seed, kills=3, writers_per_side=2)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [pytest.param(s, id=f"seed{s}") for s in range(2, 8)])
async def test_kill_9_at_random_moments_many_seeds(
    chaos_server: Any, tmp_path: Path, db_name: str, seed: int
) -> None:
    """The kill -9 run with more seeds, more kills and more writers (slow)."""
    await _run_chaos(tmp_path, chaos_server.uri, db_name, seed=seed, kills=6, writers_per_side=3)


# -- dead letters, lost history, version changes, pause and resume ----------------------------

AGES_MODULE = """
from transforms import Pair

people = Pair(original="{db}.people", partner="{db}.people_v2", unmapped="keep", version="1")
people.rename("name", "full_name")
people.convert("age", forward={forward}, backward=str)
"""


async def test_poison_document_is_dead_lettered_and_retried_after_the_fix(
    mongo_uri: str, aclient: Any, db_name: str, tmp_path: Path
) -> None:
    """A value the transform raises for: the document becomes a dead letter (event, error,
    pair, mapping), later documents still sync, `dlq list` shows it, and after the module is
    fixed `dlq retry` writes it."""
    module = write_module(tmp_path, "ages", AGES_MODULE, db=db_name, forward="int")
    with process_group(
        tmp_path, uri=mongo_uri, module=module, state_db=f"{db_name}_state"
    ) as people:
        await _poison_and_retry(people, aclient, db_name, tmp_path)


async def _poison_and_retry(
    people: ProcessGroup, aclient: Any, db_name: str, tmp_path: Path
) -> None:
    worker = people.start()
    await worker.wait_for("stream_open")
    original = aclient[db_name]["people"]
    await original.insert_one({"_id": 1, "name": "Ann", "age": "41"})
    await original.insert_one({"_id": 2, "name": "Bo", "age": "forty"})
    await original.insert_one({"_id": 3, "name": "Cy", "age": "7"})
    await eventually(lambda: _copied(aclient, db_name, 3, age=7), what="the stream goes on")
    assert await aclient[db_name]["people_v2"].find_one({"_id": 2}) is None
    await worker.wait_for("dead_letter", document_id=2)

    listed = await people.command("dlq", "list", "--json")
    assert listed.code == 0, listed
    [letter] = listed.json_lines()
    assert (letter["pair"], letter["document_id"], letter["side"]) == (
        f"{db_name}.people",
        2,
        "original",
    )
    assert "forty" in letter["error"] or "int" in letter["error"]
    assert letter["mapping"]
    stored = await aclient[f"{db_name}_state"]["dead_letters"].find_one({})
    assert stored["event"]["operationType"] == "insert" and stored["event"]["documentKey"] == {
        "_id": 2
    }
    status = await people.status()
    assert status["pairs"][0]["dead_letters"] == 1

    fixed = "lambda v: int(v) if v.isdigit() else -1"
    write_module(tmp_path, "ages", AGES_MODULE, db=db_name, forward=fixed)
    retried = await people.command("dlq", "retry")
    assert retried.code == 0, retried
    assert await _copied(aclient, db_name, 2, full_name="Bo", age=-1)
    assert (await people.command("dlq", "list", "--json")).json_lines() == []
    worker.send(signal.SIGTERM)
    assert await worker.wait_exit(within=10) == 0


async def test_lost_history_requires_a_resync_then_recovers(
    devserver_factory: Any, tmp_path: Path, db_name: str
) -> None:
    """The resume point pushed off a tiny change history while the worker was stopped: the
    pair goes RESYNC_REQUIRED (status, logs), `status --check` exits 1, and
    `backfill --restart` then `run` bring both sides back in step."""
    server = devserver_factory(oplog_size_mb=0.05)
    aclient: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(server.uri, tz_aware=True)
    module = write_module(tmp_path, "people_history", PEOPLE_MODULE, db=db_name)
    pair = f"{db_name}.people"
    try:
        with process_group(
            tmp_path, uri=server.uri, module=module, state_db=f"{db_name}_state"
        ) as group:
            first = group.start()
            await first.wait_for("stream_open")
            original = aclient[db_name]["people"]
            await original.insert_one({"_id": 0, "name": "Ann"})
            await eventually(lambda: _copied(aclient, db_name, 0, full_name="Ann"), what="copy")
            first.send(signal.SIGTERM)
            assert await first.wait_exit(within=10) == 0

            # Changes the lost history carried, then a busy unrelated collection pushing the
            # resume point off it.
            await original.insert_many([{"_id": i, "name": f"n{i}"} for i in range(1, 6)])
            padding = "x" * 2000
            await aclient[db_name]["noise"].insert_many(
                [{"_id": i, "pad": padding} for i in range(100)]
            )
            second = group.start()
            await second.wait_for("resync_required", within=20, pair=pair)
            status = await group.status()
            assert status["pairs"][0]["state"] == "RESYNC_REQUIRED"
            check = await group.command("status", "--check")
            assert check.code == 1, check

            refused = await group.command("backfill", "--pair", pair)
            assert refused.code == 3, refused
            # The worker keeps running: it takes the pair over from the backfill's start, so
            # the backfill's own writes cannot push that point off the tiny history.
            backfill = await group.command("backfill", "--restart", "--pair", pair)
            assert backfill.code == 0, backfill
            await original.update_one({"_id": 5}, {"$set": {"name": "after"}})
            await eventually(
                lambda: _copied(aclient, db_name, 5, full_name="after"), what="sync resumed"
            )
            assert await aclient[db_name]["people_v2"].count_documents({}) == 6
            assert await _copied(aclient, db_name, 3, full_name="n3")
            assert (await group.command("status", "--check")).code == 0
            second.send(signal.SIGTERM)
            assert await second.wait_exit(within=10) == 0
    finally:
        await aclient.close()


async def test_changed_transforms_are_refused_until_reconciled(
    people: ProcessGroup, aclient: Any, db_name: str, tmp_path: Path
) -> None:
    """A mapping changed in the module: `run` exits 3 naming the reconcile command;
    `backfill --restart` reconciles both collections with the new transforms and `run` starts."""
    worker = people.start()
    await worker.wait_for("stream_open")
    original = aclient[db_name]["people"]
    await original.insert_one({"_id": 1, "name": "Ann", "zip": "0150"})
    await eventually(lambda: _copied(aclient, db_name, 1, full_name="Ann"), what="copy")
    worker.send(signal.SIGTERM)
    assert await worker.wait_exit(within=10) == 0

    changed = PEOPLE_MODULE.replace('rename("zip", "address.zip")', 'rename("zip", "postcode")')
    assert changed != PEOPLE_MODULE
    write_module(tmp_path, "people_proc", changed, db=db_name)
    refused = people.start()
    assert await refused.wait_exit(within=20) == 3
    assert f"partner-sync backfill --restart --pair {db_name}.people" in refused.log_text()

    backfill = await people.command("backfill", "--restart", "--pair", f"{db_name}.people")
    assert backfill.code == 0, backfill
    assert await _copied(aclient, db_name, 1, postcode="0150")
    restarted = people.start()
    await restarted.wait_for("stream_open")
    await original.insert_one({"_id": 2, "name": "Bo", "zip": "9990"})
    await eventually(lambda: _copied(aclient, db_name, 2, postcode="9990"), what="new mapping")


async def _metrics_text(address: str) -> str:
    def fetch() -> str:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
            return str(reply.read().decode())

    return await anyio.to_thread.run_sync(fetch)


async def _metric(address: str, pair: str, state: str) -> bool:
    """Whether the worker's /metrics reports `pair` in `state`."""
    text = await _metrics_text(address)
    return f'partner_sync_state{{pair="{pair}",state="{state}"}} 1.0' in text


async def test_pause_and_resume_take_effect_at_once_and_lose_nothing(
    people: ProcessGroup, aclient: Any, db_name: str
) -> None:
    """`pause` returns once the running worker has stopped applying the pair; changes made
    while paused are held, and after `resume` they are applied in order."""
    worker = people.start(HTTP__LISTEN="127.0.0.1:0")
    address = (await worker.wait_for("http_listening"))["address"]
    pair, original = await _copy_one_then_pause(people, worker, aclient, db_name)
    assert await _metric(address, pair, "PAUSED")
    await original.insert_one({"_id": 2, "name": "Bo"})
    await original.update_one({"_id": 1}, {"$set": {"name": "first"}})
    await original.update_one({"_id": 1}, {"$set": {"name": "second"}})
    held = aclient[f"{db_name}_state"]["held_events"]

    async def all_held() -> bool:
        return bool(await held.count_documents({"pair": pair}) == 3)

    await eventually(all_held, what="three changes held")
    assert await _copied(aclient, db_name, 1, full_name="Ann")
    assert await aclient[db_name]["people_v2"].find_one({"_id": 2}) is None

    assert (await people.command("resume", "--pair", pair)).code == 0
    assert await _metric(address, pair, "RUNNING")
    await eventually(lambda: _copied(aclient, db_name, 1, full_name="second"), what="in order")
    assert await _copied(aclient, db_name, 2, full_name="Bo")
    await eventually(lambda: _no_held(held, pair), what="held events consumed")
    # Each change is counted once: when it was read (and held), not again when replayed.
    counted = await _metrics_text(address)
    for op, count in (("insert", 2), ("update", 2)):
        line = f'partner_sync_events_total{{op="{op}",pair="{pair}",side="original"}} {count}.0'
        assert line in counted, [x for x in counted.splitlines() if "events_total" in x]


async def test_changes_held_before_a_restart_go_before_newer_ones(
    people: ProcessGroup, aclient: Any, db_name: str
) -> None:
    """A pair resumed while no worker runs: the next worker replays the changes held for it
    before it applies anything newer from the stream, so the newest value wins."""
    worker = people.start()
    pair, original = await _copy_one_then_pause(people, worker, aclient, db_name)
    held = aclient[f"{db_name}_state"]["held_events"]

    async def one_held() -> bool:
        return bool(await held.count_documents({"pair": pair}) == 1)

    await original.update_one({"_id": 1}, {"$set": {"name": "held"}})
    await eventually(one_held, what="a change held")
    worker.send(signal.SIGTERM)
    assert await worker.wait_exit(within=10) == 0
    assert (await people.command("resume", "--pair", pair)).code == 0
    await original.update_one({"_id": 1}, {"$set": {"name": "newer"}})

    restarted = people.start()
    await eventually(lambda: _no_held(held, pair), what="held change replayed")
    await eventually(lambda: _copied(aclient, db_name, 1, full_name="newer"), what="newest wins")
    restarted.send(signal.SIGTERM)
    assert await restarted.wait_exit(within=10) == 0
    assert await _copied(aclient, db_name, 1, full_name="newer")


async def _copy_one_then_pause(
    people: ProcessGroup, worker: Any, aclient: Any, db_name: str
) -> tuple[str, Any]:
    """Once the worker has copied a first document, pause its pair: (pair, original)."""
    await worker.wait_for("stream_open")
    pair = f"{db_name}.people"
    original = aclient[db_name]["people"]
    await original.insert_one({"_id": 1, "name": "Ann"})
    await eventually(lambda: _copied(aclient, db_name, 1, full_name="Ann"), what="copy")
    assert (await people.command("pause", "--pair", pair)).code == 0
    return pair, original


async def _no_held(held: Any, pair: str) -> bool:
    return bool(await held.count_documents({"pair": pair}) == 0)
