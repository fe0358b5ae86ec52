"""`partner-sync pause` and `resume`: the state changes, held changes are replayed, none lost."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.worker.oneshot_support import Scenario, scenario_fixture, wait_for
from worker import lifecycle


@pytest.fixture
def scenario(mongo_uri: str, db_name: str, tmp_path: Path) -> Iterator[Scenario]:
    yield from scenario_fixture(mongo_uri, db_name, tmp_path)


def _backfilled(scenario: Scenario) -> None:
    scenario.original.insert_many([{"_id": i, "name": f"p{i}", "age": "40"} for i in range(4)])
    result = scenario.cli("backfill")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "state", [pytest.param("RUNNING", id="running"), pytest.param("BACKFILLING", id="backfilling")]
)
def test_pause_records_the_state_to_resume_to(scenario: Scenario, state: str) -> None:
    """pause -> PAUSED with `paused_from`; resume -> that state again; repeats are no-ops."""
    _backfilled(scenario)
    scenario.state["pairs"].update_one({"_id": scenario.ns}, {"$set": {"state": state}})
    paused = scenario.cli("pause", "--pair", scenario.ns)
    assert paused.exit_code == 0, paused.output
    record = scenario.pair_doc()
    assert record["state"] == "PAUSED" and record["paused_from"] == state
    again = scenario.cli("pause", "--pair", scenario.ns)
    assert again.exit_code == 0 and "already paused" in again.stdout
    resumed = scenario.cli("resume", "--pair", scenario.ns)
    assert resumed.exit_code == 0, resumed.output
    record = scenario.pair_doc()
    assert record["state"] == state and record["paused_from"] is None
    not_paused = scenario.cli("resume", "--pair", scenario.ns)
    assert not_paused.exit_code == 0 and "not paused" in not_paused.stdout


@pytest.mark.parametrize(
    ("command", "state"),
    [
        pytest.param("pause", "COMPLETED", id="pause-completed"),
        pytest.param("pause", "RESYNC_REQUIRED", id="pause-resync"),
        pytest.param("resume", "ROLLED_BACK", id="resume-rolled-back"),
    ],
)
def test_pause_and_resume_refuse_finished_or_broken_pairs(
    scenario: Scenario, command: str, state: str
) -> None:
    """A pair that is not active (or paused) cannot be paused (resumed): exit 3."""
    _backfilled(scenario)
    scenario.state["pairs"].update_one({"_id": scenario.ns}, {"$set": {"state": state}})
    result = scenario.cli(command, "--pair", scenario.ns)
    assert result.exit_code == 3
    assert state in result.stderr
    assert scenario.pair_doc()["state"] == state


def test_without_pair_every_active_pair_is_paused_and_every_paused_one_resumed(
    scenario: Scenario,
) -> None:
    """No --pair: pause takes every RUNNING/BACKFILLING pair, resume every PAUSED one."""
    _backfilled(scenario)
    other = f"{scenario.db_name}.other"
    scenario.state["pairs"].insert_one(
        {"_id": other, "partner": f"{other}_v2", "state": "BACKFILLING"}
    )
    assert scenario.cli("pause").exit_code == 0
    states = {doc["_id"]: doc["state"] for doc in scenario.state["pairs"].find()}
    assert states == {scenario.ns: "PAUSED", other: "PAUSED"}
    assert scenario.cli("resume").exit_code == 0
    states = {doc["_id"]: doc["state"] for doc in scenario.state["pairs"].find()}
    assert states == {scenario.ns: "RUNNING", other: "BACKFILLING"}


def test_changes_made_while_paused_are_held_and_applied_on_resume(scenario: Scenario) -> None:
    """A running worker holds a paused pair's changes and applies them after resume."""
    _backfilled(scenario)
    scenario.start_worker()
    assert scenario.cli("pause", "--pair", scenario.ns).exit_code == 0
    scenario.original.update_one({"_id": 2}, {"$set": {"name": "while paused"}})
    wait_for(
        lambda: scenario.state["held_events"].count_documents({"pair": scenario.ns}) >= 1,
        timeout=30,
        what="the change to be held",
    )
    assert scenario.partner.find_one({"_id": 2})["full_name"] == "p2"
    resumed = scenario.cli("resume", "--pair", scenario.ns)
    assert resumed.exit_code == 0, resumed.output
    wait_for(
        lambda: scenario.partner.find_one({"_id": 2})["full_name"] == "while paused",
        timeout=30,
        what="the held change to be applied",
    )


def test_a_transition_returns_once_the_running_worker_acts_on_it(scenario: Scenario) -> None:
    """Each state change counts up `state_serial`; `pause` and `resume` return once the
    worker holding the lease has recorded that it acts on that change (`seen_serial`)."""
    _backfilled(scenario)
    scenario.start_worker()
    holder = scenario.state["leases"].find_one()["holder"]
    for command, state in (("pause", "PAUSED"), ("resume", "RUNNING"), ("pause", "PAUSED")):
        before = scenario.pair_doc().get("state_serial") or 0
        result = scenario.cli(command, "--pair", scenario.ns)
        assert result.exit_code == 0, result.output
        assert "has not taken this up" not in result.stdout
        record = scenario.pair_doc()
        assert record["state"] == state
        assert record["state_serial"] == before + 1
        assert record["seen_serial"] == record["state_serial"]
        assert record["seen_by"] == holder
        assert _state_seen(scenario) is True
    # Paused and acknowledged: a change from now on is held, never applied.
    scenario.original.update_one({"_id": 1}, {"$set": {"name": "held at once"}})
    wait_for(
        lambda: scenario.state["held_events"].count_documents({"pair": scenario.ns}) == 1,
        timeout=30,
        what="the change to be held",
    )
    assert scenario.partner.find_one({"_id": 1})["full_name"] == "p1"
    assert _status_of(scenario)["held"] == 1


def test_a_worker_that_does_not_act_on_a_change_is_named(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live lease whose holder never records the change (a worker stopped by the OS): the
    command changes the state, waits `_WORKER_ACK_S` and names that worker. An expired lease,
    or none, is not waited for."""
    _backfilled(scenario)
    monkeypatch.setattr(lifecycle, "_WORKER_ACK_S", 0.3)
    leases = scenario.state["leases"]
    leases.insert_one(
        {
            "_id": "default",
            "holder": "stopped-host:41:abcdef",
            "fence": 1,
            "expires_at": dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60),
        }
    )
    paused = scenario.cli("pause", "--pair", scenario.ns)
    assert paused.exit_code == 0, paused.output
    assert "worker stopped-host:41:abcdef has not taken this up within 0.3s" in paused.stdout
    assert scenario.pair_doc()["state"] == "PAUSED"
    assert "seen_serial" not in scenario.pair_doc()
    assert _state_seen(scenario) is False

    leases.update_one({}, {"$set": {"expires_at": dt.datetime.now(dt.UTC)}})
    resumed = scenario.cli("resume", "--pair", scenario.ns)
    assert resumed.exit_code == 0, resumed.output
    assert "has not taken this up" not in resumed.stdout
    assert scenario.pair_doc()["state"] == "RUNNING"


def _status_of(scenario: Scenario) -> dict[str, Any]:
    """The pair's object in `partner-sync status --json`."""
    result = scenario.cli("status", "--json")
    assert result.exit_code == 0, result.output
    (pair,) = json.loads(result.stdout)["pairs"]
    return dict(pair)


def _state_seen(scenario: Scenario) -> bool:
    return bool(_status_of(scenario)["state_seen"])
