"""The server process's polling selector: polls while requests come quickly, sleeps otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Iterator

from devserver._loop import PollingSelector, new_event_loop


@contextlib.contextmanager
def _watched(max_poll_s: float) -> Iterator[tuple[PollingSelector, socket.socket, socket.socket]]:
    """A polling selector watching the reading end of a socket pair; all closed afterwards."""
    selector = PollingSelector(max_poll_s=max_poll_s)
    left, right = socket.socketpair()
    right.setblocking(False)
    selector.register(right, selectors.EVENT_READ)
    try:
        yield selector, left, right
    finally:
        selector.close()
        left.close()
        right.close()


def test_ready_events_come_back_at_once_and_keep_the_window() -> None:
    with _watched(0.05) as (selector, left, right):
        left.send(b"x")
        started = time.perf_counter()
        ready = selector.select(None)
        assert [key.fileobj for key, _ in ready] == [right]
        assert time.perf_counter() - started < 0.05
        assert selector.window_s == 0.05


def test_a_sleep_without_events_closes_the_window_and_a_quick_event_reopens_it() -> None:
    with _watched(0.05) as (selector, left, right):
        # Nothing arrives within the timeout: polling did not pay, so the window closes.
        assert selector.select(0.2) == []
        assert selector.window_s == 0.0
        # With the window closed the selector sleeps at once; an event that ends the sleep
        # well within twice the window opens it again.
        sender = threading.Timer(0.002, left.send, args=(b"x",))
        sender.start()
        ready = selector.select(5)
        sender.join()
        assert [key.fileobj for key, _ in ready] == [right]
        assert selector.window_s == 0.05


def test_a_late_event_closes_the_window() -> None:
    with _watched(0.01) as (selector, left, right):
        sender = threading.Timer(0.3, left.send, args=(b"x",))
        sender.start()
        ready = selector.select(5)
        sender.join()
        assert [key.fileobj for key, _ in ready] == [right]
        assert selector.window_s == 0.0


def test_timeouts_are_kept_while_polling() -> None:
    selector = PollingSelector(max_poll_s=0.5)
    try:
        started = time.perf_counter()
        assert selector.select(0.02) == []
        assert time.perf_counter() - started < 0.4
    finally:
        selector.close()


def test_the_loop_factory_polls_unless_turned_off() -> None:
    loop = new_event_loop(0.001)
    try:
        assert isinstance(loop._selector, PollingSelector)  # type: ignore[attr-defined]
        assert loop.run_until_complete(asyncio.sleep(0.01, result=7)) == 7
    finally:
        loop.close()
    plain = new_event_loop(0)
    try:
        assert not isinstance(getattr(plain, "_selector", None), PollingSelector)
    finally:
        plain.close()
