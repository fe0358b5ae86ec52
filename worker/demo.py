"""The demo: the whole job on the embedded development server, start to finish.

It starts a development server in this process, fills an original collection with old-schema
customers, registers the example transforms (`transforms.examples.customers`), backfills the
partner, runs the worker, and lets simulated old clients (original schema) and new clients
(partner schema) write at the same time, showing what the worker does. It ends with `verify`
and a before/after of a few documents in both schemas; the exit code says whether verify found
drift.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError
from rich.console import Console
from rich.live import Live
from rich.table import Table

from devserver import DevServer
from transforms import load_registry
from worker.backfill import BackfillOptions, run_backfill
from worker.config import BatchConfig, Config, HttpConfig, LeaseConfig, LogConfig
from worker.engine import Worker
from worker.lifecycle import open_workspace
from worker.logs import configure_logging
from worker.verify import VerifyReport, verify_pair

__all__ = ["DemoOptions", "run_demo"]

EXAMPLE_MODULE = "transforms.examples.customers"
ORIGINAL = "shop.customers"
PARTNER = "shop.customers_v2"
FIRST_NAMES = ("Ada", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun")
LAST_NAMES = ("Berg", "Costa", "Diaz", "Eke", "Fox", "Gray", "Holm", "Ito", "Jones", "Kim")
CITIES = ("Oslo", "Lyon", "Porto", "Kyoto", "Lima", "Accra")


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    """How big and how long the demo is."""

    docs: int = 3000
    seconds: float = 20.0
    old_clients: int = 3
    new_clients: int = 3
    seed: int = 7


@dataclass
class ClientTally:
    """What the simulated clients did."""

    original_writes: int = 0
    partner_writes: int = 0
    errors: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def count(self, side: str, kind: str) -> None:
        if side == "original":
            self.original_writes += 1
        else:
            self.partner_writes += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1


def old_customer(index: int, rng: random.Random) -> dict[str, Any]:
    """One customer in the old schema."""
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    document: dict[str, Any] = {
        "_id": index,
        "name": f"{first} {last}",
        "first": first,
        "last": last,
        "zip": f"{rng.randrange(10000):05d}",
        "age": str(rng.randrange(18, 90)),
        "price": round(rng.uniform(1, 500), 2),
        "legacy_flag": rng.random() < 0.5,
        "city": rng.choice(CITIES),
    }
    if rng.random() < 0.7:
        document["tier"] = rng.choice(("gold", "silver", None))
    return document


async def run_demo(options: DemoOptions, console: Console) -> int:
    """Run the demo; 0 when verify finds no drift at the end, 1 otherwise."""
    configure_logging("warning", "text")
    console.print(
        "[bold]partner-sync demo[/]: keeping [cyan]shop.customers[/] (old schema) and "
        "[magenta]shop.customers_v2[/] (new schema) in step, both ways."
    )
    server = DevServer(host="127.0.0.1", port=0).start_in_thread()
    try:
        console.print(f"Development server (not for production) at {server.uri}")
        config = Config(
            uri=server.uri,
            transforms=(EXAMPLE_MODULE,),
            state_db="partner_sync",
            batch=BatchConfig(max_docs=500, max_delay_ms=20),
            lease=LeaseConfig(ttl_s=5.0),
            http=HttpConfig(listen=""),
            log=LogConfig(level="warning", format="text"),
        )
        return await _demo(config, options, console)
    finally:
        server.stop()


async def _demo(config: Config, options: DemoOptions, console: Console) -> int:
    rng = random.Random(options.seed)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(config.uri, tz_aware=True)
    try:
        original = client["shop"]["customers"]
        partner = client["shop"]["customers_v2"]
        seed_docs = [old_customer(i, rng) for i in range(options.docs)]
        for start in range(0, len(seed_docs), 1000):
            await original.insert_many(seed_docs[start : start + 1000])
        await client["shop"].create_collection("customers_v2")
        console.print(f"1. Created {options.docs} old-schema customers in {ORIGINAL}.")
        sample_ids = [0, 1, 2]
        before = {i: seed_docs[i] for i in sample_ids}

        registry = load_registry([EXAMPLE_MODULE], entry_points=False)
        pair = registry.pairs[0]
        console.print(
            f"2. Registered the example transforms ({EXAMPLE_MODULE}), version {pair.version}."
        )
        async with open_workspace(config) as workspace:
            started = time.monotonic()
            progress = await run_backfill(workspace, pair, BackfillOptions(batch_size=500))
            seconds = time.monotonic() - started
        console.print(
            f"3. Backfilled {progress.written} documents into {PARTNER} in {seconds:.1f}s "
            f"({progress.written / max(seconds, 1e-9):,.0f} docs/s)."
        )

        tally = ClientTally()
        async with _worker(config, registry, client) as worker:
            console.print(
                f"4. Worker running; {options.old_clients} old clients write {ORIGINAL} and "
                f"{options.new_clients} new clients write {PARTNER} for {options.seconds:.0f}s."
            )
            await _simulate(worker, client, options, tally, console)
            settled = await _settle(worker, console)
            final = await _pair_counters(worker)
        _print_counters(console, final, tally, settled)

        async with open_workspace(config) as workspace:
            report = await verify_pair(workspace, pair)
        ok = _print_verify(console, report)
        await _print_samples(console, original, partner, before, sample_ids)
        return 0 if ok else 1
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def _worker(
    config: Config, registry: Any, client: AsyncMongoClient[dict[str, Any]]
) -> AsyncIterator[Worker]:
    worker = Worker(config, registry, client=client, holder="demo-worker")
    async with anyio.create_task_group() as group:
        group.start_soon(lambda: worker.run(handle_signals=False))
        with anyio.fail_after(30):
            while not (worker.health.ready and worker.lease.held):  # noqa: ASYNC110 - polls two flags
                await anyio.sleep(0.05)
        try:
            yield worker
        finally:
            worker.stop()


async def _simulate(
    worker: Worker,
    client: AsyncMongoClient[dict[str, Any]],
    options: DemoOptions,
    tally: ClientTally,
    console: Console,
) -> None:
    deadline = anyio.current_time() + options.seconds
    next_id = [options.docs]
    writers: list[Callable[[], Any]] = []
    for n in range(options.old_clients):
        writers.append(_writer(client, "original", deadline, tally, next_id, options, n))
    for n in range(options.new_clients):
        writers.append(_writer(client, "partner", deadline, tally, next_id, options, 100 + n))
    live = console.is_terminal
    async with anyio.create_task_group() as group:
        for writer in writers:
            group.start_soon(writer)
        if live:
            with Live(console=console, refresh_per_second=4, transient=False) as view:
                while anyio.current_time() < deadline:
                    view.update(_live_table(await _pair_counters(worker), tally))
                    await anyio.sleep(0.25)
                view.update(_live_table(await _pair_counters(worker), tally))
        else:
            while anyio.current_time() < deadline:
                await anyio.sleep(min(2.0, max(deadline - anyio.current_time(), 0.01)))
                counters = await _pair_counters(worker)
                console.print(_plain_line(counters, tally))


def _writer(
    client: AsyncMongoClient[dict[str, Any]],
    side: str,
    deadline: float,
    tally: ClientTally,
    next_id: list[int],
    options: DemoOptions,
    seed: int,
) -> Callable[[], Any]:
    rng = random.Random(options.seed * 1000 + seed)
    collection = client["shop"]["customers" if side == "original" else "customers_v2"]

    async def write_forever() -> None:
        while anyio.current_time() < deadline:
            # A shared hot set of ids makes concurrent writes to the same documents happen.
            doc_id = rng.randrange(50) if rng.random() < 0.3 else rng.randrange(next_id[0])
            roll = rng.random()
            try:
                if roll < 0.05:
                    next_id[0] += 1
                    new = old_customer(next_id[0], rng)
                    if side == "partner":
                        new = {
                            "_id": new["_id"],
                            "full_name": new["name"],
                            "display_name": f"{new['first']} {new['last']}",
                            "address": {"zip": new["zip"]},
                            "age": int(new["age"]),
                            "price_cents": int(new["price"] * 100),
                            "tier": "basic",
                            "loyalty": 1,
                        }
                    await collection.insert_one(new)
                    tally.count(side, "insert")
                elif roll < 0.07:
                    await collection.delete_one({"_id": doc_id})
                    tally.count(side, "delete")
                elif side == "original":
                    await collection.update_one({"_id": doc_id}, {"$set": _old_update(rng)})
                    tally.count(side, "update")
                else:
                    await collection.update_one({"_id": doc_id}, {"$set": _new_update(rng)})
                    tally.count(side, "update")
            except PyMongoError:
                tally.errors += 1
            await anyio.sleep(rng.uniform(0.005, 0.03))

    return write_forever


def _old_update(rng: random.Random) -> dict[str, Any]:
    choice = rng.randrange(4)
    if choice == 0:
        return {"age": str(rng.randrange(18, 90))}
    if choice == 1:
        return {"price": round(rng.uniform(1, 500), 2)}
    if choice == 2:
        return {"city": rng.choice(CITIES), "zip": f"{rng.randrange(10000):05d}"}
    return {"last": rng.choice(LAST_NAMES)}


def _new_update(rng: random.Random) -> dict[str, Any]:
    choice = rng.randrange(4)
    if choice == 0:
        return {"loyalty": rng.randrange(1000)}
    if choice == 1:
        return {"address.zip": f"{rng.randrange(10000):05d}"}
    if choice == 2:
        return {"display_name": f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"}
    return {"age": rng.randrange(18, 90), "tier": rng.choice(("gold", "basic"))}


async def _pair_counters(worker: Worker) -> dict[str, Any]:
    doc = await worker.store.pair_doc(ORIGINAL) or {}
    counters = dict(doc.get("counters") or {})
    counters["lag_seconds"] = doc.get("lag_seconds")
    counters["state"] = doc.get("state")
    return counters


async def _settle(worker: Worker, console: Console) -> bool:
    """Wait (bounded) until the worker has applied everything the clients wrote."""
    last: tuple[Any, ...] | None = None
    quiet_since = time.monotonic()
    with anyio.move_on_after(30) as scope:
        while True:
            counters = await _pair_counters(worker)
            now = (
                counters.get("applied_forward"),
                counters.get("applied_backward"),
                counters.get("echoes_skipped"),
            )
            if now != last:
                last, quiet_since = now, time.monotonic()
            elif time.monotonic() - quiet_since > 1.5:
                return True
            await anyio.sleep(0.1)
    if scope.cancelled_caught:
        console.print("[yellow]The worker did not settle within 30s.[/]")
    return False


def _live_table(counters: dict[str, Any], tally: ClientTally) -> Table:
    table = Table(title="live", show_header=True, header_style="bold")
    for name in (
        "old-client writes",
        "new-client writes",
        "applied ->",
        "applied <-",
        "echoes skipped",
        "conflicts",
        "dead letters",
        "lag (s)",
    ):
        table.add_column(name, justify="right")
    lag = counters.get("lag_seconds")
    table.add_row(
        str(tally.original_writes),
        str(tally.partner_writes),
        str(counters.get("applied_forward", 0)),
        str(counters.get("applied_backward", 0)),
        str(counters.get("echoes_skipped", 0)),
        str(counters.get("conflicts", 0)),
        str(counters.get("dead_letters", 0)),
        "-" if lag is None else f"{lag:.3f}",
    )
    return table


def _plain_line(counters: dict[str, Any], tally: ClientTally) -> str:
    lag = counters.get("lag_seconds")
    return (
        f"   clients wrote {tally.original_writes} old / {tally.partner_writes} new; worker "
        f"applied {counters.get('applied_forward', 0)} -> and "
        f"{counters.get('applied_backward', 0)} <-, echoes skipped "
        f"{counters.get('echoes_skipped', 0)}, conflicts {counters.get('conflicts', 0)}, "
        f"lag {'-' if lag is None else f'{lag:.3f}s'}"
    )


def _print_counters(
    console: Console, counters: dict[str, Any], tally: ClientTally, settled: bool
) -> None:
    console.print(
        f"5. Clients stopped after {tally.original_writes} old-schema and "
        f"{tally.partner_writes} new-schema writes; the worker "
        f"{'caught up' if settled else 'is still catching up'}:"
    )
    console.print(_plain_line(counters, tally))
    console.print(
        f"   dead letters {counters.get('dead_letters', 0)}; the worker's own writes (the "
        "backfill's included) came back as echoes and were skipped: nothing looped."
    )


def _print_verify(console: Console, report: VerifyReport) -> bool:
    console.print(
        f"6. verify compared {report.compared} documents: "
        + (
            "[green]no drift[/]."
            if report.drift == 0
            else f"[red]{report.drift} drifted[/] ({report.counts})."
        )
    )
    return report.drift == 0


async def _print_samples(
    console: Console,
    original: Any,
    partner: Any,
    before: dict[int, dict[str, Any]],
    ids: list[int],
) -> None:
    table = Table(title="7. Before and after, in both schemas", show_lines=True)
    table.add_column("_id", justify="right")
    table.add_column("original before")
    table.add_column("original after")
    table.add_column("partner after")
    for doc_id in ids:
        after_original = await original.find_one({"_id": doc_id})
        after_partner = await partner.find_one({"_id": doc_id})
        table.add_row(
            str(doc_id),
            _render(before.get(doc_id)),
            _render(after_original),
            _render(after_partner),
        )
    console.print(table)


def _render(document: dict[str, Any] | None) -> str:
    if document is None:
        return "(deleted)"
    return "\n".join(f"{key}: {value!r}" for key, value in document.items() if key != "_id")
