"""`partner-sync complete` and `rollback`: the end of a pair's migration, either way."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.worker.oneshot_support import Scenario, scenario_fixture, wait_for


@pytest.fixture
def scenario(mongo_uri: str, db_name: str, tmp_path: Path) -> Iterator[Scenario]:
    yield from scenario_fixture(mongo_uri, db_name, tmp_path)


def _synced(scenario: Scenario, *, last_original_write_ago: float | None) -> None:
    """A backfilled, RUNNING pair whose original last saw a client write this long ago."""
    scenario.original.insert_many([{"_id": i, "name": f"p{i}", "age": "40"} for i in range(5)])
    result = scenario.cli("backfill")
    assert result.exit_code == 0, result.output
    if last_original_write_ago is not None:
        when = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=last_original_write_ago)
        scenario.state["pairs"].update_one(
            {"_id": scenario.ns}, {"$set": {"last_client_write.original": when}}
        )


def test_complete_is_refused_within_the_quiet_period_and_names_the_last_write(
    scenario: Scenario,
) -> None:
    """A client wrote to the original 10 s ago with a 1 h quiet period: exit 3, nothing changes."""
    _synced(scenario, last_original_write_ago=10)
    result = scenario.cli("complete", "--pair", scenario.ns)
    assert result.exit_code == 3
    assert "within the quiet period of 3600s" in result.stderr
    assert "--force" in result.stderr
    last = scenario.pair_doc()["last_client_write"]["original"]
    assert last.strftime("%Y-%m-%dT%H:%M:%S") in result.stderr
    assert scenario.pair_doc()["state"] == "RUNNING"


def test_complete_with_force_inside_the_quiet_period(scenario: Scenario) -> None:
    """--force completes anyway; both collections are left as they are."""
    _synced(scenario, last_original_write_ago=10)
    result = scenario.cli("complete", "--pair", scenario.ns, "--force")
    assert result.exit_code == 0, result.output
    assert scenario.pair_doc()["state"] == "COMPLETED"
    assert scenario.original.count_documents({}) == 5
    assert scenario.partner.count_documents({}) == 5


@pytest.mark.parametrize(
    ("ago", "quiet"),
    [
        pytest.param(7200.0, 3600.0, id="quiet-for-two-hours"),
        pytest.param(None, 3600.0, id="never-written"),
        pytest.param(2.0, 1.0, id="short-quiet-period"),
    ],
)
def test_complete_after_the_quiet_period(
    scenario: Scenario, ago: float | None, quiet: float
) -> None:
    """Old clients quiet for longer than `quiet_period_s`: COMPLETED, data untouched."""
    scenario.write_config(quiet_period_s=quiet)
    _synced(scenario, last_original_write_ago=ago)
    result = scenario.cli("complete", "--pair", scenario.ns)
    assert result.exit_code == 0, result.output
    assert "completed" in result.stdout
    record = scenario.pair_doc()
    assert record["state"] == "COMPLETED" and record["completed_at"] is not None
    assert scenario.partner.count_documents({}) == 5
    again = scenario.cli("complete", "--pair", scenario.ns)
    assert again.exit_code == 0 and "already completed" in again.stdout


@pytest.mark.parametrize(
    "state",
    [
        pytest.param("BACKFILLING", id="backfilling"),
        pytest.param("NOT_STARTED", id="not-started"),
        pytest.param("RESYNC_REQUIRED", id="resync-required"),
        pytest.param("ROLLED_BACK", id="rolled-back"),
    ],
)
def test_complete_is_refused_unless_running_or_paused(scenario: Scenario, state: str) -> None:
    """Only a RUNNING or PAUSED pair can be completed (exit 3 otherwise)."""
    _synced(scenario, last_original_write_ago=None)
    scenario.state["pairs"].update_one({"_id": scenario.ns}, {"$set": {"state": state}})
    result = scenario.cli("complete", "--pair", scenario.ns, "--force")
    assert result.exit_code == 3
    assert state in result.stderr


def test_complete_an_unknown_pair_is_a_usage_error(scenario: Scenario) -> None:
    """A namespace the state database does not know: exit 2."""
    result = scenario.cli("complete", "--pair", "nowhere.nothing")
    assert result.exit_code == 2
    assert "nowhere.nothing" in result.stderr


def test_rollback_drop_partner_prints_then_drops_and_forgets_the_merge_base(
    scenario: Scenario,
) -> None:
    """--drop-partner says what it drops, drops it; the original stays; a restart starts over."""
    _synced(scenario, last_original_write_ago=1)
    result = scenario.cli("rollback", "--pair", scenario.ns, "--drop-partner")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"dropping partner collection {scenario.db_name}.people_v2 (5 documents)"
    assert scenario.pair_doc()["state"] == "ROLLED_BACK"
    assert "people_v2" not in scenario.db.list_collection_names()
    assert scenario.original.count_documents({}) == 5
    assert scenario.state["merge_base"].count_documents({"_id.pair": scenario.ns}) == 0
    assert scenario.cli("backfill").exit_code == 3
    restart = scenario.cli("backfill", "--restart")
    assert restart.exit_code == 0, restart.output
    assert scenario.partner.count_documents({}) == 5


def test_rollback_without_drop_keeps_the_partner(scenario: Scenario) -> None:
    """Without --drop-partner both collections stay; only the state changes."""
    _synced(scenario, last_original_write_ago=None)
    result = scenario.cli("rollback", "--pair", scenario.ns)
    assert result.exit_code == 0, result.output
    assert "left as it is" in result.stdout
    assert scenario.partner.count_documents({}) == 5
    assert scenario.pair_doc()["state"] == "ROLLED_BACK"


def test_rollback_of_a_completed_pair_is_refused(scenario: Scenario) -> None:
    """A completed migration cannot be rolled back: exit 3, partner kept."""
    _synced(scenario, last_original_write_ago=None)
    assert scenario.cli("complete", "--pair", scenario.ns).exit_code == 0
    result = scenario.cli("rollback", "--pair", scenario.ns, "--drop-partner")
    assert result.exit_code == 3
    assert scenario.partner.count_documents({}) == 5


def test_complete_stops_a_running_worker_syncing_the_pair(scenario: Scenario) -> None:
    """After complete, the worker leaves the pair alone: a later original write is not copied."""
    _synced(scenario, last_original_write_ago=7200)
    scenario.start_worker()
    assert scenario.cli("complete", "--pair", scenario.ns).exit_code == 0
    scenario.original.update_one({"_id": 1}, {"$set": {"name": "after completion"}})
    marker = scenario.client.admin.command("ping")["operationTime"]
    wait_for(
        lambda: (
            (scenario.state["checkpoints"].find_one() or {}).get("cluster_time")
            and scenario.state["checkpoints"].find_one()["cluster_time"] >= marker
        ),
        timeout=30,
        what="the worker's checkpoint to pass the write",
    )
    assert scenario.partner.find_one({"_id": 1})["full_name"] == "p1"


def test_rollback_under_a_running_worker_leaves_no_merge_base_behind(scenario: Scenario) -> None:
    """`rollback` returns once the running worker has let go of the pair (it records the state
    it acts on), and only then deletes the pair's merge base: a change the worker reads after
    it writes neither the partner nor a merge base record."""
    _synced(scenario, last_original_write_ago=None)
    scenario.start_worker()
    scenario.original.update_one({"_id": 1}, {"$set": {"name": "synced"}})
    wait_for(
        lambda: scenario.partner.find_one({"_id": 1})["full_name"] == "synced",
        timeout=30,
        what="the worker to sync",
    )
    result = scenario.cli("rollback", "--pair", scenario.ns)
    assert result.exit_code == 0, result.output
    assert "has not taken this up" not in result.stdout
    record = scenario.pair_doc()
    assert record["state"] == "ROLLED_BACK"
    assert record["seen_serial"] == record["state_serial"]
    with scenario.client.start_session() as session:
        scenario.original.update_one({"_id": 2}, {"$set": {"name": "after"}}, session=session)
        written_at = session.operation_time

    def read_past_it() -> bool:
        checkpoint = scenario.state["checkpoints"].find_one({"_id": "default"}) or {}
        return (
            checkpoint.get("cluster_time") is not None and checkpoint["cluster_time"] >= written_at
        )

    wait_for(read_past_it, timeout=30, what="the worker to read past the change")
    assert scenario.state["merge_base"].count_documents({"_id.pair": scenario.ns}) == 0
    assert scenario.partner.find_one({"_id": 2})["full_name"] == "p2"
