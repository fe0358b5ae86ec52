"""Sessions and transactions, following MongoDB's documented semantics."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from bson import Int64
from pymongo import MongoClient, monitoring
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from tests.waiting import wait_until

Client = MongoClient[dict[str, Any]]


def test_writes_are_invisible_until_commit_then_all_visible(client: Client, db_name: str) -> None:
    """A transaction sees its own writes; others see none of them until commit, then all."""
    coll = client[db_name].c
    coll.insert_one({"_id": 0, "v": 0})
    with client.start_session() as session:
        session.start_transaction()
        coll.insert_one({"_id": 1}, session=session)
        coll.update_one({"_id": 0}, {"$set": {"v": 1}}, session=session)
        assert coll.count_documents({}, session=session) == 2
        assert coll.find_one({"_id": 0}, session=session) == {"_id": 0, "v": 1}
        assert coll.count_documents({}) == 1
        assert coll.find_one({"_id": 0}) == {"_id": 0, "v": 0}
        session.commit_transaction()
    assert coll.count_documents({}) == 2
    assert coll.find_one({"_id": 0}) == {"_id": 0, "v": 1}


def test_abort_discards_every_write(client: Client, db_name: str) -> None:
    """abortTransaction leaves the data as it was before the transaction."""
    coll = client[db_name].c
    coll.insert_one({"_id": 0, "v": 0})
    with client.start_session() as session:
        session.start_transaction()
        coll.insert_one({"_id": 1}, session=session)
        coll.delete_one({"_id": 0}, session=session)
        session.abort_transaction()
    assert list(coll.find()) == [{"_id": 0, "v": 0}]


def test_second_transaction_writing_same_document_gets_write_conflict(
    client: Client, db_name: str
) -> None:
    """Two open transactions writing one document: the second gets WriteConflict (112)."""
    coll = client[db_name].c
    coll.insert_one({"_id": 1, "v": 0})
    with client.start_session() as first, client.start_session() as second:
        first.start_transaction()
        coll.update_one({"_id": 1}, {"$set": {"v": 1}}, session=first)
        second.start_transaction()
        with pytest.raises(OperationFailure) as caught:
            coll.update_one({"_id": 1}, {"$set": {"v": 2}}, session=second)
        assert caught.value.code == 112
        assert caught.value.has_error_label("TransientTransactionError")
        # The failed transaction was aborted by the server.
        with pytest.raises(OperationFailure) as aborted:
            second.commit_transaction()
        assert aborted.value.code == 251
        first.commit_transaction()
    assert coll.find_one({"_id": 1}) == {"_id": 1, "v": 1}


def test_write_to_document_committed_after_snapshot_conflicts(client: Client, db_name: str) -> None:
    """A transaction writing a document someone committed after its snapshot gets 112."""
    coll = client[db_name].c
    coll.insert_many([{"_id": 1, "v": 0}, {"_id": 2}])
    with client.start_session() as session:
        session.start_transaction()
        coll.find_one({"_id": 2}, session=session)  # establishes the snapshot
        coll.update_one({"_id": 1}, {"$set": {"v": "outside"}})
        with pytest.raises(OperationFailure) as caught:
            coll.update_one({"_id": 1}, {"$set": {"v": "inside"}}, session=session)
        assert caught.value.code == 112
        assert caught.value.has_error_label("TransientTransactionError")
    assert coll.find_one({"_id": 1}) == {"_id": 1, "v": "outside"}


def test_plain_write_waits_for_the_transaction_holding_the_document(
    client: Client, db_name: str
) -> None:
    """A non-transactional write to a held document waits until commit, then applies."""
    coll = client[db_name].c
    coll.insert_one({"_id": 1, "n": 0})
    results: list[Any] = []
    with client.start_session() as session:
        session.start_transaction()
        coll.update_one({"_id": 1}, {"$inc": {"n": 1}}, session=session)

        def outside() -> None:
            try:
                results.append(coll.update_one({"_id": 1}, {"$inc": {"n": 10}}).modified_count)
            except PyMongoError as exc:  # reported to the main thread
                results.append(exc)

        worker = threading.Thread(target=outside)
        worker.start()
        try:
            # The outside write cannot finish while the transaction is open.
            worker.join(0.3)
            assert worker.is_alive() and results == []
            session.commit_transaction()
        finally:
            worker.join(10)
    assert results == [1]
    assert coll.find_one({"_id": 1}) == {"_id": 1, "n": 11}


def test_plain_write_waiting_on_a_transaction_honours_max_time_ms(
    client: Client, db_name: str
) -> None:
    """The wait is bounded by the write's maxTimeMS: error 50 MaxTimeMSExpired."""
    coll = client[db_name].c
    coll.insert_one({"_id": 1})
    with client.start_session() as session:
        session.start_transaction()
        coll.update_one({"_id": 1}, {"$set": {"a": 1}}, session=session)
        with pytest.raises(OperationFailure) as caught:
            client[db_name].command(
                "update", "c", updates=[{"q": {"_id": 1}, "u": {"$set": {"b": 1}}}], maxTimeMS=100
            )
        assert caught.value.code == 50
        session.abort_transaction()
    assert coll.find_one({"_id": 1}) == {"_id": 1}


def test_commit_unknown_transaction_is_no_such_transaction(client: Client) -> None:
    """Committing a transaction the server never saw: 251 with TransientTransactionError."""
    with client.start_session() as session:
        with pytest.raises(OperationFailure) as caught:
            client.admin.command(
                "commitTransaction",
                txnNumber=Int64(7),
                autocommit=False,
                session=session,
            )
    assert caught.value.code == 251
    assert caught.value.has_error_label("TransientTransactionError")


def test_retried_commit_of_committed_transaction_succeeds(mongo_uri: str, db_name: str) -> None:
    """A second commitTransaction of a committed transaction is ok and applies nothing."""
    listener = _CommitListener()
    with MongoClient(mongo_uri, event_listeners=[listener]) as mongo:
        coll = mongo[db_name].c
        with mongo.start_session() as session:
            session.start_transaction()
            coll.insert_one({"_id": 1}, session=session)
            session.commit_transaction()
            session.commit_transaction()  # the driver re-sends commitTransaction
        assert coll.count_documents({}) == 1
    assert listener.commits == 2


class _CommitListener(monitoring.CommandListener):
    def __init__(self) -> None:
        self.commits = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.command_name == "commitTransaction":
            self.commits += 1

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_transaction_lifetime_limit_aborts(client: Client, db_name: str) -> None:
    """A transaction older than transactionLifetimeLimitSeconds is aborted by the server."""
    client.admin.command("setParameter", 1, transactionLifetimeLimitSeconds=1)
    try:
        coll = client[db_name].c
        with client.start_session() as session:
            session.start_transaction()
            coll.insert_one({"_id": 1}, session=session)

            def aborted() -> bool:
                try:
                    coll.find_one({}, session=session)
                except OperationFailure as exc:
                    assert exc.code == 251
                    return True
                return False

            wait_until(aborted, what="the transaction to be aborted")
            with pytest.raises(OperationFailure):
                session.commit_transaction()
        assert coll.count_documents({}) == 0
    finally:
        client.admin.command("setParameter", 1, transactionLifetimeLimitSeconds=60)


def test_retryable_write_is_applied_once(client: Client, db_name: str) -> None:
    """A retry with the same lsid and txnNumber returns the first reply without reapplying."""
    db = client[db_name]
    with client.start_session() as session:
        replies = [
            db.command(
                "update",
                "c",
                updates=[{"q": {"_id": 1}, "u": {"$inc": {"n": 1}}, "upsert": True}],
                txnNumber=Int64(5),
                session=session,
            )
            for _ in range(3)
        ]
    assert {r["n"] for r in replies} == {1}
    assert db.c.find_one({"_id": 1}) == {"_id": 1, "n": 1}


def test_driver_retry_after_dropped_connection_applies_once(client: Client, db_name: str) -> None:
    """failCommand closeConnection on the first attempt: the driver retries, one document."""
    client.admin.command(
        "configureFailPoint",
        "failCommand",
        mode={"times": 1},
        data={"failCommands": ["insert"], "closeConnection": True},
    )
    try:
        client[db_name].c.insert_one({"_id": 1, "v": "once"})
    finally:
        client.admin.command("configureFailPoint", "failCommand", mode="off")
    assert list(client[db_name].c.find()) == [{"_id": 1, "v": "once"}]


def test_with_transaction_callback_and_snapshot_read_concern(client: Client, db_name: str) -> None:
    """The driver's with_transaction helper works, with snapshot read concern and majority."""
    coll = client[db_name].c

    def body(session: Any) -> None:
        coll.insert_one({"_id": "a"}, session=session)
        coll.insert_one({"_id": "b"}, session=session)

    with client.start_session() as session:
        session.with_transaction(
            body, read_concern=ReadConcern("snapshot"), write_concern=WriteConcern("majority")
        )
    assert sorted(d["_id"] for d in coll.find()) == ["a", "b"]


def test_causally_consistent_session_reads_its_writes(client: Client, db_name: str) -> None:
    """A causally consistent session sends afterClusterTime and reads its own writes."""
    coll = client[db_name].c
    with client.start_session(causal_consistency=True) as session:
        coll.insert_one({"_id": 1}, session=session)
        assert coll.find_one({"_id": 1}, session=session) == {"_id": 1}
        assert session.cluster_time is not None


def test_unique_index_is_enforced_inside_a_transaction(client: Client, db_name: str) -> None:
    """A duplicate inside a transaction fails and aborts the transaction."""
    coll = client[db_name].c
    coll.create_index("k", unique=True)
    coll.insert_one({"k": 1})
    with client.start_session() as session:
        session.start_transaction()
        with pytest.raises(OperationFailure) as caught:
            coll.insert_one({"k": 1}, session=session)
        assert caught.value.code == 11000
        with pytest.raises(OperationFailure):
            session.commit_transaction()
    wait_until(
        lambda: coll.count_documents({}) == 1, what="the document inserted before the transaction"
    )


def test_transaction_reads_its_snapshot(client: Client, db_name: str) -> None:
    """Commits by others after the transaction started are invisible to its reads."""
    coll = client[db_name].c
    coll.insert_many([{"_id": 1, "v": "old"}, {"_id": 2, "v": "old"}])
    with client.start_session() as session:
        session.start_transaction(read_concern=ReadConcern("snapshot"))
        assert coll.count_documents({}, session=session) == 2
        coll.update_one({"_id": 1}, {"$set": {"v": "new"}})
        coll.delete_one({"_id": 2})
        coll.insert_one({"_id": 3, "v": "new"})
        assert coll.find_one({"_id": 1}, session=session) == {"_id": 1, "v": "old"}
        assert coll.find_one({"_id": 2}, session=session) == {"_id": 2, "v": "old"}
        assert sorted(d["_id"] for d in coll.find({}, session=session)) == [1, 2]
        assert coll.count_documents({"v": "new"}, session=session) == 0
        session.abort_transaction()
    assert sorted(d["_id"] for d in coll.find()) == [1, 3]


def test_plain_insert_of_a_unique_key_staged_in_a_transaction_waits(
    client: Client, db_name: str
) -> None:
    """A plain insert of a unique key a transaction staged waits; after commit it is E11000."""
    coll = client[db_name].c
    coll.create_index("email", unique=True)
    outcome: list[Any] = []

    def insert_outside() -> None:
        try:
            coll.insert_one({"_id": 2, "email": "a@x"})
            outcome.append("inserted")
        except PyMongoError as exc:  # reported to the main thread
            outcome.append(exc)

    with client.start_session() as session:
        session.start_transaction()
        coll.insert_one({"_id": 1, "email": "a@x"}, session=session)
        worker = threading.Thread(target=insert_outside)
        worker.start()
        try:
            worker.join(0.3)
            assert worker.is_alive() and outcome == []
            session.commit_transaction()
        finally:
            worker.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], DuplicateKeyError)
    assert list(coll.find()) == [{"_id": 1, "email": "a@x"}]
