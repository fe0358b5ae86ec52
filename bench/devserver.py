"""Throughput of the development server through real PyMongo: prints figures, asserts nothing.

    python bench/devserver.py [--seconds 3] [--in-process | --uri mongodb://...]

By default the server runs as its own process (`python -m devserver`), as a user runs it, so
the figures are the server's and not the GIL shared with the benchmarking client.

Figures: acknowledged single-document inserts/s (one at a time), bulk-inserted documents/s
(insert_many of 1,000), change events/s delivered to a watcher, and documents/s through the sync
engine's write pattern (transactions that read 500 documents by `_id $in` and replace them with
upserts).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# This program is named like the package it measures: keep its own directory off the import
# path so `import devserver` finds the package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from pymongo import MongoClient, ReplaceOne  # noqa: E402

from devserver import DevServer  # noqa: E402


class ServerCpu:
    """CPU seconds a server process has used (from /proc), to report CPU per operation.

    On a busy machine wall-clock rates mostly measure the scheduler; CPU per operation is the
    server's own cost, and its inverse is the rate one free core would sustain. The server
    process polls for a short while before it sleeps (see `devserver._loop`), and that polling
    counts here: on the one-at-a-time run the figure is mostly the polling window, not work.
    """

    def __init__(self, pid: int | None) -> None:
        self._stat = Path(f"/proc/{pid}/stat") if pid is not None else None
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def seconds(self) -> float | None:
        if self._stat is None or not self._stat.exists():
            return None
        fields = self._stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self._ticks


def _report(
    label: str, count: int, elapsed: float, cpu: ServerCpu, cpu_before: float | None
) -> None:
    line = f"{label:<48} {count / elapsed:>10,.0f}/s"
    cpu_after = cpu.seconds()
    if cpu_before is not None and cpu_after is not None and count:
        per_op = (cpu_after - cpu_before) / count
        line += f"   server CPU {per_op * 1e6:,.0f} us/op (= {1 / per_op:,.0f}/s per core)"
    print(line, flush=True)


def _timed(label: str, seconds: float, cpu: ServerCpu, step: Callable[[int], int]) -> None:
    """Run `step(done_so_far)` (returning how many it did) for `seconds`, then report."""
    count = 0
    before = cpu.seconds()
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        count += step(count)
    _report(label, count, time.perf_counter() - started, cpu, before)


def single_inserts(client: MongoClient[dict[str, Any]], seconds: float, cpu: ServerCpu) -> None:
    coll = client.bench.single
    coll.drop()

    def one(n: int) -> int:
        coll.insert_one({"n": n, "name": f"user{n}", "tags": ["a", "b"]})
        return 1

    _timed("single inserts (acknowledged, one at a time)", seconds, cpu, one)


def bulk_inserts(client: MongoClient[dict[str, Any]], seconds: float, cpu: ServerCpu) -> None:
    coll = client.bench.bulk
    coll.drop()

    def thousand(n: int) -> int:
        coll.insert_many(
            [{"n": n + i, "name": f"user{i}", "tags": ["a", "b"]} for i in range(1000)]
        )
        return 1000

    _timed("bulk inserted docs (insert_many of 1,000)", seconds, cpu, thousand)


def watched_events(client: MongoClient[dict[str, Any]], total: int, cpu: ServerCpu) -> None:
    """Events/s from the first to the last of `total` inserts seen by a collection watcher."""
    coll = client.bench.watched
    coll.drop()
    with coll.watch(batch_size=1000, max_await_time_ms=200) as stream:
        ready = threading.Event()

        def write() -> None:
            ready.wait(10)
            for start in range(0, total, 1000):
                coll.insert_many([{"n": start + i} for i in range(1000)])

        writer = threading.Thread(target=write)
        writer.start()
        seen = 0
        before = cpu.seconds()
        started = time.perf_counter()
        ready.set()
        while seen < total:
            if stream.try_next() is not None:
                seen += 1
        elapsed = time.perf_counter() - started
        writer.join()
    # The CPU figure covers both writing the inserts and delivering their events.
    _report("change events delivered to a watcher", seen, elapsed, cpu, before)


def transaction_replaces(
    client: MongoClient[dict[str, Any]], seconds: float, cpu: ServerCpu, batch: int = 500
) -> None:
    """The engine's pattern: per transaction, find 500 documents by `_id $in`, then replace
    them with `ReplaceOne(..., upsert=True)` in one bulk_write, and commit."""
    coll = client.bench.txn
    coll.drop()
    ids = list(range(batch))
    coll.insert_many([{"_id": i, "n": i, "name": f"user{i}", "tags": ["a", "b"]} for i in ids])

    def transaction(n: int) -> int:
        with client.start_session() as session, session.start_transaction():
            found = list(coll.find({"_id": {"$in": ids}}, session=session))
            assert len(found) == batch
            coll.bulk_write(
                [
                    ReplaceOne(
                        {"_id": i},
                        {"n": n + i, "name": f"user{i}", "tags": ["a", "b"]},
                        upsert=True,
                    )
                    for i in ids
                ],
                session=session,
            )
        return batch

    _timed(f"transaction docs (find $in + {batch} replaces)", seconds, cpu, transaction)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each timed run")
    parser.add_argument("--uri", help="benchmark this running server instead")
    parser.add_argument(
        "--in-process", action="store_true", help="run the server in a thread of this process"
    )
    parser.add_argument("--events", type=int, default=50_000, help="events for the watcher run")
    args = parser.parse_args()
    handle = None
    process = None
    uri = args.uri
    if uri is None and args.in_process:
        handle = DevServer().start_in_thread()
        uri = handle.uri
    elif uri is None:
        process = subprocess.Popen(
            [sys.executable, "-m", "devserver", "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=_HERE.parent,
        )
        assert process.stdout is not None
        uri = process.stdout.readline().strip()
    try:
        with MongoClient(uri) as client:
            client.admin.command("ping")
            cpu = ServerCpu(process.pid if process is not None else None)
            single_inserts(client, args.seconds, cpu)
            bulk_inserts(client, args.seconds, cpu)
            watched_events(client, args.events, cpu)
            transaction_replaces(client, args.seconds, cpu)
    finally:
        if handle is not None:
            handle.stop()
        if process is not None:
            process.terminate()
            process.wait(30)
            if process.stdout is not None:
                process.stdout.close()


if __name__ == "__main__":
    main()
