"""The lease that makes one worker per stream active, with a fencing token (G6).

The holder renews the lease every third of its time to live. A standby takes it over once it
has expired, with the fencing token incremented; the new holder raises the checkpoint's fence
before it applies anything, and every applying transaction matches the checkpoint on its own
fence, so a holder that was paused past its lease (GC, SIGSTOP) finds its next commit refused.
Expiry uses the workers' clocks, which must agree within a fraction of `lease.ttl_s`.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import socket
from collections.abc import Mapping
from typing import Any

from pymongo.errors import DuplicateKeyError, PyMongoError

from worker.errors import LeaseLost
from worker.logs import get_logger
from worker.state import StateStore, utcnow

__all__ = ["Lease", "new_holder_id"]

log = get_logger(__name__)


def new_holder_id() -> str:
    """A name for this worker process that is unique across restarts and machines."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Lease:
    """This worker's claim on one stream's lease."""

    def __init__(self, store: StateStore, holder: str, ttl_s: float) -> None:
        self.store = store
        self.holder = holder
        self.ttl = dt.timedelta(seconds=ttl_s)
        self.fence: int | None = None
        self.expires_at: dt.datetime | None = None

    @property
    def held(self) -> bool:
        """True while this worker believes it holds an unexpired lease."""
        return self.fence is not None and self.expires_at is not None and utcnow() < self.expires_at

    async def try_acquire(self) -> bool:
        """Take the lease if it is free, expired or already ours; False when held elsewhere."""
        now = utcnow()
        leases = self.store.leases
        try:
            doc: dict[str, Any] | None = await leases.find_one_and_update(
                {
                    "_id": self.store.stream,
                    "$or": [
                        {"holder": None},
                        {"expires_at": {"$lt": now}},
                        {"holder": self.holder},
                    ],
                },
                {
                    "$set": {"holder": self.holder, "expires_at": now + self.ttl, "since": now},
                    "$inc": {"fence": 1},
                },
                upsert=True,
                return_document=True,
            )
        except DuplicateKeyError:
            return False
        if doc is None:
            return False
        self.fence = int(doc["fence"])
        self.expires_at = now + self.ttl
        await self._end_previous_sessions(doc)
        # Raise the checkpoint's fence so a previous holder's in-flight commit is refused.
        await self.store.checkpoints.update_one(
            {"_id": self.store.stream}, {"$max": {"fence": self.fence}}, upsert=True
        )
        return True

    async def record_session(self, session_id: Mapping[str, Any]) -> None:
        """Note the session this holder applies on, so a successor can end its transactions."""
        await self.store.leases.update_one(
            {"_id": self.store.stream, "holder": self.holder, "fence": self.fence},
            {"$set": {"sessions": [dict(session_id)]}},
        )

    async def _end_previous_sessions(self, doc: Mapping[str, Any]) -> None:
        """Kill the sessions a previous holder applied on.

        A holder that died or froze inside a transaction keeps that transaction's document
        locks until the server's transactionLifetimeLimitSeconds (60 s by default); the
        successor's writes to the checkpoint would wait that long. Killing the sessions aborts
        the transaction at once.
        """
        sessions = [dict(s) for s in doc.get("sessions") or [] if isinstance(s, Mapping)]
        if not sessions:
            return
        try:
            await self.store.database.client.admin.command("killSessions", sessions)
        except PyMongoError as exc:
            # Not allowed or not supported: the lifetime limit frees the locks instead.
            log.warning("previous_sessions_not_killed", error=type(exc).__name__)
        await self.store.leases.update_one(
            {"_id": self.store.stream, "holder": self.holder, "fence": self.fence},
            {"$unset": {"sessions": ""}},
        )

    async def renew(self) -> None:
        """Extend the lease; raises LeaseLost when someone else took it over."""
        if self.fence is None:
            raise LeaseLost("the lease was never acquired")
        now = utcnow()
        result = await self.store.leases.update_one(
            {"_id": self.store.stream, "holder": self.holder, "fence": self.fence},
            {"$set": {"expires_at": now + self.ttl}},
        )
        if result.matched_count != 1:
            self.fence = None
            raise LeaseLost(f"lease {self.store.stream!r} was taken over by another worker")
        self.expires_at = now + self.ttl

    async def release(self) -> None:
        """Give the lease up at once so a standby need not wait for it to expire."""
        if self.fence is None:
            return
        await self.store.leases.update_one(
            {"_id": self.store.stream, "holder": self.holder, "fence": self.fence},
            {"$set": {"holder": None, "expires_at": utcnow()}},
        )
        self.fence = None
        self.expires_at = None

    async def current(self) -> dict[str, Any] | None:
        """The lease document as stored (holder, fence, expiry)."""
        return await self.store.leases.find_one({"_id": self.store.stream})
