"""`partner-sync demo`, the README's first command, run the way a new user runs it."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_end_to_end_without_drift() -> None:
    """A short demo backfills, syncs both ways under concurrent clients, and verifies clean."""
    completed = subprocess.run(
        [sys.executable, "-m", "worker", "demo", "--docs", "300", "--seconds", "4"],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "Backfilled 300 documents" in output
    assert "no drift" in output
    assert "Before and after" in output
