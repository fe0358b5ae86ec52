"""Waiting in synchronous tests: on a condition, with a deadline, never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# The first poll's delay, doubled after each until this longest one.
POLL_S = 0.01
MAX_POLL_S = 0.25


def wait_until(
    condition: Callable[[], Any], *, within: float = 10.0, what: str = "condition"
) -> Any:
    """Call `condition()` until it returns something truthy (returned), or fail after `within`
    seconds saying `what` was awaited."""
    deadline = time.monotonic() + within
    delay = POLL_S
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        time.sleep(delay)
        delay = min(MAX_POLL_S, delay * 2)
