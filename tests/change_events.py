"""Reading change events in synchronous tests, with a bound on the wait."""

from __future__ import annotations

import time
from typing import Any

from pymongo.change_stream import ChangeStream

Doc = dict[str, Any]


def next_event(stream: ChangeStream[Doc], timeout: float = 10) -> Doc:
    """The next event, waiting at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = stream.try_next()
        if event is not None:
            return event
    raise AssertionError(f"no change event within {timeout} s")
