"""Change streams over the wire with plain PyMongo (the development server, or MONGODB_URI)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import bson
import pytest
from bson import Int64, Timestamp
from pymongo import AsyncMongoClient, MongoClient, ReplaceOne
from pymongo.change_stream import ChangeStream
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure

from tests.change_events import next_event

Doc = dict[str, Any]


def events(stream: ChangeStream[Doc], count: int, timeout: float = 10) -> list[Doc]:
    return [next_event(stream, timeout) for _ in range(count)]


@pytest.fixture
def db(client: MongoClient[Doc], db_name: str) -> Iterator[Database[Doc]]:
    database = client[db_name]
    try:
        yield database
    finally:
        client.drop_database(db_name)


@pytest.fixture
def coll(db: Database[Doc]) -> Collection[Doc]:
    db.create_collection("items")
    return db["items"]


def test_collection_stream_document_events(coll: Collection[Doc]) -> None:
    """insert, update, replace and delete arrive in order with MongoDB's fields."""
    with coll.watch(max_await_time_ms=100) as stream:
        coll.insert_one({"_id": 1, "a": 1, "tags": ["x"]})
        coll.update_one({"_id": 1}, {"$set": {"a": 2}, "$push": {"tags": "y"}})
        coll.replace_one({"_id": 1}, {"b": 1})
        coll.delete_one({"_id": 1})
        insert, update, replace, delete = events(stream, 4)
    assert [e["operationType"] for e in (insert, update, replace, delete)] == [
        "insert",
        "update",
        "replace",
        "delete",
    ]
    assert insert["fullDocument"] == {"_id": 1, "a": 1, "tags": ["x"]}
    assert insert["ns"] == {"db": coll.database.name, "coll": coll.name}
    assert insert["documentKey"] == {"_id": 1}
    assert isinstance(insert["clusterTime"], Timestamp)
    assert "wallTime" in insert and "lsid" not in insert
    assert update["updateDescription"] == {
        "updatedFields": {"a": 2, "tags.1": "y"},
        "removedFields": [],
        "truncatedArrays": [],
    }
    assert "fullDocument" not in update
    assert replace["fullDocument"] == {"_id": 1, "b": 1}
    assert delete["documentKey"] == {"_id": 1}


def test_update_descriptions_over_the_wire(coll: Collection[Doc]) -> None:
    """$unset, $inc, $rename and nested $set produce MongoDB's updateDescription."""
    coll.insert_one({"_id": 1, "a": {"b": 1}, "n": 1, "old": 1, "gone": 1})
    with coll.watch(max_await_time_ms=100) as stream:
        coll.update_one({"_id": 1}, {"$set": {"a.b": 2}, "$inc": {"n": 1}, "$unset": {"gone": ""}})
        coll.update_one({"_id": 1}, {"$rename": {"old": "new"}})
        first, second = events(stream, 2)
    assert first["updateDescription"]["updatedFields"] == {"a.b": 2, "n": 2}
    assert first["updateDescription"]["removedFields"] == ["gone"]
    assert second["updateDescription"]["updatedFields"] == {"new": 1}
    assert second["updateDescription"]["removedFields"] == ["old"]


def test_pipeline_update_truncates_array(coll: Collection[Doc]) -> None:
    """A pipeline update that shortens an array reports truncatedArrays."""
    coll.insert_one({"_id": 1, "arr": [1, 2, 3, 4], "pad": "p" * 500})
    with coll.watch(max_await_time_ms=100) as stream:
        coll.update_one({"_id": 1}, [{"$set": {"arr": {"$slice": ["$arr", 2]}}}])
        event = next_event(stream)
    assert event["operationType"] == "update"
    assert event["updateDescription"]["truncatedArrays"] == [{"field": "arr", "newSize": 2}]
    assert event["updateDescription"]["updatedFields"] == {}


def test_expanded_events_show_collection_and_index_changes(db: Database[Doc]) -> None:
    """With showExpandedEvents a stream shows create, createIndexes and dropIndexes events
    with their operationDescription (MongoDB 6.0); other streams never see them."""
    with (
        db.watch(max_await_time_ms=100, show_expanded_events=True) as expanded,
        db.watch(max_await_time_ms=100) as plain,
    ):
        db.create_collection("made", validator={"a": {"$exists": True}})
        db.fresh.create_index("email", unique=True)  # creates the collection too
        db.fresh.insert_one({"_id": 1, "email": "a@x"})
        db.fresh.drop_index("email_1")
        shown = events(expanded, 5)
        plain_events = events(plain, 1)
    assert [(e["operationType"], e["ns"]["coll"]) for e in shown] == [
        ("create", "made"),
        ("create", "fresh"),
        ("createIndexes", "fresh"),
        ("insert", "fresh"),
        ("dropIndexes", "fresh"),
    ]
    id_index = {"v": 2, "key": {"_id": 1}, "name": "_id_"}
    assert shown[0]["operationDescription"] == {
        "idIndex": id_index,
        "validator": {"a": {"$exists": True}},
    }
    assert shown[1]["operationDescription"] == {"idIndex": id_index}
    email = {"v": 2, "key": {"email": 1}, "name": "email_1", "unique": True}
    assert shown[2]["operationDescription"] == {"indexes": [email]}
    assert shown[4]["operationDescription"] == {"indexes": [email]}
    assert [e["operationType"] for e in plain_events] == ["insert"]
    # A stream resumes after such an event like after any other.
    with db.watch(
        max_await_time_ms=100, show_expanded_events=True, resume_after=shown[2]["_id"]
    ) as resumed:
        assert [e["operationType"] for e in events(resumed, 2)] == ["insert", "dropIndexes"]


def test_expanded_events_show_a_collmod_as_modify(db: Database[Doc]) -> None:
    """A collMod is a `modify` event with expanded events (MongoDB 6.0): what it changed as
    its operationDescription, the collection's options before (with its UUID) as
    `stateBeforeChange.collectionOptions`; documents around it stream as usual, and streams
    without expanded events never see it."""
    validator = {"a": {"$exists": True}}
    db.create_collection("kept", validator=validator)
    [info] = db.list_collections(filter={"name": "kept"})
    with (
        db.watch(max_await_time_ms=100, show_expanded_events=True) as expanded,
        db.watch(max_await_time_ms=100) as plain,
    ):
        db.command("collMod", "kept", changeStreamPreAndPostImages={"enabled": True})
        db.command("collMod", "kept", validator={}, validationLevel="off")
        db.kept.insert_one({"_id": 1})
        shown = events(expanded, 3)
        plain_events = events(plain, 1)
    assert [e["operationType"] for e in shown] == ["modify", "modify", "insert"]
    first, second = shown[0], shown[1]
    assert first["ns"] == {"db": db.name, "coll": "kept"}
    assert first["collectionUUID"] == info["info"]["uuid"]
    assert first["operationDescription"] == {"changeStreamPreAndPostImages": {"enabled": True}}
    assert first["stateBeforeChange"] == {
        "collectionOptions": {"uuid": info["info"]["uuid"], "validator": validator}
    }
    assert second["operationDescription"] == {"validator": {}, "validationLevel": "off"}
    assert second["stateBeforeChange"]["collectionOptions"] == {
        "uuid": info["info"]["uuid"],
        "validator": validator,
        "changeStreamPreAndPostImages": {"enabled": True},
    }
    assert "documentKey" not in first and first["clusterTime"] < second["clusterTime"]
    assert [e["operationType"] for e in plain_events] == ["insert"]
    with db.watch(
        max_await_time_ms=100, show_expanded_events=True, resume_after=first["_id"]
    ) as resumed:
        assert [e["operationType"] for e in events(resumed, 2)] == ["modify", "insert"]


def test_a_collmod_of_an_index_is_a_modify_with_its_index_options(db: Database[Doc]) -> None:
    """collMod's `index` hides an index or changes a TTL index's expiry: the reply says the
    value before and after, listIndexes shows it, and the `modify` event names the index
    with what changed (`stateBeforeChange.indexOptions` holding the values before)."""
    db.create_collection("indexed")
    db.indexed.create_index("email")
    db.indexed.create_index("seen", expireAfterSeconds=60)
    with db.watch(max_await_time_ms=100, show_expanded_events=True) as expanded:
        hidden = db.command("collMod", "indexed", index={"name": "email_1", "hidden": True})
        expiry = db.command(
            "collMod", "indexed", index={"keyPattern": {"seen": 1}, "expireAfterSeconds": 90}
        )
        shown = events(expanded, 2)
    assert (hidden["hidden_old"], hidden["hidden_new"]) == (False, True)
    assert (expiry["expireAfterSeconds_old"], expiry["expireAfterSeconds_new"]) == (60, 90)
    listed = {i["name"]: i for i in db.indexed.list_indexes()}
    assert listed["email_1"]["hidden"] is True and listed["seen_1"]["expireAfterSeconds"] == 90
    assert [e["operationType"] for e in shown] == ["modify", "modify"]
    assert shown[0]["operationDescription"] == {"index": {"name": "email_1", "hidden": True}}
    assert shown[0]["stateBeforeChange"]["indexOptions"] == {"hidden": False}
    assert shown[1]["operationDescription"] == {
        "index": {"name": "seen_1", "expireAfterSeconds": 90}
    }
    assert shown[1]["stateBeforeChange"]["indexOptions"] == {"expireAfterSeconds": 60}
    with pytest.raises(OperationFailure) as missing:
        db.command("collMod", "indexed", index={"name": "nope_1", "hidden": True})
    assert missing.value.code == 27
    with pytest.raises(OperationFailure) as not_ttl:
        db.command("collMod", "indexed", index={"name": "email_1", "expireAfterSeconds": 5})
    assert not_ttl.value.code == 72


def test_expanded_events_name_the_collection_by_its_uuid(db: Database[Doc]) -> None:
    """With showExpandedEvents every event on a collection carries its `collectionUUID` (the
    UUID listCollections reports, the oplog's `ui`), a drop's the dropped collection's, and a
    collection an insert makes again under the same name a new one, with a `create` event of
    its own first; other streams never see the field, and a database's drop names no
    collection."""

    def uuid_of(name: str) -> Any:
        [info] = db.list_collections(filter={"name": name})
        return info["info"]["uuid"]

    db.create_collection("named")
    first = uuid_of("named")
    with (
        db.watch(max_await_time_ms=100, show_expanded_events=True) as expanded,
        db.watch(max_await_time_ms=100) as plain,
    ):
        db.named.insert_one({"_id": 1})
        db.named.update_one({"_id": 1}, {"$set": {"a": 1}})
        db.named.create_index("a")
        db.named.delete_one({"_id": 1})
        db.named.drop()
        db.named.insert_one({"_id": 2})  # creates a new collection of the same name
        second = uuid_of("named")
        db.named.rename("renamed")
        shown = events(expanded, 8)
        plain_events = events(plain, 5)
    by_kind = [(e["operationType"], e.get("collectionUUID")) for e in shown]
    assert first != second
    assert by_kind == [
        ("insert", first),
        ("update", first),
        ("createIndexes", first),
        ("delete", first),
        ("drop", first),
        ("create", second),
        ("insert", second),
        ("rename", second),
    ]
    # The field comes after wallTime, as mongod places it.
    assert list(shown[0])[:5] == [
        "_id",
        "operationType",
        "clusterTime",
        "wallTime",
        "collectionUUID",
    ]
    assert all("collectionUUID" not in e for e in plain_events)
    with db.watch(max_await_time_ms=100, show_expanded_events=True) as expanded:
        db.client.drop_database(db.name)
        dropped = events(expanded, 2)
    assert [(e["operationType"], "collectionUUID" in e) for e in dropped] == [
        ("drop", True),
        ("dropDatabase", False),
    ]


def test_a_collection_a_transaction_creates_streams_its_create_in_the_transaction(
    db: Database[Doc],
) -> None:
    """An insert in a transaction into a collection that does not exist creates it inside the
    transaction: with expanded events, its `create` comes before the first write, with the
    transaction's cluster time, session and number, and every event names the new
    collection's UUID. An aborted transaction creates nothing."""
    client = db.client
    with db.watch(max_await_time_ms=100, show_expanded_events=True) as expanded:
        with client.start_session() as session:
            with session.start_transaction():
                db.existing.insert_one({"_id": 0})  # outside: created before the transaction
                db.fresh.insert_one({"_id": 1}, session=session)
                db.fresh.insert_one({"_id": 2}, session=session)
            with session.start_transaction():
                db.never.insert_one({"_id": 1}, session=session)
                session.abort_transaction()
        db.after.insert_one({"_id": 9})
        shown = events(expanded, 6)
    [info] = db.list_collections(filter={"name": "fresh"})
    fresh = [e for e in shown if e["ns"].get("coll") == "fresh"]
    assert [(e["operationType"], e.get("documentKey")) for e in fresh] == [
        ("create", None),
        ("insert", {"_id": 1}),
        ("insert", {"_id": 2}),
    ]
    assert fresh[0]["operationDescription"]["idIndex"]["key"] == {"_id": 1}
    assert len({e["clusterTime"] for e in fresh}) == 1
    assert all(e["txnNumber"] == fresh[1]["txnNumber"] and "lsid" in e for e in fresh)
    assert all(e["collectionUUID"] == info["info"]["uuid"] for e in fresh)
    assert not [e for e in shown if e["ns"].get("coll") == "never"]
    assert "never" not in db.list_collection_names()
    assert [e["ns"]["coll"] for e in shown if e["operationType"] == "create"] == [
        "existing",
        "fresh",
        "after",
    ]


def test_expanded_events_disambiguate_dotted_and_numeric_names(coll: Collection[Doc]) -> None:
    """With showExpandedEvents (MongoDB 6.1) each update event has `disambiguatedPaths`: the
    components of every path holding a field name with a `.` or a numeric field name (array
    indexes as ints), and an empty document when no path does; without it, no such field."""
    large = "*" * 128
    coll.insert_one(
        {
            "_id": 1,
            "top": [{"sub": [0, 1, large]}],
            "numeric": {"0": {"1": "n", "pad": large}},
            "arr": [[{"0": "n", "pad": large}]],
            "obj": {"sub.obj": {"b.c": 1, "pad": large}, "pad": large},
        }
    )
    with (
        coll.watch(max_await_time_ms=100, show_expanded_events=True) as expanded,
        coll.watch(max_await_time_ms=100) as plain,
    ):
        coll.update_one({"_id": 1}, {"$set": {"a": 2, "top.0.sub.1": 3}})
        coll.update_one({"_id": 1}, {"$set": {"numeric.0.1": "m"}})
        coll.update_one({"_id": 1}, {"$set": {"arr.0.0.0": "m"}})
        coll.update_one(
            {"_id": 1},
            [{"$set": {"obj": {"$literal": {"sub.obj": {"b.c": 2, "pad": large}, "pad": large}}}}],
        )
        described = [e["updateDescription"] for e in events(expanded, 4)]
        unexpanded = [e["updateDescription"] for e in events(plain, 4)]
    assert [d["disambiguatedPaths"] for d in described] == [
        {},
        {"numeric.0.1": ["numeric", "0", "1"]},
        {"arr.0.0.0": ["arr", 0, 0, "0"]},
        {"obj.sub.obj.b.c": ["obj", "sub.obj", "b.c"]},
    ]
    assert described[3]["updatedFields"] == {"obj.sub.obj.b.c": 2}
    assert all("disambiguatedPaths" not in d for d in unexpanded)


def test_no_op_update_has_no_event(coll: Collection[Doc]) -> None:
    """An update that changes nothing produces no change event."""
    coll.insert_one({"_id": 1, "a": 1})
    with coll.watch(max_await_time_ms=100) as stream:
        coll.update_one({"_id": 1}, {"$set": {"a": 1}})
        coll.insert_one({"_id": 2})
        event = next_event(stream)
    assert event["operationType"] == "insert" and event["documentKey"] == {"_id": 2}


def test_database_and_cluster_streams(client: MongoClient[Doc], db: Database[Doc]) -> None:
    """db.watch() sees every collection of the database; client.watch() sees all databases."""
    with (
        db.watch(max_await_time_ms=100) as db_stream,
        client.watch([{"$match": {"ns.db": db.name}}], max_await_time_ms=100) as cluster_stream,
    ):
        db["one"].insert_one({"_id": 1})
        db["two"].insert_one({"_id": 2})
        seen = [e["ns"]["coll"] for e in events(db_stream, 2)]
        everywhere = [e["ns"]["coll"] for e in events(cluster_stream, 2)]
    assert seen == ["one", "two"]
    assert everywhere == ["one", "two"]


def test_match_on_namespace(db: Database[Doc]) -> None:
    """A $match on ns.coll with $in keeps only the named collections."""
    pipeline = [{"$match": {"ns.coll": {"$in": ["keep", "also"]}}}]
    with db.watch(pipeline, max_await_time_ms=100) as stream:
        for name in ("skip", "keep", "other", "also"):
            db[name].insert_one({"_id": name})
        names = [e["ns"]["coll"] for e in events(stream, 2)]
    assert names == ["keep", "also"]


def test_resume_after_and_post_batch_token(coll: Collection[Doc]) -> None:
    """resume_after an event continues after it; the stream's resume token moves on."""
    with coll.watch(max_await_time_ms=100) as stream:
        for i in range(3):
            coll.insert_one({"_id": i})
        first = next_event(stream)
    with coll.watch(resume_after=first["_id"], max_await_time_ms=100) as resumed:
        rest = [e["documentKey"]["_id"] for e in events(resumed, 2)]
        assert resumed.try_next() is None
        token = resumed.resume_token
    assert rest == [1, 2]
    coll.insert_one({"_id": 3})
    with coll.watch(resume_after=token, max_await_time_ms=100) as later:
        assert next_event(later)["documentKey"] == {"_id": 3}


def test_start_at_operation_time(client: MongoClient[Doc], coll: Collection[Doc]) -> None:
    """start_at_operation_time includes the write made at that time."""
    coll.insert_one({"_id": 0})
    with client.start_session() as session:
        coll.insert_one({"_id": 1}, session=session)
        start = session.operation_time
    coll.insert_one({"_id": 2})
    assert start is not None
    with coll.watch(start_at_operation_time=start, max_await_time_ms=100) as stream:
        assert [e["documentKey"]["_id"] for e in events(stream, 2)] == [1, 2]


@pytest.mark.parametrize(
    "rename", [pytest.param(False, id="drop"), pytest.param(True, id="rename")]
)
def test_invalidate_and_start_after(db: Database[Doc], rename: bool) -> None:
    """Drop/rename invalidates a collection stream; startAfter works, resumeAfter gets 260."""
    db.create_collection("victim")
    victim = db["victim"]
    with victim.watch(max_await_time_ms=100) as stream:
        victim.insert_one({"_id": 1})
        if rename:
            victim.rename("renamed")
        else:
            victim.drop()
        kinds = events(stream, 3)
        assert [e["operationType"] for e in kinds] == [
            "insert",
            "rename" if rename else "drop",
            "invalidate",
        ]
        assert not stream.alive
    invalidate = kinds[-1]
    if rename:
        assert kinds[1]["to"] == {"db": db.name, "coll": "renamed"}
    with pytest.raises(OperationFailure) as caught:
        victim.watch(resume_after=invalidate["_id"])
    assert caught.value.code == 260
    with victim.watch(start_after=invalidate["_id"], max_await_time_ms=100) as after:
        victim.insert_one({"_id": 2})
        assert next_event(after)["documentKey"] == {"_id": 2}


def test_drop_database_invalidates_database_stream(client: MongoClient[Doc], db_name: str) -> None:
    """A database stream sees drop events, then dropDatabase and invalidate."""
    db = client[db_name]
    db["a"].insert_one({"_id": 1})
    with db.watch(max_await_time_ms=100) as stream:
        client.drop_database(db_name)
        kinds = [e["operationType"] for e in events(stream, 3)]
    assert kinds == ["drop", "dropDatabase", "invalidate"]


def test_full_document_update_lookup(coll: Collection[Doc]) -> None:
    """fullDocument=updateLookup carries the current document on update events."""
    coll.insert_one({"_id": 1, "a": 1})
    with coll.watch(full_document="updateLookup", max_await_time_ms=100) as stream:
        coll.update_one({"_id": 1}, {"$set": {"a": 2}})
        assert next_event(stream)["fullDocument"] == {"_id": 1, "a": 2}


def test_pre_and_post_images(db: Database[Doc]) -> None:
    """With collMod changeStreamPreAndPostImages, required images are present."""
    db.create_collection("imaged")
    db.command("collMod", "imaged", changeStreamPreAndPostImages={"enabled": True})
    imaged = db["imaged"]
    imaged.insert_one({"_id": 1, "a": 1})
    with imaged.watch(
        full_document="required", full_document_before_change="required", max_await_time_ms=100
    ) as stream:
        imaged.update_one({"_id": 1}, {"$set": {"a": 2}})
        imaged.delete_one({"_id": 1})
        update, delete = events(stream, 2)
    assert update["fullDocument"] == {"_id": 1, "a": 2}
    assert update["fullDocumentBeforeChange"] == {"_id": 1, "a": 1}
    assert delete["fullDocumentBeforeChange"] == {"_id": 1, "a": 2}


def test_images_required_without_collmod_fails(coll: Collection[Doc]) -> None:
    """fullDocumentBeforeChange=required without pre-images fails the read (47)."""
    coll.insert_one({"_id": 1, "a": 1})
    with coll.watch(full_document_before_change="required", max_await_time_ms=100) as stream:
        coll.update_one({"_id": 1}, {"$set": {"a": 2}})
        with pytest.raises(OperationFailure) as caught:
            next_event(stream)
    assert caught.value.code == 47


def test_transaction_events_only_at_commit(client: MongoClient[Doc], coll: Collection[Doc]) -> None:
    """Writes in a transaction appear at commit, all at once, with lsid and txnNumber."""
    with coll.watch(max_await_time_ms=100) as stream:
        with client.start_session() as session:
            with session.start_transaction():
                coll.insert_one({"_id": 1}, session=session)
                coll.insert_one({"_id": 2}, session=session)
                assert stream.try_next() is None
            lsid = session.session_id
            with session.start_transaction():
                coll.insert_one({"_id": 3}, session=session)
                session.abort_transaction()
        coll.insert_one({"_id": 4})
        first, second, plain = events(stream, 3)
    assert [first["documentKey"], second["documentKey"]] == [{"_id": 1}, {"_id": 2}]
    assert first["clusterTime"] == second["clusterTime"]
    assert first["lsid"]["id"] == lsid["id"]
    assert isinstance(first["txnNumber"], Int64)
    assert first["txnNumber"] == second["txnNumber"]
    assert plain["documentKey"] == {"_id": 4} and "lsid" not in plain


def test_split_large_event(db: Database[Doc]) -> None:
    """$changeStreamSplitLargeEvent splits an event over 16 MiB into fragments that add up."""
    db.create_collection("large")
    db.command("collMod", "large", changeStreamPreAndPostImages={"enabled": True})
    large = db["large"]
    big = "x" * (6 * 1024 * 1024)
    large.insert_one({"_id": 1, "a": big})
    with large.watch(
        [{"$changeStreamSplitLargeEvent": {}}],
        full_document="required",
        full_document_before_change="required",
        max_await_time_ms=100,
    ) as stream:
        large.update_one({"_id": 1}, {"$set": {"b": big}})
        first = next_event(stream)
        fragments = [first] + events(stream, first["splitEvent"]["of"] - 1)
    assert [f["splitEvent"]["fragment"] for f in fragments] == list(range(1, len(fragments) + 1))
    merged: Doc = {}
    for fragment in fragments:
        merged.update(fragment)
    assert merged["operationType"] == "update"
    assert merged["fullDocument"] == {"_id": 1, "a": big, "b": big}
    assert merged["fullDocumentBeforeChange"] == {"_id": 1, "a": big}
    assert merged["updateDescription"]["updatedFields"] == {"b": big}


def test_pipeline_modifying_id_fails(coll: Collection[Doc]) -> None:
    """A stage that changes the resume token fails with ChangeStreamFatalError (280)."""
    with coll.watch([{"$project": {"_id": 0}}], max_await_time_ms=100) as stream:
        coll.insert_one({"_id": 1})
        with pytest.raises(OperationFailure) as caught:
            next_event(stream)
    assert caught.value.code == 280


def test_get_more_waits_and_does_not_block_others(mongo_uri: str, coll: Collection[Doc]) -> None:
    """A getMore waiting 5 s neither blocks another client's write nor misses it."""
    received: list[Doc] = []
    waiting = threading.Event()

    def watch() -> None:
        with (
            MongoClient(mongo_uri) as own,
            own[coll.database.name][coll.name].watch(max_await_time_ms=5_000) as stream,
        ):
            waiting.set()
            received.append(stream.next())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert waiting.wait(10)
        started = time.monotonic()
        coll.insert_one({"_id": "while-waiting"})
        # A server that blocked behind the waiting getMore would take its full 5 s.
        assert time.monotonic() - started < 4
    finally:
        watcher.join(20)
    assert not watcher.is_alive()
    assert received[0]["documentKey"] == {"_id": "while-waiting"}


def test_empty_get_more_honours_max_await(coll: Collection[Doc]) -> None:
    """With nothing to report, a getMore returns after about maxAwaitTimeMS, empty."""
    with coll.watch(max_await_time_ms=300) as stream:
        started = time.monotonic()
        assert stream.try_next() is None
        assert time.monotonic() - started >= 0.25


async def test_async_client_watch(mongo_uri: str, db_name: str) -> None:
    """AsyncMongoClient's watch() delivers the same events."""
    client: AsyncMongoClient[Doc] = AsyncMongoClient(mongo_uri)
    try:
        coll = client[db_name]["async_items"]
        await coll.insert_one({"_id": 0})
        async with await coll.watch(max_await_time_ms=100) as stream:
            await coll.insert_one({"_id": 1})
            deadline = time.monotonic() + 10
            event = None
            while event is None and time.monotonic() < deadline:
                event = await stream.try_next()
        assert event is not None and event["documentKey"] == {"_id": 1}
    finally:
        await client.drop_database(db_name)
        await client.close()


def test_history_lost(devserver_factory: Any) -> None:
    """Resuming from a point that fell off a small history fails with 286."""
    server = devserver_factory(oplog_size_mb=0.02)
    with MongoClient(server.uri) as client:
        coll = client["lost"]["items"]
        with coll.watch(max_await_time_ms=100) as stream:
            coll.insert_one({"_id": 0})
            first = next_event(stream)
            idle = coll.watch(max_await_time_ms=100)
            coll.insert_many([{"_id": i, "pad": "x" * 1000} for i in range(1, 60)])
        with pytest.raises(OperationFailure) as caught:
            coll.watch(resume_after=first["_id"])
        assert caught.value.code == 286
        assert caught.value.details is not None
        assert caught.value.details["codeName"] == "ChangeStreamHistoryLost"
        with pytest.raises(OperationFailure) as later:
            idle.try_next()
        assert later.value.code == 286
        idle.close()


def test_history_sizes_writes_through_the_wire_as_bson_does(devserver_factory: Any) -> None:
    """Entry sizes estimated from the request's bytes (inserts with and without `_id`, upserts,
    replaces, in and out of a transaction) add up to the entries' encoded size."""
    server = devserver_factory()
    with MongoClient(server.uri) as client:
        coll = client["sized"]["items"]
        coll.insert_many([{"_id": i, "name": f"n{i}", "tags": ["a", i]} for i in range(20)])
        coll.insert_many([{"name": "generated", "n": i} for i in range(5)])
        coll.insert_one({"name": "after", "_id": "k\u00e9y"})
        coll.bulk_write(
            [ReplaceOne({"_id": i}, {"v": i, "pad": "x" * i}, upsert=True) for i in range(15, 25)]
        )
        coll.update_one({"_id": 3}, {"$set": {"name": "changed"}})
        with client.start_session() as session, session.start_transaction():
            coll.bulk_write(
                [ReplaceOne({"_id": i}, {"w": i}, upsert=True) for i in range(0, 30, 3)],
                session=session,
            )
            coll.insert_one({"_id": Int64(2**40), "big": True}, session=session)
    history = server.state.history
    entries = history.retained
    # The create of the collection the first insert makes, then the writes.
    assert [entry["op"] for entry in entries[:2]] == ["create", "insert"]
    assert len(entries) == 1 + 20 + 5 + 1 + 10 + 1 + 10 + 1
    assert history.size_bytes == sum(len(bson.encode(entry)) for entry in entries)


def test_history_survives_restart(devserver_factory: Any, tmp_path: Any) -> None:
    """With a dbpath, a resume token taken before a restart resumes after it, nothing lost."""
    server = devserver_factory(dbpath=str(tmp_path))
    with MongoClient(server.uri) as client:
        coll = client["kept"]["items"]
        with coll.watch(max_await_time_ms=100) as stream:
            coll.insert_one({"_id": 1})
            token = next_event(stream)["_id"]
        coll.insert_one({"_id": 2})
    server.restart()
    with MongoClient(server.uri) as client:
        coll = client["kept"]["items"]
        with coll.watch(resume_after=token, max_await_time_ms=100) as resumed:
            coll.insert_one({"_id": 3})
            assert [e["documentKey"]["_id"] for e in events(resumed, 2)] == [2, 3]
