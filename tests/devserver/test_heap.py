"""The server process's collector policy: survivors frozen, the frozen heap swept when idle."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Iterator

import pytest

from devserver._heap import HeapKeeper


class _Node:
    """An object that can sit in a reference cycle and be watched through a weak reference."""

    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture(autouse=True)
def _restore_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    callbacks = list(gc.callbacks)
    yield
    gc.callbacks[:] = callbacks
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    gc.collect()


async def _until(check: object, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.01)
    return False


def test_the_survivors_of_a_collection_are_frozen() -> None:
    """After a collection, what it left alive is frozen from the event loop (not in the
    collector's own callback), so later collections no longer walk it."""

    async def scenario() -> None:
        keeper = HeapKeeper(asyncio.get_running_loop())
        keeper.install()
        try:
            kept = [{"n": n} for n in range(5000)]
            before = gc.get_freeze_count()
            gc.collect(0)
            assert keeper.freezes == 0, "frozen inside the collector's callback"
            await asyncio.sleep(0)
            assert keeper.freezes == 1
            assert gc.get_freeze_count() >= before + len(kept)
            # Freed by reference count as usual: freezing keeps nothing alive.
            probe = _Node()
            watched = weakref.ref(probe)
            gc.collect(0)
            await asyncio.sleep(0)
            del probe
            assert watched() is None
        finally:
            keeper.uninstall()

    asyncio.run(scenario())


def test_a_cycle_frozen_before_it_became_garbage_waits_for_a_sweep() -> None:
    async def scenario() -> None:
        keeper = HeapKeeper(asyncio.get_running_loop())
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        watched = weakref.ref(a)
        gc.freeze()
        del a, b
        gc.collect()
        assert watched() is not None, "a frozen cycle is out of a collection's sight"
        keeper.sweep()
        assert watched() is None
        assert keeper.sweeps == 1
        assert not keeper.sweep_due(), "nothing has grown since the sweep"

    asyncio.run(scenario())


def test_an_idle_server_sweeps_its_frozen_heap_and_a_busy_one_does_not() -> None:
    """The keeper reads the server's CPU from a clock of the test's: busy, it runs with wall
    time; idle, it stands still. (Read from the thread's real CPU time, a busy loop in a test
    process sharing its interpreter lock with other servers' threads could look idle.)"""

    async def scenario() -> None:
        busy = True
        spent, last = 0.0, time.monotonic()

        def cpu() -> float:
            nonlocal spent, last
            now = time.monotonic()
            if busy:
                spent += now - last
            last = now
            return spent

        keeper = HeapKeeper(asyncio.get_running_loop(), cpu_clock=cpu)
        watched = _cycle_frozen()
        sweeper = asyncio.create_task(keeper.maintain(young_s=0.01, idle_check_s=0.05))
        try:
            # Busy for eight idle-check periods (a time input: there is no event to wait for).
            await asyncio.sleep(0.4)
            assert keeper.sweeps == 0
            assert watched() is not None
            # Idle: within a few periods the frozen heap (grown since no sweep yet) is swept.
            busy = False
            assert await _until(lambda: keeper.sweeps >= 1, within=5.0)
            assert watched() is None
        finally:
            sweeper.cancel()

    asyncio.run(scenario())


def _cycle_frozen() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gc.freeze()
    return weakref.ref(a)


def test_install_raises_the_young_threshold_and_uninstall_removes_the_callback() -> None:
    async def scenario() -> None:
        keeper = HeapKeeper(asyncio.get_running_loop())
        keeper.install()
        assert gc.get_threshold()[0] > 700
        keeper.uninstall()
        gc.collect(0)
        await asyncio.sleep(0)
        assert keeper.freezes == 0

    asyncio.run(scenario())


def test_the_young_generation_is_collected_and_frozen_on_a_timer() -> None:
    """Survivors are frozen even when the allocation count never reaches the threshold (a full
    history frees an old entry for every new one, and the count stands still)."""

    async def scenario() -> None:
        keeper = HeapKeeper(asyncio.get_running_loop())
        keeper.install()
        gc.set_threshold(10**9)  # the count alone would never start a collection
        task = asyncio.create_task(keeper.maintain(young_s=0.01, idle_check_s=60))
        try:
            before = gc.get_freeze_count()
            kept = [{"n": n} for n in range(2000)]
            assert await _until(lambda: gc.get_freeze_count() >= before + len(kept), within=5.0)
            assert keeper.freezes >= 1 and keeper.sweeps == 0
        finally:
            task.cancel()
            keeper.uninstall()

    asyncio.run(scenario())
