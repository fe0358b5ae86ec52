"""Events/s through the translation core: `Pair.translate_update` against the naive full diff.

Reference pair: INTERFACE.md's module (transforms/examples/customers.py) on 12-field documents:
renames, a move into a sub-document, type converts, a require with default, only-fields and a
derive (two fields into one). Each event touches 1-3 fields.

    .venv/bin/python bench/translate.py [--events N] [--seed S]
"""

from __future__ import annotations

import argparse
import os
import random
import time
import timeit
from typing import Any

from transforms import Direction, Pair, apply_update_description, diff_documents, load_registry

FIELDS_TOUCHED = ["name", "age", "zip", "price", "tier", "first", "last", "email", "notes", "score"]


def reference_pair() -> Pair:
    """INTERFACE.md's module: rename, move, convert (two), require, only-fields, derive."""
    registry = load_registry(["transforms.examples.customers"], entry_points=False)
    return registry.pairs[0]


def document(rng: random.Random, number: int) -> dict[str, Any]:
    """A 12-field original document (with `_id`)."""
    return {
        "_id": number,
        "name": f"name {number}",
        "zip": f"{rng.randint(10000, 99999)}",
        "age": str(rng.randint(18, 90)),
        "price": rng.randint(100, 10000) / 100,
        "tier": rng.choice(["gold", None, "basic"]),
        "first": "Ada",
        "last": "Lovelace",
        "legacy_flag": rng.random() < 0.5,
        "email": f"u{number}@example.com",
        "notes": {"text": "x" * 20, "tags": ["a", "b"]},
        "score": rng.random(),
    }


def event(rng: random.Random) -> tuple[dict[str, Any], list[str]]:
    touched = rng.sample(FIELDS_TOUCHED, rng.randint(1, 3))
    updated: dict[str, Any] = {}
    removed: list[str] = []
    for field in touched:
        if field == "tier" and rng.random() < 0.3:
            removed.append(field)
        elif field == "age":
            updated[field] = str(rng.randint(18, 90))
        elif field == "notes":
            updated["notes.text"] = "y" * rng.randint(1, 30)
        elif field == "score":
            updated[field] = rng.random()
        elif field == "price":
            updated[field] = rng.randint(100, 10000) / 100
        else:
            updated[field] = f"v{rng.randint(0, 999)}"
    return updated, removed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args()
    rng = random.Random(options.seed)
    pair = reference_pair()
    forward = Direction.FORWARD
    documents = [document(rng, number) for number in range(1000)]
    events = [(documents[i % 1000], *event(rng)) for i in range(options.events)]

    def fast() -> None:
        for base, updated, removed in events:
            pair.translate_update(forward, base, updated, removed, ())

    def naive() -> None:
        for base, updated, removed in events:
            new = apply_update_description(base, updated, removed, ())
            patch = diff_documents(pair.convert(base, forward), pair.convert(new, forward))
            patch.restricted(lambda path: pair.owns(path, forward))

    print(f"reference pair: 12-field documents, {options.events} update events of 1-3 fields")
    print(f"load average before the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    # A fixed pure-Python loop, to compare figures taken on different or busy machines.
    calibration = min(timeit.repeat("sum(range(1000))", number=2000, repeat=5)) / 2000
    print(f"calibration: sum(range(1000)) takes {calibration * 1e6:.1f} us here")
    rates = {}
    for name, run in (
        ("translate_update (fast path)", fast),
        ("naive diff(convert,convert)", naive),
    ):
        best_wall = best_cpu = float("inf")
        for _ in range(3):
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            best_wall = min(best_wall, time.perf_counter() - wall)
            best_cpu = min(best_cpu, time.process_time() - cpu)
        rates[name] = options.events / best_cpu
        print(
            f"{name:30s} {options.events / best_cpu:>9,.0f} events/s of CPU time "
            f"({options.events / best_wall:,.0f}/s wall clock; best of 3)"
        )
    speedup = rates["translate_update (fast path)"] / rates["naive diff(convert,convert)"]
    print(f"fast path speed-up over the naive path: {speedup:.1f}x")


if __name__ == "__main__":
    main()
