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
from tests.worker.process_helpers import ProcessGroup, process_group


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
