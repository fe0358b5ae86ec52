"""bench/batch_phases.py: the per-phase figures it prints from a worker's debug log."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from tests.loading import module_from_file

_SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "batch_phases.py"


def _load() -> ModuleType:
    # Loaded from its file: bench/ is not a package.
    return module_from_file("bench_batch_phases", _SCRIPT)


def _record(events: int, **phases: float) -> str:
    return json.dumps({"event": "batch_applied", "events": events, "phases": phases})


def test_phases_are_summarised_over_large_enough_batches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Medians and shares come from the `batch_applied` records of at least --min-events
    events; other lines, other events and broken lines are passed over."""
    script = _load()
    log = tmp_path / "engine.log"
    log.write_text(
        "\n".join(
            [
                _record(500, read=0.010, plan=0.030, write=0.040, commit=0.020),
                '{"event": "stream_open"}',
                'not json, but it names "batch_applied"',
                _record(400, read=0.030, plan=0.030, write=0.020, commit=0.020),
                _record(3, read=9.0, plan=9.0),  # too small: left out
            ]
        )
    )
    records = script.batches(log, 100)
    assert [r["events"] for r in records] == [500, 400]
    script.report(records)
    lines = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert lines["read"][:1] == ["20.0"]  # the median of 10 and 30 ms
    assert lines["plan"][-1] == "30%"  # 60 of the 200 ms of both batches
    assert lines["look_ahead"][0] == "0.0"  # not logged: none spent
    assert lines["all"] == ["100.0"]


def test_a_log_without_debug_records_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = _load()
    log = tmp_path / "engine.log"
    log.write_text('{"event": "stream_open"}\n')
    script.report(script.batches(log, 1))
    assert "no batch_applied records" in capsys.readouterr().out
