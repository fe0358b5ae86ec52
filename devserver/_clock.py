"""The cluster clock: a strictly increasing `Timestamp(seconds, increment)` like the oplog's."""

from __future__ import annotations

import time

from bson import Timestamp

__all__ = ["ClusterClock"]


class ClusterClock:
    """Hands out a fresh, strictly larger cluster time for every write; reads see the latest."""

    def __init__(self, start: Timestamp | None = None) -> None:
        self._seconds = 0
        self._increment = 0
        if start is not None:
            self.advance_to(start)

    @property
    def now(self) -> Timestamp:
        """The cluster time of the latest write (never zero once the server started)."""
        if self._seconds == 0:
            self.tick()
        return Timestamp(self._seconds, self._increment)

    def tick(self) -> Timestamp:
        """A new cluster time larger than every one given out before."""
        wall = int(time.time())
        if wall > self._seconds:
            self._seconds, self._increment = wall, 1
        else:
            self._increment += 1
            if self._increment >= 2**32:
                self._seconds, self._increment = self._seconds + 1, 1
        return Timestamp(self._seconds, self._increment)

    def advance_to(self, ts: Timestamp) -> None:
        """Never hand out a time at or below `ts` (resuming after restart, afterClusterTime)."""
        if (ts.time, ts.inc) > (self._seconds, self._increment):
            self._seconds, self._increment = ts.time, ts.inc
