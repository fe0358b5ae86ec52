"""The daemon: lease, stream reader, applier, HTTP probes and signals in one task group."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream
from bson import Timestamp
from pymongo import AsyncMongoClient
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from transforms import Registry
from worker import __version__
from worker.config import Config
from worker.engine._applier import Applier
from worker.engine._lease import Lease, new_holder_id
from worker.engine._stream import StreamPosition, StreamReader
from worker.errors import HistoryLost, LeaseLost
from worker.http import Health, serve_http
from worker.logs import get_logger
from worker.metrics import Metrics
from worker.state import ACTIVE_STATES, StateStore

__all__ = ["Worker", "cluster_time"]

log = get_logger(__name__)

# How often the worker re-reads pair states (pause, resume, complete take effect this fast).
REFRESH_INTERVAL_S = 0.25
# Backoff between attempts to resume syncing after a lost connection.
OUTAGE_FIRST_DELAY_S = 0.1
OUTAGE_MAX_DELAY_S = 5.0
# Server codes of errors that go away by themselves: write conflicts, elections, shutdowns,
# interrupted operations, exceeded time limits.
TRANSIENT_CODES = frozenset(
    {6, 7, 24, 89, 91, 112, 189, 251, 262, 9001, 10107, 11600, 11602, 13435, 13436}
)
# How long a stopping worker lets the batch in flight finish before abandoning it.
DRAIN_TIMEOUT_S = 5.0
# How often an idle worker moves its checkpoint up to the stream's high-water mark.
IDLE_CHECKPOINT_S = 2.0
# Events the reader may hold ahead of the applier. Behind a backlog it runs this far ahead, and
# each batch finds the newer writes it must not overwrite (the look-ahead) in memory instead of
# re-reading them from the server.
READ_AHEAD_EVENTS = 10_000
# Transactions one delivery from the reader may hold, each of `batch.max_docs` events at most.
# Behind a backlog a delivery of several is pipelined: the next transaction's events are read
# and planned while the one before is written (`Applier._apply_part`).
DELIVERY_PARTS = 8


async def cluster_time(client: AsyncMongoClient[dict[str, Any]]) -> Timestamp:
    """The server's current cluster time (a `ping`'s operationTime)."""
    reply = await client.admin.command("ping")
    stamp = reply.get("operationTime") or reply.get("$clusterTime", {}).get("clusterTime")
    if not isinstance(stamp, Timestamp):
        raise RuntimeError("the server reports no cluster time: is it a replica set member?")
    return stamp


class Worker:
    """One worker process: stands by for the lease, then keeps every pair in step."""

    def __init__(
        self,
        config: Config,
        registry: Registry,
        *,
        client: AsyncMongoClient[dict[str, Any]],
        metrics: Metrics | None = None,
        health: Health | None = None,
        holder: str | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.client = client
        self.metrics = metrics or Metrics()
        self.health = health or Health()
        self.store = StateStore(client[config.state_db])
        self.lease = Lease(self.store, holder or new_holder_id(), config.lease.ttl_s)
        self.stopping = anyio.Event()
        self.applier: Applier | None = None
        self._outage = _Outage()

    async def run(self, *, handle_signals: bool = True) -> None:
        """Run until SIGTERM/SIGINT (or `stop()`), then release the lease and return."""
        await self.store.ensure_collections()
        await self.store.register(self.registry)
        log.info(
            "worker_started",
            version=__version__,
            holder=self.lease.holder,
            pairs=[pair.original for pair in self.registry.pairs],
            origin_tag=self.config.origin_tag,
        )
        async with anyio.create_task_group() as group:
            if self.config.http.listen:
                address = await group.start(self._serve_http)
                log.info("http_listening", address=address)
            if handle_signals:
                group.start_soon(self._watch_signals)
            await self._lease_loop()
            group.cancel_scope.cancel()
        log.info("worker_stopped", holder=self.lease.holder)

    def stop(self) -> None:
        """Ask the worker to drain and stop."""
        self.stopping.set()

    async def _serve_http(
        self, *, task_status: TaskStatus[Any] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        await serve_http(
            self.config.http.listen,
            metrics=self.metrics,
            health=self.health,
            task_status=task_status,
        )

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("signal_received", signal=signal.Signals(signum).name)
                self.stop()
                return

    # -- lease ---------------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        standby_logged = False
        unreachable_logged = False
        while not self.stopping.is_set():
            try:
                acquired = await self.lease.try_acquire()
                unreachable_logged = False
            except PyMongoError as exc:
                # Once per outage, not once per attempt.
                if not unreachable_logged:
                    log.warning(
                        "lease_unreachable", error=type(exc).__name__, detail=str(exc)[:200]
                    )
                    unreachable_logged = True
                acquired = False
            if not acquired:
                self.metrics.lease_held.set(0)
                self.health.ready = True
                self.health.reason = "standby: another worker holds the lease"
                if not standby_logged:
                    current = await _quiet(self.lease.current())
                    log.info("standby", holder=(current or {}).get("holder"))
                    standby_logged = True
                with anyio.move_on_after(max(self.config.lease.ttl_s / 3, 0.2)):
                    await self.stopping.wait()
                continue
            standby_logged = False
            self.metrics.lease_held.set(1)
            log.info("lease_acquired", holder=self.lease.holder, fence=self.lease.fence)
            try:
                await self._hold()
            except LeaseLost as exc:
                log.error("lease_lost", holder=self.lease.holder, reason=str(exc))
                self.metrics.lease_held.set(0)
                self.lease.fence = None
                self.health.ready = False
                self.health.reason = "lease lost"
                continue
            finally:
                self.metrics.lease_held.set(0)
            with anyio.CancelScope(shield=True):
                await _quiet(self.lease.release())
            log.info("lease_released", holder=self.lease.holder)

    async def _hold(self) -> None:
        """Hold the lease: renew it and sync until stopping; LeaseLost ends it at once."""
        with _unwrapped(LeaseLost):
            async with anyio.create_task_group() as group:
                group.start_soon(self._renew)
                await self._sync_until_stopped()
                group.cancel_scope.cancel()

    async def _renew(self) -> None:
        interval = max(self.config.lease.ttl_s / 3, 0.1)
        failing = False  # log a run of failed renewals once
        while True:
            await anyio.sleep(interval)
            try:
                await self.lease.renew()
            except LeaseLost:
                raise
            except PyMongoError as exc:
                if not failing:
                    log.warning("lease_renew_failed", error=type(exc).__name__)
                    failing = True
                if not self.lease.held:
                    raise LeaseLost("the lease could not be renewed before it expired") from exc
            else:
                if failing:
                    log.info("lease_renewed")
                    failing = False

    # -- sync ----------------------------------------------------------------------------------

    async def _sync_until_stopped(self) -> None:
        applier = Applier(
            self.client,
            self.store,
            self.registry,
            lease=self.lease,
            metrics=self.metrics,
            origin_tag=self.config.origin_tag,
            tag_field=self.config.tag_field,
        )
        self.applier = applier
        async with applier.opened():
            while not self.stopping.is_set():
                # The held changes are looked for on the server as the stream (re)opens (in
                # `_start_position`'s reads of the pair states), and replayed before the first
                # delivery: those of a pair resumed while no worker ran are older than anything
                # the stream brings now.
                applier.forget_replays()
                try:
                    position = await self._start_position(applier)
                    try:
                        await self._sync(applier, position)
                    except HistoryLost as exc:
                        await self._history_lost(applier, exc)
                except PyMongoError as exc:
                    # A lost connection or a transient error outside a batch (pair refresh,
                    # start position): reopen from the checkpoint after a pause.
                    if not _transient(exc):
                        raise
                    with anyio.move_on_after(self._outage.failed(exc)):
                        await self.stopping.wait()

    async def _start_position(self, applier: Applier) -> StreamPosition:
        pairs = await applier.refresh_pairs()
        now = await cluster_time(self.client)
        for pair in self.registry.pairs:
            if pairs.get(pair.original, {}).get("state") == "NOT_STARTED":
                await self.store.set_state(
                    pair.original, "RUNNING", expect=["NOT_STARTED"], start_at=now
                )
                log.info("pair_started", pair=pair.original, start_at=now)
        pairs = await applier.refresh_pairs()
        checkpoint = await self.store.checkpoint()
        if checkpoint and checkpoint.get("resume_token"):
            return StreamPosition(resume_after=checkpoint["resume_token"])
        starts = [
            doc["start_at"]
            for doc in pairs.values()
            if doc.get("state") in ACTIVE_STATES | {"PAUSED"} and doc.get("start_at") is not None
        ]
        return StreamPosition(start_at=min(starts) if starts else now)

    async def _sync(self, applier: Applier, position: StreamPosition) -> None:
        namespaces = {ns for pair in self.registry.pairs for ns in (pair.original, pair.partner)}
        reader = StreamReader(
            self.client,
            namespaces,
            batch_size=max(self.config.batch.max_docs, 1),
            skip_sessions=applier.own_sessions if applier.echoes_filtered else (),
        )
        buffered = max(self.config.batch.max_docs * 2, READ_AHEAD_EVENTS)
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](max_buffer_size=buffered)
        applier.unread = reader.unread
        applier.ahead_after_unread = buffered // 2
        applier.max_batch = max(self.config.batch.max_docs, 1)
        applier.stopping = self.stopping
        applier.refresh_interval = REFRESH_INTERVAL_S
        with _unwrapped(HistoryLost, LeaseLost, PyMongoError):
            async with anyio.create_task_group() as group:
                await group.start(reader.run, position, send)
                group.start_soon(self._drain_watchdog, group.cancel_scope)
                self.health.ready = True
                self.health.reason = "holding the lease, stream open"
                log.info("stream_open", position=_describe(position))
                try:
                    await self._apply_loop(applier, receive, reader)
                finally:
                    self.health.ready = False
                    self.health.reason = "stopping"
                    group.cancel_scope.cancel()

    async def _drain_watchdog(self, scope: anyio.CancelScope) -> None:
        """Once stopping, give the batch in flight DRAIN_TIMEOUT_S to finish, then abandon it."""
        await self.stopping.wait()
        await anyio.sleep(DRAIN_TIMEOUT_S)
        log.warning("drain_timeout", seconds=DRAIN_TIMEOUT_S)
        scope.cancel()

    async def _apply_loop(
        self,
        applier: Applier,
        receive: MemoryObjectReceiveStream[dict[str, Any]],
        reader: StreamReader,
    ) -> None:
        batch_cfg = self.config.batch
        applied = 0
        idle_saved: Any = None
        idle_saved_at = -IDLE_CHECKPOINT_S
        async with receive:
            while not self.stopping.is_set():
                try:
                    batch = await _collect(
                        receive,
                        max_docs=batch_cfg.max_docs * DELIVERY_PARTS,
                        max_delay_s=batch_cfg.max_delay_ms / 1000,
                        idle_s=REFRESH_INTERVAL_S,
                        stopping=self.stopping,
                        arrived_at=reader.oldest_arrival,
                    )
                except anyio.EndOfStream:
                    # The reader stopped (history lost, a lost connection): its own error ends
                    # the task group; raising EndOfStream beside it would hide that error.
                    await anyio.sleep_forever()
                reader.taken(len(batch))
                # Between deliveries; a delivery of several parts refreshes between them too.
                if applier.refresh_due() or not batch:
                    await applier.refresh_pairs()
                    self._outage.recovered()
                if applier.replaying:
                    # Older than the delivery; a long replay goes on after it if other pairs
                    # have changes waiting (the replaying pair's own are held meanwhile).
                    await applier.replay_held(batch_cfg.max_docs, beyond=batch)
                if batch:
                    await applier.apply(batch)
                    applied += len(batch)
                    continue
                idle = reader.idle_token
                if (
                    idle is not None
                    and idle[1] == applied
                    and idle[0] != idle_saved
                    and anyio.current_time() - idle_saved_at >= IDLE_CHECKPOINT_S
                ):
                    # Nothing of ours is in flight: move the checkpoint to the stream's
                    # high-water mark, so busy unrelated collections cannot push our resume
                    # point off the oplog while our pairs are quiet.
                    await applier.save_idle_checkpoint(idle[0])
                    idle_saved, idle_saved_at = idle[0], anyio.current_time()

    async def _history_lost(self, applier: Applier, exc: HistoryLost) -> None:
        pairs = await applier.refresh_pairs()
        for original, doc in pairs.items():
            if doc.get("state") in ACTIVE_STATES | {"PAUSED"}:
                await self.store.set_state(
                    original, "RESYNC_REQUIRED", resync_reason=f"change history lost: {exc}"
                )
                log.error(
                    "resync_required",
                    pair=original,
                    reason="the resume point fell off the change history",
                    fix=f"partner-sync backfill --restart --pair {original}, then run",
                )
        await self.store.checkpoints.update_one(
            {"_id": self.store.stream}, {"$unset": {"resume_token": ""}}
        )
        await applier.refresh_pairs()


class _Outage:
    """A run of failed attempts to sync, logged once when it starts and once when it ends."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.delay = OUTAGE_FIRST_DELAY_S

    def failed(self, exc: BaseException) -> float:
        """Note a failure; returns how long to wait before the next attempt (backoff)."""
        if self.since is None:
            self.since = time.monotonic()
            self.delay = OUTAGE_FIRST_DELAY_S
            log.warning("sync_interrupted", error=type(exc).__name__, detail=str(exc)[:300])
        else:
            self.delay = min(self.delay * 2, OUTAGE_MAX_DELAY_S)
        return self.delay

    def recovered(self) -> None:
        """Note a success; ends the outage if one was running."""
        if self.since is not None:
            log.info("sync_recovered", seconds=round(time.monotonic() - self.since, 3))
            self.since = None


def _transient(exc: PyMongoError) -> bool:
    """Errors worth retrying: lost connections, elections, transient transaction errors."""
    if isinstance(exc, ConnectionFailure):
        return True
    if isinstance(exc, OperationFailure):
        return (
            any(
                exc.has_error_label(label)
                for label in (
                    "TransientTransactionError",
                    "RetryableWriteError",
                    "ResumableChangeStreamError",
                )
            )
            or exc.code in TRANSIENT_CODES
        )
    return False


async def _collect(
    receive: MemoryObjectReceiveStream[dict[str, Any]],
    *,
    max_docs: int,
    max_delay_s: float,
    idle_s: float,
    stopping: anyio.Event,
    arrived_at: Callable[[], float | None] = lambda: None,
) -> list[dict[str, Any]]:
    """Up to `max_docs` events, waiting for more until the first one has waited `max_delay_s`
    since it arrived (`arrived_at`: when the first event not yet taken was read; without it,
    since the first event is received). Events that queued up while the previous batch was
    applied have waited already: the batch takes what is there and goes."""
    batch: list[dict[str, Any]] = []
    with anyio.move_on_after(idle_s):
        batch.append(await receive.receive())
    if not batch or stopping.is_set():
        return batch
    arrived = arrived_at()
    deadline = (time.monotonic() if arrived is None else arrived) + max_delay_s
    while len(batch) < max_docs:
        try:
            batch.append(receive.receive_nowait())
            continue
        except anyio.WouldBlock:
            pass
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        with anyio.move_on_after(remaining) as scope:
            batch.append(await receive.receive())
        if scope.cancelled_caught:
            break
    return batch


@contextlib.contextmanager
def _unwrapped(*kinds: type[Exception]) -> Iterator[None]:
    """Re-raise a task group's lone LeaseLost or HistoryLost as itself, so callers catch it.

    A task group wraps what its tasks raise in an exception group; `except LeaseLost` around it
    would never match and the daemon would die instead of standing by.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        matched, rest = group.split(kinds)
        if matched is None or rest is not None:
            raise
        leaf: BaseException = matched
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from None


def _describe(position: StreamPosition) -> str:
    if position.resume_after is not None:
        return "after checkpoint"
    if position.start_at is not None:
        return f"at {position.start_at}"
    return "now"


async def _quiet(awaitable: Any) -> Any:
    """Await a best-effort call (lease release, status) whose failure must not mask another."""
    try:
        return await awaitable
    except PyMongoError as exc:
        log.warning("best_effort_failed", error=type(exc).__name__)
        return None
