"""Helpers for the engine's end-to-end tests: transform modules, a worker in process, waiting."""

from __future__ import annotations

import contextlib
import textwrap
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from pymongo import AsyncMongoClient, monitoring

from transforms import Registry, load_registry
from worker.config import BatchConfig, Config, HttpConfig, LeaseConfig
from worker.engine import Worker
from worker.engine._applier import Applier
from worker.engine._lease import Lease
from worker.engine._stream import UnreadEvents
from worker.metrics import Metrics
from worker.state import StateStore

PEOPLE_MODULE = """
from transforms import Pair

people = Pair(original="{db}.people", partner="{db}.people_v2", unmapped="keep")
people.rename("name", "full_name")
people.rename("zip", "address.zip")
people.convert("age", forward=int, backward=str)
people.require("tier", default="basic")
people.original_only("legacy")
people.partner_only("loyalty", default=0)


@people.derive(original=("first", "last"), partner=("display_name",))
def to_display(first, last):
    return {{"display_name": f"{{first}} {{last}}".strip()}}


@to_display.inverse
def from_display(display_name):
    first, _, last = (display_name or "").partition(" ")
    return {{"first": first, "last": last}}
"""


# Two pairs of one database that share nothing: a replay of one beside the other's changes.
TWO_PAIRS_MODULE = """
from transforms import Pair

people = Pair(original="{db}.people", partner="{db}.people_v2", unmapped="keep")
people.rename("name", "full_name")

orders = Pair(original="{db}.orders", partner="{db}.orders_v2", unmapped="keep")
orders.rename("total", "amount")
"""


# `@pytest.mark.parametrize("mongo_uri", BOTH_VERSIONS, indirect=True)` runs a test on the
# server under test and on a development server speaking MongoDB 7.0 (the worker's path for
# servers before 8.0, which have no cross-collection bulkWrite); see tests/conftest.py.
BOTH_VERSIONS = ["current", "7.0"]


def write_module(tmp_path: Path, name: str, source: str, **values: str) -> str:
    """Write a transform module into tmp_path and return its file path."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source.format(**values)))
    return str(path)


def make_config(uri: str, db_name: str, module: str, **overrides: Any) -> Config:
    """A configuration for one test: its own state database, fast batches, no HTTP."""
    options: dict[str, Any] = {
        "uri": uri,
        "transforms": (module,),
        "state_db": f"{db_name}_state",
        "batch": BatchConfig(max_docs=200, max_delay_ms=10),
        "lease": LeaseConfig(ttl_s=3.0),
        "http": HttpConfig(listen=""),
    }
    options.update(overrides)
    return Config(**options)


@contextlib.asynccontextmanager
async def running_worker(
    config: Config, registry: Registry | None = None, *, holder: str | None = None
) -> AsyncIterator[Worker]:
    """A worker running in this event loop until the block ends (then stopped cleanly)."""
    registry = registry or load_registry(list(config.transforms), entry_points=False)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(config.uri, tz_aware=True)
    worker = Worker(config, registry, client=client, holder=holder)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: worker.run(handle_signals=False))
            await eventually(lambda: _ready(worker), within=15, what="worker ready")
            yield worker
            worker.stop()
    finally:
        await client.close()


async def _ready(worker: Worker) -> bool:
    return worker.health.ready and worker.lease.held


async def eventually(
    check: Callable[[], Awaitable[Any]], *, within: float = 10.0, what: str = "condition"
) -> Any:
    """Await `check()` until it returns something truthy, or fail after `within` seconds."""
    last: list[Any] = [None]
    try:
        with anyio.fail_after(within):
            while True:
                last[0] = await check()
                if last[0]:
                    return last[0]
                await anyio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(
            f"timed out after {within}s waiting for {what}; last value: {last[0]!r}"
        ) from None


async def next_events(stream: Any, count: int, *, tries: int = 200) -> list[dict[str, Any]]:
    """The next `count` events of an open change stream (a bounded number of reads)."""
    events: list[dict[str, Any]] = []
    for _ in range(tries):
        event = await stream.try_next()
        if event is not None:
            events.append(event)
        if len(events) == count:
            return events
    raise AssertionError(f"saw {len(events)} of {count} change events")


@contextlib.asynccontextmanager
async def applier_in_process(
    uri: str,
    tmp_path: Path,
    source: str,
    *,
    prefix: str,
    origin_tag: str = "session",
    **client_options: Any,
) -> AsyncIterator[tuple[Any, Applier]]:
    """The pairs of transform module `source` in a database of their own, all RUNNING, and an
    applier holding their lease (tagging its writes by `origin_tag`): (database, applier).
    Both databases are dropped at the end."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    registry = load_registry([write_module(tmp_path, name, source, db=name)], entry_points=False)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        uri, tz_aware=True, **client_options
    )
    try:
        store = StateStore(client[f"{name}_state"])
        await store.ensure_collections()
        await store.register(registry)
        for pair in registry.pairs:
            await store.set_state(pair.original, "RUNNING")
        lease = Lease(store, f"{prefix}-test", 30.0)
        assert await lease.try_acquire()
        applier = Applier(
            client, store, registry, lease=lease, metrics=Metrics(), origin_tag=origin_tag
        )
        await applier.refresh_pairs()
        yield client[name], applier
    finally:
        await client.drop_database(name)
        await client.drop_database(f"{name}_state")
        await client.close()


def another_applier(applier: Applier, *, origin_tag: str) -> Applier:
    """A new applier on `applier`'s client, state, pairs and lease, with nothing of its memory
    (a worker started again, or one tagging its writes otherwise)."""
    return Applier(
        applier.client,
        applier.store,
        applier.registry,
        lease=applier.lease,
        metrics=Metrics(),
        origin_tag=origin_tag,
    )


async def events_of(db: Any, count: int, write: Callable[[], Awaitable[Any]]) -> list[Any]:
    """The change events on `db` of the writes `write()` makes (at least `count` of them)."""
    async with await db.watch(max_await_time_ms=50) as stream:
        await write()
        return await next_events(stream, count, tries=count * 20)


class CommandStarts(monitoring.CommandListener):
    """A command listener for tests that look only at the commands sent (`started`)."""

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def unread_events(*events: Any) -> UnreadEvents:
    """A stream reader's unread events: these, handed over in order."""
    unread = UnreadEvents()
    for event in events:
        unread.add(event)
    return unread
