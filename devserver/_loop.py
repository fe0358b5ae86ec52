"""The server's event loop: epoll that polls for a short while before it sleeps.

On a virtual machine, a request that reaches a server whose CPU is halted pays for waking that
CPU through the hypervisor, and on small commands the wake-up costs more than the command. A
client that sends its next command right after a reply (a loop of single inserts, a driver's
getMore after a batch) therefore goes faster when the server is still polling.

Polling is on only while it pays: after a sleep that an event ended within twice the window,
the next idle period polls; after a longer sleep (sparse requests, timers, an idle server) the
server sleeps at once, so it burns no CPU waiting for clients that are not there.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import time
from typing import Any

__all__ = ["MAX_POLL_SECONDS", "PollingSelector", "new_event_loop"]

#: Longest polling window (PARTNER_SYNC_DEVSERVER_POLL_US overrides it; 0 turns polling off).
MAX_POLL_SECONDS = float(os.environ.get("PARTNER_SYNC_DEVSERVER_POLL_US", "1000")) / 1e6


class PollingSelector(selectors.EpollSelector):
    """An epoll selector that polls without blocking for an adaptive window before it blocks."""

    def __init__(self, max_poll_s: float = MAX_POLL_SECONDS) -> None:
        super().__init__()
        self.max_poll_s = max_poll_s
        self.window_s = max_poll_s

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        ready = super().select(0)
        if ready or (timeout is not None and timeout <= 0) or self.max_poll_s <= 0:
            return ready
        clock = time.perf_counter
        started = clock()
        window = self.window_s if timeout is None else min(self.window_s, timeout)
        while clock() - started < window:
            ready = super().select(0)
            if ready:
                return ready
            # Polling must not keep a runnable process (a client, the worker) off this CPU.
            os.sched_yield()
        if timeout is not None:
            timeout = max(0.0, timeout - (clock() - started))
        ready = super().select(timeout)
        # Poll next time only if this event came soon enough for a window to have caught it.
        soon = ready and clock() - started <= 2 * self.max_poll_s
        self.window_s = self.max_poll_s if soon else 0.0
        return ready


def new_event_loop(max_poll_s: float = MAX_POLL_SECONDS) -> asyncio.AbstractEventLoop:
    """An asyncio loop for a server process (a plain loop when polling is off)."""
    if max_poll_s <= 0:
        return asyncio.new_event_loop()
    return asyncio.SelectorEventLoop(PollingSelector(max_poll_s))
