"""MongoDB 8.0's `bulkWrite` through PyMongo's client-level bulk_write, and the 7.0 mode."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from bson import Int64
from click.testing import CliRunner
from pymongo import (
    AsyncMongoClient,
    DeleteMany,
    DeleteOne,
    InsertOne,
    MongoClient,
    ReplaceOne,
    UpdateMany,
    UpdateOne,
    monitoring,
)
from pymongo.client_session import ClientSession
from pymongo.errors import (
    ClientBulkWriteException,
    InvalidOperation,
    OperationFailure,
    PyMongoError,
)
from pymongo.write_concern import WriteConcern

from devserver import DevServer
from devserver._cli import command as devserver_command
from tests.change_events import next_event
from tests.waiting import wait_until

Client = MongoClient[dict[str, Any]]
Doc = dict[str, Any]


@pytest.fixture
async def async_client(mongo_uri: str) -> AsyncIterator[AsyncMongoClient[Doc]]:
    """An AsyncMongoClient on `mongo_uri`, closed at teardown."""
    mongo: AsyncMongoClient[Doc] = AsyncMongoClient(mongo_uri, serverSelectionTimeoutMS=10_000)
    try:
        yield mongo
    finally:
        await mongo.close()


def _write_errors(error: ClientBulkWriteException) -> list[Doc]:
    """The failed operations' entries (documents, whatever PyMongo's annotation says)."""
    return list(error.details.get("writeErrors", []))


def test_hello_and_build_info_report_mongodb_8(client: Client) -> None:
    """By default the server presents itself as MongoDB 8.0: wire version 25, 8.0.0, FCV 8.0."""
    assert client.admin.command("hello")["maxWireVersion"] >= 25
    assert client.admin.command("buildInfo")["versionArray"][:2] >= [8, 0]


def test_every_op_kind_across_two_namespaces(client: Client, db_name: str) -> None:
    """Inserts, updates, replaces and deletes on two collections run in one bulk_write, in
    order, and the counts add up."""
    first, second = f"{db_name}.first", f"{db_name}.second"
    client[db_name].first.insert_many([{"_id": i, "k": i % 2} for i in range(4)])
    result = client.bulk_write(
        [
            InsertOne({"_id": 10, "k": 0}, namespace=second),
            UpdateOne({"_id": 0}, {"$set": {"v": "one"}}, namespace=first),
            UpdateMany({"k": 1}, {"$inc": {"n": 1}}, namespace=first),
            ReplaceOne({"_id": 10}, {"k": 5}, namespace=second),
            InsertOne({"_id": 11}, namespace=second),
            DeleteOne({"_id": 11}, namespace=second),
            DeleteMany({"k": 0}, namespace=first),
            UpdateOne({"_id": 1}, [{"$set": {"p": {"$add": ["$n", 1]}}}], namespace=first),
        ]
    )
    assert result.acknowledged
    assert (result.inserted_count, result.matched_count, result.modified_count) == (2, 5, 5)
    assert (result.deleted_count, result.upserted_count) == (3, 0)
    assert list(client[db_name].first.find()) == [
        {"_id": 1, "k": 1, "n": 1, "p": 2},
        {"_id": 3, "k": 1, "n": 1},
    ]
    assert list(client[db_name].second.find()) == [{"_id": 10, "k": 5}]


def test_upserts_report_ids_and_count_separately(client: Client, db_name: str) -> None:
    """An upsert that inserts reports its _id and counts as upserted, not matched; one that
    matches counts as matched."""
    ns = f"{db_name}.c"
    client[db_name].c.insert_one({"_id": "old", "v": 0})
    result = client.bulk_write(
        [
            UpdateOne({"_id": "new"}, {"$set": {"v": 1}}, upsert=True, namespace=ns),
            ReplaceOne({"_id": "other"}, {"v": 2}, upsert=True, namespace=ns),
            UpdateOne({"_id": "old"}, {"$set": {"v": 3}}, upsert=True, namespace=ns),
        ],
        verbose_results=True,
    )
    assert (result.upserted_count, result.matched_count, result.modified_count) == (2, 1, 1)
    assert result.update_results[0].upserted_id == "new"
    assert result.update_results[1].upserted_id == "other"
    assert result.update_results[2].upserted_id is None
    assert result.update_results[2].matched_count == 1
    assert client[db_name].c.count_documents({}) == 3


def test_verbose_results_per_operation(client: Client, db_name: str) -> None:
    """verbose_results gives each operation's own result, keyed by its index."""
    ns = f"{db_name}.c"
    result = client.bulk_write(
        [
            InsertOne({"_id": 1, "v": 1}, namespace=ns),
            InsertOne({"_id": 2, "v": 1}, namespace=ns),
            UpdateMany({"v": 1}, {"$set": {"v": 2}}, namespace=ns),
            UpdateOne({"_id": 1}, {"$set": {"v": 2}}, namespace=ns),
            DeleteMany({}, namespace=ns),
        ],
        verbose_results=True,
    )
    assert result.has_verbose_results
    assert {i: r.inserted_id for i, r in result.insert_results.items()} == {0: 1, 1: 2}
    assert sorted(result.update_results) == [2, 3]
    assert (result.update_results[2].matched_count, result.update_results[2].modified_count) == (
        2,
        2,
    )
    # A no-op update matches without modifying.
    assert (result.update_results[3].matched_count, result.update_results[3].modified_count) == (
        1,
        0,
    )
    assert result.delete_results[4].deleted_count == 2


def test_errors_only_lists_only_failed_operations(client: Client, db_name: str) -> None:
    """errorsOnly: the cursor holds only error entries; the summary still counts everything."""
    client[db_name].c.insert_one({"_id": 1})
    reply = client.admin.command(
        {
            "bulkWrite": 1,
            "ops": [
                {"insert": 0, "document": {"_id": 1}},
                {"insert": 0, "document": {"_id": 2}},
                {"update": 0, "filter": {"_id": 2}, "updateMods": {"$set": {"v": 1}}},
            ],
            "nsInfo": [{"ns": f"{db_name}.c"}],
            "ordered": False,
            "errorsOnly": True,
        }
    )
    batch = reply["cursor"]["firstBatch"]
    assert [(entry["ok"], entry["idx"], entry["code"]) for entry in batch] == [(0, 0, 11000)]
    assert batch[0]["keyValue"] == {"_id": 1} and batch[0]["n"] == 0
    assert (reply["nErrors"], reply["nInserted"], reply["nMatched"]) == (1, 1, 1)
    assert reply["cursor"]["id"] == 0 and reply["cursor"]["ns"] == "admin.$cmd.bulkWrite"
    verbose = client.admin.command(
        {
            "bulkWrite": 1,
            "ops": [{"delete": 0, "filter": {}, "multi": True}],
            "nsInfo": [{"ns": f"{db_name}.c"}],
        }
    )
    assert verbose["cursor"]["firstBatch"] == [{"ok": 1.0, "idx": 0, "n": 2}]
    assert verbose["nDeleted"] == 2


@pytest.mark.parametrize(
    ("ordered", "expected_ids"),
    [
        pytest.param(True, [0, 1], id="ordered-stops"),
        pytest.param(False, [0, 1, 2, 3], id="unordered-goes-on"),
    ],
)
def test_duplicate_key_ordered_and_unordered(
    client: Client, db_name: str, ordered: bool, expected_ids: list[int]
) -> None:
    """A duplicate key fails its operation; ordered stops there, unordered runs the rest."""
    ns = f"{db_name}.c"
    client[db_name].c.insert_one({"_id": 1})
    with pytest.raises(ClientBulkWriteException) as caught:
        client.bulk_write(
            [
                InsertOne({"_id": 0}, namespace=ns),
                InsertOne({"_id": 1}, namespace=ns),
                InsertOne({"_id": 2}, namespace=ns),
                InsertOne({"_id": 3}, namespace=f"{db_name}.other"),
            ],
            ordered=ordered,
        )
    errors = _write_errors(caught.value)
    assert [(e["idx"], e["code"]) for e in errors] == [(1, 11000)]
    assert "E11000 duplicate key error" in errors[0]["errmsg"]
    assert caught.value.error is None
    ran = [d["_id"] for d in client[db_name].c.find()]
    ran += [d["_id"] for d in client[db_name].other.find()]
    assert sorted(ran) == expected_ids
    partial = caught.value.partial_result
    assert partial is not None and partial.inserted_count == len(expected_ids) - 1


def test_document_validation_failure_is_an_error_entry(client: Client, db_name: str) -> None:
    """A document the validator rejects fails its operation with 121; bypassing validation
    lets it in."""
    db = client[db_name]
    db.create_collection("c", validator={"n": {"$gte": 0}})
    ns = f"{db_name}.c"
    with pytest.raises(ClientBulkWriteException) as caught:
        client.bulk_write(
            [
                InsertOne({"_id": 1, "n": 1}, namespace=ns),
                UpdateOne({"_id": 1}, {"$set": {"n": -1}}, namespace=ns),
                InsertOne({"_id": 2, "n": -1}, namespace=ns),
            ],
            ordered=False,
        )
    errors = _write_errors(caught.value)
    assert [(e["idx"], e["code"]) for e in errors] == [(1, 121), (2, 121)]
    assert errors[0]["errInfo"]["failingDocumentId"] == 1
    assert list(db.c.find()) == [{"_id": 1, "n": 1}]
    client.bulk_write(
        [InsertOne({"_id": 3, "n": -3}, namespace=ns)], bypass_document_validation=True
    )
    assert db.c.count_documents({"n": -3}) == 1


def _transaction_ops(db_name: str) -> list[Any]:
    return [
        InsertOne({"_id": 1}, namespace=f"{db_name}.a"),
        UpdateOne({"_id": 0}, {"$set": {"v": 1}}, namespace=f"{db_name}.b"),
        DeleteOne({"_id": 9}, namespace=f"{db_name}.b"),
    ]


def test_transaction_commit_applies_all_at_once(client: Client, db_name: str) -> None:
    """Inside a transaction bulk_write's writes are invisible to others until commit."""
    db = client[db_name]
    db.b.insert_many([{"_id": 0, "v": 0}, {"_id": 9}])
    with client.start_session() as session:
        session.start_transaction()
        result = client.bulk_write(_transaction_ops(db_name), session=session)
        assert (result.inserted_count, result.modified_count, result.deleted_count) == (1, 1, 1)
        assert db.a.count_documents({}, session=session) == 1
        assert db.a.count_documents({}) == 0
        assert db.b.find_one({"_id": 0}) == {"_id": 0, "v": 0}
        session.commit_transaction()
    assert db.a.count_documents({}) == 1
    assert list(db.b.find()) == [{"_id": 0, "v": 1}]


def test_transaction_abort_discards_bulk_writes(client: Client, db_name: str) -> None:
    """abortTransaction discards everything bulk_write did in the transaction."""
    db = client[db_name]
    db.b.insert_many([{"_id": 0, "v": 0}, {"_id": 9}])
    with client.start_session() as session:
        session.start_transaction()
        client.bulk_write(_transaction_ops(db_name), session=session)
        session.abort_transaction()
    assert db.a.count_documents({}) == 0
    assert list(db.b.find()) == [{"_id": 0, "v": 0}, {"_id": 9}]


def test_error_in_a_transaction_stops_the_batch_and_aborts(client: Client, db_name: str) -> None:
    """In a transaction even an unordered bulk_write stops at its first failed operation,
    and the transaction is aborted."""
    ns = f"{db_name}.c"
    client[db_name].c.insert_one({"_id": 1})
    with client.start_session() as session:
        session.start_transaction()
        with pytest.raises(ClientBulkWriteException) as caught:
            client.bulk_write(
                [
                    InsertOne({"_id": 0}, namespace=ns),
                    InsertOne({"_id": 1}, namespace=ns),
                    InsertOne({"_id": 2}, namespace=ns),
                ],
                ordered=False,
                session=session,
            )
        assert [e["idx"] for e in _write_errors(caught.value)] == [1]
        with pytest.raises(OperationFailure) as aborted:
            session.commit_transaction()
        assert aborted.value.code == 251
    assert [d["_id"] for d in client[db_name].c.find()] == [1]


def test_write_conflict_in_a_transaction_is_a_top_level_error(client: Client, db_name: str) -> None:
    """A transaction's bulk_write on a document another open transaction wrote fails the whole
    command with WriteConflict (112, TransientTransactionError), not an entry."""
    coll = client[db_name].c
    coll.insert_one({"_id": 1, "v": 0})
    with client.start_session() as first, client.start_session() as second:
        first.start_transaction()
        coll.update_one({"_id": 1}, {"$set": {"v": 1}}, session=first)
        second.start_transaction()
        with pytest.raises(ClientBulkWriteException) as caught:
            client.bulk_write(
                [UpdateOne({"_id": 1}, {"$set": {"v": 2}}, namespace=f"{db_name}.c")],
                session=second,
            )
        error = caught.value.error
        assert isinstance(error, OperationFailure)
        assert error.code == 112
        assert error.has_error_label("TransientTransactionError")
        assert not caught.value.write_errors
        with pytest.raises(OperationFailure) as aborted:
            second.commit_transaction()
        assert aborted.value.code == 251
        first.commit_transaction()
    assert coll.find_one({"_id": 1}) == {"_id": 1, "v": 1}


def test_plain_bulk_write_waits_for_a_held_document(client: Client, db_name: str) -> None:
    """Outside a transaction, a bulkWrite touching a document an open transaction wrote waits
    for that transaction to end, then applies on top of its commit."""
    coll = client[db_name].c
    coll.insert_one({"_id": 1, "v": 0})
    outcome: list[Any] = []

    def plain_write() -> None:
        ops = [UpdateOne({"_id": 1}, {"$inc": {"v": 10}}, namespace=f"{db_name}.c")]
        try:
            outcome.append(client.bulk_write(ops).modified_count)
        except PyMongoError as exc:  # reported to the main thread
            outcome.append(exc)

    with client.start_session() as session:
        session.start_transaction()
        coll.update_one({"_id": 1}, {"$inc": {"v": 1}}, session=session)
        writer = threading.Thread(target=plain_write)
        writer.start()
        try:
            # The plain write cannot finish while the transaction is open.
            writer.join(0.3)
            assert writer.is_alive() and outcome == []
            session.commit_transaction()
        finally:
            writer.join(10)
    assert outcome == [1]
    assert coll.find_one({"_id": 1}) == {"_id": 1, "v": 11}


def test_unacknowledged_bulk_write_applies(client: Client, db_name: str) -> None:
    """w: 0 gets no reply (moreToCome), and the writes apply."""
    ns = f"{db_name}.c"
    result = client.bulk_write(
        [InsertOne({"_id": i}, namespace=ns) for i in range(5)],
        write_concern=WriteConcern(w=0),
        ordered=False,
    )
    assert not result.acknowledged
    wait_until(lambda: client[db_name].c.count_documents({}) >= 5, what="the unacknowledged writes")


def _event_shape(event: Doc, lsid: Mapping[str, Any] | None) -> Doc:
    """What must match between the per-collection commands' events and bulkWrite's (`lsid`:
    the writing transaction's session, None outside one)."""
    shape = {
        key: event.get(key)
        for key in ("operationType", "documentKey", "fullDocument", "updateDescription")
    }
    shape["lsid"] = event.get("lsid") == lsid
    shape["txnNumber"] = event.get("txnNumber")
    return shape


def _per_collection_writes(client: Client, ns: str, session: ClientSession | None) -> None:
    db_name, coll_name = ns.split(".")
    coll = client[db_name][coll_name]
    coll.insert_one({"_id": 1, "v": 1}, session=session)
    coll.update_one({"_id": 1}, {"$set": {"v": 2}, "$unset": {"x": ""}}, session=session)
    coll.replace_one({"_id": 1}, {"w": 1}, session=session)
    coll.update_one({"_id": 2}, {"$set": {"v": 0}}, upsert=True, session=session)
    coll.delete_many({}, session=session)


def _bulk_writes(client: Client, ns: str, session: ClientSession | None) -> None:
    client.bulk_write(
        [
            InsertOne({"_id": 1, "v": 1}, namespace=ns),
            UpdateOne({"_id": 1}, {"$set": {"v": 2}, "$unset": {"x": ""}}, namespace=ns),
            ReplaceOne({"_id": 1}, {"w": 1}, namespace=ns),
            UpdateOne({"_id": 2}, {"$set": {"v": 0}}, upsert=True, namespace=ns),
            DeleteMany({}, namespace=ns),
        ],
        session=session,
    )


@pytest.mark.parametrize("in_transaction", [False, True], ids=["plain", "transaction"])
def test_change_events_match_the_per_collection_commands(
    client: Client, db_name: str, in_transaction: bool
) -> None:
    """bulkWrite produces the same change events (operation, keys, documents,
    updateDescription, lsid, txnNumber) as insert/update/delete doing the same writes."""
    shapes: dict[str, list[Doc]] = {}
    # Two sessions open together are two server sessions, each on its first transaction.
    with client.start_session() as per, client.start_session() as bulk:
        with client[db_name].watch(max_await_time_ms=100) as stream:
            for name, writes, session in (
                ("per", _per_collection_writes, per),
                ("bulk", _bulk_writes, bulk),
            ):
                if in_transaction:
                    with session.start_transaction():
                        writes(client, f"{db_name}.{name}", session)
                else:
                    writes(client, f"{db_name}.{name}", None)
                lsid = session.session_id if in_transaction else None
                events = [next_event(stream) for _ in range(6)]
                assert {event["ns"]["coll"] for event in events} == {name}
                shapes[name] = [_event_shape(event, lsid) for event in events]
    assert shapes["bulk"] == shapes["per"]
    kinds = [shape["operationType"] for shape in shapes["bulk"]]
    assert kinds == ["insert", "update", "replace", "insert", "delete", "delete"]
    assert shapes["bulk"][1]["updateDescription"]["updatedFields"] == {"v": 2}
    assert all(shape["lsid"] for shape in shapes["bulk"])
    expected_txn = Int64(1) if in_transaction else None
    assert all(shape["txnNumber"] == expected_txn for shape in shapes["bulk"])


def test_fail_point_fails_bulk_write(client: Client, db_name: str, fail_point: Any) -> None:
    """failCommand with failCommands ["bulkWrite"] fails the command before it writes."""
    fail_point({"times": 1}, failCommands=["bulkWrite"], errorCode=2)
    with pytest.raises(ClientBulkWriteException) as caught:
        client.bulk_write([InsertOne({"_id": 1}, namespace=f"{db_name}.c")])
    assert isinstance(caught.value.error, OperationFailure)
    assert caught.value.error.code == 2
    assert client[db_name].c.count_documents({}) == 0
    # A retryable code on a retryable bulk_write: the driver retries once and it applies once.
    fail_point({"times": 1}, failCommands=["bulkWrite"], errorCode=91)
    result = client.bulk_write([InsertOne({"_id": 1}, namespace=f"{db_name}.c")])
    assert result.inserted_count == 1
    assert client[db_name].c.count_documents({}) == 1


def test_retried_bulk_write_is_answered_not_applied_again(client: Client, db_name: str) -> None:
    """The same lsid and txnNumber sent twice: the second gets the first reply, nothing is
    applied twice; multi operations are refused in a retryable write."""
    ns = f"{db_name}.c"
    command = {
        "bulkWrite": 1,
        "ops": [
            {"insert": 0, "document": {"_id": 1}},
            {"update": 0, "filter": {"_id": 1}, "updateMods": {"$inc": {"n": 1}}},
        ],
        "nsInfo": [{"ns": ns}],
        "txnNumber": Int64(1),
    }
    with client.start_session() as session:
        first = client.admin.command(command, session=session)
        again = client.admin.command(command, session=session)
        assert again["cursor"]["firstBatch"] == first["cursor"]["firstBatch"]
        assert (again["nInserted"], again["nModified"], again["nErrors"]) == (1, 1, 0)
        multi = client.admin.command(
            {
                "bulkWrite": 1,
                "ops": [{"delete": 0, "filter": {}, "multi": True}],
                "nsInfo": [{"ns": ns}],
                "txnNumber": Int64(2),
            },
            session=session,
        )
    assert [(e["idx"], e["code"]) for e in multi["cursor"]["firstBatch"]] == [(0, 72)]
    assert list(client[db_name].c.find()) == [{"_id": 1, "n": 1}]


def test_results_beyond_the_first_batch_come_by_get_more(client: Client, db_name: str) -> None:
    """With cursor.batchSize the remaining entries wait in a cursor on admin.$cmd.bulkWrite."""
    reply = client.admin.command(
        {
            "bulkWrite": 1,
            "ops": [{"insert": 0, "document": {"_id": i}} for i in range(5)],
            "nsInfo": [{"ns": f"{db_name}.c"}],
            "cursor": {"batchSize": 2},
        }
    )
    cursor = reply["cursor"]
    assert [entry["idx"] for entry in cursor["firstBatch"]] == [0, 1]
    assert cursor["id"] != 0
    more = client.admin.command({"getMore": cursor["id"], "collection": "$cmd.bulkWrite"})
    assert [entry["idx"] for entry in more["cursor"]["nextBatch"]] == [2, 3, 4]
    assert more["cursor"]["id"] == 0


class _CommandNames(monitoring.CommandListener):
    """Records the name and collection of every command a client starts."""

    def __init__(self) -> None:
        self.started_commands: list[tuple[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.started_commands.append((event.command_name, event.command.get("collection")))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_replies_larger_than_a_message_reach_the_driver(mongo_uri: str, db_name: str) -> None:
    """Error entries adding up to more than 16 MiB: PyMongo reads the rest with a getMore on
    admin.$cmd.bulkWrite."""
    listener = _CommandNames()
    with Client(mongo_uri, event_listeners=[listener]) as client:
        ns = f"{db_name}.c"
        ids = [f"{i:04d}" + "k" * 20_000 for i in range(450)]
        client[db_name].c.insert_many([{"_id": key} for key in ids])
        with pytest.raises(ClientBulkWriteException) as caught:
            client.bulk_write([InsertOne({"_id": key}, namespace=ns) for key in ids], ordered=False)
    errors = _write_errors(caught.value)
    assert [e["idx"] for e in errors] == list(range(450))
    assert all(e["code"] == 11000 for e in errors)
    assert ("getMore", "$cmd.bulkWrite") in listener.started_commands


async def test_large_verbose_bulk_write_through_the_async_client(
    async_client: AsyncMongoClient[Doc], db_name: str
) -> None:
    """20,000 operations with verbose results, through AsyncMongoClient.bulk_write."""
    ns = f"{db_name}.big"
    ops: list[Any] = [InsertOne({"_id": i, "v": 0}, namespace=ns) for i in range(10_000)]
    ops += [UpdateOne({"_id": i}, {"$set": {"v": 1}}, namespace=ns) for i in range(10_000)]
    result = await async_client.bulk_write(ops, verbose_results=True)
    assert (result.inserted_count, result.modified_count) == (10_000, 10_000)
    assert len(result.insert_results) == 10_000 and len(result.update_results) == 10_000
    assert result.update_results[19_999].modified_count == 1
    assert await async_client[db_name].big.count_documents({"v": 1}) == 10_000


# A valid first operation: a malformed one after it must still stop the whole command.
_GOOD = {"insert": 0, "document": {"_id": "good"}}
_NS = [{"ns": "bulk_malformed.c"}]


@pytest.mark.parametrize(
    ("command", "code"),
    [
        pytest.param({"ops": [_GOOD, {"insert": 1, "document": {}}], "nsInfo": _NS}, 2, id="index"),
        pytest.param(
            {"ops": [_GOOD, {"insert": -1, "document": {}}], "nsInfo": _NS}, 2, id="negative"
        ),
        pytest.param(
            {"ops": [_GOOD, {"insert": "0", "document": {}}], "nsInfo": _NS}, 14, id="index-type"
        ),
        pytest.param(
            {"ops": [_GOOD, {"upsert": 0, "document": {}}], "nsInfo": _NS}, 40415, id="unknown-op"
        ),
        pytest.param(
            {"ops": [_GOOD, {"delete": 0, "filter": {}, "limit": 1}], "nsInfo": _NS},
            40415,
            id="unknown-op-field",
        ),
        pytest.param({"ops": [_GOOD, {"insert": 0}], "nsInfo": _NS}, 40414, id="no-document"),
        pytest.param(
            {"ops": [_GOOD, {"update": 0, "filter": {}}], "nsInfo": _NS}, 40414, id="no-mods"
        ),
        pytest.param(
            {"ops": [_GOOD, {"insert": 0, "document": 1}], "nsInfo": _NS}, 14, id="document-type"
        ),
        pytest.param({"ops": [_GOOD]}, 40414, id="no-ns-info"),
        pytest.param({"nsInfo": _NS}, 40414, id="no-ops"),
        pytest.param({"ops": [], "nsInfo": _NS}, 16, id="no-operations"),
        pytest.param({"ops": [_GOOD], "nsInfo": [{"ns": "nodot"}]}, 73, id="bad-namespace"),
        pytest.param({"ops": [_GOOD], "nsInfo": _NS, "fooField": 0}, 40415, id="unknown-option"),
    ],
)
def test_malformed_requests_fail_before_writing(
    client: Client, command: dict[str, Any], code: int
) -> None:
    """A malformed bulkWrite fails as a whole, with mongod's code, and writes nothing."""
    with pytest.raises(OperationFailure) as caught:
        client.admin.command({"bulkWrite": 1, **command})
    assert caught.value.code == code
    assert client.bulk_malformed.c.count_documents({}) == 0


def test_bulk_write_runs_only_against_admin(client: Client, db_name: str) -> None:
    """bulkWrite on another database is refused with Unauthorized (13), as mongod does."""
    with pytest.raises(OperationFailure) as caught:
        client[db_name].command(
            {"bulkWrite": 1, "ops": [{"insert": 0, "document": {}}], "nsInfo": [{"ns": "d.c"}]}
        )
    assert caught.value.code == 13


def _assert_presents(client: Client, wire_version: int, release: str) -> None:
    """The server says it is MongoDB `release` (".0" its patch) everywhere a client looks."""
    assert client.admin.command("hello")["maxWireVersion"] == wire_version
    info = client.admin.command("buildInfo")
    version_array = [*(int(part) for part in release.split(".")), 0, 0]
    assert (info["version"], info["versionArray"]) == (f"{release}.0", version_array)
    assert client.admin.command("serverStatus")["version"] == f"{release}.0"
    fcv = client.admin.command("getParameter", 1, featureCompatibilityVersion=1)
    assert fcv["featureCompatibilityVersion"] == {"version": release}


def test_mongodb_7_mode_has_no_bulk_write(devserver_factory: Any, db_name: str) -> None:
    """mongodb_version="7.0": wire version 21, version 7.0.0 and FCV 7.0; bulkWrite is an unknown
    command (59), and PyMongo refuses client bulk_write before sending it."""
    server = devserver_factory(mongodb_version="7.0")
    with Client(server.uri, serverSelectionTimeoutMS=10_000) as client:
        _assert_presents(client, 21, "7.0")
        with pytest.raises(OperationFailure) as caught:
            client.admin.command(
                {
                    "bulkWrite": 1,
                    "ops": [{"insert": 0, "document": {}}],
                    "nsInfo": [{"ns": f"{db_name}.c"}],
                }
            )
        assert caught.value.code == 59
        assert caught.value.details is not None
        assert caught.value.details["codeName"] == "CommandNotFound"
        with pytest.raises(InvalidOperation, match="8.0"):
            client.bulk_write([InsertOne({}, namespace=f"{db_name}.c")])
        assert client[db_name].c.count_documents({}) == 0


def test_mongodb_6_mode_lacks_the_later_stream_features(
    devserver_factory: Any, db_name: str
) -> None:
    """mongodb_version="6.0": wire version 17, version 6.0.0 and FCV 6.0, no bulkWrite; a
    change stream refuses $changeStreamSplitLargeEvent (6.0.9) as an unknown stage, and an
    update of a dotted field name has no `disambiguatedPaths` (6.1) even with expanded events,
    where 7.0 says which path holds the dotted name."""
    server = devserver_factory(mongodb_version="6.0")
    with Client(server.uri, serverSelectionTimeoutMS=10_000) as client:
        _assert_presents(client, 17, "6.0")
        with pytest.raises(OperationFailure) as caught:
            client.admin.command({"bulkWrite": 1, "ops": [], "nsInfo": [{"ns": f"{db_name}.c"}]})
        assert caught.value.code == 59
        with pytest.raises(OperationFailure) as refused:
            client[db_name].c.watch([{"$changeStreamSplitLargeEvent": {}}])
        assert refused.value.code == 40324
        assert "$changeStreamSplitLargeEvent" in str(refused.value)
    event = _dotted_field_update(server.uri, db_name)
    assert event["operationType"] == "update"
    assert event["updateDescription"]["updatedFields"] == {"a.b": 2}
    assert "disambiguatedPaths" not in event["updateDescription"]
    later = devserver_factory(mongodb_version="7.0")
    event = _dotted_field_update(later.uri, db_name)
    assert event["updateDescription"]["disambiguatedPaths"] == {"a.b": ["a.b"]}


def _dotted_field_update(uri: str, db_name: str) -> dict[str, Any]:
    """The event of a pipeline update of a top-level field named "a.b", seen with expanded
    events (the document is padded so that the update is logged as a delta)."""
    with Client(uri, serverSelectionTimeoutMS=10_000) as client:
        coll = client[db_name].c
        coll.insert_one({"_id": 1, "a.b": 1, "pad": "x" * 200})
        with coll.watch(show_expanded_events=True, max_await_time_ms=200) as stream:
            set_dotted = {"$setField": {"field": "a.b", "input": "$$ROOT", "value": 2}}
            coll.update_one({"_id": 1}, [{"$replaceWith": set_dotted}])
            event: dict[str, Any] = stream.next()
    return event


def test_mongodb_8_mode_is_the_default(devserver_factory: Any) -> None:
    """A server started without mongodb_version is MongoDB 8.0 (wire 25, 8.0.0, FCV 8.0)."""
    server = devserver_factory()
    with Client(server.uri, serverSelectionTimeoutMS=10_000) as client:
        _assert_presents(client, 25, "8.0")


def test_mongodb_version_survives_restart(devserver_factory: Any) -> None:
    """ServerThread.restart() keeps the version the server was started with."""
    server = devserver_factory(mongodb_version="7.0")
    server.restart()
    with Client(server.uri, serverSelectionTimeoutMS=10_000) as client:
        assert client.admin.command("hello")["maxWireVersion"] == 21


def test_unknown_mongodb_version_is_refused() -> None:
    """DevServer and the CLI refuse a version they cannot present, naming the choices."""
    with pytest.raises(ValueError, match="6.0 or 7.0 or 8.0"):
        DevServer(mongodb_version="5.0")
    result = CliRunner().invoke(devserver_command, ["--mongodb-version", "5.0", "--port", "0"])
    assert result.exit_code == 2
    assert "--mongodb-version" in result.output
    help_text = CliRunner().invoke(devserver_command, ["--help"]).output
    assert "--mongodb-version" in help_text and "8.0" in help_text
