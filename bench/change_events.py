"""Change events per second through ChangeHistory.append -> ChangeStreamCursor.next_batch.

No wire protocol: this measures the change-stream module alone, so the server's own benchmark
(bench/devserver.py) can tell how much of its budget the change history takes.

    python bench/change_events.py [--events N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# bench/devserver.py would shadow the package: keep this directory off the import path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from bson import Timestamp  # noqa: E402

from devserver._changes import ChangeHistory, ChangeRecord  # noqa: E402


def _records(kind: str, i: int) -> list[ChangeRecord]:
    key = {"_id": i}
    if kind == "insert":
        return [
            ChangeRecord("insert", "bench", "items", key, after={"_id": i, "n": i, "s": "x" * 64})
        ]
    before = {"_id": i, "n": i, "tags": ["a"], "s": "x" * 64}
    after = {"_id": i, "n": i + 1, "tags": ["a", "b"], "s": "x" * 64}
    spec = {"$inc": {"n": 1}, "$push": {"tags": "b"}}
    return [ChangeRecord("update", "bench", "items", key, before, after, spec)]


async def _run(
    kind: str, events: int, readers: int, pipeline: list[dict[str, Any]]
) -> tuple[float, float]:
    history = ChangeHistory(max_bytes=64 * 1024 * 1024, lookup=lambda db, coll, key: None)
    wall = datetime.now(UTC)
    cursors = [
        history.open(
            db="bench",
            coll="items",
            spec={},
            pipeline=pipeline,
            batch_size=None,
            cluster_time=Timestamp(1, 0),
        )
        for _ in range(readers)
    ]
    delivered = 0
    started = time.perf_counter()
    cpu_started = time.process_time()
    batch = 1000
    for first in range(0, events, batch):
        for i in range(first, min(first + batch, events)):
            history.append(_records(kind, i), cluster_time=Timestamp(2, i + 1), wall_time=wall)
        for cursor in cursors:
            delivered += len(await cursor.next_batch(None, 0))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    return delivered / elapsed, delivered / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    args = parser.parse_args()
    scenarios = [
        ("insert, 1 reader", "insert", 1, []),
        ("update ($inc+$push), 1 reader", "update", 1, []),
        ("insert, 4 readers", "insert", 4, []),
        ("insert, $match operationType", "insert", 1, [{"$match": {"operationType": "insert"}}]),
        ("insert, $project", "insert", 1, [{"$project": {"documentKey": 1}}]),
    ]
    print(f"events appended per scenario: {args.events}")
    # Per CPU second too: on a busy machine the wall-clock rate understates the module.
    print(f"{'scenario':34s} {'events/s (wall)':>16s} {'events/CPU-s':>14s}")
    for label, kind, readers, pipeline in scenarios:
        wall, cpu = asyncio.run(_run(kind, args.events, readers, pipeline))
        print(f"{label:34s} {wall:16,.0f} {cpu:14,.0f}")


if __name__ == "__main__":
    main()
