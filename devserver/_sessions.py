"""Logical sessions, their transactions, and the document locks transactions hold.

A transaction keeps its writes in a private overlay (namespace -> `_id` key -> document or None
for deleted) until commit. Each document it writes is held until the transaction ends: another
transaction writing it gets WriteConflict; a plain write waits (MongoDB's documented behaviour).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from bson import Timestamp

from devserver._errors import CommandError

__all__ = [
    "DocRef",
    "Session",
    "SessionTable",
    "Transaction",
    "no_such_transaction",
    "write_conflict",
]

# (db, collection, id key)
DocRef = tuple[str, str, bytes]
# (commit time, the committed document it replaced, None when there was none)
Version = tuple[Timestamp, dict[str, Any] | None]


def write_conflict() -> CommandError:
    return CommandError(
        112,
        "WriteConflict",
        "Write conflict during plan execution and yielding is disabled. :: Please retry your "
        "operation or multi-document transaction.",
        labels=("TransientTransactionError",),
    )


def no_such_transaction(txn_number: int, reason: str = "") -> CommandError:
    message = f"Transaction with {{ txnNumber: {txn_number} }} has been aborted."
    if reason:
        message = f"{message} ({reason})"
    return CommandError(251, "NoSuchTransaction", message, labels=("TransientTransactionError",))


@dataclass(eq=False)
class Transaction:
    """An open (or just ended) multi-document transaction on one session."""

    session: Session
    txn_number: int
    snapshot: Timestamp
    started: float = field(default_factory=time.monotonic)
    state: str = "open"  # open | committed | aborted
    abort_reason: str = ""
    overlay: dict[tuple[str, str], dict[bytes, dict[str, Any] | None]] = field(default_factory=dict)
    records: list[Any] = field(default_factory=list)
    held: set[DocRef] = field(default_factory=set)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    read_concern: dict[str, Any] = field(default_factory=dict)
    commit_time: Timestamp | None = None

    @property
    def is_open(self) -> bool:
        return self.state == "open"


@dataclass(eq=False)
class Session:
    """A logical session: its id document, highest txnNumber, transaction and retry cache."""

    lsid: dict[str, Any]
    key: bytes
    last_used: float = field(default_factory=time.monotonic)
    txn_number: int = -1
    txn: Transaction | None = None
    # txnNumber -> the reply of a retryable write executed with it (only the latest is kept)
    retry_replies: dict[int, dict[str, Any]] = field(default_factory=dict)


class SessionTable:
    """Sessions by lsid, the documents open transactions hold, and recent commit times."""

    def __init__(self) -> None:
        self.sessions: dict[bytes, Session] = {}
        self.holders: dict[DocRef, Transaction] = {}
        self.open: set[Transaction] = set()
        # While any transaction is open: per namespace and document, the committed versions
        # replaced since then, as (commit time, document before it or None). Transactions
        # read the version current at their snapshot from it, and a transaction writing a
        # document committed after its snapshot gets WriteConflict.
        self.versions: dict[tuple[str, str], dict[bytes, list[Version]]] = {}

    def session(self, lsid: dict[str, Any]) -> Session:
        lsid_id = lsid.get("id") if isinstance(lsid, dict) else None
        if not isinstance(lsid_id, bytes):
            raise CommandError(40415, "Location40415", "lsid must be an object with an 'id' UUID")
        key = bytes(lsid_id)
        if isinstance(lsid.get("uid"), bytes):
            key += bytes(lsid["uid"])
        session = self.sessions.get(key)
        if session is None:
            session = self.sessions[key] = Session(lsid=lsid, key=key)
        session.last_used = time.monotonic()
        return session

    def begin(self, session: Session, txn_number: int, snapshot: Timestamp) -> Transaction:
        txn = Transaction(session=session, txn_number=txn_number, snapshot=snapshot)
        session.txn = txn
        session.txn_number = txn_number
        self.open.add(txn)
        return txn

    def hold(self, txn: Transaction, ref: DocRef) -> None:
        """Take the write lock on a document for `txn`, or raise WriteConflict."""
        holder = self.holders.get(ref)
        if holder is not None and holder is not txn:
            raise write_conflict()
        versions = self.versions.get((ref[0], ref[1]), {}).get(ref[2])
        if versions and versions[-1][0] > txn.snapshot:
            raise write_conflict()
        self.holders[ref] = txn
        txn.held.add(ref)

    def holder(self, ref: DocRef) -> Transaction | None:
        return self.holders.get(ref)

    def committed(self, ref: DocRef, ts: Timestamp, before: dict[str, Any] | None) -> None:
        """Remember a committed write (and what it replaced) for the open transactions."""
        self.versions.setdefault((ref[0], ref[1]), {}).setdefault(ref[2], []).append((ts, before))

    def as_of(
        self, txn: Transaction, db: str, coll: str, key: bytes
    ) -> tuple[bool, dict[str, Any] | None]:
        """(True, document) when the document changed after `txn`'s snapshot: its version then."""
        for ts, before in self.versions.get((db, coll), {}).get(key, ()):
            if ts > txn.snapshot:
                return True, before
        return False, None

    def end(self, txn: Transaction, state: str, reason: str = "") -> None:
        """Mark a transaction committed or aborted, release its documents, wake waiters."""
        if not txn.is_open:
            return
        txn.state = state
        txn.abort_reason = reason
        for ref in txn.held:
            if self.holders.get(ref) is txn:
                del self.holders[ref]
        txn.held.clear()
        if state == "aborted":
            txn.overlay.clear()
            txn.records.clear()
        self.open.discard(txn)
        if not self.open:
            self.versions.clear()
        txn.ended.set()

    def expired(self, limit_seconds: float) -> list[Transaction]:
        deadline = time.monotonic() - limit_seconds
        return [txn for txn in self.open if txn.started <= deadline]

    def forget_idle(self, idle_seconds: float) -> list[Transaction]:
        """Forget sessions unused for `idle_seconds`; returns their open transactions."""
        deadline = time.monotonic() - idle_seconds
        idle = {key for key, s in self.sessions.items() if s.last_used < deadline}
        return self.forget(idle)

    def forget(self, keys: set[bytes]) -> list[Transaction]:
        """Drop sessions (endSessions/killSessions); returns their open transactions."""
        ended = []
        for key in keys:
            session = self.sessions.pop(key, None)
            if session is not None and session.txn is not None and session.txn.is_open:
                ended.append(session.txn)
        return ended
