"""Garbage collection in a server process, whose heap is nearly all long-lived.

The server holds every document and its whole change history as Python objects, and most of
what it allocates while serving (history entries, new versions of documents) lives until the
history drops it. CPython's collector examines every survivor again in its older generations:
with a few hundred thousand changes in the history, a second-generation collection took 0.4 s
and a full one 1.3 s, and every client waited that long for its reply.

So after each young collection the survivors are frozen (`gc.freeze`), out of sight of later
collections. Frozen objects that lose their last reference are still freed at once; only a
cycle that became unreachable after it was frozen is not found. Those are swept up once the
server has been idle for a while: the frozen heap is then collected in full, and frozen again.

Young collections also run on a timer. The collector counts allocations net of deallocations,
and once the history is full every new entry frees an old one: the count hardly moves, the
young generation grew for minutes, and its collection then took half a second.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

__all__ = ["HeapKeeper"]

#: Net new container objects between young collections (CPython's default is 700).
YOUNG_THRESHOLD = 10_000
#: How often the young generation is collected (and its survivors frozen) whatever the count.
YOUNG_INTERVAL_S = 0.5
#: How often idleness is checked, and the CPU share under which the server counts as idle.
IDLE_CHECK_S = 5.0
IDLE_CPU_SHARE = 0.02
#: A full sweep runs only once the frozen heap has grown this much since the last one.
SWEEP_GROWTH = 1.25
SWEEP_MIN_OBJECTS = 10_000


class HeapKeeper:
    """Freezes the survivors of each collection; sweeps the frozen heap when the server idles.

    For a process that is a server and nothing else: freezing is process-wide.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        self._loop = loop
        # The server's CPU seconds: its loop's thread's (see `maintain`).
        self._cpu_clock = cpu_clock
        self._freeze_scheduled = False
        self._swept_at = 0  # frozen objects after the last full sweep
        self.freezes = 0
        self.sweeps = 0

    def install(self) -> None:
        gc.set_threshold(YOUNG_THRESHOLD, 20, 100)
        gc.callbacks.append(self._collected)

    def uninstall(self) -> None:
        if self._collected in gc.callbacks:
            gc.callbacks.remove(self._collected)

    def _collected(self, phase: str, info: dict[str, Any]) -> None:
        # Freezing inside the collector's callback would change its lists under it (on some
        # Python versions): it is done from the event loop right after.
        if phase == "stop" and not self._freeze_scheduled:
            self._freeze_scheduled = True
            self._loop.call_soon_threadsafe(self._freeze)

    def _freeze(self) -> None:
        self._freeze_scheduled = False
        gc.freeze()
        self.freezes += 1

    def sweep(self) -> None:
        """Collect the whole heap, frozen objects included, then freeze what survived."""
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self._swept_at = gc.get_freeze_count()
        self.sweeps += 1

    def sweep_due(self) -> bool:
        """Whether the frozen heap has grown enough since the last sweep to sweep it again."""
        frozen = gc.get_freeze_count()
        return frozen >= max(self._swept_at * SWEEP_GROWTH, self._swept_at + SWEEP_MIN_OBJECTS)

    async def maintain(
        self, young_s: float = YOUNG_INTERVAL_S, idle_check_s: float = IDLE_CHECK_S
    ) -> None:
        """Run forever: collect the young generation every `young_s` (its survivors are then
        frozen), and sweep the frozen heap after an `idle_check_s` period in which the server's
        thread used (almost) no CPU, when that heap has grown since the last sweep.

        The server does all its work on this loop's thread, so its CPU time is the server's;
        the process's would count threads that share it (a server started in a test's process,
        next to its clients' monitors) and keep it from ever looking idle."""
        used, checked = self._cpu_clock(), time.monotonic()
        while True:
            await asyncio.sleep(young_s)
            gc.collect(0)
            now = time.monotonic()
            if now - checked < idle_check_s:
                continue
            cpu = self._cpu_clock()
            if cpu - used < IDLE_CPU_SHARE * (now - checked) and self.sweep_due():
                self.sweep()
                cpu = self._cpu_clock()
            used, checked = cpu, now
