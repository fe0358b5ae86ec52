"""The worker started as users start it: `python -m worker run --config F` subprocesses."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from tests.worker.engine_helpers import PEOPLE_MODULE, eventually, write_module
from tests.worker.process_helpers import ProcessGroup, WorkerProcess, process_group


@pytest.fixture
async def aclient(mongo_uri: str) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    yield mongo
    await mongo.close()


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
