"""The sync engine under faults: failing commands, dropped connections, fenced holders, bad data.

The worker runs in process against the development server; its client names itself with an
`appName`, so `failCommand` fail points hit the worker's commands and never the test's own.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from tests.worker.engine_helpers import (
    BOTH_VERSIONS,
    eventually,
    make_config,
    running_worker,
    write_module,
)
from worker.config import Config, LeaseConfig
from worker.engine import Lease
from worker.engine._commands import supports_bulk_write
from worker.state import StateStore, utcnow

WORKER_APP = "psync-faults"

PEOPLE_MODULE = """
from transforms import Pair

people = Pair(original="{db}.people", partner="{db}.people_v2", unmapped="keep")
people.rename("name", "full_name")
people.convert("age", forward=int, backward=str)
"""


@pytest.fixture
def fail_point(mongo_uri: str, aclient: Any) -> Iterator[Any]:
    """Configure failCommand for the worker's client only; returns the times it fired when
    switched off, and is always switched off at teardown."""

    async def configure(mode: Any, **data: Any) -> int:
        reply = await aclient.admin.command(
            "configureFailPoint", "failCommand", mode=mode, data={**data, "appName": WORKER_APP}
        )
        return int(reply.get("count", 0))

    yield configure
    sync: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
    with sync:
        sync.admin.command("configureFailPoint", "failCommand", mode="off")


def _config(mongo_uri: str, db_name: str, module: str, **overrides: Any) -> Config:
    separator = "&" if "?" in mongo_uri else "?"
    return make_config(f"{mongo_uri}{separator}appName={WORKER_APP}", db_name, module, **overrides)


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event_name", None) == name]


async def _find(collection: Any, document_id: Any) -> dict[str, Any] | None:
    found: dict[str, Any] | None = await collection.find_one({"_id": document_id})
    return found


FAULTS = [
    pytest.param(command, mode, id=f"{command}-{mode}")
    for command in (
        "find",
        "update",
        "insert",
        "delete",
        "bulkWrite",
        "commitTransaction",
        "aggregate",
        "getMore",
    )
    for mode in ("transient", "close")
]
# The batch's writes: one bulkWrite command from MongoDB 8.0, per-collection commands before.
BULK_ONLY = {"bulkWrite"}
BEFORE_BULK_ONLY = {"update", "insert", "delete"}


@pytest.mark.parametrize(("command", "mode"), FAULTS)
@pytest.mark.parametrize("mongo_uri", BOTH_VERSIONS, indirect=True)
async def test_failing_command_is_retried_and_the_pair_converges(
    mongo_uri: str,
    aclient: Any,
    db_name: str,
    tmp_path: Path,
    fail_point: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    mode: str,
) -> None:
    """A command of the apply path failing 3 times in a row (WriteConflict with the
    TransientTransactionError label, or a dropped connection): the worker retries, converges,
    dead-letters the poison document once, and reports a dropped connection once, not once
    per attempt."""
    caplog.set_level(logging.INFO)
    combined = await supports_bulk_write(aclient)
    if command in (BEFORE_BULK_ONLY if combined else BULK_ONLY):
        pytest.skip(f"the apply path sends no {command} command to this server")
    if command == "aggregate":
        # The look-ahead asks the server (an aggregate) only for what the stream reader has
        # not reached yet; here the reader never seems to have reached it, so it always asks.
        monkeypatch.setattr("worker.engine._stream.UnreadEvents.covers", lambda *_: False)
    # Counted through the test's own client, which the fail point leaves alone.
    dead_letters = StateStore(aclient[f"{db_name}_state"])
    module = write_module(tmp_path, "people_faults", PEOPLE_MODULE, db=db_name)
    config = _config(mongo_uri, db_name, module)
    original = aclient[db_name]["people"]
    partner = aclient[db_name]["people_v2"]
    async with running_worker(config) as worker:
        await original.insert_one({"_id": 1, "name": "Ann", "age": "30"})
        await partner.insert_one({"_id": 2, "full_name": "Bo", "age": 40})

        async def seeded() -> bool:
            return await _find(partner, 1) is not None and await _find(original, 2) is not None

        await eventually(seeded, what="both documents copied before the fault")

        if mode == "transient":
            await fail_point(
                {"times": 3},
                failCommands=[command],
                errorCode=112,
                errorLabels=["TransientTransactionError"],
            )
        else:
            await fail_point({"times": 3}, failCommands=[command], closeConnection=True)
        await original.insert_one({"_id": 3, "name": "Cy", "age": "7"})
        await original.update_one({"_id": 1}, {"$set": {"name": "Anna"}})
        await partner.update_one({"_id": 1}, {"$set": {"city": "Oslo"}})
        await partner.delete_one({"_id": 2})
        await original.insert_one({"_id": 4, "name": "Poison", "age": "not a number"})

        async def converged() -> bool:
            copied = await _find(partner, 3)
            renamed = await _find(partner, 1)
            moved = await _find(original, 1)
            return bool(
                copied is not None
                and copied.get("age") == 7
                and renamed is not None
                and renamed.get("full_name") == "Anna"
                and moved is not None
                and moved.get("city") == "Oslo"
                and await _find(original, 2) is None
                and await dead_letters.dead_letter_count() == 1
            )

        await eventually(converged, within=30, what="convergence after the fault")
        fired = await fail_point("off")
        assert fired == 3, f"the fail point on {command} fired {fired} times"

        await original.insert_one({"_id": 5, "name": "Dee", "age": "9"})

        async def later_copied() -> bool:
            found = await _find(partner, 5)
            return found is not None and found.get("age") == 9

        await eventually(later_copied, what="a later change still syncs")
        assert await _find(partner, 4) is None
        assert await worker.store.dead_letter_count() == 1
    outages = {
        name: len(_events(caplog, name))
        for name in (
            "apply_interrupted",
            "stream_interrupted",
            "sync_interrupted",
            "lease_renew_failed",
        )
    }
    assert all(count <= 1 for count in outages.values()), outages
    assert not _events(caplog, "lease_lost")


@pytest.mark.parametrize(
    "command",
    [
        pytest.param("find", id="find-pair-refresh"),
        pytest.param("update", id="update-lease-renewal"),
    ],
)
async def test_idle_worker_survives_a_lost_connection(
    mongo_uri: str,
    aclient: Any,
    db_name: str,
    tmp_path: Path,
    fail_point: Any,
    caplog: pytest.LogCaptureFixture,
    command: str,
) -> None:
    """Connections dropped under the idle worker's housekeeping (the pair refresh every half
    second, the lease renewal): it keeps running, logs the outage at most once, and syncs the
    next change."""
    caplog.set_level(logging.INFO)
    module = write_module(tmp_path, "people_idle", PEOPLE_MODULE, db=db_name)
    config = _config(mongo_uri, db_name, module)
    original = aclient[db_name]["people"]
    partner = aclient[db_name]["people_v2"]
    async with running_worker(config) as worker:
        fired = [0]

        async def fired_enough() -> bool:
            # Re-arming returns how often it fired since the last call.
            fired[0] += await fail_point("alwaysOn", failCommands=[command], closeConnection=True)
            return fired[0] >= 2

        await eventually(fired_enough, within=10, what=f"{command} to fail twice")
        fired[0] += await fail_point("off")
        await original.insert_one({"_id": 1, "name": "Ann", "age": "30"})

        async def copied() -> bool:
            found = await _find(partner, 1)
            return found is not None and found.get("age") == 30

        await eventually(copied, within=15, what="the next change synced")
        assert worker.lease.held
    for name in (
        "apply_interrupted",
        "stream_interrupted",
        "sync_interrupted",
        "lease_renew_failed",
    ):
        assert len(_events(caplog, name)) <= 1, (name, len(_events(caplog, name)))
    assert not _events(caplog, "lease_lost")


async def test_bulk_write_refused_to_the_worker_falls_back_to_per_collection_commands(
    mongo_uri: str,
    aclient: Any,
    db_name: str,
    tmp_path: Path,
    fail_point: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server with bulkWrite that refuses it to the worker (Unauthorized: a role without the
    action): the worker says so once, applies the same batch with one command per collection,
    and goes on that way."""
    if not await supports_bulk_write(aclient):
        pytest.skip("the server has no bulkWrite command")
    caplog.set_level(logging.INFO)
    module = write_module(tmp_path, "people_unauthorized", PEOPLE_MODULE, db=db_name)
    config = _config(mongo_uri, db_name, module)
    original = aclient[db_name]["people"]
    partner = aclient[db_name]["people_v2"]
    async with running_worker(config) as worker:
        await fail_point("alwaysOn", failCommands=["bulkWrite"], errorCode=13)
        await original.insert_one({"_id": 1, "name": "Ann", "age": "30"})

        async def copied(document_id: int) -> bool:
            found = await _find(partner, document_id)
            return found is not None and found.get("full_name") is not None

        await eventually(lambda: copied(1), within=15, what="the change applied without bulkWrite")
        await original.insert_one({"_id": 2, "name": "Bo", "age": "4"})
        await eventually(lambda: copied(2), within=15, what="a later change applied too")
        fired = await fail_point("off")
        assert worker.applier is not None and not worker.applier.combined_writes
    assert fired == 1, f"bulkWrite was sent {fired} times after its refusal"
    refusals = _events(caplog, "bulk_write_refused")
    assert len(refusals) == 1 and getattr(refusals[0], "event_fields", {}).get("code") == 13


async def test_document_the_target_refuses_is_a_dead_letter(
    mongo_uri: str, aclient: Any, db_name: str, tmp_path: Path
) -> None:
    """A document the partner's validator refuses goes to dead letters with the server's code
    and the event; the documents around it and after it still sync."""
    module = write_module(tmp_path, "people_validated", PEOPLE_MODULE, db=db_name)
    config = _config(mongo_uri, db_name, module)
    await aclient[db_name].create_collection(
        "people_v2", validator={"$or": [{"age": {"$exists": False}}, {"age": {"$lt": 150}}]}
    )
    original = aclient[db_name]["people"]
    partner = aclient[db_name]["people_v2"]
    async with running_worker(config) as worker:
        await original.insert_many(
            [
                {"_id": 1, "name": "Ann", "age": "30"},
                {"_id": 2, "name": "Old", "age": "200"},
                {"_id": 3, "name": "Cy", "age": "40"},
            ]
        )

        async def settled() -> bool:
            return (
                await partner.count_documents({}) == 2
                and await worker.store.dead_letter_count() == 1
            )

        await eventually(settled, within=15, what="two copies and one dead letter")
        letter = await worker.store.dead_letters.find_one({})
        assert letter is not None
        assert (letter["pair"], letter["document_id"], letter["side"]) == (
            f"{db_name}.people",
            2,
            "original",
        )
        assert letter["code"] == 121 and "refused" in letter["error"]
        assert letter["event"]["operationType"] == "insert"
        assert letter["event"]["fullDocument"]["age"] == "200"
        await original.insert_one({"_id": 4, "name": "Dee", "age": "9"})

        async def later_copied() -> bool:
            return await _find(partner, 4) is not None

        await eventually(later_copied, what="the stream goes on")
        assert await _find(partner, 2) is None


async def test_commit_of_a_holder_taken_over_is_refused_by_the_fence(
    mongo_uri: str, aclient: Any, db_name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A holder that still believes in its lease (its renewal not yet due) after another
    worker took the lease over: its next batch is refused by the checkpoint's fence, nothing
    of it lands, and it stands by."""
    caplog.set_level(logging.INFO)
    module = write_module(tmp_path, "people_fenced", PEOPLE_MODULE, db=db_name)
    # A long lease: the renewal that would also notice the takeover is 10 s away.
    config = _config(mongo_uri, db_name, module, lease=LeaseConfig(ttl_s=30.0))
    original = aclient[db_name]["people"]
    partner = aclient[db_name]["people_v2"]
    async with running_worker(config, holder="old") as worker:
        await original.insert_one({"_id": 1, "name": "Ann", "age": "30"})

        async def copied() -> bool:
            return await _find(partner, 1) is not None

        await eventually(copied, what="first copy")
        leases = worker.store.leases
        # Expired a second ago: BSON keeps milliseconds, and an expiry of "now" could still
        # equal the successor's "now" (not yet past it) within the same millisecond.
        expired = utcnow() - dt.timedelta(seconds=1)
        await leases.update_one({"_id": "default"}, {"$set": {"expires_at": expired}})
        successor = Lease(StateStore(aclient[config.state_db]), "new", 30.0)
        assert await successor.try_acquire()
        assert worker.lease.held, "the old holder must still believe in its lease"

        await original.insert_one({"_id": 2, "name": "Bo", "age": "40"})

        async def fenced() -> bool:
            return bool(_events(caplog, "lease_lost"))

        await eventually(fenced, within=10, what="the old holder to be fenced out")
        assert "fenced" in _events(caplog, "lease_lost")[0].__dict__["event_fields"]["reason"]
        assert await _find(partner, 2) is None
        checkpoint = await worker.store.checkpoint()
        assert checkpoint is not None and checkpoint["fence"] == successor.fence
        lease = await worker.store.leases.find_one({"_id": "default"})
        assert lease is not None and lease["holder"] == "new"
