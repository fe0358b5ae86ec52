"""Sync throughput, replication lag and worker memory, against a naive per-event trigger loop.

Both contenders keep INTERFACE.md's pair (transforms/examples/customers.py, shop.customers <->
shop.customers_v2) in step, each on a fresh development server started as a subprocess (or on
MONGODB_URI, whose `shop` and state databases are dropped first), each in its own process:

- engine: `python -m worker run` (field patches, one transaction per batch, merge base);
- naive: the way hand-written triggers do it: read one change (with its looked-up document),
  convert the whole document, replace the whole target document, next change. Its own writes
  carry a tag field and are skipped when they come back.

Phases per contender: seed `--docs` documents through the sync; throughput: stop the sync,
write a backlog of `--backlog` client updates on both sides, start it again and time how fast
it works the backlog off (client changes/s, from the checkpoint it stores); lag: client writes
at `--rate`/s on both sides for `--seconds`, with probe writes on separate documents timed from
the write's completion to the moment a watcher sees the converted value on the other side;
the worker's RSS is sampled every second.

    .venv/bin/python bench/sync.py [--seconds 20] [--rate 1000] [--backlog 5000] [--docs 2000]
                                   [--only engine|naive] [--round-trip-ms 0]
                                   [--mongodb-version 6.0|7.0|8.0] [--load-client wire|driver]

`--round-trip-ms` makes the development server add that much to every round trip, as the
network to a real server would; every client of the run pays it, the benchmark's own included.

The client writes go out as bare commands (`bench/_wire.py`, `--load-client wire`, the default
on the development server): through PyMongo (`--load-client driver`, and always with
MONGODB_URI), 1,000 writes a second took half a core of this machine's two from the server and
the sync, which applications writing from machines of their own do not take.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import gc
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bson import Timestamp
from pymongo import AsyncMongoClient

# This directory holds a program named devserver.py: keep it off the import path, as that
# program does, so that `import devserver` finds the package; the load client (whose OP_MSG
# framing is the development server's) is imported from the repository root.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.append(str(_HERE.parent))
from bench._wire import WireConnection  # noqa: E402
from transforms import Direction, Pair, load_registry  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODULE = "transforms.examples.customers"
DB = "shop"
ORIGINAL, PARTNER = "customers", "customers_v2"
STATE_DB = "partner_sync_bench"
NAIVE_TAG = "_trigger"
PROBE_DOCS = 64
PROBES_PER_S = 20
Client = AsyncMongoClient[dict[str, Any]]


# -- the naive baseline ------------------------------------------------------------------------


async def naive_trigger(uri: str) -> None:
    """Per event: take the looked-up document, convert it whole, replace the target with it."""
    pair = _pair()
    client: Client = AsyncMongoClient(uri)
    db = client[DB]
    progress = client[STATE_DB]["naive_progress"]
    saved = await progress.find_one({"_id": "default"})
    if saved is None:
        saved = {
            "_id": "default",
            "cluster_time": (await client.admin.command("ping"))["operationTime"],
        }
        await progress.insert_one(saved)
    options: dict[str, Any] = {"full_document": "updateLookup"}
    if saved.get("token"):
        options["resume_after"] = saved["token"]
    else:
        options["start_at_operation_time"] = saved["cluster_time"]
    serial = 0
    unsaved: dict[str, Any] | None = None
    last_saved = 0.0
    match = {"$match": {"ns.coll": {"$in": [ORIGINAL, PARTNER]}}}
    async with await db.watch([match], max_await_time_ms=50, **options) as stream:
        while True:
            event = await stream.try_next()
            if event is not None:
                serial += 1
                await _naive_apply(pair, db, event, serial)
                unsaved = {"token": event["_id"], "cluster_time": event["clusterTime"]}
            # A trigger platform stores its resume point too, a few times a second.
            if unsaved and (event is None or time.monotonic() - last_saved > 0.05):
                await progress.replace_one({"_id": "default"}, unsaved, upsert=True)
                unsaved, last_saved = None, time.monotonic()


async def _naive_apply(pair: Pair, db: Any, event: dict[str, Any], serial: int) -> None:
    op = event["operationType"]
    forward = event["ns"]["coll"] == ORIGINAL
    target = db[PARTNER if forward else ORIGINAL]
    key = event["documentKey"]["_id"]
    if op == "delete":
        await target.delete_one({"_id": key})
        return
    document = event.get("fullDocument")
    if document is None or op not in ("insert", "update", "replace"):
        return
    if op == "update" and NAIVE_TAG in event["updateDescription"]["updatedFields"]:
        return
    if op in ("insert", "replace") and NAIVE_TAG in document:
        return  # our own write coming back
    document.pop(NAIVE_TAG, None)
    converted = pair.convert(document, Direction.FORWARD if forward else Direction.BACKWARD)
    converted[NAIVE_TAG] = serial
    await target.replace_one({"_id": key}, converted, upsert=True)


# -- processes -----------------------------------------------------------------------------------


@dataclass
class Contender:
    """One sync implementation running as a subprocess, and where it records its progress."""

    name: str
    uri: str
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    # cProfile output file for the engine's last run (each start overwrites it).
    profile: str | None = None
    log_level: str = "warning"
    max_docs: int = 500
    # The engine's transform modules (names or files): the customers pair's, and any others.
    transforms: tuple[str, ...] = (MODULE,)
    # How the engine tags its writes: "session" (transactions) or "field" (without them).
    origin_tag: str = "session"

    def command(self) -> list[str]:
        if self.name == "naive":
            return [sys.executable, __file__, "--naive-trigger", self.uri]
        config = self.workdir / "worker.toml"
        modules = ", ".join(f'"{module}"' for module in self.transforms)
        config.write_text(
            f'uri = "{self.uri}"\ntransforms = [{modules}]\nstate_db = "{STATE_DB}"\n'
            f'origin_tag = "{self.origin_tag}"\n'
            f'[batch]\nmax_docs = {self.max_docs}\nmax_delay_ms = 20\n[http]\nlisten = ""\n'
            f'[log]\nlevel = "{self.log_level}"\n'
        )
        profile = ["-m", "cProfile", "-o", self.profile] if self.profile else []
        return [sys.executable, *profile, "-m", "worker", "run", "--config", str(config)]

    def start(self) -> None:
        log = open(self.workdir / f"{self.name}.log", "ab")  # noqa: SIM115 (lives with the process)
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=log, cwd=ROOT)
        log.close()

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    async def position(self, client: Client) -> Timestamp | None:
        """The cluster time up to which the contender has applied the stream."""
        state = client[STATE_DB]
        if self.name == "naive":
            doc = await state["naive_progress"].find_one({"_id": "default"})
        else:
            doc = await state["checkpoints"].find_one({"_id": "default"})
        return (doc or {}).get("cluster_time")

    async def ready(self, client: Client) -> bool:
        """True once the contender streams changes (the engine's pair is RUNNING)."""
        state = client[STATE_DB]
        if self.name == "naive":
            return await state["naive_progress"].find_one({"_id": "default"}) is not None
        pair = await state["pairs"].find_one({"_id": f"{DB}.{ORIGINAL}"})
        return bool(pair and pair.get("state") == "RUNNING")

    def rss_kib(self) -> tuple[int, int]:
        """(current, peak) resident set size of the process, in KiB."""
        if self.process is None:
            return 0, 0
        values = {}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                name, _, rest = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    values[name] = int(rest.split()[0])
        return values.get("VmRSS", 0), values.get("VmHWM", 0)


def cpu_seconds(pid: int | None) -> float | None:
    """CPU seconds (user + system) a process on this machine has used, from /proc."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    """Where the benchmark's MongoDB is, and its process when it is a local subprocess."""

    uri: str
    pid: int | None = None


@contextlib.contextmanager
def server(
    oplog_mb: int,
    profile: str | None = None,
    round_trip_ms: float = 0.0,
    mongodb_version: str | None = None,
) -> Any:
    """MONGODB_URI, or a development server subprocess for this block (under cProfile when
    `profile` names an output file; it is written when the server stops), adding
    `round_trip_ms` to each of its round trips, speaking `mongodb_version` when given."""
    external = os.environ.get("MONGODB_URI")
    if external:
        yield Server(external)
        return
    process = subprocess.Popen(
        [
            sys.executable,
            *(["-m", "cProfile", "-o", profile] if profile else []),
            *("-m", "devserver", "--port", "0", "--oplog-size-mb", str(oplog_mb)),
            *("--round-trip-ms", str(round_trip_ms)),
            *(("--mongodb-version", mongodb_version) if mongodb_version else ()),
        ],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        yield Server(process.stdout.readline().decode().strip(), process.pid)
    finally:
        # SIGINT ends the server like Ctrl-C, which lets cProfile write its output.
        process.send_signal(signal.SIGINT if profile else signal.SIGTERM)
        process.wait(timeout=15)


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """The options of a benchmark that runs the engine alone (`engine_on_server`)."""
    parser.add_argument("--oplog-mb", type=int, default=256, help="devserver change history")
    parser.add_argument("--workdir", metavar="DIR", help="keep the config and the log here")
    parser.add_argument("--log-level", default="warning", help="the worker's log level")


@contextlib.asynccontextmanager
async def engine_on_server(
    options: argparse.Namespace,
    *,
    modules: Callable[[Path], Sequence[str]] = lambda workdir: (),
    max_docs: int = 500,
    pool: int = 16,
) -> AsyncIterator[tuple[Client, Contender, str | None]]:
    """A server (`server`, `add_engine_options`) with the benchmark's databases dropped, a
    client of it with `pool` connections, and the engine started on it with the customers
    pair and `modules(workdir)`: (client, contender, the URI for bare-command load or None).
    The engine is stopped and the client closed at the end."""
    with contextlib.ExitStack() as stack:
        workdir = _workdir(options.workdir, stack)
        where = stack.enter_context(server(options.oplog_mb))
        client: Client = AsyncMongoClient(where.uri, maxPoolSize=pool)
        try:
            await client.drop_database(DB)
            await client.drop_database(STATE_DB)
            contender = Contender(
                "engine",
                where.uri,
                workdir,
                log_level=options.log_level,
                max_docs=max_docs,
                transforms=(MODULE, *modules(workdir)),
            )
            contender.start()
            try:
                yield client, contender, where.uri if where.pid is not None else None
            finally:
                contender.stop()
        finally:
            await client.close()


def _workdir(chosen: str | None, stack: contextlib.ExitStack) -> Path:
    """`chosen` (made if missing), or a temporary directory for the block of `stack`."""
    if chosen is None:
        return Path(stack.enter_context(tempfile.TemporaryDirectory()))
    Path(chosen).mkdir(parents=True, exist_ok=True)
    return Path(chosen)


# -- load ------------------------------------------------------------------------------------------


def _pair() -> Pair:
    return load_registry([MODULE], entry_points=False).pairs[0]


def original_document(rng: random.Random, number: int) -> dict[str, Any]:
    """A 12-field document in the original schema."""
    return {
        "_id": number,
        "name": f"name {number}",
        "zip": f"{rng.randint(10000, 99999)}",
        "age": str(rng.randint(18, 90)),
        "price": rng.randint(100, 10000) / 100,
        "tier": rng.choice(["gold", "basic"]),
        "first": "Ada",
        "last": f"L{number}",
        "legacy_flag": rng.random() < 0.5,
        "email": f"u{number}@example.com",
        "notes": {"text": "x" * 20, "tags": ["a", "b"]},
        "score": rng.random(),
    }


def field_update(rng: random.Random, forward: bool) -> dict[str, Any]:
    """A $set of one or two fields as a client of that side would write them."""
    n = rng.randint(0, 99_999)
    if forward:
        choices: list[dict[str, Any]] = [
            {"name": f"n{n}"},
            {"age": str(n % 90)},
            {"zip": f"{n:05d}"},
            {"price": n / 100},
            {"first": f"F{n}", "last": f"L{n}"},
            {"email": f"e{n}@example.com"},
            {"notes.text": f"t{n}"},
        ]
    else:
        choices = [
            {"full_name": f"n{n}"},
            {"age": n % 90},
            {"address.zip": f"{n:05d}"},
            {"price_cents": n},
            {"display_name": f"F{n} L{n}"},
            {"email": f"e{n}@example.com"},
            {"loyalty": n},
        ]
    return {"$set": rng.choice(choices)}


Write = Callable[[str, dict[str, Any], dict[str, Any]], Awaitable[Timestamp]]


@dataclass
class Load:
    """Client writes on both sides at a target rate, each with the cluster time it got.

    `wire`: the server's URI, to send them as bare commands on sockets of their own
    (`bench/_wire.py`) instead of through the driver, whose CPU on this machine is not the
    applications' on theirs.
    """

    client: Client
    docs: int
    rng: random.Random
    times: list[Timestamp] = field(default_factory=list)
    done: int = 0
    wire: str | None = None

    @contextlib.asynccontextmanager
    async def writer(self) -> AsyncIterator[Write]:
        """One writer's `write(collection, query, update)`, returning the write's cluster time."""
        if self.wire is not None:
            connection = await WireConnection.open(self.wire)
            try:

                async def on_wire(
                    collection: str, query: dict[str, Any], update: dict[str, Any]
                ) -> Timestamp:
                    return await connection.update_one(DB, collection, query, update)

                yield on_wire
            finally:
                await connection.close()
            return
        db = self.client[DB]
        async with self.client.start_session(causal_consistency=True) as session:

            async def by_driver(
                collection: str, query: dict[str, Any], update: dict[str, Any]
            ) -> Timestamp:
                await db[collection].update_one(query, update, session=session)
                assert session.operation_time is not None
                return session.operation_time

            yield by_driver

    async def run(self, count: int | None, rate: float | None, seconds: float | None) -> None:
        """`count` writes (or until `seconds` pass) at `rate`/s (None: as fast as it goes)."""
        started = time.monotonic()
        next_index = 0

        async def task() -> None:
            nonlocal next_index
            async with self.writer() as write:
                while True:
                    index = next_index
                    if count is not None and index >= count:
                        return
                    if seconds is not None and time.monotonic() - started >= seconds:
                        return
                    next_index += 1
                    if rate:
                        if seconds is not None and index / rate >= seconds:
                            return
                        delay = started + index / rate - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    forward = self.rng.random() < 0.5
                    self.times.append(
                        await write(
                            ORIGINAL if forward else PARTNER,
                            {"_id": self.rng.randrange(self.docs)},
                            field_update(self.rng, forward),
                        )
                    )
                    self.done += 1

        await asyncio.gather(*(task() for _ in range(32)))
        self.times.sort()


# -- phases -------------------------------------------------------------------------------------


async def wait_until(check: Callable[[], Any], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


async def cluster_time(client: Client) -> Timestamp:
    reply = await client.admin.command("ping")
    stamp: Timestamp = reply["operationTime"]
    return stamp


async def seed(client: Client, contender: Contender, docs: int) -> None:
    """Insert `docs` originals (and the probe documents) and wait until the sync copied them."""
    rng = random.Random(7)
    original = client[DB][ORIGINAL]
    async with client.start_session(causal_consistency=True) as session:
        for first in range(0, docs + PROBE_DOCS, 500):
            batch = range(first, min(first + 500, docs + PROBE_DOCS))
            await original.insert_many([original_document(rng, n) for n in batch], session=session)
        last_write = session.operation_time
    total = docs + PROBE_DOCS
    partner = client[DB][PARTNER]

    async def copied() -> bool:
        return bool(await partner.count_documents({}) >= total)

    await wait_until(copied, 120, f"{contender.name}: {total} seed documents copied")
    assert last_write is not None
    await caught_up(client, contender, last_write, 60)


async def caught_up(client: Client, contender: Contender, at: Timestamp, within: float) -> None:
    async def reached() -> bool:
        position = await contender.position(client)
        return position is not None and position >= at

    await wait_until(reached, within, f"{contender.name} to reach {at}")


@dataclass
class Throughput:
    """How fast a contender worked off a backlog, and the CPU it and the server spent on it."""

    rate: float
    contender_cpu_s: float | None = None
    server_cpu_s: float | None = None
    changes: int = 0


async def throughput(
    client: Client,
    contender: Contender,
    backlog: int,
    docs: int,
    server_pid: int | None,
    wire: str | None,
) -> Throughput:
    """Client changes/s while the contender works off a backlog written while it was stopped.

    The rate and the CPU figures run from the first change applied to the last, so the
    contender's start-up is not in them.
    """
    contender.stop()
    load = Load(client, docs, random.Random(11), wire=wire)
    await load.run(backlog, None, None)
    contender.start()
    assert contender.process is not None
    pid = contender.process.pid
    # (time, changes applied, contender CPU s, server CPU s)
    samples: list[tuple[float, int, float | None, float | None]] = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        position = await contender.position(client)
        processed = bisect.bisect_right(load.times, position) if position is not None else 0
        samples.append((time.monotonic(), processed, cpu_seconds(pid), cpu_seconds(server_pid)))
        if processed >= backlog:
            break
        await asyncio.sleep(0.02)
    # From the last sample before progress started to the first with all of it done.
    start = max((i for i, s in enumerate(samples) if s[1] == samples[0][1]), default=0)
    first, last = samples[start], samples[-1]
    if last[1] <= first[1] or last[0] <= first[0]:
        return Throughput(float("nan"))
    changes = last[1] - first[1]

    def spent(a: float | None, b: float | None) -> float | None:
        return b - a if a is not None and b is not None else None

    return Throughput(
        changes / (last[0] - first[0]),
        spent(first[2], last[2]),
        spent(first[3], last[3]),
        changes,
    )


@dataclass
class LagResult:
    """Per-probe replication lag and what the load achieved."""

    lags: list[float]
    missing: int
    client_rate: float
    rss_kib: list[int]
    peak_rss_kib: int
    # (seconds into the lag phase the probe was written, its lag), per probe
    timeline: list[tuple[float, float]] = field(default_factory=list)
    # This process's CPU during the lag phase, in cores (its load, probes and watcher).
    own_cpu: float = float("nan")
    # The server's operations per second during the lag phase, by serverStatus's opcounters
    # (the contender's, this process's load, probes and watcher together).
    server_ops: dict[str, float] = field(default_factory=dict)


async def lag(
    client: Client,
    contender: Contender,
    rate: float,
    seconds: float,
    docs: int,
    wire: str | None,
) -> LagResult:
    """Lag of probe writes while clients write at `rate`/s on both sides for `seconds`."""
    db = client[DB]
    # probe document -> [[token, side written, time written]], oldest first
    pending: dict[int, list[list[Any]]] = {}
    lags: list[float] = []
    timeline: list[tuple[float, float]] = []
    probe_ids = list(range(docs, docs + PROBE_DOCS))
    match = {"$match": {"documentKey._id": {"$in": probe_ids}}}
    rss: list[int] = []
    stop = asyncio.Event()
    probes_done = asyncio.Event()

    async def watch() -> None:
        async with await db.watch([match], full_document="updateLookup") as stream:
            # Until the last probe is written and seen (pending can be empty while the probe
            # loop waits for its last write's reply).
            while not probes_done.is_set() or any(pending.values()):
                event = await stream.try_next()
                if event is None:
                    continue
                document = event.get("fullDocument") or {}
                token = document.get("probe")
                key = event["documentKey"]["_id"]
                side = event["ns"]["coll"]
                queue = pending.get(key, [])
                # The value arrived on the other side: it and any older probe of the doc are done.
                for index, (probe, written_on, _) in enumerate(queue):
                    if probe == token and side != written_on:
                        seen = time.monotonic()
                        lags.extend(seen - at for _, _, at in queue[: index + 1])
                        timeline.extend((at, seen - at) for _, _, at in queue[: index + 1])
                        del queue[: index + 1]
                        break

    async def probe() -> None:
        n = 0
        first = time.monotonic()
        while not stop.is_set():
            n += 1
            key = probe_ids[n % PROBE_DOCS]
            side = ORIGINAL if n % 2 else PARTNER
            token = f"p{n}"
            # Known before it is written: the watcher may see it synced before this coroutine
            # runs again. Timed from the write's completion; from its start if seen before that.
            entry = [token, side, time.monotonic()]
            pending.setdefault(key, []).append(entry)
            await db[side].update_one({"_id": key}, {"$set": {"probe": token}})
            entry[2] = max(entry[2], time.monotonic())
            # On a fixed schedule: a sleep after each write made it fewer than PROBES_PER_S.
            await asyncio.sleep(max(0.0, first + n / PROBES_PER_S - time.monotonic()))

    async def sample_memory() -> None:
        while not stop.is_set():
            rss.append(contender.rss_kib()[0])
            # This process keeps every write's time: frozen, they stay out of its collector's
            # full passes, which grew to 0.1 s over five minutes and delayed the watcher.
            gc.freeze()
            await asyncio.sleep(1)

    watcher = asyncio.create_task(watch())
    tasks = [asyncio.create_task(probe()), asyncio.create_task(sample_memory())]
    load = Load(client, docs, random.Random(13), wire=wire)
    ops_before = await _opcounters(client)
    started = time.monotonic()
    cpu_started = time.process_time()
    await load.run(None, rate, seconds)
    elapsed = time.monotonic() - started
    own_cpu = (time.process_time() - cpu_started) / elapsed
    ops_after = await _opcounters(client)
    server_ops = {
        kind: (ops_after[kind] - count) / elapsed
        for kind, count in ops_before.items()
        if kind in ops_after
    }
    stop.set()
    await asyncio.gather(*tasks)
    probes_done.set()
    peak = contender.rss_kib()[1]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(watcher, 30)
    missing = sum(len(queue) for queue in pending.values())
    timeline = [(at - started, value) for at, value in timeline]
    return LagResult(lags, missing, load.done / elapsed, rss, peak, timeline, own_cpu, server_ops)


async def _opcounters(client: Client) -> dict[str, int]:
    status = await client.admin.command("serverStatus")
    return {kind: int(count) for kind, count in (status.get("opcounters") or {}).items()}


# -- report ---------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(name: str, options: argparse.Namespace) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        if options.workdir:
            workdir = os.path.join(options.workdir, name)
            os.makedirs(workdir, exist_ok=True)
        else:
            workdir = stack.enter_context(tempfile.TemporaryDirectory())
        where = stack.enter_context(
            server(
                options.oplog_mb,
                options.server_profile,
                options.round_trip_ms,
                options.mongodb_version,
            )
        )
        uri = where.uri
        client: Client = AsyncMongoClient(uri, maxPoolSize=64)
        try:
            await client.drop_database(DB)
            await client.drop_database(STATE_DB)
            ping_ms = await round_trip_ms(client)
            version = (await client.admin.command("buildInfo")).get("version", "?")
            contender = Contender(
                name,
                uri,
                Path(workdir),
                profile=options.profile,
                log_level=options.log_level,
                max_docs=options.max_docs,
                origin_tag=options.origin_tag,
            )
            contender.start()
            try:
                await wait_until(lambda: contender.ready(client), 60, f"{name} to start")
                await seed(client, contender, options.docs)
                # Bare commands reach the development server only (no authentication, no TLS).
                wire = uri if options.load_client == "wire" and where.pid is not None else None
                rate = await throughput(
                    client, contender, options.backlog, options.docs, where.pid, wire
                )
                result = await lag(
                    client, contender, options.rate, options.seconds, options.docs, wire
                )
            finally:
                contender.stop()
        finally:
            await client.close()
    return {
        "throughput": rate,
        "lag": result,
        "ping_ms": ping_ms,
        "version": version,
        "load_client": "wire" if wire else "driver",
    }


async def round_trip_ms(client: Client, pings: int = 50) -> float:
    """The median time of a `ping` from this process, in milliseconds."""
    await client.admin.command("ping")
    times = []
    for _ in range(pings):
        started = time.perf_counter()
        await client.admin.command("ping")
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def report(name: str, figures: dict[str, Any]) -> None:
    result: LagResult = figures["lag"]
    lags_ms = [value * 1000 for value in result.lags]
    print(f"{name}:")
    print(f"  server                MongoDB {figures['version']}")
    print(f"  ping round trip       {figures['ping_ms']:10.2f} ms (median of 50, before the run)")
    speed: Throughput = figures["throughput"]
    print(f"  backlog applied       {speed.rate:10.0f} client changes/s")
    if speed.changes and speed.contender_cpu_s is not None:
        line = (
            f"  CPU per change        {speed.contender_cpu_s / speed.changes * 1e6:10.0f} us sync"
        )
        if speed.server_cpu_s is not None:
            line += f", {speed.server_cpu_s / speed.changes * 1e6:.0f} us server"
        print(line + "")
    print(
        f"  client writes         {result.client_rate:10.0f} /s achieved during the lag phase,"
        f" through the {figures['load_client']}; this process used {result.own_cpu:.2f} cores"
    )
    print(
        f"  lag p50 / p99 / max   {percentile(lags_ms, 0.5):8.0f} / {percentile(lags_ms, 0.99):.0f}"
        f" / {max(lags_ms, default=float('nan')):.0f} ms over {len(lags_ms)} probes,"
        f" {result.missing} not applied within 30 s after the load stopped"
    )
    if result.timeline:
        # Whether the slowest probes were written together (one stall) or spread out.
        slowest = sorted(result.timeline, key=lambda probe: -probe[1])[:5]
        print(
            "  slowest probes        "
            + ", ".join(f"{value * 1000:.0f} ms at {at:+.1f} s" for at, value in slowest)
        )
    if result.server_ops:
        ops = result.server_ops
        print(
            "  server operations     "
            + ", ".join(f"{ops[kind]:.0f} {kind}" for kind in sorted(ops) if ops[kind] >= 0.5)
            + " /s in the lag phase (all clients)"
        )
    if result.rss_kib:
        rss = [k / 1024 for k in result.rss_kib if k]
        tenth = max(1, len(rss) // 10)
        print(
            f"  process RSS           first 10% {statistics.mean(rss[:tenth]):.1f} MiB,"
            f" last 10% {statistics.mean(rss[-tenth:]):.1f} MiB,"
            f" peak {result.peak_rss_kib / 1024:.1f} MiB over {len(rss)} samples"
        )


async def main_async(options: argparse.Namespace) -> None:
    names = [options.only] if options.only else ["engine", "naive"]
    results = {}
    print(
        f"docs {options.docs}, backlog {options.backlog}, rate {options.rate}/s,"
        f" {options.seconds}s per lag phase, load average {os.getloadavg()[0]:.1f}"
    )
    if options.round_trip_ms and os.environ.get("MONGODB_URI"):
        print("--round-trip-ms is ignored: MONGODB_URI is set")
    elif options.round_trip_ms:
        print(f"every round trip to the development server takes {options.round_trip_ms} ms more")
    for name in names:
        results[name] = await measure(name, options)
        report(name, results[name])
    if len(results) == 2:
        ratio = results["engine"]["throughput"].rate / results["naive"]["throughput"].rate
        print(f"engine / naive backlog throughput: {ratio:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the lag phase")
    parser.add_argument("--rate", type=float, default=1000.0, help="client writes/s, both sides")
    parser.add_argument("--backlog", type=int, default=5000, help="client writes to catch up on")
    parser.add_argument("--docs", type=int, default=2000, help="documents in the collection")
    parser.add_argument("--oplog-mb", type=int, default=256, help="devserver change history")
    parser.add_argument("--only", choices=["engine", "naive"])
    parser.add_argument(
        "--round-trip-ms",
        type=float,
        default=0.0,
        help="add this much to every round trip to the development server, as a network would",
    )
    parser.add_argument(
        "--mongodb-version",
        choices=["7.0", "8.0"],
        help="the release the development server speaks (its default: 8.0); before 8.0 the"
        " engine sends a batch's writes as one command per collection instead of one bulkWrite",
    )
    parser.add_argument("--profile", metavar="FILE", help="run the engine under cProfile")
    parser.add_argument(
        "--server-profile", metavar="FILE", help="run the development server under cProfile"
    )
    parser.add_argument("--workdir", metavar="DIR", help="keep configs and logs here")
    parser.add_argument("--log-level", default="warning", help="the engine's log level")
    parser.add_argument("--max-docs", type=int, default=500, help="the engine's batch.max_docs")
    parser.add_argument(
        "--load-client",
        choices=["driver", "wire"],
        default="wire",
        help="how the client writes are sent: as bare commands on sockets of their own (the"
        " default; about half the CPU on this machine, where the applications' writes would"
        " come from machines of their own), or through PyMongo; with MONGODB_URI they always"
        " go through PyMongo",
    )
    parser.add_argument(
        "--origin-tag",
        choices=["session", "field"],
        default="session",
        help="how the engine tags its writes: in transactions (the default), or by a field"
        " without them",
    )
    parser.add_argument("--naive-trigger", metavar="URI", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.naive_trigger:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(naive_trigger(options.naive_trigger))
        return
    asyncio.run(main_async(options))


if __name__ == "__main__":
    main()
