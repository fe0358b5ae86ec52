"""Pipeline updates and aggregation stages as MongoDB runs them: `$unset` and `$replaceWith`,
the field expressions `$getField`, `$setField` and `$unsetField` (the way to reach fields whose
names hold a `.` or start with `$`), `$mergeObjects`, and the stages an update may not hold."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from devserver._engine import Engine
from devserver._views import _count

Client = MongoClient[dict[str, Any]]

# Fields a client cannot name in a path: a dot in the name, a leading `$`.
START = {"_id": 1, "a.b": 1, "$price": 5, "c": {"d": 1, "e": 2}, "n": 3}


def _root_with(field: Any, value: Any) -> dict[str, Any]:
    return {"$replaceWith": {"$setField": {"field": field, "input": "$$ROOT", "value": value}}}


@pytest.mark.parametrize(
    ("pipeline", "expected"),
    [
        pytest.param(
            [{"$unset": "n"}],
            {"_id": 1, "a.b": 1, "$price": 5, "c": {"d": 1, "e": 2}},
            id="unset-one",
        ),
        pytest.param(
            [{"$unset": ["n", "c.d"]}],
            {"_id": 1, "a.b": 1, "$price": 5, "c": {"e": 2}},
            id="unset-nested",
        ),
        pytest.param(
            [{"$set": {"m": {"$add": ["$n", 1]}}}, {"$unset": "n"}],
            {"_id": 1, "a.b": 1, "$price": 5, "c": {"d": 1, "e": 2}, "m": 4},
            id="set-then-unset",
        ),
        pytest.param(
            [{"$replaceWith": {"$mergeObjects": ["$$ROOT", {"n": 9, "z": True}, None]}}],
            {**START, "n": 9, "z": True},
            id="merge-objects",
        ),
        pytest.param(
            [{"$replaceWith": {"$mergeObjects": [{"_id": 1}, "$c"]}}],
            {"_id": 1, "d": 1, "e": 2},
            id="merge-sub-document",
        ),
        pytest.param(
            [_root_with("a.b", 2)],
            {**START, "a.b": 2},
            id="set-dotted-name-in-place",
        ),
        pytest.param(
            [_root_with({"$literal": "$price"}, {"$literal": "$6"})],
            {**START, "$price": "$6"},
            id="set-dollar-name",
        ),
        pytest.param(
            [_root_with("x.y", {"$add": ["$n", 1]})],
            {**START, "x.y": 4},
            id="add-dotted-name",
        ),
        pytest.param(
            [_root_with("a.b", "$$REMOVE")],
            {k: v for k, v in START.items() if k != "a.b"},
            id="set-remove",
        ),
        pytest.param(
            [
                {
                    "$replaceWith": {
                        "$unsetField": {"field": {"$literal": "$price"}, "input": "$$ROOT"}
                    }
                }
            ],
            {k: v for k, v in START.items() if k != "$price"},
            id="unset-field",
        ),
        pytest.param(
            [
                {
                    "$set": {
                        "short": {"$getField": "a.b"},
                        "long": {"$getField": {"field": {"$literal": "$price"}}},
                        "from": {"$getField": {"field": "e", "input": "$c"}},
                        "absent": {"$getField": "no.such"},
                    }
                }
            ],
            {**START, "short": 1, "long": 5, "from": 2},
            id="get-field",
        ),
        pytest.param(
            [{"$set": {"k": {"$setField": {"field": "f", "input": "$missing", "value": 1}}}}],
            {**START, "k": None},
            id="set-field-of-missing-input-is-null",
        ),
    ],
)
def test_pipeline_update_results(
    client: Client, db_name: str, pipeline: list[dict[str, Any]], expected: dict[str, Any]
) -> None:
    """Each pipeline gives MongoDB's document, field order included (a field `$setField`
    replaces keeps its place; a new one comes last)."""
    coll = client[db_name].c
    coll.insert_one(dict(START))
    coll.update_one({"_id": 1}, pipeline)
    stored = coll.find_one({"_id": 1})
    assert stored == expected
    assert stored is not None and list(stored) == list(expected)


@pytest.mark.parametrize(
    ("pipeline", "code", "message"),
    [
        pytest.param(
            [{"$match": {"n": 3}}],
            72,
            "$match is not allowed to be used within an update",
            id="match-in-update",
        ),
        pytest.param(
            [{"$sort": {"n": 1}}],
            72,
            "$sort is not allowed to be used within an update",
            id="sort-in-update",
        ),
        pytest.param(
            [{"$bogus": {}}],
            40324,
            "Unrecognized pipeline stage name: '$bogus'",
            id="unknown-stage",
        ),
        pytest.param(
            [_root_with("$price", 1)],
            None,
            "'$CURRENT.price' is a field path reference which is not allowed in this context."
            " Did you mean {$literal: '$CURRENT.price'}?",
            id="dollar-name-without-literal",
        ),
        pytest.param(
            [{"$replaceWith": {"$setField": {"field": "f", "input": 5, "value": 1}}}],
            4161109,
            "$setField requires 'input' to evaluate to type Object",
            id="input-not-a-document",
        ),
        pytest.param(
            [{"$replaceWith": {"$setField": {"field": "f", "input": "$$ROOT"}}}],
            None,
            "$setField requires 'value' to be specified",
            id="no-value",
        ),
        pytest.param(
            [{"$replaceWith": {"$setField": {"field": 7, "input": "$$ROOT", "value": 1}}}],
            None,
            "$setField requires 'field' to evaluate to type String, but got int",
            id="field-not-a-string",
        ),
        pytest.param(
            [
                {
                    "$replaceWith": {
                        "$setField": {"field": {"$concat": ["a", "b"]}, "input": {}, "value": 1}
                    }
                }
            ],
            None,
            "$setField requires 'field' to evaluate to a constant, but got a non-constant argument",
            id="field-not-a-constant",
        ),
        pytest.param(
            [{"$replaceWith": {"$unsetField": {"field": "f", "input": {}, "value": 1}}}],
            None,
            "$unsetField found an unknown argument: value",
            id="unset-field-with-value",
        ),
        pytest.param(
            [{"$unset": []}],
            31002,
            "$unset specification must be a string or an array",
            id="unset-nothing",
        ),
    ],
)
def test_bad_pipeline_updates_are_refused(
    client: Client, db_name: str, pipeline: list[dict[str, Any]], code: int | None, message: str
) -> None:
    """MongoDB's message (and code, where known) for each; the document stays as it was."""
    coll = client[db_name].c
    coll.insert_one(dict(START))
    with pytest.raises(OperationFailure) as failure:
        coll.update_one({"_id": 1}, pipeline)
    assert message in str(failure.value)
    if code is not None:
        assert failure.value.code == code
    assert coll.find_one({"_id": 1}) == START


def test_pipeline_upsert_starts_from_the_query(client: Client, db_name: str) -> None:
    """An upsert's pipeline runs over the query's equality fields."""
    coll = client[db_name].c
    pipeline = [{"$set": {"m": {"$add": ["$q", 1]}}}, {"$unset": "q"}, _root_with("x.y", 1)]
    result = coll.update_one({"_id": 9, "q": 3}, pipeline, upsert=True)
    assert result.upserted_id == 9
    assert coll.find_one({"_id": 9}) == {"_id": 9, "m": 4, "x.y": 1}


def test_aggregation_stages(client: Client, db_name: str) -> None:
    """`$unset` and `$replaceWith` in an aggregation, and the field expressions there."""
    coll = client[db_name].c
    coll.insert_many([dict(START), {"_id": 2, "a.b": 7, "c": {"d": 3}}])
    found = list(
        coll.aggregate(
            [
                {"$unset": ["c", "n"]},
                {"$replaceWith": {"_id": "$_id", "v": {"$getField": "a.b"}}},
                {"$sort": {"_id": 1}},
            ]
        )
    )
    assert found == [{"_id": 1, "v": 1}, {"_id": 2, "v": 7}]


def test_a_dotted_field_changed_by_a_pipeline_is_reported_by_its_name(
    client: Client, db_name: str
) -> None:
    """The change event of a `$setField` update names the field, and with expanded events
    says that the name is one field (`disambiguatedPaths`)."""
    coll = client[db_name].c
    coll.insert_one({**START, "pad": "p" * 300})  # large enough to be logged as a delta
    with coll.watch(show_expanded_events=True, max_await_time_ms=200) as stream:
        coll.update_one({"_id": 1}, [_root_with("a.b", 2)])
        event = None
        for _ in range(20):
            event = stream.try_next()
            if event is not None:
                break
    assert event is not None
    assert event["operationType"] == "update"
    description = event["updateDescription"]
    assert description["updatedFields"] == {"a.b": 2}
    assert description["disambiguatedPaths"] == {"a.b": ["a.b"]}


COUNT_DOCS = [{"_id": i, "k": i % 3} for i in range(7)]


@pytest.mark.parametrize(
    ("pipeline", "counted"),
    [
        pytest.param([{"$group": {"_id": 1, "n": {"$sum": 1}}}], True, id="count"),
        pytest.param([{"$skip": 2}, {"$group": {"_id": 1, "n": {"$sum": 1}}}], True, id="skip"),
        pytest.param([{"$skip": 9}, {"$group": {"_id": 1, "n": {"$sum": 1}}}], True, id="skip-all"),
        pytest.param(
            [{"$skip": 1}, {"$limit": 3}, {"$group": {"_id": None, "n": {"$sum": 1}}}],
            True,
            id="skip-limit-null-id",
        ),
        pytest.param(
            [{"$limit": 100}, {"$group": {"_id": "all", "a": {"$sum": 1}, "b": {"$sum": 1}}}],
            True,
            id="two-counts",
        ),
        pytest.param([{"$group": {"_id": "$k", "n": {"$sum": 1}}}], False, id="by-field"),
        pytest.param([{"$group": {"_id": 1, "n": {"$sum": 2}}}], False, id="sum-of-two"),
        pytest.param([{"$group": {"_id": 1, "n": {"$sum": 1.0}}}], False, id="sum-of-float"),
        pytest.param([{"$group": {"_id": 1, "n": {"$sum": "$k"}}}], False, id="sum-of-field"),
        pytest.param(
            [{"$group": {"_id": 1, "n": {"$sum": 1}}}, {"$skip": 0}], False, id="after-group"
        ),
        pytest.param([{"$limit": 0}, {"$group": {"_id": 1, "n": {"$sum": 1}}}], False, id="l0"),
    ],
)
@pytest.mark.parametrize("size", [0, 7])
def test_counting_pipelines_answer_as_mongomock_does(
    pipeline: list[dict[str, Any]], counted: bool, size: int
) -> None:
    """The counting fast path (`count_documents`' pipeline) gives mongomock's answer (with
    `_id` first, as MongoDB orders a group's fields), or leaves any other pipeline to it. No
    documents form no group, as in MongoDB (mongomock forms one for a null `_id`)."""
    docs = COUNT_DOCS[:size]
    fast = _count(docs, pipeline)
    assert (fast is not None) == counted
    if fast is not None and not docs:
        assert fast == []
    elif fast is not None:
        assert fast == Engine().aggregate(docs, pipeline, None)
        assert all(next(iter(group)) == "_id" for group in fast)


def test_count_documents_through_the_driver(client: Client, db_name: str) -> None:
    """`count_documents` with a filter, skip and limit, in and out of a transaction."""
    coll = client[db_name]["counted"]
    coll.insert_many([{"_id": i, "k": i % 3} for i in range(30)])
    assert coll.count_documents({}) == 30
    assert coll.count_documents({"k": 1}) == 10
    assert coll.count_documents({"k": 1}, skip=4, limit=5) == 5
    assert coll.count_documents({"k": 1}, skip=8) == 2
    assert coll.count_documents({"k": 7}) == 0
    with client.start_session() as session, session.start_transaction():
        coll.insert_one({"_id": 100, "k": 1}, session=session)
        assert coll.count_documents({"k": 1}, session=session) == 11
    assert coll.count_documents({"k": 1}) == 11
