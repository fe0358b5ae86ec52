"""The status table, the health rules, and the `partner-sync status` command."""

from __future__ import annotations

import copy
import datetime as dt
import io
import socket
from typing import Any

import anyio
import orjson
import pytest
from click.testing import CliRunner
from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure
from rich.console import Console

from transforms import load_registry
from worker.cli import main
from worker.commands import status as status_command
from worker.config import Config
from worker.state import StateStore
from worker.status_view import render_status, status_is_healthy

NOW = dt.datetime(2026, 11, 22, 2, 0, 0, tzinfo=dt.UTC)

HEALTHY: dict[str, Any] = {
    "worker": {
        "version": "0.1.0",
        "lease_holder": "app-7f9c:4242",
        "lease_expires": "2026-11-22T02:00:08+00:00",
    },
    "pairs": [
        {
            "original": "shop.customers",
            "partner": "shop.customers_v2",
            "state": "RUNNING",
            "transform_version": "3f2a9c",
            "lag_seconds": 0.04,
            "applied": {"forward": 1200, "backward": 33},
            "echoes_skipped": 1233,
            "conflicts": 2,
            "dead_letters": 0,
            "last_client_write": {
                "original": "2026-11-22T01:59:58+00:00",
                "partner": "2026-11-22T01:58:00+00:00",
            },
            "backfill": {"done": True, "docs": 3000},
        }
    ],
}


def _status(**pair_changes: Any) -> dict[str, Any]:
    status = copy.deepcopy(HEALTHY)
    worker_changes = pair_changes.pop("worker", {})
    status["worker"].update(worker_changes)
    status["pairs"][0].update(pair_changes)
    return status


def _render(status: dict[str, Any], width: int = 220) -> str:
    out = io.StringIO()
    render_status(status, console=Console(file=out, width=width, color_system=None), now=NOW)
    return out.getvalue()


def test_table_shows_every_interface_field() -> None:
    """The table shows state, lag, applied each way, echoes, conflicts, dead letters, last
    client write per side, backfill progress, lease holder and expiry."""
    text = _render(HEALTHY)
    for expected in (
        "app-7f9c:4242",
        "2026-11-22 02:00:08Z (in 8s)",
        "shop.customers",
        "shop.customers_v2",
        "RUNNING",
        "40 ms",
        "1,200",
        "33",
        "1,233",
        "2026-11-22 01:59:58Z (2s ago)",
        "2026-11-22 01:58:00Z (2m ago)",
        "done, 3,000 docs",
    ):
        assert expected in text, expected


def test_narrow_console_shows_one_block_per_pair() -> None:
    """On an 80-column terminal every field is still shown whole, one line per field."""
    text = _render(HEALTHY, width=80)
    assert max(len(line) for line in text.splitlines()) <= 80
    for expected in ("Partner", "shop.customers_v2", "Applied ←", "2026-11-22 01:58:00Z (2m ago)"):
        assert expected in text, expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param(
            _status(worker={"lease_holder": None}), "no worker holds the lease", id="no-holder"
        ),
        pytest.param(
            _status(backfill={"done": False, "docs": 10, "total": 40}),
            "10 / 40 docs (25%)",
            id="backfill-progress",
        ),
        pytest.param(
            _status(backfill={"done": False, "docs": 0}), "not done", id="backfill-not-started"
        ),
        pytest.param(_status(lag_seconds=12.34), "12.3 s", id="lag-seconds"),
        pytest.param(_status(lag_seconds=None, last_client_write={}), "-", id="unknowns-dash"),
        pytest.param({"worker": {}, "pairs": []}, "No pairs registered yet.", id="no-pairs"),
        pytest.param(
            _status(state="RESYNC_REQUIRED", resync_reason="change history lost: 286"),
            "resync required: change history lost: 286; run `partner-sync backfill --restart",
            id="resync-reason",
        ),
        pytest.param(
            _status(state="PAUSED", state_seen=False),
            "shop.customers: the worker has not taken up the change to PAUSED yet",
            id="state-not-seen",
        ),
        pytest.param(_status(state="PAUSED", held=1234), "1,234 held", id="held-changes"),
    ],
)
def test_table_variants(status: dict[str, Any], expected: str) -> None:
    """Missing values, progress and an absent lease holder are shown readably."""
    assert expected in _render(status)


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        pytest.param(_status(state="RESYNC_REQUIRED"), "RESYNC_REQUIRED", id="resync-required"),
        pytest.param(_status(dead_letters=3), "3 dead letter(s)", id="dead-letters"),
        pytest.param(_status(lag_seconds=61.0), "lag 61.0 s is above 60 s", id="lag"),
        pytest.param(
            _status(worker={"lease_holder": None}),
            "no worker holds the lease",
            id="no-lease-running",
        ),
        pytest.param(
            _status(state="BACKFILLING", worker={"lease_holder": ""}),
            "no worker holds the lease",
            id="no-lease-backfilling",
        ),
        pytest.param(
            _status(worker={"lease_expires": "2026-11-22T01:59:00Z"}),
            "expired 1m ago",
            id="lease-expired",
        ),
        pytest.param(_status(state="DANCING"), "unknown state 'DANCING'", id="unknown-state"),
    ],
)
def test_unhealthy(status: dict[str, Any], reason: str) -> None:
    """Each health rule makes the status unhealthy with a reason that says what to do."""
    healthy, reasons = status_is_healthy(status, now=NOW)
    assert not healthy
    assert any(reason in line for line in reasons), reasons


@pytest.mark.parametrize(
    "status",
    [
        pytest.param(HEALTHY, id="running"),
        pytest.param(
            _status(state="PAUSED", worker={"lease_holder": None}, lag_seconds=900.0),
            id="paused-no-lease",
        ),
        pytest.param(_status(state="COMPLETED", worker={"lease_holder": None}), id="completed"),
        pytest.param(
            _status(state="NOT_STARTED", worker={"lease_holder": None}, lag_seconds=None),
            id="not-started",
        ),
        pytest.param(_status(state="BACKFILLING", lag_seconds=500.0), id="backfilling-lag-ignored"),
        pytest.param({"worker": {}, "pairs": []}, id="no-pairs"),
    ],
)
def test_healthy(status: dict[str, Any]) -> None:
    """Operator-chosen states and a working pair are healthy, with no reasons."""
    assert status_is_healthy(status, now=NOW) == (True, [])


def test_lag_threshold_is_configurable() -> None:
    """max_lag_s moves the lag rule's threshold."""
    status = _status(lag_seconds=5.0)
    assert status_is_healthy(status, max_lag_s=10, now=NOW)[0]
    assert not status_is_healthy(status, max_lag_s=1, now=NOW)[0]


@pytest.fixture
def fake_collector(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace the engine's collector and the reachability check; returns the status to serve."""
    served = copy.deepcopy(HEALTHY)

    async def collect(config: Config) -> dict[str, Any]:
        return served

    async def reachable(uri: str, timeout_s: float, *, source: str = "") -> None:
        return None

    monkeypatch.setattr(status_command, "_collector", lambda: collect)
    monkeypatch.setattr(status_command, "check_reachable", reachable)
    return served


def _run(*args: str) -> Any:
    return CliRunner().invoke(main, ["status", *args], env={"PARTNER_SYNC_CONFIG": None})


def test_command_json_prints_the_object(fake_collector: dict[str, Any]) -> None:
    """--json prints exactly the collected status object."""
    result = _run("--json")
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout) == fake_collector


def test_command_table(fake_collector: dict[str, Any]) -> None:
    """Without flags the command prints the table."""
    result = _run()
    assert result.exit_code == 0, result.output
    assert "shop.customers" in result.stdout and "RUNNING" in result.stdout


@pytest.mark.parametrize(
    ("changes", "exit_code", "expected"),
    [
        pytest.param({}, 0, "healthy", id="healthy"),
        pytest.param({"dead_letters": 2}, 1, "2 dead letter(s)", id="unhealthy"),
    ],
)
def test_command_check_exit_code(
    fake_collector: dict[str, Any], changes: dict[str, Any], exit_code: int, expected: str
) -> None:
    """--check exits 0 when healthy and 1 when not, printing why."""
    fake_collector["pairs"][0].update(changes)
    fake_collector["worker"]["lease_expires"] = "2999-01-01T00:00:00+00:00"
    result = _run("--check")
    assert result.exit_code == exit_code
    assert expected in result.stdout


def test_command_check_with_json(fake_collector: dict[str, Any]) -> None:
    """--json --check prints the object on stdout, the reasons on stderr, and the exit code."""
    fake_collector["pairs"][0]["state"] = "RESYNC_REQUIRED"
    result = _run("--json", "--check")
    assert result.exit_code == 1
    assert orjson.loads(result.stdout)["pairs"][0]["state"] == "RESYNC_REQUIRED"
    assert "RESYNC_REQUIRED" in result.stderr


def test_command_bad_configuration_exits_2() -> None:
    """A bad configuration value is one line on stderr and exit code 2."""
    result = CliRunner().invoke(main, ["status"], env={"PARTNER_SYNC_BATCH__MAX_DOCS": "0"})
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "partner-sync: env PARTNER_SYNC_BATCH__MAX_DOCS: batch.max_docs: must be positive, got 0"
    )


def test_command_unreachable_server_exits_2() -> None:
    """With nothing listening at the URI, status says so in one line and exits 2."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        "PARTNER_SYNC_URI": f"mongodb://127.0.0.1:{port}/?directConnection=true",
        "PARTNER_SYNC_CONNECT_TIMEOUT_S": "1",
    }
    result = CliRunner().invoke(main, ["status", "--check"], env=env)
    assert result.exit_code == 2
    assert result.stderr.startswith("partner-sync: env PARTNER_SYNC_URI: uri: cannot reach MongoDB")


async def _register_example_pair(mongo_uri: str, state_db: str) -> None:
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    try:
        store = StateStore(mongo[state_db])
        await store.ensure_collections()
        await store.register(load_registry(["transforms.examples.customers"], entry_points=False))
    finally:
        await mongo.close()


def test_command_reads_the_state_database(mongo_uri: str, db_name: str) -> None:
    """Against a real server, status shows the registered pair as NOT_STARTED and healthy,
    with no worker running anywhere."""
    env = {"PARTNER_SYNC_URI": mongo_uri, "PARTNER_SYNC_STATE_DB": db_name}
    empty = CliRunner().invoke(main, ["status", "--json"], env=env)
    assert empty.exit_code == 0, empty.output
    assert orjson.loads(empty.stdout)["pairs"] == []

    anyio.run(_register_example_pair, mongo_uri, db_name)
    result = CliRunner().invoke(main, ["status", "--json", "--check"], env=env)
    assert result.exit_code == 0, result.output
    (pair,) = orjson.loads(result.stdout)["pairs"]
    assert (pair["original"], pair["partner"], pair["state"]) == (
        "shop.customers",
        "shop.customers_v2",
        "NOT_STARTED",
    )
    table = CliRunner().invoke(main, ["status"], env=env)
    assert table.exit_code == 0 and "NOT_STARTED" in table.stdout


def test_command_read_failure_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver error while reading the state database is one line on stderr and exit 2."""

    async def collect(config: Config) -> dict[str, Any]:
        raise OperationFailure("not authorized on partner_sync to execute command", code=13)

    async def reachable(uri: str, timeout_s: float, *, source: str = "") -> None:
        return None

    monkeypatch.setattr(status_command, "_collector", lambda: collect)
    monkeypatch.setattr(status_command, "check_reachable", reachable)
    result = _run("--check")
    assert result.exit_code == 2
    assert result.stderr.startswith("partner-sync: reading partner_sync: not authorized")
    assert result.stderr.count("\n") == 1
