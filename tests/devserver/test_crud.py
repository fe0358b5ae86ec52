"""Handshake, CRUD and cursors through real PyMongo over a socket."""

from __future__ import annotations

import datetime
from typing import Any

import bson
import pytest
from bson import Decimal128, Int64, MaxKey, MinKey, ObjectId, Timestamp
from bson.binary import Binary
from pymongo import MongoClient, ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure
from pymongo.topology_description import TOPOLOGY_TYPE

from devserver._writes import prepare_insert, stored_size

Client = MongoClient[dict[str, Any]]


def test_driver_sees_a_replica_set_primary(client: Client) -> None:
    """The driver discovers a replica set with a writable primary."""
    client.admin.command("ping")
    description = client.topology_description
    assert description.topology_type == TOPOLOGY_TYPE.ReplicaSetWithPrimary
    hello = client.admin.command("hello")
    assert hello["isWritablePrimary"] is True
    assert hello["setName"]
    assert hello["maxWireVersion"] >= 21
    assert hello["logicalSessionTimeoutMinutes"] == 30
    assert hello["me"] in hello["hosts"]


def test_insert_and_find_round_trip_bson_types(client: Client, db_name: str) -> None:
    """Documents come back with the BSON types they were written with."""
    doc = {
        "_id": 1,
        "i64": Int64(2**40),
        "dec": Decimal128("1.10"),
        "when": datetime.datetime(2024, 1, 2, 3, 4, 5, 6000, tzinfo=datetime.UTC),
        "bin": Binary(b"\x00\x01", 0x80),
        "oid": ObjectId("0123456789ab0123456789ab"),
        "nested": {"list": [1, "two", None]},
    }
    coll = client[db_name].get_collection("c")
    coll.insert_one(doc)
    found = coll.with_options(
        codec_options=coll.codec_options.with_options(tz_aware=True)
    ).find_one({"_id": 1})
    assert found == doc
    assert type(found["i64"]) is Int64


def test_find_cursor_batches_and_sort(client: Client, db_name: str) -> None:
    """find returns every document across getMore batches, sorted, skipped and limited."""
    coll = client[db_name].c
    coll.insert_many([{"_id": i, "k": i % 7} for i in range(250)])
    assert len(list(coll.find(batch_size=10))) == 250
    keys = [d["_id"] for d in coll.find({"k": 3}).sort("_id", -1).skip(2).limit(5)]
    assert keys == sorted((i for i in range(250) if i % 7 == 3), reverse=True)[2:7]
    assert coll.find_one({"_id": 5}, {"k": 1, "_id": 0}) == {"k": 5}


@pytest.mark.parametrize(
    ("update", "expected"),
    [
        pytest.param({"$set": {"a.b": 2}}, {"_id": 1, "a": {"b": 2}, "n": 1}, id="set-dotted"),
        pytest.param({"$inc": {"n": 5}}, {"_id": 1, "n": 6}, id="inc"),
        pytest.param({"$unset": {"n": ""}}, {"_id": 1}, id="unset"),
        pytest.param({"$push": {"l": 1}}, {"_id": 1, "n": 1, "l": [1]}, id="push"),
        pytest.param({"x": 1}, {"_id": 1, "x": 1}, id="replacement"),
        pytest.param(
            [{"$set": {"m": {"$add": ["$n", 1]}}}], {"_id": 1, "n": 1, "m": 2}, id="pipeline"
        ),
    ],
)
def test_update_shapes(client: Client, db_name: str, update: Any, expected: dict[str, Any]) -> None:
    """Operator, replacement and pipeline updates give MongoDB's result."""
    coll = client[db_name].c
    coll.insert_one({"_id": 1, "n": 1})
    if isinstance(update, dict) and not next(iter(update)).startswith("$"):
        coll.replace_one({"_id": 1}, update)
    else:
        coll.update_one({"_id": 1}, update)
    assert coll.find_one({"_id": 1}) == expected


def test_upsert_multi_and_array_filters(client: Client, db_name: str) -> None:
    """Upsert reports the new _id, multi updates every match, arrayFilters pick elements."""
    coll = client[db_name].c
    result = coll.update_one({"name": "a"}, {"$set": {"v": 1}}, upsert=True)
    assert result.upserted_id is not None and result.matched_count == 0
    coll.insert_many([{"name": "b", "v": 1}, {"name": "c", "v": 1}])
    assert coll.update_many({"v": 1}, {"$set": {"v": 2}}).modified_count == 3
    coll.insert_one({"_id": "arr", "grades": [80, 95, 100]})
    coll.update_one(
        {"_id": "arr"}, {"$set": {"grades.$[g]": 0}}, array_filters=[{"g": {"$gte": 95}}]
    )
    assert coll.find_one({"_id": "arr"})["grades"] == [80, 0, 0]


def test_delete_and_find_and_modify(client: Client, db_name: str) -> None:
    """delete_one/many remove what matches; findAndModify returns before or after images."""
    coll = client[db_name].c
    coll.insert_many([{"_id": i, "v": i} for i in range(5)])
    assert coll.delete_one({"v": {"$gte": 3}}).deleted_count == 1
    assert coll.delete_many({"v": {"$lt": 2}}).deleted_count == 2
    after = coll.find_one_and_update(
        {"_id": 2}, {"$inc": {"v": 10}}, return_document=ReturnDocument.AFTER
    )
    assert after == {"_id": 2, "v": 12}
    before = coll.find_one_and_delete({"_id": 2})
    assert before == {"_id": 2, "v": 12}
    assert coll.count_documents({}) == 1


def test_unique_index_error_shape(client: Client, db_name: str) -> None:
    """A unique index violation is E11000 with MongoDB's message, keyPattern and keyValue."""
    coll = client[db_name].people
    coll.create_index("name", unique=True)
    coll.insert_one({"name": "x"})
    with pytest.raises(DuplicateKeyError) as caught:
        coll.insert_one({"name": "x"})
    details = caught.value.details
    assert details is not None
    assert details["code"] == 11000
    assert details["errmsg"] == (
        f"E11000 duplicate key error collection: {db_name}.people index: name_1 "
        'dup key: { name: "x" }'
    )
    assert details["keyPattern"] == {"name": 1}
    assert details["keyValue"] == {"name": "x"}


@pytest.mark.parametrize(
    ("update", "message"),
    [
        pytest.param(
            {"$bogus": {"a": 1}},
            "Unknown modifier: $bogus. Expected a valid update modifier or pipeline-style update"
            " specified as an array",
            id="unknown-modifier",
        ),
        pytest.param(
            {"$set": {"a": 1}, "b": 2},
            "Unknown modifier: b. Expected a valid update modifier",
            id="a-plain-field-beside-operators",
        ),
        pytest.param(
            {"$set": "x"},
            "Modifiers operate on fields but we found type string instead",
            id="operand-not-a-document",
        ),
    ],
)
def test_a_malformed_update_is_failed_to_parse_before_any_match(
    client: Client, db_name: str, update: dict[str, Any], message: str
) -> None:
    """mongod parses an update before it matches documents: an unknown modifier or a modifier
    whose operand is not a document is FailedToParse (9), whether or not anything matches."""
    coll = client[db_name].c
    coll.insert_one({"_id": 1, "a": 0})
    for query in ({"_id": 1}, {"_id": "nothing"}):
        with pytest.raises(OperationFailure) as caught:
            coll.update_one(query, update)
        assert caught.value.code == 9
        assert message in str(caught.value.details.get("errmsg"))
    with pytest.raises(OperationFailure) as caught:
        coll.find_one_and_update({"_id": 1}, update)
    assert caught.value.code == 9
    assert coll.find_one({"_id": 1}) == {"_id": 1, "a": 0}


def test_a_dollar_field_in_a_replacement_is_refused_when_a_document_is_replaced(
    client: Client, db_name: str
) -> None:
    """A replacement (first key not an operator) with a `$` field later on: mongod refuses it
    with DollarPrefixedFieldName (52) when it replaces a document, not when nothing matches."""
    coll = client[db_name].c
    coll.insert_one({"_id": 1, "a": 0})

    def update(query: dict[str, Any]) -> dict[str, Any]:
        # As a command: the driver's update_one and replace_one refuse this shape themselves.
        statement = {"q": query, "u": {"z": 2, "$set": {"a": 1}}}
        return client[db_name].command({"update": "c", "updates": [statement]})

    errors = update({"_id": 1})["writeErrors"]
    assert [e["code"] for e in errors] == [52]
    assert "The dollar ($) prefixed field '$set' in '$set' is not allowed" in errors[0]["errmsg"]
    missed = update({"_id": "nothing"})
    assert (missed["n"], "writeErrors" in missed) == (0, False)
    assert coll.find_one({"_id": 1}) == {"_id": 1, "a": 0}


def test_operators_reach_dollar_prefixed_names_below_the_top_level(
    client: Client, db_name: str
) -> None:
    """MongoDB 5.0 stores `$`-prefixed and dotted names, and an operator update may name a
    `$`-prefixed field below the top level (`loc.$street`); a `$`-prefixed top-level field
    in a modifier update of an existing document is DollarPrefixedFieldName (52)."""
    coll = client[db_name].c
    coll.insert_one({"_id": 1, "loc": {"$db": "n", "$n": 1}, "n": 1})
    coll.update_one({"_id": 1}, {"$set": {"loc.$street": "Elm"}, "$inc": {"loc.$n": 2}})
    coll.update_one({"_id": 1}, {"$unset": {"loc.$db": ""}})
    coll.update_one({"_id": 1}, {"$set": {"v": {"$ref": "a", "k.j": 1}}})
    assert coll.find_one({"_id": 1}) == {
        "_id": 1,
        "loc": {"$n": 3, "$street": "Elm"},
        "n": 1,
        "v": {"$ref": "a", "k.j": 1},
    }
    with pytest.raises(OperationFailure) as caught:
        coll.update_one({"_id": 1}, {"$set": {"$hotel": 1}})
    assert caught.value.code == 52
    assert "The dollar ($) prefixed field '$hotel' in '$hotel'" in str(caught.value)
    # A path the server cannot apply is a write error of that statement, not a failed command.
    with pytest.raises(OperationFailure) as caught:
        coll.update_one({"_id": 1}, {"$set": {"loc.$": 1}})
    assert caught.value.code == 2
    assert coll.find_one({"_id": 1}, {"n": 1}) == {"_id": 1, "n": 1}


def test_unordered_bulk_reports_each_error(client: Client, db_name: str) -> None:
    """An unordered insert goes on past errors and reports each with its index."""
    coll = client[db_name].c
    with pytest.raises(BulkWriteError) as caught:
        coll.insert_many([{"_id": 1}, {"_id": 1}, {"_id": 2}, {"_id": 2}], ordered=False)
    errors = caught.value.details["writeErrors"]
    assert [e["index"] for e in errors] == [1, 3]
    assert caught.value.details["nInserted"] == 2


def test_a_write_batch_over_the_limit_is_invalid_length(client: Client, db_name: str) -> None:
    """More statements than hello's maxWriteBatchSize in one command: InvalidLength (16), and
    nothing is written."""
    with pytest.raises(OperationFailure) as caught:
        client[db_name].command({"insert": "c", "documents": [{"_id": i} for i in range(100_001)]})
    assert (caught.value.code, caught.value.details.get("codeName")) == (16, "InvalidLength")
    assert "between 1 and 100000" in str(caught.value)
    assert client[db_name].c.count_documents({}) == 0


def test_unknown_command_is_command_not_found(client: Client) -> None:
    """An unknown command is error 59 CommandNotFound and the server goes on."""
    with pytest.raises(OperationFailure) as caught:
        client.admin.command("noSuchCommandAtAll")
    assert caught.value.code == 59
    client.admin.command("ping")


def test_cluster_time_strictly_increases_with_writes(client: Client, db_name: str) -> None:
    """Every acknowledged write gets a later operationTime than the one before."""
    coll = client[db_name].c
    times: list[Timestamp] = []
    with client.start_session() as session:
        for i in range(20):
            coll.insert_one({"i": i}, session=session)
            assert session.operation_time is not None
            times.append(session.operation_time)
    assert all(a < b for a, b in zip(times, times[1:], strict=False))


def test_kill_cursors_then_get_more_is_cursor_not_found(client: Client, db_name: str) -> None:
    """A killed cursor is gone: getMore on it fails with 43 CursorNotFound."""
    db = client[db_name]
    db.c.insert_many([{"_id": i} for i in range(10)])
    first = db.command("find", "c", batchSize=2)
    cursor_id = first["cursor"]["id"]
    assert cursor_id != 0 and len(first["cursor"]["firstBatch"]) == 2
    killed = db.command("killCursors", "c", cursors=[cursor_id])
    assert killed["cursorsKilled"] == [cursor_id]
    with pytest.raises(OperationFailure) as caught:
        db.command("getMore", cursor_id, collection="c")
    assert caught.value.code == 43


def test_single_batch_and_negative_limit_close_the_cursor(client: Client, db_name: str) -> None:
    """singleBatch (or a negative limit) returns one batch and cursor id 0."""
    db = client[db_name]
    db.c.insert_many([{"_id": i} for i in range(10)])
    reply = db.command("find", "c", batchSize=3, singleBatch=True)
    assert reply["cursor"]["id"] == 0 and len(reply["cursor"]["firstBatch"]) == 3
    reply = db.command("find", "c", limit=-4)
    assert reply["cursor"]["id"] == 0 and len(reply["cursor"]["firstBatch"]) == 4


@pytest.mark.parametrize("in_transaction", [False, True], ids=["plain", "transaction"])
def test_update_by_id_matches_by_mongodb_equality(
    client: Client, db_name: str, in_transaction: bool
) -> None:
    """`{_id: v}` finds numerically equal ids of other number types and never a string that
    looks alike, whether or not in a transaction."""
    coll = client[db_name].c
    coll.insert_many([{"_id": "1", "v": 0}, {"_id": 2.0, "v": 0}, {"_id": "3", "v": 0}])

    def run(session: Any) -> list[int]:
        return [
            coll.replace_one({"_id": 1}, {"v": 1}, session=session).matched_count,
            coll.replace_one({"_id": 2}, {"v": 2}, session=session).matched_count,
            coll.update_one({"_id": Int64(2)}, {"$inc": {"v": 1}}, session=session).matched_count,
            coll.replace_one({"_id": 3}, {"v": 3}, session=session).matched_count,
            coll.replace_one({"_id": "3"}, {"v": 4}, session=session).matched_count,
        ]

    if in_transaction:
        with client.start_session() as session, session.start_transaction():
            counts = run(session)
    else:
        counts = run(None)
    assert counts == [0, 1, 1, 0, 1]
    assert sorted(coll.find(), key=lambda d: str(d["_id"])) == [
        {"_id": "1", "v": 0},
        {"_id": 2.0, "v": 3},
        {"_id": "3", "v": 4},
    ]


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param({"a": 1}, id="without-id"),
        pytest.param({"a": 1, "_id": "late"}, id="id-not-first"),
        pytest.param({"_id": ObjectId(), "a": [1, {"b": None}]}, id="id-first"),
    ],
)
def test_stored_size_is_the_size_of_the_stored_document(doc: dict[str, Any]) -> None:
    """The size of a document as stored (with a generated `_id` when it had none) follows from
    its size in the request without encoding it again."""
    wire_size = len(bson.encode(doc))
    assert stored_size(doc, wire_size) == len(bson.encode(prepare_insert(doc)))


def test_sub_document_ids_match_by_mongodb_equality(client: Client, db_name: str) -> None:
    """An `_id` that is a sub-document is found by its value (numbers compared by value), in
    finds, `$in`, updates, replacements and transactions alike."""
    coll = client[db_name].subids
    coll.insert_many([{"_id": {"a": 1, "b": 2}, "v": 1}, {"_id": {"a": 2, "b": 2}, "v": 2}])
    assert [d["v"] for d in coll.find({"_id": {"a": 1, "b": 2}})] == [1]
    assert [d["v"] for d in coll.find({"_id": {"a": 1.0, "b": Int64(2)}})] == [1]
    assert coll.count_documents({"_id": {"a": 1, "b": 3}}) == 0
    assert coll.count_documents({"_id": {"a": 1}}) == 0
    found = coll.find({"_id": {"$in": [{"a": 2, "b": 2}, {"a": 3, "b": 2}, {"a": 1, "b": 2}]}})
    assert sorted(d["v"] for d in found) == [1, 2]
    assert coll.update_one({"_id": {"a": 1, "b": 2.0}}, {"$set": {"w": 1}}).modified_count == 1
    assert coll.replace_one({"_id": {"a": 2, "b": 2}}, {"v": 3}).modified_count == 1
    assert coll.update_one({"_id": {"a": 9, "b": 2}}, {"$set": {"w": 1}}).matched_count == 0
    with client.start_session() as session, session.start_transaction():
        coll.update_one({"_id": {"a": 1, "b": 2}}, {"$inc": {"v": 10}}, session=session)
        inside = coll.find_one({"_id": {"a": 1, "b": 2}}, session=session)
        assert inside is not None and inside["v"] == 11
        assert coll.find_one({"_id": {"$in": [{"a": 1, "b": 2}]}}, session=session) == inside
    assert list(coll.find({}, sort=[("v", 1)])) == [
        {"_id": {"a": 2, "b": 2}, "v": 3},
        {"_id": {"a": 1, "b": 2}, "v": 11, "w": 1},
    ]


@pytest.mark.parametrize("in_transaction", [False, True], ids=["plain", "transaction"])
def test_ids_mongodb_tells_apart_are_two_documents(
    client: Client, db_name: str, in_transaction: bool
) -> None:
    """`true` and `1` are two ids, and so are sub-documents with their fields in another
    order (Python takes each pair for one value); `1` and `1.0` are one."""
    coll = client[db_name]["ids"]
    ordered, reordered = bson.SON([("a", 1), ("b", 2)]), bson.SON([("b", 2), ("a", 1)])

    def run(session: Any) -> None:
        coll.insert_many(
            [
                {"_id": True, "v": "bool"},
                {"_id": 1, "v": "int"},
                {"_id": ordered, "v": "ab"},
                {"_id": reordered, "v": "ba"},
            ],
            session=session,
        )

    if in_transaction:
        with client.start_session() as session:
            with session.start_transaction():
                run(session)
    else:
        run(None)
    with pytest.raises(DuplicateKeyError):
        coll.insert_one({"_id": 1.0, "v": "double"})
    assert [d["v"] for d in coll.find({"_id": True})] == ["bool"]
    assert [d["v"] for d in coll.find({"_id": 1.0})] == ["int"]
    assert [d["v"] for d in coll.find({"_id": reordered})] == ["ba"]
    assert coll.update_one({"_id": ordered}, {"$set": {"w": 1}}).modified_count == 1
    assert coll.delete_one({"_id": True}).deleted_count == 1
    assert sorted(d["v"] for d in coll.find()) == ["ab", "ba", "int"]
    assert coll.find_one({"_id": ordered}) == {"_id": ordered, "v": "ab", "w": 1}


def test_comparisons_with_min_key_and_max_key_cross_types(client: Client, db_name: str) -> None:
    """MinKey and MaxKey sort below and above everything; `$gt`/`$gte` MinKey and `$lt`/`$lte`
    MaxKey match values of every type (a missing field too), the other way round only the
    bound itself; in finds, updates and aggregations."""
    coll = client[db_name]["bounds"]
    values: list[Any] = [1, "x", None, [], [2], {"b": 1}, MinKey(), MaxKey(), Timestamp(5, 1)]
    coll.insert_many([{"_id": i, "a": v} for i, v in enumerate(values)] + [{"_id": 20}])
    every = [*range(len(values)), 20]

    def ids(query: dict[str, Any]) -> list[int]:
        return sorted(d["_id"] for d in coll.find(query))

    assert ids({"a": {"$gt": MinKey()}}) == [i for i in every if i != 6]
    assert ids({"a": {"$gte": MinKey()}}) == every
    assert ids({"a": {"$lt": MaxKey()}}) == [i for i in every if i != 7]
    assert ids({"a": {"$lte": MaxKey()}}) == every
    assert ids({"a": {"$lt": MinKey()}}) == []
    assert ids({"a": {"$lte": MinKey()}}) == [6]
    assert ids({"a": {"$gt": MaxKey()}}) == []
    assert ids({"a": {"$gte": MaxKey()}}) == [7]
    assert ids({"a": MinKey()}) == [6]
    # A range from MinKey to MaxKey with one bound open: every value but that bound.
    assert ids({"a": {"$gt": MinKey(), "$lt": MaxKey()}}) == [i for i in every if i not in (6, 7)]
    # Other operands keep type bracketing.
    assert ids({"a": {"$gt": 0}}) == [0, 4]
    ordered = [d["_id"] for d in coll.find({"_id": {"$in": [0, 1, 2, 6, 7, 20]}}, sort=[("a", 1)])]
    assert ordered[0] == 6 and ordered[-1] == 7
    assert coll.update_many({"a": {"$lte": MinKey()}}, {"$set": {"low": True}}).modified_count == 1
    assert ids({"low": True}) == [6]
    matched = coll.aggregate([{"$match": {"a": {"$gte": MaxKey()}}}, {"$project": {"_id": 1}}])
    assert [d["_id"] for d in matched] == [7]


def test_nan_equals_nan_in_filters(client: Client, db_name: str) -> None:
    """To MongoDB NaN equals NaN (a double's and a Decimal128's alike): equality, `$in`, `$ne`,
    `$gte`, an `$expr` `$eq` over a sub-document holding one, in finds and in an update's
    filter. A range over other numbers leaves NaN out."""
    coll = client[db_name]["nan"]
    nan = float("nan")
    coll.insert_many([{"_id": 1, "a": nan}, {"_id": 2, "a": 3.0}, {"_id": 3, "a": {"x": nan}}])

    def ids(query: dict[str, Any]) -> list[int]:
        return sorted(d["_id"] for d in coll.find(query))

    assert ids({"a": nan}) == [1]
    assert ids({"a": Decimal128("NaN")}) == [1]
    assert ids({"a": {"$in": [nan, 7]}}) == [1]
    assert ids({"a": {"$ne": nan}}) == [2, 3]
    assert ids({"a": {"$nin": [nan]}}) == [2, 3]
    assert ids({"a": {"$gte": nan}}) == [1]
    assert ids({"a": {"$gt": nan}}) == []
    assert ids({"a": {"$lt": 5}}) == [2]
    assert ids({"a.x": nan}) == [3]
    assert ids({"$expr": {"$eq": ["$a", {"$literal": {"x": nan}}]}}) == [3]
    assert [d["_id"] for d in coll.aggregate([{"$match": {"a": nan}}])] == [1]
    later = coll.aggregate([{"$project": {"a": 1}}, {"$match": {"a": {"$in": [nan]}}}])
    assert [d["_id"] for d in later] == [1]
    # A write that applies only to the document still as it was read (the worker's
    # precondition without transactions).
    unchanged = {"$eq": ["$$ROOT", {"$literal": {"_id": 3, "a": {"x": nan}}}]}
    assert coll.update_one({"_id": 3, "$expr": unchanged}, {"$set": {"b": 1}}).matched_count == 1


def test_filters_compare_values_as_mongodb_does(client: Client, db_name: str) -> None:
    """Equality in a filter is MongoDB's, not Python's: an embedded document equals one with
    the same fields in the same order only, a boolean is not a number, numbers of any type
    equal by value; in equality, `$eq`, `$ne`, `$in`, `$nin`, `$all`, along arrays, in an
    aggregation's `$match` and in an update's filter."""
    coll = client[db_name]["equality"]
    ordered, reordered = bson.SON([("x", 1), ("y", 2)]), bson.SON([("y", 2), ("x", 1)])
    coll.insert_many(
        [
            {"_id": 1, "a": ordered},
            {"_id": 2, "a": reordered},
            {"_id": 3, "a": [ordered, 5]},
            {"_id": 4, "b": True},
            {"_id": 5, "b": 1},
            {"_id": 6, "b": 1.0},
            {"_id": 7, "b": Decimal128("1")},
            {"_id": 8, "b": Int64(1)},
            {"_id": 9, "b": [0, True]},
            {"_id": 10, "a": {"x": bson.SON([("p", 1), ("q", 2)])}},
        ]
    )

    def ids(query: dict[str, Any]) -> list[int]:
        return sorted(d["_id"] for d in coll.find(query))

    assert ids({"a": ordered}) == [1, 3]
    assert ids({"a": reordered}) == [2]
    assert ids({"a": {"$eq": ordered}}) == [1, 3]
    assert ids({"a": {"$in": [reordered]}}) == [2]
    assert ids({"a": {"$all": [ordered]}}) == [1, 3]
    assert ids({"a": {"$ne": ordered}}) == [2, 4, 5, 6, 7, 8, 9, 10]
    assert ids({"a.x": bson.SON([("q", 2), ("p", 1)])}) == []
    assert ids({"a.x": {"p": 1, "q": 2}}) == [10]
    assert ids({"b": 1}) == [5, 6, 7, 8]
    assert ids({"b": Decimal128("1.0")}) == [5, 6, 7, 8]
    assert ids({"b": True}) == [4, 9]
    assert ids({"b": {"$in": [True]}}) == [4, 9]
    assert ids({"b": {"$nin": [1]}}) == [1, 2, 3, 4, 9, 10]
    assert ids({"b": {"$ne": True}}) == [1, 2, 3, 5, 6, 7, 8, 10]
    assert ids({"b": {"$elemMatch": {"$eq": 1}}}) == []
    assert ids({"b": None}) == [1, 2, 3, 10]  # null still matches a missing field
    assert ids({"b": [0, True]}) == [9]
    assert ids({"b": [0, 1]}) == []
    assert [d["_id"] for d in coll.aggregate([{"$match": {"b": True}}])] == [4, 9]
    assert coll.update_many({"b": 1}, {"$set": {"seen": 1}}).matched_count == 4
    assert coll.delete_many({"a": reordered}).deleted_count == 1


def test_aggregation_comparisons_follow_mongodbs_order(client: Client, db_name: str) -> None:
    """`$eq`, `$ne`, `$cmp` and the ranges of an aggregation expression compare any two values
    by MongoDB's order (no type bracketing); a missing field is a value of its own, below
    null. A document whose fields are the same in another order is another value, which is
    what the worker's precondition without transactions relies on."""
    coll = client[db_name]["expressions"]
    coll.insert_many(
        [
            {"_id": 1, "v": None},
            {"_id": 2},
            {"_id": 3, "v": True},
            {"_id": 4, "v": 1},
            {"_id": 5, "v": datetime.datetime(2026, 1, 1)},
            {"_id": 6, "v": "s"},
        ]
    )
    rows = coll.aggregate(
        [
            {
                "$project": {
                    "is_null": {"$eq": ["$v", None]},
                    "not_null": {"$ne": ["$v", None]},
                    "same_missing": {"$eq": ["$v", "$nothing"]},
                    "against_one": {"$cmp": ["$v", 1]},
                    "below_a_date": {"$lt": ["$v", datetime.datetime(2000, 1, 1)]},
                    "one_or_null": {"$in": ["$v", [1.0, None]]},
                }
            },
            {"$sort": {"_id": 1}},
        ]
    )
    got = {row["_id"]: row for row in rows}

    def column(name: str) -> list[Any]:
        return [got[i][name] for i in range(1, 7)]

    assert column("is_null") == [True, False, False, False, False, False]
    assert column("not_null") == [False, True, True, True, True, True]
    assert column("same_missing") == [False, True, False, False, False, False]
    assert column("against_one") == [-1, -1, 1, 0, 1, 1]
    assert column("below_a_date") == [True, True, True, True, False, True]
    assert column("one_or_null") == [True, False, False, True, False, False]
    assert sorted(d["_id"] for d in coll.find({"$expr": {"$gt": ["$v", 0]}})) == [3, 4, 5, 6]

    coll.insert_one({"_id": 7, "x": 1, "y": 2})
    reordered = {"$eq": ["$$ROOT", {"$literal": {"_id": 7, "y": 2, "x": 1}}]}
    assert coll.count_documents({"$expr": reordered}) == 0
    as_stored = {"$eq": ["$$ROOT", {"$literal": {"_id": 7, "x": 1, "y": 2.0}}]}
    assert coll.count_documents({"$expr": as_stored}) == 1


def test_filters_compare_timestamps_as_mongodb_orders_them(client: Client, db_name: str) -> None:
    """Timestamps compare by seconds, then increment, in finds, updates, aggregations and
    change stream filters, at the top level and along dotted paths; a comparison with another
    type matches none of them (type bracketing)."""
    coll = client[db_name]["stamps"]
    coll.insert_many(
        [
            {"_id": i, "ts": Timestamp(100 + i // 2, i % 2), "e": {"at": Timestamp(7, i)}}
            for i in range(6)
        ]
        + [{"_id": 9, "ts": 5}]
    )

    def ids(query: dict[str, Any]) -> list[int]:
        return sorted(d["_id"] for d in coll.find(query))

    assert ids({"ts": {"$gt": Timestamp(101, 0)}}) == [3, 4, 5]
    assert ids({"ts": {"$gte": Timestamp(101, 0), "$lt": Timestamp(102, 1)}}) == [2, 3, 4]
    assert ids({"e.at": {"$lte": Timestamp(7, 1)}}) == [0, 1]
    assert ids({"$or": [{"ts": {"$gt": Timestamp(102, 0)}}, {"ts": Timestamp(100, 0)}]}) == [0, 5]
    assert ids({"ts": {"$gt": 4}}) == [9]
    assert ids({"ts": {"$lt": Timestamp(200, 0)}}) == [0, 1, 2, 3, 4, 5]
    matched = coll.aggregate(
        [{"$match": {"ts": {"$lt": Timestamp(101, 0)}}}, {"$sort": {"_id": 1}}]
    )
    assert [d["_id"] for d in matched] == [0, 1]
    assert (
        coll.update_many(
            {"e.at": {"$gt": Timestamp(7, 3)}}, {"$set": {"late": True}}
        ).modified_count
        == 2
    )
    assert ids({"late": True}) == [4, 5]

    start = client.admin.command("ping")["operationTime"]
    coll.insert_one({"_id": 20})
    later = client.admin.command("ping")["operationTime"]
    coll.insert_one({"_id": 21})
    with coll.watch(
        [{"$match": {"clusterTime": {"$gt": later}}}], start_at_operation_time=start
    ) as stream:
        event = stream.try_next()
        for _ in range(20):
            if event is not None:
                break
            event = stream.try_next()
    assert event is not None and event["documentKey"]["_id"] == 21
