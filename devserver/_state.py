"""Everything one running server shares between connections, and the commit of a write unit."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from bson import ObjectId, Timestamp

from devserver._changes import ChangeHistory, ChangeRecord
from devserver._clock import ClusterClock
from devserver._cursors import CursorTable
from devserver._engine import Engine
from devserver._failpoints import FailCommand
from devserver._sessions import SessionTable, Transaction
from devserver._storage import Storage
from devserver._versions import DEFAULT_MONGODB_VERSION, MongoDBVersion, parse_mongodb_version

__all__ = ["ServerConfig", "ServerState", "Journal"]

log = logging.getLogger("devserver")

_EPOCH = datetime(1970, 1, 1)


class Journal(Protocol):
    """Where committed write units go before the reply (the persistence layer)."""

    def write_unit(
        self,
        cluster_time: Timestamp,
        ops: list[dict[str, Any]],
        entries: list[dict[str, Any]],
        outcome: dict[str, Any] | None = None,
    ) -> None: ...


@dataclass(frozen=True)
class ServerConfig:
    """How the server was started."""

    host: str = "127.0.0.1"
    port: int = 0
    dbpath: str | None = None
    replset: str = "rs0"
    oplog_size_mb: float = 64
    allow_remote: bool = False
    #: Added to every round trip, as a network between client and server would (seconds).
    round_trip_s: float = 0.0
    #: The MongoDB release the server presents itself as ("7.0" or "8.0").
    mongodb_version: str = DEFAULT_MONGODB_VERSION


@dataclass
class ServerState:
    """Storage, clock, sessions, cursors, fail points and change history of one server."""

    config: ServerConfig
    storage: Storage = field(default_factory=Storage)
    engine: Engine = field(default_factory=Engine)
    clock: ClusterClock = field(default_factory=ClusterClock)
    cursors: CursorTable = field(default_factory=CursorTable)
    sessions: SessionTable = field(default_factory=SessionTable)
    fail_command: FailCommand = field(default_factory=FailCommand)
    parameters: dict[str, Any] = field(
        default_factory=lambda: {"transactionLifetimeLimitSeconds": 60}
    )
    process_id: ObjectId = field(default_factory=ObjectId)
    address: str = ""
    journal: Journal | None = None
    history: ChangeHistory = field(init=False)
    version: MongoDBVersion = field(init=False)
    connections_created: int = 0
    connections_current: int = 0
    # serverStatus's opcounters: operations received, by kind (see `count_operations`).
    opcounters: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("insert", "query", "update", "delete", "getmore", "command"), 0
        )
    )
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    stopping: asyncio.Event | None = None
    # The wall time of the latest commit, kept for the millisecond it stands for (BSON dates
    # hold milliseconds, so commits within one millisecond share one naive UTC datetime).
    _wall_ms: int = field(default=-1, init=False, repr=False)
    _wall: datetime = field(default=datetime.min, init=False, repr=False)

    def __post_init__(self) -> None:
        self.version = parse_mongodb_version(self.config.mongodb_version)
        self.history = ChangeHistory(
            max_bytes=int(self.config.oplog_size_mb * 1024 * 1024),
            lookup=self._lookup,
            collection_uuid=self.collection_uuid,
        )

    def collection_uuid(self, db: str, coll: str) -> Any:
        """The collection's UUID (listCollections' `info.uuid`), None when it does not exist."""
        meta = self.storage.meta(db, coll)
        return None if meta is None else meta.uuid

    def _lookup(self, db: str, coll: str, document_key: dict[str, Any]) -> dict[str, Any] | None:
        doc = self.storage.get(db, coll, document_key.get("_id"))
        return None if doc is None else dict(doc)

    def commit(
        self,
        records: Sequence[ChangeRecord],
        *,
        lsid: dict[str, Any] | None = None,
        txn_number: int | None = None,
        outcome: dict[str, Any] | None = None,
    ) -> Timestamp:
        """Finish one write unit: a fresh cluster time, change events, journal record."""
        cluster_time = self.clock.tick()
        entries: list[dict[str, Any]] = []
        if records:
            entries = list(
                self.history.append(
                    records,
                    cluster_time=cluster_time,
                    wall_time=self._wall_time(),
                    lsid=lsid,
                    txn_number=txn_number,
                )
            )
        ops = self.storage.take_ops()
        if self.journal is not None and (ops or entries or outcome):
            self.journal.write_unit(cluster_time, ops, entries, outcome)
        return cluster_time

    def _wall_time(self) -> datetime:
        """Now as a naive UTC datetime truncated to milliseconds (what BSON keeps of it)."""
        ms = time.time_ns() // 1_000_000
        if ms != self._wall_ms:
            self._wall_ms = ms
            self._wall = _EPOCH + timedelta(milliseconds=ms)
        return self._wall

    def remember_retryable(
        self, lsid: dict[str, Any], txn_number: int, reply: dict[str, Any]
    ) -> None:
        """Persist a retryable write's reply, so a retry after a restart is not applied again."""
        if self.journal is not None:
            outcome = {"lsid": lsid, "retry": txn_number, "reply": reply}
            self.journal.write_unit(self.clock.now, [], [], outcome)

    def restore_outcome(self, outcome: dict[str, Any], cluster_time: Timestamp) -> None:
        """Re-establish a persisted transaction commit or retryable-write reply (start-up)."""
        session = self.sessions.session(outcome["lsid"])
        if "retry" in outcome:
            number = int(outcome["retry"])
            if number >= session.txn_number:
                session.txn_number = number
                session.retry_replies = {number: dict(outcome["reply"])}
        elif "committed" in outcome:
            number = int(outcome["committed"])
            if number >= session.txn_number:
                session.txn_number = number
                session.retry_replies = {}
                session.txn = Transaction(
                    session=session,
                    txn_number=number,
                    snapshot=cluster_time,
                    state="committed",
                    commit_time=cluster_time,
                )

    def session_outcomes(self) -> list[dict[str, Any]]:
        """What `restore_outcome` needs for every session, for a snapshot."""
        outcomes: list[dict[str, Any]] = []
        for session in self.sessions.sessions.values():
            txn = session.txn
            if (
                txn is not None
                and txn.state == "committed"
                and txn.txn_number == session.txn_number
            ):
                outcomes.append(
                    {"lsid": session.lsid, "committed": txn.txn_number, "t": txn.commit_time}
                )
            for number, reply in session.retry_replies.items():
                outcomes.append({"lsid": session.lsid, "retry": number, "reply": reply})
        return outcomes

    def abort(self, txn: Transaction, reason: str = "") -> None:
        """Abort a transaction, discarding its writes."""
        if txn.is_open:
            self.sessions.end(txn, "aborted", reason)

    def reap_idle(self) -> None:
        """Close cursors idle for 10 minutes and forget sessions idle for 30, as mongod does."""
        self.cursors.close_idle(600)
        for txn in self.sessions.forget_idle(30 * 60):
            self.abort(txn, "session expired")

    def reap_transactions(self) -> None:
        """Abort transactions older than transactionLifetimeLimitSeconds (as mongod does)."""
        limit = float(self.parameters["transactionLifetimeLimitSeconds"])
        for txn in self.sessions.expired(limit):
            log.info("aborting transaction %s: lifetime limit %ss", txn.txn_number, limit)
            self.abort(txn, "transaction lifetime limit exceeded")
