"""Randomised convergence: concurrent writers on both sides, the worker SIGKILLed and restarted.

The worker runs the way users run it (`python -m worker run --config F`) and is killed with
SIGKILL after a seeded random number of client writes, then started again, a bounded number of
times. Writers on both sides make inserts, field updates, replaces and deletes on a small shared
pool of ids and record each effective write with its operationTime (see convergence_model).
When they stop and the worker has caught up with the change stream, G1-G3 are checked against
that record; G4 (nothing applied twice with a different result) shows as a G1/G2/G3 failure.
The interleaving depends on wall-clock timing, so a seed fixes the writes and crash points, not
the schedule: a failing seed is kept below as a regression case.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import random
import signal
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio
import pytest
from anyio.abc import Process
from bson import Timestamp
from pymongo import AsyncMongoClient

from tests.worker.convergence_model import (
    ITEMS_MODULE,
    Write,
    Writer,
    check_convergence,
    check_last_writer_wins,
    check_no_extra_writes,
    history_of,
)
from tests.worker.engine_helpers import eventually, write_module
from transforms import Direction, Pair, load_registry
from worker.lifecycle import pause_pair, resume_pair
from worker.state import StateStore

ROOT = Path(__file__).resolve().parents[2]
LEASE_TTL_S = 2.0


@dataclass(frozen=True)
class Scenario:
    """How much happens in one run."""

    writers_per_side: int = 2
    writes_per_writer: int = 200
    # Mean pause between one writer's writes (client think time, so that the run lasts long
    # enough for several crashes and the worker's writes interleave with the clients').
    pause_s: float = 0.04
    ids: int = 12
    crashes: int = 3
    # A crash comes this many client writes (at random) after the worker took the lease.
    crash_after: tuple[int, int] = (5, 120)
    # The worker's batch.max_docs: small, a worker behind applies each delivery in several
    # transactions, reading and planning the next while one is written.
    max_docs: int = 200
    # `partner-sync pause` and `resume` of the pair, each pause this many client writes (at
    # random) after the last resume and lasting this many: the worker holds the pair's changes
    # and replays them, behind concurrent writes and among the crashes.
    pauses: int = 0
    pause_after: tuple[int, int] = (10, 60)
    paused_for: tuple[int, int] = (20, 120)
    # A second pair (orders, never paused) with a client of its own writing beside the
    # writers: a replay of the paused pair goes in steps between its deliveries, the resumed
    # pair's new changes held behind the replay.
    other_pair: bool = False
    # Every document already on both sides, equal through the transforms, before the worker
    # first starts, and no merge base for any (copied by hand, never backfilled): the worker
    # knows none of them whole until a replace, insert or delete, and must still apply every
    # update by its fields (G1, G2).
    unsynced: bool = False
    # How the worker tags its writes: "field" writes without transactions, a tag field in each
    # document, at least once (a batch whose checkpoint a crash lost is applied again).
    origin_tag: str = "session"


TAG_FIELD = "_psync"  # the configuration's default `tag_field`
COLLECTIONS = {"original": "items", "partner": "items_v2"}

OTHER_MODULE = """
from transforms import Pair

orders = Pair(original="{db}.orders", partner="{db}.orders_v2", unmapped="keep")
orders.rename("total", "amount")
"""
ORDER_IDS = [f"o{n}" for n in range(4)]


@dataclass
class WorkerProcess:
    """`python -m worker run` as a subprocess that can be killed and started again."""

    config_path: Path
    log_dir: Path
    process: Process | None = None
    incarnations: int = 0
    _log: IO[bytes] | None = None
    exit_codes: list[int | None] = field(default_factory=list)

    async def start(self) -> None:
        self.incarnations += 1
        self._log = self._open_log()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARTNER_SYNC_")}
        self.process = await anyio.open_process(
            [sys.executable, "-m", "worker", "run", "--config", str(self.config_path)],
            stdout=self._log,
            stderr=self._log,
            cwd=ROOT,
            env=env,
        )

    async def kill(self) -> None:
        """SIGKILL: no drain, no lease release, the open transaction left behind."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.exit_codes.append(await self.process.wait())
        self._close_log()

    async def stop(self) -> None:
        """SIGTERM, and SIGKILL if the worker has not exited within 15 s."""
        if self.process is None or self.process.returncode is not None:
            self._close_log()
            return
        self.process.terminate()
        with anyio.move_on_after(15):
            self.exit_codes.append(await self.process.wait())
            self._close_log()
            return
        await self.kill()

    def _open_log(self) -> IO[bytes]:
        # Kept open while the process runs; closed once it has exited.
        return open(self.log_dir / f"worker-{self.incarnations}.log", "wb")  # noqa: SIM115

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def tail(self, lines: int = 40) -> str:
        """The last log lines of every incarnation, for a failure message."""
        parts = []
        for n in range(1, self.incarnations + 1):
            text = (self.log_dir / f"worker-{n}.log").read_text(errors="replace").splitlines()
            parts.append(f"--- worker-{n} ---\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)


@dataclass
class Progress:
    """Counts client writes so crashes and pauses can be placed after a number of them."""

    count: int = 0
    # (count to reach, set when reached) per waiting task
    waiters: list[tuple[int, anyio.Event]] = field(default_factory=list)

    def note(self) -> None:
        self.count += 1
        for target, reached in self.waiters:
            if target <= self.count:
                reached.set()

    async def wait_for(self, target: int) -> None:
        if self.count >= target:
            return
        waiter = (target, anyio.Event())
        self.waiters.append(waiter)
        try:
            await waiter[1].wait()
        finally:
            self.waiters.remove(waiter)


def _config(
    tmp_path: Path,
    uri: str,
    db_name: str,
    modules: Sequence[str],
    max_docs: int = 200,
    origin_tag: str = "session",
) -> Path:
    path = tmp_path / "worker.toml"
    listed = ", ".join(f'"{module}"' for module in modules)
    path.write_text(
        f'uri = "{uri}"\n'
        f'origin_tag = "{origin_tag}"\n'
        f"transforms = [{listed}]\n"
        f'state_db = "{db_name}_state"\n'
        f"[batch]\nmax_docs = {max_docs}\nmax_delay_ms = 10\n"
        f"[lease]\nttl_s = {LEASE_TTL_S}\n"
        '[http]\nlisten = ""\n'
        '[log]\nlevel = "info"\nformat = "text"\n'
    )
    return path


SOAK = Scenario(writers_per_side=3, writes_per_writer=300, ids=20, crashes=6)
CASES = [
    pytest.param(1, Scenario(), "current", id="seed-1"),
    pytest.param(2, Scenario(), "current", id="seed-2"),
    # Before MongoDB 8.0 a batch's writes go out as one command per collection.
    pytest.param(3, Scenario(), "7.0", id="seed-3-mongodb-7.0"),
    # MongoDB 6.0 reports the writers' updates of their top-level `d.x` without
    # `disambiguatedPaths`: the worker works the path's components out from the merge base.
    pytest.param(4, Scenario(), "6.0", id="seed-4-mongodb-6.0"),
    # Transactions of 5 events: what a worker behind reads at once is applied in several,
    # each read and planned while the one before it is written.
    pytest.param(5, Scenario(max_docs=5), "current", id="seed-5-pipelined-parts"),
    # Paused and resumed among the crashes, in transactions of 5 events: the held changes are
    # replayed between the parts of a delivery, and a pause can stop a replay.
    pytest.param(6, Scenario(max_docs=5, pauses=3), "current", id="seed-6-pause-and-resume"),
    # The same beside a second pair that keeps being written: the replays go in steps.
    pytest.param(
        7,
        Scenario(max_docs=5, pauses=3, other_pair=True),
        "current",
        id="seed-7-pause-beside-another-pair",
    ),
    # Found by the soak: a partner replace after an original insert the worker had skipped as
    # a conflict (the replace was ahead) left the insert's fields on the original only.
    # Documents on both sides before the sync, never backfilled: no merge base to start from.
    pytest.param(
        8,
        Scenario(unsynced=True, ids=60, writes_per_writer=100),
        "current",
        id="seed-8-documents-never-synced",
    ),
    pytest.param(1002, SOAK, "current", id="regression-1002-replace-after-skipped-insert"),
    # Without transactions: a killed worker leaves some of a batch's writes landed and some
    # not; its merge base records say what each would leave, and its deletes (which carry no
    # tag) are remembered in them.
    pytest.param(9, Scenario(origin_tag="field"), "current", id="seed-9-field-tags"),
    pytest.param(
        9731,
        dataclasses.replace(SOAK, origin_tag="field", max_docs=5),
        "current",
        id="regression-9731-field-tags-replayed-batch",
    ),
]


@pytest.mark.usefixtures("short_transactions")
@pytest.mark.parametrize(("seed", "scenario", "mongo_uri"), CASES, indirect=["mongo_uri"])
async def test_concurrent_writers_and_crashes_converge(
    aclient: AsyncMongoClient[dict[str, Any]],
    mongo_uri: str,
    db_name: str,
    tmp_path: Path,
    seed: int,
    scenario: Scenario,
) -> None:
    """After concurrent writes on both sides and SIGKILLed workers, G1, G2 and G3 hold."""
    await _run_scenario(aclient, mongo_uri, db_name, tmp_path, seed, scenario)


@dataclass
class Outcome:
    """What a run left behind: the writes, both collections and the change events."""

    writes: list[Write]
    originals: dict[int, dict[str, Any]]
    partners: dict[int, dict[str, Any]]
    client_events: Counter[tuple[str, Any]]
    worker_events: Counter[tuple[str, Any]]
    attempts: int
    crashes: list[int]
    # The second pair's documents, original and partner side: _id -> total / amount.
    orders: tuple[dict[str, Any], dict[str, Any]] = ({}, {})


async def _run_scenario(
    aclient: AsyncMongoClient[dict[str, Any]],
    uri: str,
    db_name: str,
    tmp_path: Path,
    seed: int,
    scenario: Scenario,
) -> None:
    module = write_module(tmp_path, "items_sync", ITEMS_MODULE, db=db_name)
    pair = load_registry([module], entry_points=False).pairs[0]
    modules = [module]
    if scenario.other_pair:
        modules.append(write_module(tmp_path, "orders_sync", OTHER_MODULE, db=db_name))
    config = _config(tmp_path, uri, db_name, modules, scenario.max_docs, scenario.origin_tag)
    worker = WorkerProcess(config, tmp_path)
    try:
        if scenario.unsynced:
            await _place_unsynced(aclient[db_name], pair, seed, scenario.ids)
        outcome = await _write_while_crashing(
            aclient, db_name, pair.original, worker, seed, scenario
        )
    finally:
        await worker.stop()
    context = (
        f"seed {seed}: {len(outcome.writes)} effective writes of {outcome.attempts},"
        f" {sum(outcome.worker_events.values())} worker writes,"
        f" crashes after writes {outcome.crashes}, worker exits {worker.exit_codes}"
    )
    client_writes = sum(
        n for (coll, _), n in outcome.client_events.items() if coll in ("items", "items_v2")
    )
    assert client_writes == len(outcome.writes), (
        f"the model missed client writes: {client_writes} events; {context}"
    )
    assert client_writes > outcome.attempts // 4, f"too few effective writes; {context}"
    assert outcome.crashes, f"the writers finished before the first crash; {context}"
    lww_problems, checked = check_last_writer_wins(
        outcome.writes, outcome.originals, outcome.partners
    )
    # G2 must have had something to check. How much depends on the interleaving: replaces
    # and deletes often come last, and a run with a single update-last field was seen.
    assert checked >= 1, f"no field was last written by an update; {context}"
    problems = [
        *check_convergence(pair, outcome.originals, outcome.partners),
        *lww_problems,
        *check_no_extra_writes(outcome.client_events, outcome.worker_events),
    ]
    if outcome.orders[0] != outcome.orders[1]:
        problems.append(f"document orders: the second pair's sides differ: {outcome.orders}")
    if scenario.other_pair and set(outcome.orders[0]) != set(ORDER_IDS):
        problems.append(f"document orders: not every order was written: {outcome.orders[0]}")
    if problems:
        failing = sorted({int(m) for p in problems if (m := p.split(":")[0].split()[1]).isdigit()})
        histories = "\n".join(history_of(outcome.writes, i) for i in failing[:3])
        (tmp_path / "writes.txt").write_text(
            "\n".join(history_of(outcome.writes, i) for i in range(scenario.ids))
        )
        raise AssertionError(
            f"{context}\n" + "\n".join(problems[:30]) + f"\n{histories}\n{worker.tail()}"
        )


async def _place_unsynced(database: Any, pair: Pair, seed: int, ids: int) -> None:
    """Every document on both sides, the partner's converted from the original's, before the
    worker starts (so no change event of them reaches it)."""
    originals: list[dict[str, Any]] = []
    for document_id in range(ids):
        maker = Writer(
            name="u-0",
            side="original",
            collection=database["items"],
            session=None,  # type: ignore[arg-type]  # only its documents are used
            rng=random.Random(f"{seed}:unsynced:{document_id}"),
            ids=[document_id],
        )
        originals.append({"_id": document_id, **maker.whole_document()})
    await database["items"].insert_many(originals)
    await database["items_v2"].insert_many(
        [pair.convert(document, Direction.FORWARD) for document in originals]
    )


async def _write_while_crashing(
    aclient: AsyncMongoClient[dict[str, Any]],
    db_name: str,
    pair_original: str,
    worker: WorkerProcess,
    seed: int,
    scenario: Scenario,
) -> Outcome:
    """Start the worker, run the writers while crashing it, restart it and let it catch up."""
    rng = random.Random(seed)
    database = aclient[db_name]
    state = aclient[f"{db_name}_state"]
    crash_after = [rng.randint(*scenario.crash_after) for _ in range(scenario.crashes)]
    progress = Progress()
    crashes: list[int] = []
    writers: list[Writer] = []
    async with contextlib.AsyncExitStack() as stack:
        stream = await stack.enter_async_context(await database.watch(max_await_time_ms=200))
        await worker.start()
        await eventually(
            lambda: _pair_running(state, pair_original), within=30, what="pair RUNNING"
        )
        if scenario.other_pair:
            await eventually(
                lambda: _pair_running(state, f"{db_name}.orders"),
                within=30,
                what="the second pair RUNNING",
            )
        for side, collection in (("original", "items"), ("partner", "items_v2")):
            for n in range(scenario.writers_per_side):
                session = aclient.start_session(causal_consistency=True)
                stack.push_async_callback(session.end_session)
                writers.append(
                    Writer(
                        name=f"{side[0]}-{len(writers) + 1}",
                        side=side,
                        collection=database[collection],
                        session=session,
                        rng=random.Random(f"{seed}:{side}:{n}"),
                        ids=list(range(scenario.ids)),
                    )
                )
        async with anyio.create_task_group() as crashing:
            crashing.start_soon(_crash, worker, state, progress, crash_after, crashes)
            if scenario.pauses:
                crashing.start_soon(
                    _pause_and_resume, StateStore(state), pair_original, progress, rng, scenario
                )
            async with anyio.create_task_group() as writing:
                for writer in writers:
                    writing.start_soon(
                        _write, writer, scenario.writes_per_writer, scenario.pause_s, progress
                    )
                if scenario.other_pair:
                    writing.start_soon(
                        _write_orders,
                        database["orders"],
                        random.Random(f"{seed}:orders"),
                        scenario.writes_per_writer,
                        scenario.pause_s,
                    )
            crashing.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            await resume_pair(StateStore(state), pair_original)  # if a pause was in progress
        # One field update per side after every other write: G2 always has a field whose last
        # write is an update to check, whatever the interleaving left last (often a replace or
        # a delete).
        for writer in (writers[0], writers[-1]):
            await _closing_update(writer)
        if not worker.alive():
            await worker.start()
        tag = TAG_FIELD if scenario.origin_tag == "field" else None
        deletes = {
            (COLLECTIONS[w.side], w.document_id, w.at)
            for writer in writers
            for w in writer.writes
            if w.op == "delete"
        }
        client_events, worker_events = await _settle(stream, state, worker, tag, deletes)
        return Outcome(
            writes=[w for writer in writers for w in writer.writes],
            # The tag field is the worker's own (field tags): not part of either side's data.
            originals={d["_id"]: d async for d in database["items"].find({}, {TAG_FIELD: 0})},
            partners={d["_id"]: d async for d in database["items_v2"].find({}, {TAG_FIELD: 0})},
            client_events=client_events,
            worker_events=worker_events,
            attempts=progress.count,
            crashes=crashes,
            orders=(
                {d["_id"]: d.get("total") async for d in database["orders"].find()},
                {d["_id"]: d.get("amount") async for d in database["orders_v2"].find()},
            ),
        )


async def _closing_update(writer: Writer) -> None:
    """A field update by `writer` on a document that exists on its side (bounded tries)."""
    for document_id in writer.ids:
        if await writer.collection.find_one({"_id": document_id}, session=writer.session) is None:
            continue
        for _ in range(5):
            if await writer.step(op="update", document_id=document_id):
                return


async def _pair_running(state: Any, original: str) -> bool:
    doc = await state["pairs"].find_one({"_id": original})
    return bool(doc and doc.get("state") == "RUNNING")


async def _write(writer: Writer, count: int, pause_s: float, progress: Progress) -> None:
    for _ in range(count):
        await writer.step()
        progress.note()
        # Spread the writes over the crashes (load shaping, not synchronisation).
        await anyio.sleep(writer.rng.uniform(0, 2 * pause_s))


async def _write_orders(orders: Any, rng: random.Random, count: int, pause_s: float) -> None:
    """The second pair's client: inserts the orders, then updates their totals."""
    for order_id in ORDER_IDS:
        await orders.insert_one({"_id": order_id, "total": 0})
    for n in range(1, count + 1):
        await orders.update_one({"_id": rng.choice(ORDER_IDS)}, {"$set": {"total": n}})
        await anyio.sleep(rng.uniform(0, 2 * pause_s))


async def _crash(
    worker: WorkerProcess,
    state: Any,
    progress: Progress,
    after_writes: Sequence[int],
    crashes: list[int],
) -> None:
    """Kill the worker a given number of client writes after each incarnation took the lease."""
    fence = 0
    for count in after_writes:
        fence = await eventually(
            functools.partial(_lease_fence_above, state, fence),
            within=30,
            what="a worker to take the lease",
        )
        await progress.wait_for(progress.count + count)
        with anyio.CancelScope(shield=True):
            await worker.kill()
            crashes.append(progress.count)
            await worker.start()


async def _pause_and_resume(
    store: StateStore, original: str, progress: Progress, rng: random.Random, scenario: Scenario
) -> None:
    """Pause and resume the pair as `partner-sync pause` and `resume` do, between writes."""
    for _ in range(scenario.pauses):
        await progress.wait_for(progress.count + rng.randint(*scenario.pause_after))
        with anyio.CancelScope(shield=True):
            await pause_pair(store, original)
        await progress.wait_for(progress.count + rng.randint(*scenario.paused_for))
        with anyio.CancelScope(shield=True):
            await resume_pair(store, original)


async def _lease_fence_above(state: Any, fence: int) -> int:
    lease = await state["leases"].find_one({"_id": "default"})
    current = int((lease or {}).get("fence") or 0)
    return current if current > fence and lease and lease.get("holder") else 0


async def _settle(
    stream: Any,
    state: Any,
    worker: WorkerProcess,
    tag_field: str | None,
    client_deletes: set[tuple[str, Any, Timestamp]],
    within: float = 60.0,
) -> tuple[Counter[tuple[str, Any]], Counter[tuple[str, Any]]]:
    """Wait until the worker's checkpoint covers every client event and no new event comes.

    Returns client and worker change events per (collection, document id). The stream is read
    after the checkpoint each round, so a worker write committed with that checkpoint is seen.
    A worker write is told by its session (`lsid`, transactions); with field tags by the tag
    it sets, and a delete, which carries none, by not being one of `client_deletes`
    ((collection, _id, cluster time) each).
    """

    def by_worker(event: dict[str, Any], key: tuple[str, Any]) -> bool:
        if tag_field is None:
            return bool(event.get("lsid"))
        if event["operationType"] == "delete":
            return (*key, event["clusterTime"]) not in client_deletes
        if event["operationType"] == "update":
            return tag_field in event["updateDescription"]["updatedFields"]
        return tag_field in event["fullDocument"]

    clients: Counter[tuple[str, Any]] = Counter()
    workers: Counter[tuple[str, Any]] = Counter()
    latest: list[Timestamp | None] = [None]

    async def caught_up() -> bool:
        assert worker.alive(), "the worker exited:\n" + worker.tail()
        checkpoint = await state["checkpoints"].find_one({"_id": "default"}) or {}
        reached = checkpoint.get("cluster_time")
        new = 0
        while (event := await stream.try_next()) is not None:
            new += 1
            if event["operationType"] not in ("insert", "update", "replace", "delete"):
                continue
            key = (event["ns"]["coll"], event["documentKey"]["_id"])
            if by_worker(event, key):
                workers[key] += 1
            else:
                # The worker's stream may leave its own writes out (session tags): its
                # checkpoint reaches the last client change, whose worker write committed with it.
                clients[key] += 1
                latest[0] = event["clusterTime"]
        if await state["held_events"].find_one({}, {"_id": 1}) is not None:
            return False  # a resumed pair's held changes are still to be replayed
        return new == 0 and latest[0] is not None and reached is not None and reached >= latest[0]

    try:
        await eventually(caught_up, within=within, what="the worker to catch up")
    except AssertionError as exc:
        checkpoint = await state["checkpoints"].find_one({"_id": "default"}) or {}
        raise AssertionError(
            f"{exc}: checkpoint at {checkpoint.get('cluster_time')}, last client change at"
            f" {latest[0]}\n{worker.tail()}"
        ) from None
    return clients, workers


SOAK_SEEDS = int(os.environ.get("CONVERGENCE_SOAK_SEEDS", "0"))
# Where the soak's seeds begin (CONVERGENCE_SOAK_FIRST), to soak seeds not run before.
SOAK_FIRST = int(os.environ.get("CONVERGENCE_SOAK_FIRST", "1000"))
# How the soak's worker tags its writes (CONVERGENCE_SOAK_TAG=field: without transactions).
SOAK_TAG = os.environ.get("CONVERGENCE_SOAK_TAG", "session")


@pytest.mark.slow
@pytest.mark.skipif(not SOAK_SEEDS, reason="set CONVERGENCE_SOAK_SEEDS=N to soak N seeds")
@pytest.mark.usefixtures("short_transactions")
@pytest.mark.parametrize("seed", range(SOAK_FIRST, SOAK_FIRST + max(SOAK_SEEDS, 1)))
async def test_soak(
    aclient: AsyncMongoClient[dict[str, Any]],
    mongo_uri: str,
    db_name: str,
    tmp_path: Path,
    seed: int,
) -> None:
    """More writers, ids and crashes per seed than the default run; G1-G3 hold for every seed.
    Every other seed runs transactions of 5 events (a worker behind pipelines them), and every
    third pauses and resumes the pair four times, half of those beside a second pair. In every
    fifth, the documents are on both sides before the sync, with no merge base."""
    scenario = SOAK if seed % 2 == 0 else dataclasses.replace(SOAK, max_docs=5)
    if seed % 3 == 0:
        scenario = dataclasses.replace(scenario, pauses=4, other_pair=seed % 2 == 1)
    if seed % 5 == 0:
        scenario = dataclasses.replace(scenario, unsynced=True)
    scenario = dataclasses.replace(scenario, origin_tag=SOAK_TAG)
    await _run_scenario(aclient, mongo_uri, db_name, tmp_path, seed, scenario)
