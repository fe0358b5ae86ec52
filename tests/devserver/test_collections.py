"""Collections and indexes: create options, validators, listing, rename, drop, collMod."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure, WriteError

Client = MongoClient[dict[str, Any]]


def test_list_collections_filter_and_name_only(client: Client, db_name: str) -> None:
    """listCollections honours filter and nameOnly and reports options."""
    db = client[db_name]
    db.create_collection("a", changeStreamPreAndPostImages={"enabled": True})
    db.create_collection("b")
    assert sorted(db.list_collection_names()) == ["a", "b"]
    infos = list(db.list_collections(filter={"name": "a"}))
    assert len(infos) == 1
    assert infos[0]["options"] == {"changeStreamPreAndPostImages": {"enabled": True}}
    assert infos[0]["type"] == "collection"


def test_create_existing_collection_is_namespace_exists(client: Client, db_name: str) -> None:
    """Creating a collection that exists is error 48."""
    client[db_name].create_collection("a")
    with pytest.raises(OperationFailure) as caught:
        client[db_name].command("create", "a", capped=False, validator={"x": 1})
    assert caught.value.code == 48


@pytest.mark.parametrize(
    ("set_up", "how"),
    [
        pytest.param("create", "validator given at create", id="create"),
        pytest.param("collMod", "validator added by collMod", id="collMod"),
    ],
)
def test_validator_rejects_violating_writes(
    client: Client, db_name: str, set_up: str, how: str
) -> None:
    """A query-operator validator rejects inserts and updates that violate it with 121."""
    db = client[db_name]
    validator = {"age": {"$type": "int", "$gte": 0}}
    if set_up == "create":
        db.create_collection("people", validator=validator)
    else:
        db.create_collection("people")
        db.command("collMod", "people", validator=validator)
    db.people.insert_one({"_id": 1, "age": 3})
    with pytest.raises(WriteError) as caught:
        db.people.insert_one({"_id": 2, "age": -1})
    assert caught.value.code == 121, how
    with pytest.raises(WriteError) as caught:
        db.people.update_one({"_id": 1}, {"$set": {"age": "old"}})
    assert caught.value.code == 121
    assert db.people.find_one({"_id": 1}) == {"_id": 1, "age": 3}


def test_rename_collection_moves_documents_and_indexes(client: Client, db_name: str) -> None:
    """renameCollection moves documents and indexes; dropTarget replaces an existing target."""
    db = client[db_name]
    db.src.create_index("k", unique=True)
    db.src.insert_many([{"k": 1}, {"k": 2}])
    db.other.insert_one({"x": 1})
    with pytest.raises(OperationFailure) as caught:
        db.src.rename("other")
    assert caught.value.code == 48
    db.src.rename("other", dropTarget=True)
    assert sorted(db.list_collection_names()) == ["other"]
    assert db.other.count_documents({}) == 2
    assert "k_1" in db.other.index_information()


def test_indexes_create_list_drop(client: Client, db_name: str) -> None:
    """createIndexes (incl. compound unique), listIndexes and dropIndexes."""
    coll = client[db_name].c
    name = coll.create_index([("a", 1), ("b", -1)], unique=True)
    assert name == "a_1_b_-1"
    coll.insert_one({"a": 1, "b": 1})
    coll.insert_one({"a": 1, "b": 2})
    with pytest.raises(WriteError) as caught:
        coll.insert_one({"a": 1, "b": 2})
    assert caught.value.code == 11000
    assert caught.value.details is not None
    assert caught.value.details["keyValue"] == {"a": 1, "b": 2}
    assert sorted(coll.index_information()) == ["_id_", "a_1_b_-1"]
    coll.drop_index("a_1_b_-1")
    coll.insert_one({"a": 1, "b": 2})
    with pytest.raises(OperationFailure) as missing:
        coll.drop_index("nope_1")
    assert missing.value.code == 27


def test_unique_index_on_duplicate_data_fails(client: Client, db_name: str) -> None:
    """Building a unique index over existing duplicates is refused with 11000."""
    coll = client[db_name].c
    coll.insert_many([{"k": 1}, {"k": 1}])
    with pytest.raises(OperationFailure) as caught:
        coll.create_index("k", unique=True)
    assert caught.value.code == 11000


def test_drop_and_drop_database(client: Client, db_name: str) -> None:
    """drop removes a collection; dropDatabase removes the database from listDatabases."""
    db = client[db_name]
    db.a.insert_one({})
    db.b.insert_one({})
    db.a.drop()
    assert db.list_collection_names() == ["b"]
    assert db_name in client.list_database_names()
    client.drop_database(db_name)
    assert db_name not in client.list_database_names()


def test_server_information_commands(client: Client) -> None:
    """buildInfo, serverStatus, getParameter answer like an 8.0 server."""
    info = client.admin.command("buildInfo")
    assert info["versionArray"][0] >= 7
    status = client.admin.command("serverStatus")
    assert status["connections"]["current"] >= 1
    params = client.admin.command("getParameter", 1, transactionLifetimeLimitSeconds=1)
    assert params["transactionLifetimeLimitSeconds"] == 60


def test_opcounters_count_operations_by_kind(client: Client, db_name: str) -> None:
    """serverStatus's opcounters: inserts, updates and deletes per statement, finds as
    queries, getMores, and other commands; exact here, at least as many on a shared server."""
    from pymongo import DeleteOne, InsertOne, UpdateOne

    coll = client[db_name].ops
    coll.insert_one({"_id": 0})  # the collection exists before counting

    def counters() -> dict[str, int]:
        return {k: int(v) for k, v in client.admin.command("serverStatus")["opcounters"].items()}

    before = counters()
    coll.insert_many([{"_id": i} for i in range(1, 4)])
    coll.update_many({}, {"$set": {"x": 1}})
    coll.bulk_write([UpdateOne({"_id": 1}, {"$set": {"y": 1}}), DeleteOne({"_id": 2})])
    coll.delete_one({"_id": 3})
    assert len(list(coll.find(batch_size=1))) == 2  # one find, one getMore
    coll.bulk_write([InsertOne({"_id": 9})])
    after = counters()
    # The serverStatus that read `before` is a command too. So is every driver's `hello`
    # heartbeat, from any client of the server: commands are counted at least, never exactly.
    expected = {"insert": 4, "update": 2, "delete": 2, "query": 1, "getmore": 1, "command": 1}
    exact = client.admin.command("serverStatus").get("process") == "devserver"
    for kind, count in expected.items():
        delta = after[kind] - before[kind]
        assert delta == count if exact and kind != "command" else delta >= count, (kind, delta)


def test_validation_action_warn_and_level_off_allow_writes(client: Client, db_name: str) -> None:
    """validationAction "warn" and validationLevel "off" do not reject invalid documents."""
    db = client[db_name]
    db.create_collection("warned", validator={"n": {"$gte": 0}}, validationAction="warn")
    db.warned.insert_one({"n": -1})
    db.create_collection("off", validator={"n": {"$gte": 0}}, validationLevel="off")
    db.off.insert_one({"n": -1})
    assert db.warned.count_documents({}) == 1 and db.off.count_documents({}) == 1


def test_credentials_are_refused_with_a_clear_message(mongo_uri: str) -> None:
    """Authentication attempts fail with 18 and say the server has no authentication."""
    if "@" in mongo_uri:
        pytest.skip("MONGODB_URI carries credentials")
    with MongoClient(
        mongo_uri.replace("mongodb://", "mongodb://user:secret@"), serverSelectionTimeoutMS=5000
    ) as mongo:
        with pytest.raises(OperationFailure) as caught:
            mongo.admin.command("ping")
    assert caught.value.code == 18


@pytest.mark.parametrize(
    ("command", "arguments"),
    [
        pytest.param("count", {"query": 5}, id="count-query-not-object"),
        pytest.param("find", {"filter": "x"}, id="find-filter-not-object"),
        pytest.param("listCollections", {"cursor": 5}, id="cursor-not-object"),
        pytest.param("aggregate", {"pipeline": 5, "cursor": {}}, id="pipeline-not-array"),
        pytest.param("update", {"updates": [{"q": {}, "u": 5}]}, id="update-not-object"),
        pytest.param("delete", {"deletes": [{"q": {}, "limit": 7}]}, id="delete-bad-limit"),
        pytest.param("dropIndexes", {"index": [{}]}, id="index-names-not-strings"),
        pytest.param("distinct", {"key": 5}, id="distinct-key-not-string"),
    ],
)
def test_malformed_arguments_get_error_replies_not_internal_errors(
    client: Client, db_name: str, command: str, arguments: dict[str, Any]
) -> None:
    """Wrongly typed arguments are answered with a specific error, never InternalError."""
    client[db_name].c.insert_one({"_id": 1})
    reply = client[db_name].command(command, "c", check=False, **arguments)
    if reply["ok"] == 1.0:
        errors = reply.get("writeErrors") or []
        assert errors, reply
        assert all(error["code"] != 1 for error in errors)
    else:
        assert reply["code"] != 1, reply
