"""Where the worker's batches spend their time, from its debug log: prints figures.

    .venv/bin/python bench/sync.py --only engine --workdir /tmp/run --log-level debug
    .venv/bin/python bench/batch_phases.py /tmp/run/engine/engine.log [--min-events 400]

Each applied batch logs `batch_applied` with the wall time of its attempt per phase ("read":
merge base and documents, "look_ahead", "plan", "write", "check": client writes after the
reads, "commit"). This prints, over the batches of at least `--min-events` events, the median
and 90th percentile of each phase and its share of the batches' time.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

PHASES = ("read", "look_ahead", "plan", "write", "check", "commit")


def batches(log: Path, min_events: int) -> list[dict[str, Any]]:
    """The `batch_applied` records of a JSON log with at least `min_events` events."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if '"batch_applied"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "batch_applied" and record.get("events", 0) >= min_events:
            found.append(record)
    return found


def report(records: list[dict[str, Any]]) -> None:
    if not records:
        print("no batch_applied records (was the worker's log level debug?)")
        return
    totals = [sum(r.get("phases", {}).values()) for r in records]
    events = [r["events"] for r in records]
    print(f"{len(records)} batches, median {statistics.median(events):.0f} events")
    print(f"{'phase':<12} {'median ms':>10} {'p90 ms':>8} {'share':>6}")
    for phase in PHASES:
        spent = [r.get("phases", {}).get(phase, 0.0) * 1000 for r in records]
        share = sum(spent) / (sum(totals) * 1000) if sum(totals) else 0.0
        p90 = statistics.quantiles(spent, n=10)[-1] if len(spent) > 1 else spent[0]
        print(f"{phase:<12} {statistics.median(spent):>10.1f} {p90:>8.1f} {share:>6.0%}")
    print(f"{'all':<12} {statistics.median(totals) * 1000:>10.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path, help="the worker's log (JSON lines, debug level)")
    parser.add_argument("--min-events", type=int, default=1, metavar="N")
    options = parser.parse_args()
    report(batches(options.log, options.min_events))


if __name__ == "__main__":
    main()
