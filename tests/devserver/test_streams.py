"""Change streams through the command layer: getMore waits, transactions, cursor lifecycle."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

Client = MongoClient[dict[str, Any]]


def test_waiting_get_more_does_not_block_other_clients(client: Client, db_name: str) -> None:
    """While a watcher waits in getMore, other commands are served, and the event arrives."""
    coll = client[db_name].c
    received: list[dict[str, Any]] = []
    with coll.watch(max_await_time_ms=3000) as stream:
        waiter = threading.Thread(target=lambda: received.append(stream.next()))
        waiter.start()
        try:
            started = time.monotonic()
            for _ in range(20):
                client.admin.command("ping")
            assert time.monotonic() - started < 2.5
            coll.insert_one({"_id": 1})
        finally:
            waiter.join(10)
    assert [event["documentKey"] for event in received] == [{"_id": 1}]


def test_transaction_events_appear_together_at_commit(client: Client, db_name: str) -> None:
    """A transaction's events appear only after commit, share one clusterTime, carry lsid."""
    coll = client[db_name].c
    coll.insert_one({"_id": "existing"})
    with coll.watch(max_await_time_ms=100) as stream:
        with client.start_session() as session:
            session.start_transaction()
            coll.insert_one({"_id": 1}, session=session)
            coll.update_one({"_id": "existing"}, {"$set": {"v": 1}}, session=session)
            assert stream.try_next() is None
            session.commit_transaction()
        events = [stream.next(), stream.next()]
    assert [e["operationType"] for e in events] == ["insert", "update"]
    assert events[0]["clusterTime"] == events[1]["clusterTime"]
    assert all("lsid" in e and "txnNumber" in e for e in events)


def test_closing_a_stream_kills_its_cursor(client: Client, db_name: str) -> None:
    """Closing a change stream sends killCursors; the server forgets the cursor."""
    before = client.admin.command("serverStatus")["metrics"]["cursor"]["open"]["total"]
    stream = client[db_name].c.watch()
    during = client.admin.command("serverStatus")["metrics"]["cursor"]["open"]["total"]
    stream.close()
    after = client.admin.command("serverStatus")["metrics"]["cursor"]["open"]["total"]
    assert during == before + 1
    assert after == before


def test_history_bound_reports_history_lost(devserver_factory: Any) -> None:
    """Resuming from a point the bounded history dropped fails with 286."""
    server = devserver_factory(oplog_size_mb=0.05)
    with MongoClient(server.uri) as mongo:
        coll = mongo.db.c
        with coll.watch() as stream:
            coll.insert_one({"_id": 0})
            token = stream.next()["_id"]
        coll.insert_many([{"pad": "x" * 1000} for _ in range(200)])
        with pytest.raises(OperationFailure) as caught:
            with coll.watch(resume_after=token) as resumed:
                resumed.try_next()
        assert caught.value.code == 286
