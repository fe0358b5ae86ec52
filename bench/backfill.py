"""Backfill throughput and peak memory against a naive copy loop, in the same run.

    .venv/bin/python bench/backfill.py [--docs 200000] [--baseline-docs 5000] [--batch-size 500]

Starts a development server in a child process (or uses MONGODB_URI), loads `--docs` original
documents, then runs, each in its own child process so that its peak RSS is its own:

- `partner-sync backfill` (the real command) over every document;
- the naive baseline over the first `--baseline-docs` documents: read one, convert, upsert one
  (no merge base, no progress, no transaction), the loop a hand-written trigger script runs.

Prints documents per second and peak RSS of each, and the speed-up. The baseline runs on a
sample because on the development server every single-document round trip is slow; its rate is
per document, so the two rates compare directly.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pymongo import MongoClient

TRANSFORMS = """
from transforms import Pair

people = Pair(original="bench.people", partner="bench.people_v2", unmapped="keep")
people.rename("name", "full_name")
people.rename("zip", "address.zip")
people.convert("age", forward=int, backward=str)
people.require("tier", default="basic")
people.partner_only("loyalty", default=0)
"""

NAIVE = """
import sys, time
from pymongo import MongoClient
from transforms import Direction, load_registry

uri, module, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
pair = load_registry([module]).pairs[0]
client = MongoClient(uri)
source, target = client.bench.people, client.bench.people_naive
ids = [doc["_id"] for doc in source.find({}, {"_id": 1}).sort("_id", 1).limit(count)]
started = time.perf_counter()
for document_id in ids:
    document = source.find_one({"_id": document_id})
    target.replace_one({"_id": document_id}, pair.convert(document, Direction.FORWARD), upsert=True)
print(time.perf_counter() - started)
"""


def _start_server() -> tuple[str, subprocess.Popen[str] | None]:
    external = os.environ.get("MONGODB_URI")
    if external:
        return external, None
    server = subprocess.Popen(
        [sys.executable, "-m", "devserver", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    uri = server.stdout.readline().strip()
    return uri, server


def _load(client: MongoClient[dict[str, object]], count: int) -> None:
    client.drop_database("bench")
    client.drop_database("bench_state")
    people = client.bench.people
    chunk = 10_000
    for start in range(0, count, chunk):
        people.insert_many(
            [
                {
                    "_id": i,
                    "name": f"person {i}",
                    "zip": f"{i % 100000:05d}",
                    "age": str(18 + i % 70),
                    "tier": None if i % 3 else "gold",
                    "tags": ["a", "b"],
                }
                for i in range(start, min(count, start + chunk))
            ]
        )


def _child(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run a child process; (wall seconds, peak RSS in MiB, stdout)."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{argv[2:5]} failed with exit code {process.returncode}")
    # ru_maxrss is in KiB on Linux.
    return time.perf_counter() - started, usage.ru_maxrss / 1024, output


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--baseline-docs", type=int, default=5_000)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()

    uri, server = _start_server()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            module = Path(scratch) / "bench_people.py"
            module.write_text(TRANSFORMS)
            config = Path(scratch) / "bench.toml"
            config.write_text(
                f'uri = "{uri}"\ntransforms = ["{module}"]\nstate_db = "bench_state"\n'
                '[http]\nlisten = ""\n[log]\nlevel = "warning"\n'
            )
            client: MongoClient[dict[str, object]] = MongoClient(uri)
            started = time.perf_counter()
            _load(client, args.docs)
            print(f"loaded {args.docs} documents in {time.perf_counter() - started:.1f}s")
            env = {k: v for k, v in os.environ.items() if not k.startswith("PARTNER_SYNC_")}

            naive_argv = [sys.executable, "-c", NAIVE, uri, str(module), str(args.baseline_docs)]
            _, naive_rss, naive_out = _child(naive_argv, env)
            naive_rate = args.baseline_docs / float(naive_out.strip())
            print(
                f"naive (read one, convert, upsert one): {args.baseline_docs} docs, "
                f"{naive_rate:,.0f} docs/s, peak RSS {naive_rss:.0f} MiB"
            )

            backfill_argv = [
                sys.executable, "-m", "worker", "backfill", "--config", str(config),
                "--batch-size", str(args.batch_size), "--json",
            ]  # fmt: skip
            wall, rss, _ = _child(backfill_argv, env)
            # Counts from metadata: an exact count scans every document on the dev server.
            written = client.bench.people_v2.estimated_document_count()
            bases = client.bench_state.merge_base.estimated_document_count()
            rate = args.docs / wall
            print(
                f"partner-sync backfill: {args.docs} docs in {wall:.1f}s (process wall time,"
                f" start-up included), {rate:,.0f} docs/s, peak RSS {rss:.0f} MiB;"
                f" {written} written, {bases} merge base records"
            )
            print(f"speed-up over the naive loop: {rate / naive_rate:.1f}x")
            client.close()
    finally:
        if server is not None:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
