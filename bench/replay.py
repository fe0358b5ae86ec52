"""Another pair's replication lag while the worker replays one pair's held changes.

A worker syncs two pairs: INTERFACE.md's customers pair (transforms/examples/customers.py) and
`shop.orders` <-> `shop.orders_v2` (a field renamed). The customers pair is paused while
`--held` client updates are written to it (the worker holds them all), then resumed: the worker
replays the held changes, oldest first. A prober writes 20 order changes a second and times each
from the write's completion to the moment a watcher sees the converted value in orders_v2:

- first for `--idle-s` seconds with nothing to replay (the baseline of the same run);
- then from the resume until nothing is held any more (the replay).

With `--rate`, clients also write that many customer updates a second during the replay; the
worker holds them behind the replay and replays them too.

    .venv/bin/python bench/replay.py [--held 40000] [--docs 2000] [--idle-s 3] [--rate 0]
                                     [--max-docs 500]

Setup as `bench/sync.py`: a development server subprocess (or MONGODB_URI, whose `shop` and
state databases are dropped first) and `partner-sync run` as a subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.append(str(_HERE.parent))
from bench.pause import PAIR as CUSTOMERS  # noqa: E402
from bench.pause import held_count, none_held  # noqa: E402
from bench.sync import (  # noqa: E402
    DB,
    STATE_DB,
    Client,
    Contender,
    Load,
    add_engine_options,
    caught_up,
    engine_on_server,
    seed,
    wait_until,
)
from worker.lifecycle import pause_pair, resume_pair  # noqa: E402
from worker.state import StateStore  # noqa: E402

ORDERS = f"{DB}.orders"
ORDERS_MODULE = f"""
from transforms import Pair

orders = Pair(original="{ORDERS}", partner="{ORDERS}_v2", unmapped="keep")
orders.rename("total", "amount")
"""
ORDER_DOCS = 64
PROBES_PER_S = 20
# Longest the benchmark waits for the replay, and for the last probes after it.
REPLAY_LIMIT_S = 600.0
SETTLE_S = 5.0


class Prober:
    """Order changes at PROBES_PER_S, each timed until orders_v2 shows it."""

    def __init__(self, client: Client):
        self.client = client
        self.serial = 0
        self.written: dict[int, float] = {}  # serial -> when its write returned
        self.seen: dict[int, float] = {}  # serial -> when orders_v2 had it

    async def write_for(self, stop: asyncio.Event) -> list[int]:
        """Write until `stop` is set; returns the serials written."""
        orders = self.client[DB]["orders"]
        serials: list[int] = []
        started = time.monotonic()
        while not stop.is_set():
            self.serial += 1
            serial = self.serial
            await orders.update_one({"_id": serial % ORDER_DOCS}, {"$set": {"total": serial}})
            self.written[serial] = time.monotonic()
            serials.append(serial)
            delay = started + len(serials) / PROBES_PER_S - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(delay, 0))
        return serials

    async def watch(self, stream: Any) -> None:
        """Record when each probe value shows up in orders_v2 (cancelled at the end)."""
        while True:
            event = await stream.try_next()
            if event is None:
                continue
            amount = (event.get("updateDescription") or {}).get("updatedFields", {}).get("amount")
            if isinstance(amount, int):
                self.seen.setdefault(amount, time.monotonic())

    def lags_ms(self, serials: list[int]) -> tuple[list[float], int]:
        """Lag of each of these probes, and how many never showed up. A probe written again on
        its document before the worker applied it is coalesced with the later one, and its own
        value never shows up: it arrived when the first later value of its document did."""
        lags: list[float] = []
        for serial in serials:
            later = range(serial, self.serial + 1, ORDER_DOCS)
            arrived = next((self.seen[s] for s in later if s in self.seen), None)
            if arrived is not None:
                lags.append(max(0.0, arrived - self.written[serial]) * 1000)
        return lags, len(serials) - len(lags)


async def probed(prober: Prober, until: Any) -> list[int]:
    """Probe while `until` runs; returns the serials written meanwhile."""
    stop = asyncio.Event()
    writing = asyncio.create_task(prober.write_for(stop))
    try:
        await until
    finally:
        stop.set()
    return await writing


async def pairs_running(client: Client) -> bool:
    states = {d["_id"]: d.get("state") async for d in client[STATE_DB]["pairs"].find()}
    return states.get(CUSTOMERS) == "RUNNING" and states.get(ORDERS) == "RUNNING"


def orders_module(workdir: Path) -> Path:
    """The orders pair's transform module, written into `workdir`."""
    module = workdir / "orders_pair.py"
    module.write_text(ORDERS_MODULE)
    return module


async def main_async(options: argparse.Namespace) -> None:
    async with engine_on_server(
        options,
        modules=lambda workdir: (str(orders_module(workdir)),),
        max_docs=options.max_docs,
        pool=40,
    ) as (client, contender, wire):
        await run(options, client, contender, wire)


async def run(
    options: argparse.Namespace, client: Client, contender: Contender, wire: str | None
) -> None:
    await wait_until(lambda: pairs_running(client), 60, "the worker to start both pairs")
    await seed(client, contender, options.docs)
    orders, orders_v2 = client[DB]["orders"], client[DB]["orders_v2"]
    await orders.insert_many([{"_id": n, "total": 0} for n in range(ORDER_DOCS)])

    async def orders_synced() -> bool:
        return await orders_v2.count_documents({}) == ORDER_DOCS

    await wait_until(orders_synced, 60, "the orders to be synced")
    store = StateStore(client[STATE_DB])
    prober = Prober(client)
    match = [{"$match": {"operationType": "update"}}]
    async with await orders_v2.watch(match, max_await_time_ms=10) as stream:
        await stream.try_next()  # open at the server before the first probe
        watching = asyncio.create_task(prober.watch(stream))
        try:
            idle = await probed(prober, asyncio.sleep(options.idle_s))

            paused = await pause_pair(store, CUSTOMERS)
            assert paused.after == "PAUSED", paused.message
            load = Load(client, options.docs, random.Random(11), wire=wire)
            started = time.monotonic()
            await load.run(options.held, None, None)

            # Held once the worker's checkpoint is past the last write (an update that
            # changes nothing makes no change event, so counting the writes would not do).
            await caught_up(client, contender, load.times[-1], 300)
            held = await held_count(client)
            print(
                f"held {held} changes in {time.monotonic() - started:.1f} s"
                f" (written and held while paused)"
            )

            during_load = Load(client, options.docs, random.Random(13), wire=wire)
            replay_s: list[float] = []

            async def replay() -> None:
                began = time.monotonic()
                resumed = await resume_pair(store, CUSTOMERS)
                assert resumed.after == "RUNNING", resumed.message
                writing = None
                if options.rate:
                    writing = asyncio.create_task(
                        during_load.run(None, options.rate, REPLAY_LIMIT_S)
                    )
                try:
                    await wait_until(lambda: none_held(client), REPLAY_LIMIT_S, "the replay to end")
                finally:
                    replay_s.append(time.monotonic() - began)
                    if writing is not None:
                        writing.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await writing

            during = await probed(prober, replay())

            async def probes_seen() -> bool:
                return all(s in prober.seen for s in during)

            with contextlib.suppress(TimeoutError):
                await wait_until(probes_seen, SETTLE_S, "the last probes")
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
    report(options, prober, idle, during, held, replay_s[0], during_load.done)


def report(
    options: argparse.Namespace,
    prober: Prober,
    idle: list[int],
    during: list[int],
    held: int,
    replay_s: float,
    written_during: int,
) -> None:
    print(
        f"max_docs {options.max_docs}, docs {options.docs},"
        f" customer writes during the replay {options.rate}/s"
    )
    print(
        f"replay of {held} held changes (and {written_during} written during it): {replay_s:.1f} s,"
        f" {held / replay_s:,.0f} held changes/s"
    )
    for name, serials in (
        ("orders lag, nothing to replay", idle),
        ("orders lag during the replay", during),
    ):
        lags, missing = prober.lags_ms(serials)
        if not lags:
            print(f"  {name}: no probe applied of {len(serials)}")
            continue
        ordered = sorted(lags)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        print(
            f"  {name:32} p50 / p99 / max {statistics.median(lags):6.0f} / {p99:6.0f} /"
            f" {max(lags):6.0f} ms over {len(lags)} probes"
            + (f", {missing} not applied {SETTLE_S:.0f} s after" if missing else "")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held", type=int, default=40_000, help="customer changes to hold")
    parser.add_argument("--docs", type=int, default=2000, help="customer documents")
    parser.add_argument("--idle-s", type=float, default=3.0, help="probing with nothing to replay")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="customer writes/s during the replay"
    )
    parser.add_argument("--max-docs", type=int, default=500, help="the worker's batch.max_docs")
    add_engine_options(parser)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
