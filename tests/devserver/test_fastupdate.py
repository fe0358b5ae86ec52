"""The native $set/$unset/$inc path agrees with the mongomock path, or declines and leaves it."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any
from unittest import mock

import bson
import pytest
from bson import Decimal128, Int64, ObjectId, Timestamp
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pymongo import MongoClient, UpdateOne
from pymongo.collection import Collection

import devserver._engine as engine_module
from devserver._engine import Engine
from devserver._fastupdate import fast_update
from tests.change_events import next_event

Doc = dict[str, Any]
ENGINE = Engine()
INT32_MAX = 2**31 - 1
DAY = datetime.datetime(2024, 5, 1, 12, 30, 15, 123000)


def mongomock_update(doc: Doc, update: Doc) -> Doc:
    """`Engine.apply_update` with the fast path switched off: the mongomock path."""
    with mock.patch.object(engine_module, "fast_update", lambda _doc, _update: None):
        return ENGINE.apply_update(doc, {"_id": doc["_id"]}, update, None)


_ABSENT: Any = object()


def _value_at(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(doc, dict) or part not in doc:
            return _ABSENT
        doc = doc[part]
    return doc


def reference_update(doc: Doc, update: Doc) -> Doc:
    """MongoDB's result built from mongomock's one-field updates.

    Paths go one at a time in lexicographic order of their components (MongoDB 5.0+ processes
    an update's fields so: new fields are appended in that order). Where mongomock's `$inc`
    (a Python `current + operand`, 0 for a missing field) differs from MongoDB's, MongoDB's
    value is put in: a missing field takes the operand itself (an Int64 stays one, -0.0 stays
    negative), and an addition involving an Int64 gives an Int64.
    """
    steps = sorted(
        (path.split("."), operator, operand)
        for operator, fields in update.items()
        for path, operand in fields.items()
    )
    for parts, operator, operand in steps:
        before = _value_at(doc, parts)
        doc = mongomock_update(doc, {operator: {".".join(parts): operand}})
        if operator == "$inc":
            parent, name = _value_at(doc, parts[:-1]), parts[-1]
            if before is _ABSENT:
                parent[name] = operand
            elif type(parent[name]) is int and Int64 in (type(before), type(operand)):
                parent[name] = Int64(parent[name])
    return doc


def _canonical(value: Any) -> Any:
    """A form where equal means equal in content and BSON type, field order aside."""
    if isinstance(value, dict):
        return ("doc", sorted((k, _canonical(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("array", [_canonical(v) for v in value])
    return (bson.encode({"v": value}),)


# ---- the property --------------------------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "c", "B", "é", "a-b", "_x"])
SCALARS = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([INT32_MAX, -INT32_MAX - 1, 2**40]),
    st.integers(-3, 3).map(Int64),
    st.floats(-5, 5, allow_nan=False),
    st.sampled_from(["", "x", "é"]),
    st.none(),
    st.booleans(),
    st.just(ObjectId("0123456789ab0123456789ab")),
    st.just(DAY),
    st.just(Decimal128("1.5")),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(NAMES, inner, max_size=3)),
    max_leaves=8,
)
DOCUMENTS = st.dictionaries(NAMES, VALUES, max_size=5).map(lambda fields: {"_id": 1, **fields})
PATHS = st.lists(NAMES, min_size=1, max_size=3).map(".".join)
# Values the fast path must decline, drawn one time in ten.
ODD_VALUES = st.sampled_from([DAY.replace(microsecond=123456), Timestamp(0, 0)])
SET_VALUES = st.integers(0, 9).flatmap(lambda n: ODD_VALUES if n == 0 else VALUES)
INC_VALUES = st.one_of(
    st.integers(-3, 3),
    st.integers(-3, 3).map(Int64),
    st.floats(-5, 5, allow_nan=False),
    st.sampled_from([INT32_MAX, "1"]),
)


def _field_paths(doc: Doc, prefix: str = "") -> list[str]:
    """Every dotted path to a field of `doc` reachable through sub-documents only."""
    paths = []
    for name, value in doc.items():
        if name != "_id":
            paths.append(prefix + name)
            if isinstance(value, dict):
                paths.extend(_field_paths(value, f"{prefix}{name}."))
    return paths


@st.composite
def cases(draw: st.DrawFn) -> tuple[Doc, Doc]:
    """A document and an update whose paths often name the document's own fields (for $inc,
    often its numbers)."""
    doc = draw(DOCUMENTS)
    existing = _field_paths(doc)
    paths = st.one_of(PATHS, st.sampled_from(existing)) if existing else PATHS
    numbers = [p for p in existing if type(_value_at(doc, p.split("."))) in (int, Int64, float)]
    inc_paths = st.one_of(paths, st.sampled_from(numbers)) if numbers else paths
    update = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "$set": st.dictionaries(paths, SET_VALUES, min_size=1, max_size=3),
                "$unset": st.dictionaries(paths, st.just(""), min_size=1, max_size=2),
                "$inc": st.dictionaries(inc_paths, INC_VALUES, min_size=1, max_size=2),
            },
        ).filter(bool)
    )
    return doc, update


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_fast_path_agrees_with_mongomock_or_declines(case: tuple[Doc, Doc]) -> None:
    """Whenever the fast path applies an update, the document it gives is MongoDB's result
    built from mongomock's (same BSON bytes, field order included); the input is untouched."""
    doc, update = case
    before = bson.encode(doc)
    fast = fast_update(doc, update)
    assert bson.encode(doc) == before
    if fast is None:
        return
    assert bson.encode(fast) == bson.encode(reference_update(doc, update)), (doc, update)
    # Field order aside, it is also what the mongomock path gives for the whole update at once
    # (the Int64 typing of $inc apart).
    if "$inc" not in update:
        assert _canonical(fast) == _canonical(mongomock_update(doc, update))


NUMBERS = st.one_of(
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**63), 2**63 - 1).map(Int64),
    st.floats(allow_nan=False, allow_infinity=False),
)


@settings(max_examples=200, deadline=None)
@example(fields={"n": Int64(2**63 - 1)}, increments={"n": 1})
@example(fields={}, increments={"n": -0.0})
@given(
    fields=st.dictionaries(st.sampled_from(["m", "n"]), NUMBERS, max_size=2),
    increments=st.dictionaries(st.sampled_from(["m", "n", "o"]), NUMBERS, min_size=1),
)
def test_inc_agrees_with_mongomock_on_numbers(fields: Doc, increments: Doc) -> None:
    """$inc of int32, Int64 and doubles into such fields or missing ones: MongoDB's result,
    or a decline for an int64 overflow (an error in MongoDB)."""
    doc = {"_id": 1, **fields}
    fast = fast_update(doc, {"$inc": increments})
    overflow = any(
        not -(2**63) <= doc.get(k, 0) + v < 2**63
        for k, v in increments.items()
        if float not in (type(doc.get(k, 0)), type(v))
    )
    if overflow:
        assert fast is None
    else:
        assert fast is not None
        assert bson.encode(fast) == bson.encode(reference_update(doc, {"$inc": increments}))


def test_generated_updates_often_take_the_fast_path() -> None:
    """The property above checks something: over a fifth of the generated updates are simple."""
    taken = 0
    samples = 200

    @settings(max_examples=samples, deadline=None, database=None, derandomize=True)
    @given(case=cases())
    def count(case: tuple[Doc, Doc]) -> None:
        nonlocal taken
        taken += fast_update(*case) is not None

    count()
    assert taken > samples // 5, taken


# ---- tables --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "update"),
    [
        pytest.param({"_id": 1, "a": [{"b": 1}]}, {"$set": {"a.b": 2}}, id="array-in-path"),
        pytest.param({"_id": 1, "a": [1, 2]}, {"$unset": {"a.b": ""}}, id="unset-through-array"),
        pytest.param({"_id": 1, "a": [1, 2]}, {"$set": {"a.0": 5}}, id="numeric-component"),
        pytest.param({"_id": 1, "a": {"0": 1}}, {"$inc": {"a.0": 1}}, id="numeric-in-document"),
        pytest.param({"_id": 1, "a": [{"b": 1}]}, {"$set": {"a.$.b": 2}}, id="positional"),
        pytest.param({"_id": 1, "a": [{"b": 1}]}, {"$set": {"a.$[].b": 2}}, id="all-positional"),
        pytest.param({"_id": 1, "a": [{"b": 1}]}, {"$set": {"a.$[x].b": 2}}, id="filtered"),
        pytest.param({"_id": 1}, {"$set": {"a": 1, "a.b": 2}}, id="conflict-prefix"),
        pytest.param({"_id": 1}, {"$set": {"a": 1}, "$inc": {"a": 1}}, id="conflict-same-path"),
        pytest.param({"_id": 1}, {"$set": {"a.b": 1}, "$unset": {"a": ""}}, id="conflict-ops"),
        pytest.param({"_id": 1, "a": 5}, {"$set": {"a.b": 1}}, id="not-viable-number"),
        pytest.param({"_id": 1, "a": None}, {"$set": {"a.b": 1}}, id="not-viable-null"),
        pytest.param({"_id": 1, "a": "s"}, {"$unset": {"a.b": ""}}, id="not-viable-unset"),
        pytest.param({"_id": 1, "a": "s"}, {"$inc": {"a": 1}}, id="inc-string-target"),
        pytest.param({"_id": 1, "a": True}, {"$inc": {"a": 1}}, id="inc-bool-target"),
        pytest.param({"_id": 1, "a": None}, {"$inc": {"a": 1}}, id="inc-null-target"),
        pytest.param({"_id": 1, "a": Decimal128("1")}, {"$inc": {"a": 1}}, id="inc-decimal"),
        pytest.param({"_id": 1}, {"$inc": {"a": "1"}}, id="inc-string-operand"),
        pytest.param({"_id": 1}, {"$inc": {"a": True}}, id="inc-bool-operand"),
        pytest.param({"_id": 1, "a": Int64(2**63 - 1)}, {"$inc": {"a": 1}}, id="int64-overflow"),
        pytest.param({"_id": 1}, {"$set": {"_id": 1}}, id="id-path"),
        pytest.param({"_id": 1}, {"$set": {"a..b": 1}}, id="empty-component"),
        pytest.param({"_id": 1}, {"$set": {".a": 1}}, id="leading-dot"),
        pytest.param({"_id": 1}, {"$set": {"$a": 1}}, id="dollar-top-level"),
        pytest.param({"_id": 1, "a": [1]}, {"$set": {"a.$": 1}}, id="positional"),
        pytest.param({"_id": 1, "a": [1]}, {"$set": {"a.$[]": 1}}, id="all-positional"),
        pytest.param({"_id": 1, "a": [1]}, {"$set": {"a.$[x]": 1}}, id="filtered-positional"),
        pytest.param({"_id": 1}, {"$set": {"a": Timestamp(0, 0)}}, id="empty-timestamp"),
        pytest.param({"_id": 1}, {"$set": {"a": DAY.replace(microsecond=1)}}, id="microseconds"),
        pytest.param({"_id": 1}, {"$set": {"a": (1, 2)}}, id="tuple"),
        pytest.param({"_id": 1}, {"$set": {}}, id="empty-operator"),
        pytest.param({"_id": 1}, {"$push": {"a": 1}}, id="other-operator"),
        pytest.param({"_id": 1}, {"$set": {"a": 1}, "$setOnInsert": {"b": 1}}, id="set-on-insert"),
        pytest.param({"_id": 1}, {"a": 1}, id="replacement"),
        pytest.param({"_id": 1}, [{"$set": {"a": 1}}], id="pipeline"),
    ],
)
def test_fast_path_declines(doc: Doc, update: Any) -> None:
    """Updates outside the simple subset are left to the mongomock path (None)."""
    assert fast_update(doc, update) is None


def test_dollar_prefixed_and_dotted_names_below_the_top_level() -> None:
    """MongoDB 5.0 stores such names: a `$set` value may hold them, and a path may name a
    `$`-prefixed field below the top level; both are stored as given."""
    doc: Doc = {"_id": 1, "loc": {"$db": "n", "$n": 1}}
    update: Doc = {
        "$set": {"loc.$street": "Elm", "v": {"$ref": "a", "k.j": [{"$x": 1}]}},
        "$inc": {"loc.$n": 2},
        "$unset": {"loc.$db": ""},
    }
    assert fast_update(doc, update) == {
        "_id": 1,
        "loc": {"$n": 3, "$street": "Elm"},
        "v": {"$ref": "a", "k.j": [{"$x": 1}]},
    }


@pytest.mark.parametrize(
    ("doc", "update", "expected"),
    [
        pytest.param(
            {"_id": 1, "m": 1, "a": 1},
            {"$set": {"z": 1, "b": 2, "a": 3}},
            {"_id": 1, "m": 1, "a": 3, "b": 2, "z": 1},
            id="existing-keep-place-new-sorted",
        ),
        pytest.param(
            {"_id": 1},
            {"$set": {"b.y": 1, "a": 1}, "$inc": {"b.x": 1, "B": 1}},
            {"_id": 1, "B": 1, "a": 1, "b": {"x": 1, "y": 1}},
            id="sorted-across-operators-and-levels",
        ),
        pytest.param(
            {"_id": 1},
            {"$set": {"a-b": 1, "a.b": 2}},
            {"_id": 1, "a": {"b": 2}, "a-b": 1},
            id="sorted-by-component-not-string",
        ),
        pytest.param(
            {"_id": 1, "a": {"b": 1, "c": 2}},
            {"$unset": {"a.b": "", "x.y": ""}, "$set": {"a.d": 3}},
            {"_id": 1, "a": {"c": 2, "d": 3}},
            id="unset-missing-creates-nothing",
        ),
        pytest.param(
            {"_id": 1, "a": 1},
            {"$unset": {"a": "", "b": ""}},
            {"_id": 1},
            id="unset-missing-is-no-op",
        ),
    ],
)
def test_field_order(doc: Doc, update: Doc, expected: Doc) -> None:
    """Existing fields keep their place; new ones are appended in lexicographic order."""
    result = fast_update(doc, update)
    assert result is not None
    assert list(result.items()) == list(expected.items())
    assert bson.encode(result) == bson.encode(expected)


@pytest.mark.parametrize(
    ("current", "operand", "expected"),
    [
        pytest.param(1, 2, 3, id="int-int"),
        pytest.param(INT32_MAX, 1, Int64(2**31), id="int32-overflows-to-int64"),
        pytest.param(-INT32_MAX - 1, -1, Int64(-(2**31) - 1), id="int32-underflow"),
        pytest.param(Int64(5), 1, Int64(6), id="long-int"),
        pytest.param(5, Int64(1), Int64(6), id="int-long"),
        pytest.param(2, 0.5, 2.5, id="int-double"),
        pytest.param(Int64(2), 1.0, 3.0, id="long-double"),
        pytest.param(1.5, 1, 2.5, id="double-int"),
        pytest.param(None, Int64(7), Int64(7), id="missing-takes-long-operand"),
        pytest.param(None, 2.5, 2.5, id="missing-takes-double-operand"),
        pytest.param(None, 0, 0, id="missing-with-zero"),
    ],
)
def test_inc_numeric_types(current: Any, operand: Any, expected: Any) -> None:
    """$inc follows MongoDB's numeric type rules (the BSON type of the result is checked)."""
    doc: Doc = {"_id": 1} if current is None else {"_id": 1, "n": current}
    result = fast_update(doc, {"$inc": {"n": operand}})
    assert result is not None
    assert type(result["n"]) is type(expected)
    assert bson.encode(result) == bson.encode({"_id": 1, "n": expected})


def test_untouched_subdocuments_are_shared() -> None:
    """Only the documents along modified paths are copied; the rest is shared, nothing mutated."""
    doc: Doc = {"_id": 1, "a": {"b": {"c": 1}, "keep": {"k": 1}}, "other": {"o": [1, 2]}}
    snapshot = bson.encode(doc)
    result = fast_update(doc, {"$set": {"a.b.c": 2}})
    assert result is not None
    assert bson.encode(doc) == snapshot
    assert result["a"]["b"] == {"c": 2}
    assert (
        result is not doc and result["a"] is not doc["a"] and result["a"]["b"] is not doc["a"]["b"]
    )
    assert result["other"] is doc["other"]
    assert result["a"]["keep"] is doc["a"]["keep"]


def test_engine_uses_fast_path_without_array_filters_only() -> None:
    """`Engine.apply_update` takes the fast path for simple updates, mongomock otherwise."""
    doc: Doc = {"_id": 1, "a": [{"b": 1}], "n": 1}
    calls: list[Doc] = []

    def spy(current: Doc, update: Any) -> Doc | None:
        calls.append(update)
        return fast_update(current, update)

    with mock.patch.object(engine_module, "fast_update", spy):
        fast = ENGINE.apply_update(doc, {"_id": 1}, {"$inc": {"n": 1}}, None)
        filtered = ENGINE.apply_update(doc, {"_id": 1}, {"$set": {"a.$[e].b": 5}}, [{"e.b": 1}])
    assert fast == {"_id": 1, "a": [{"b": 1}], "n": 2}
    assert fast["a"] is doc["a"]
    assert filtered == {"_id": 1, "a": [{"b": 5}], "n": 1}
    assert calls == [{"$inc": {"n": 1}}]


# ---- through the wire ----------------------------------------------------------------------


@pytest.fixture
def coll(client: MongoClient[Doc], db_name: str) -> Iterator[Collection[Doc]]:
    client[db_name].create_collection("items")
    try:
        yield client[db_name]["items"]
    finally:
        client.drop_database(db_name)


def test_operator_updates_over_the_wire(coll: Collection[Doc]) -> None:
    """update_one with $set/$unset/$inc stores MongoDB's documents and reports its events."""
    coll.insert_one({"_id": 1, "a": {"b": 1, "keep": [1, 2]}, "n": Int64(1), "gone": 1})
    with coll.watch(max_await_time_ms=100) as stream:
        first = coll.update_one(
            {"_id": 1},
            {"$set": {"z": "new", "a.b": 2, "c.d": True}, "$inc": {"n": 1}, "$unset": {"gone": ""}},
        )
        same = coll.update_one({"_id": 1}, {"$set": {"z": "new"}, "$unset": {"missing": ""}})
        counter = coll.update_one({"_id": 1}, {"$inc": {"count": 1, "a.b": 0.5}})
        update_event, counter_event = next_event(stream), next_event(stream)
    assert (first.matched_count, first.modified_count) == (1, 1)
    assert (same.matched_count, same.modified_count) == (1, 0)
    assert counter.modified_count == 1
    stored = coll.find_one({"_id": 1})
    assert stored is not None
    assert list(stored.items()) == [
        ("_id", 1),
        ("a", {"b": 2.5, "keep": [1, 2]}),
        ("n", 2),
        ("c", {"d": True}),
        ("z", "new"),
        ("count", 1),
    ]
    assert type(stored["n"]) is Int64 and type(stored["count"]) is int
    assert update_event["operationType"] == "update"
    assert update_event["updateDescription"] == {
        "updatedFields": {"a.b": 2, "c": {"d": True}, "n": 2, "z": "new"},
        "removedFields": ["gone"],
        "truncatedArrays": [],
    }
    assert counter_event["updateDescription"]["updatedFields"] == {"a.b": 2.5, "count": 1}


def test_bulk_updates_in_a_transaction(client: MongoClient[Doc], coll: Collection[Doc]) -> None:
    """The sync engine's pattern: a transaction of UpdateOne($set, $unset) on many documents."""
    coll.insert_many([{"_id": i, "name": f"u{i}", "old": i, "sub": {"x": i}} for i in range(20)])
    with coll.watch(max_await_time_ms=100) as stream:
        with client.start_session() as session, session.start_transaction():
            result = coll.bulk_write(
                [
                    UpdateOne(
                        {"_id": i}, {"$set": {"name": f"v{i}", "sub.y": i}, "$unset": {"old": 1}}
                    )
                    for i in range(20)
                ],
                session=session,
            )
        events = [next_event(stream) for _ in range(20)]
    assert (result.matched_count, result.modified_count) == (20, 20)
    assert list(coll.find({}, sort=[("_id", 1)])) == [
        {"_id": i, "name": f"v{i}", "sub": {"x": i, "y": i}} for i in range(20)
    ]
    assert [e["documentKey"]["_id"] for e in events] == list(range(20))
    assert all("lsid" in e and "txnNumber" in e for e in events)
    assert [e["updateDescription"] for e in events] == [
        {
            "updatedFields": {"name": f"v{i}", "sub.y": i},
            "removedFields": ["old"],
            "truncatedArrays": [],
        }
        for i in range(20)
    ]
