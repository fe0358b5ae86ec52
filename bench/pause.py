"""How soon `pause` and `resume` take effect in a worker that is working off a backlog.

INTERFACE.md: `pause` and `resume` take effect in the running worker within a second. Behind a
backlog the worker applies several transactions per delivery from the stream; this measures
the time from a state change to the worker acting on it, at random moments of such a run:

- pause: from the pair's state set to PAUSED to the first change the worker holds for it
  (instead of applying it);
- resume: from the state set back to RUNNING to the first held change replayed (the held
  changes are deleted in the transaction that applies them);
- and for each, when the command returned: the state changes are made as `partner-sync pause`
  and `resume` make them (`pause_pair`, `resume_pair`), which return once the worker has
  recorded that it acts on the change (`seen_serial`).

Setup as `bench/sync.py` (INTERFACE.md's customers pair, `partner-sync run` as a subprocess,
a development server subprocess or MONGODB_URI): seed `--docs` documents, stop the worker,
write `--backlog` client updates, start it again, then `--rounds` pause/resume rounds while it
catches up.

    .venv/bin/python bench/pause.py [--backlog 40000] [--rounds 6] [--docs 2000] [--paused-s 0.3]
                                    [--repause-s S]

The longer the pair stays paused, the more changes a resume replays (15,000-25,000 a second
behind this machine's backlog).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.append(str(_HERE.parent))
from bench.sync import (  # noqa: E402
    DB,
    ORIGINAL,
    STATE_DB,
    Client,
    Load,
    add_engine_options,
    caught_up,
    cluster_time,
    engine_on_server,
    seed,
    wait_until,
)
from worker.lifecycle import pause_pair, resume_pair  # noqa: E402
from worker.state import StateStore  # noqa: E402

PAIR = f"{DB}.{ORIGINAL}"
# How long the benchmark waits for a state change to take effect.
GIVE_UP_S = 10.0
# Per state change: (seconds until it took effect, seconds until the command returned).
Timing = tuple[float | None, float | None]
# (pause, resume, changes held when the resume began, a pause again during the replay)
Round = tuple[Timing, Timing, int, Timing | None]


async def held_count(client: Client) -> int:
    return await client[STATE_DB]["held_events"].count_documents({"pair": PAIR})


async def first_change(
    client: Client, operation: str, change: Any
) -> tuple[float | None, float | None]:
    """Seconds from `change()` to the first `operation` ("insert": a change held, "delete":
    a held change replayed) in the held changes, or None after GIVE_UP_S; and seconds until
    `change()` returned. Watched by a change stream opened before the change: polling the
    collection (a scan on the development server) would load the server the worker shares."""
    held = client[STATE_DB]["held_events"]
    pipeline = [
        {"$match": {"operationType": operation, "fullDocument.pair": PAIR}}
        if operation == "insert"
        else {"$match": {"operationType": operation}},
        {"$project": {"operationType": 1}},
    ]
    async with await held.watch(pipeline, max_await_time_ms=20) as stream:
        await stream.try_next()  # the stream is open at the server before the change
        started = time.monotonic()
        seen: float | None = None
        returned: float | None = None

        async def watch() -> None:
            nonlocal seen
            while time.monotonic() - started < GIVE_UP_S:
                if await stream.try_next() is not None:
                    seen = time.monotonic() - started
                    return

        async def command() -> None:
            nonlocal returned
            await change()
            returned = time.monotonic() - started

        await asyncio.gather(watch(), command())
    return seen, returned


async def one_round(
    client: Client, store: StateStore, behind: Any, paused_s: float, repause_s: float | None
) -> Round | None:
    """(pause seconds, resume seconds), each (took effect, command returned), of one round,
    or None when the backlog ran out; with `repause_s`, also a pause that long after the
    replay began (and a resume, not timed, after it)."""
    if not await behind():
        return None

    async def pause() -> None:
        result = await pause_pair(store, PAIR)
        assert result.after == "PAUSED", result.message

    async def resume() -> None:
        result = await resume_pair(store, PAIR)
        assert result.after == "RUNNING", result.message

    paused = await first_change(client, "insert", pause)
    await asyncio.sleep(paused_s)  # let it hold more
    held = await held_count(client)
    resumed = await first_change(client, "delete", resume)
    repaused = None
    if repause_s is not None:
        await asyncio.sleep(repause_s)
        if not await behind():
            return paused, resumed, held, None  # no change left to hold: nothing to time
        repaused = await first_change(client, "insert", pause)
        await asyncio.sleep(0.1)
        await resume()
    return paused, resumed, held, repaused


async def main_async(options: argparse.Namespace) -> None:
    rng = random.Random(5)
    async with engine_on_server(options) as (client, contender, wire):
        await wait_until(lambda: contender.ready(client), 60, "the worker to start")
        await seed(client, contender, options.docs)
        contender.stop()
        load = Load(client, options.docs, random.Random(11), wire=wire)
        await load.run(options.backlog, None, None)
        last_write = await cluster_time(client)
        contender.start()
        store = StateStore(client[STATE_DB])

        async def behind() -> bool:
            position = await contender.position(client)
            return position is None or position < load.times[-1]

        async def started() -> bool:
            position = await contender.position(client)
            return position is not None and position >= load.times[0]

        await wait_until(started, 60, "the worker to begin the backlog")
        rounds: list[Round] = []
        for _ in range(options.rounds):
            # A random moment of a delivery.
            await asyncio.sleep(rng.uniform(0.1, 0.6))
            measured = await one_round(client, store, behind, options.paused_s, options.repause_s)
            if measured is None:
                break
            rounds.append(measured)
        report(options, rounds)
        # The held changes all replayed and the backlog worked off, or it says so.
        started_at = time.monotonic()
        try:
            await caught_up(client, contender, last_write, 300)
            await wait_until(lambda: none_held(client), 60, "the held changes to be replayed")
        except TimeoutError as exc:
            pair = await store.pairs.find_one({"_id": PAIR})
            print(
                f"  {exc}: the pair is {(pair or {}).get('state')},"
                f" {await held_count(client)} changes held,"
                f" the worker at {await contender.position(client)} of {last_write}"
            )
            raise SystemExit(1) from None
        print(f"  caught up, nothing held, {time.monotonic() - started_at:.1f} s later")


async def none_held(client: Client) -> bool:
    # One document found or none: a count would scan every held change on the development
    # server, as often as this is asked, and slow down the replay it waits for.
    held = client[STATE_DB]["held_events"]
    return await held.find_one({"pair": PAIR}, {"_id": 1}) is None


def report(options: argparse.Namespace, rounds: list[Round]) -> None:
    print(
        f"backlog {options.backlog}, docs {options.docs}, {len(rounds)} rounds,"
        f" paused {options.paused_s} s each"
    )
    kinds = [("pause", 0), ("resume", 1)]
    if options.repause_s is not None:
        kinds.append(("pause during the replay", 3))
    for name, index in kinds:
        for what, part in (("took effect", 0), ("command returned", 1)):
            values = [timing[part] for r in rounds if (timing := r[index]) is not None]
            seen = [v * 1000 for v in values if v is not None]
            missed = len(values) - len(seen)
            if not seen:
                print(f"  {name:7} {what}: in no round within {GIVE_UP_S:.0f} s")
                continue
            each = ", ".join(f"{v:.0f}" for v in seen)
            print(
                f"  {name:7} {what:16} median {statistics.median(seen):5.0f} ms,"
                f" max {max(seen):5.0f} ms ({each})"
                + (f"; {missed} not within {GIVE_UP_S:.0f} s" if missed else "")
            )
    held = [r[2] for r in rounds]
    if held:
        print(
            f"  changes held at the resume: median {statistics.median(held):.0f},"
            f" max {max(held)} ({', '.join(str(h) for h in held)})"
        )
    if len(rounds) < options.rounds:
        print(f"  the backlog ran out after {len(rounds)} of {options.rounds} rounds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=40_000, help="client writes to catch up on")
    parser.add_argument("--rounds", type=int, default=6, help="pause/resume rounds")
    parser.add_argument("--docs", type=int, default=2000, help="documents in the collection")
    parser.add_argument(
        "--paused-s", type=float, default=0.3, help="how long each round keeps the pair paused"
    )
    parser.add_argument(
        "--repause-s",
        type=float,
        help="also pause again this long after each resume took effect (during the replay)",
    )
    add_engine_options(parser)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
