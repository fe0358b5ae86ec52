"""The compiled filter fast path agrees with mongomock's matcher on every document."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from bson import Binary, Int64, ObjectId, Timestamp
from mongomock.filtering import filter_applies

from devserver._fastfilter import compile_event_filter, compile_filter
from devserver._order import install

install()  # as the server does: mongomock compares Timestamps

OID_A = ObjectId("0123456789ab0123456789ab")
OID_B = ObjectId("0123456789ab0123456789ac")
DAY = datetime.datetime(2024, 5, 1)
UUID_A = Binary(b"\x01" * 16, 4)
UUID_B = Binary(b"\x02" * 16, 4)

DOCUMENTS: list[dict[str, Any]] = [
    {},
    {"v": 1},
    {"v": 1.0},
    {"v": Int64(2)},
    {"v": 2.5},
    {"v": -3},
    {"v": "1"},
    {"v": "b"},
    {"v": "é"},
    {"v": None},
    {"v": True},
    {"v": [1, 2]},
    {"v": {"x": 1}},
    {"v": OID_A},
    {"v": OID_B},
    {"v": DAY},
    {"v": DAY + datetime.timedelta(days=1)},
    {"v": 1, "w": "a"},
    {"v": 2, "w": "b"},
    {"v": UUID_A},
    {"v": UUID_B},
    {"v": Binary(b"\x01" * 16, 3)},
    {"v": b"\x01" * 16},
    {"v": Timestamp(5, 1)},
    {"v": Timestamp(5, 2)},
    {"v": Timestamp(6, 0)},
]


@pytest.mark.parametrize(
    "filter_doc",
    [
        pytest.param({"v": 1}, id="eq-number"),
        pytest.param({"v": "b"}, id="eq-string"),
        pytest.param({"v": {"$gt": 1}}, id="gt-number"),
        pytest.param({"v": {"$gte": 1, "$lt": 2.5}}, id="range"),
        pytest.param({"v": {"$lte": "b"}}, id="lte-string"),
        pytest.param({"v": {"$ne": 1}}, id="ne"),
        pytest.param({"v": {"$in": [1, 2]}}, id="in-numbers"),
        pytest.param({"v": {"$gt": OID_A}}, id="gt-objectid"),
        pytest.param({"v": {"$lt": DAY + datetime.timedelta(hours=1)}}, id="lt-date"),
        pytest.param({"v": {"$eq": 2}, "w": "b"}, id="two-fields"),
        pytest.param({"v": {"$nin": [1, 2]}}, id="nin-numbers"),
        pytest.param({"v": {"$nin": ["b"]}, "w": "a"}, id="nin-and-eq"),
        pytest.param({"v": UUID_A}, id="eq-binary"),
        pytest.param({"v": {"$ne": UUID_A}}, id="ne-binary"),
        pytest.param({"v": {"$nin": [UUID_A]}}, id="nin-binary"),
        pytest.param({"v": {"$in": [UUID_A, UUID_B]}}, id="in-binary"),
        pytest.param({"v": {"$gt": Timestamp(5, 1)}}, id="gt-timestamp"),
        pytest.param({"v": {"$gte": Timestamp(5, 2), "$lt": Timestamp(6, 0)}}, id="range-ts"),
        pytest.param({"v": {"$in": [Timestamp(5, 1), Timestamp(6, 0)]}}, id="in-timestamps"),
    ],
)
def test_fast_path_agrees_with_mongomock(filter_doc: dict[str, Any]) -> None:
    """For every document, the fast verdict (when it gives one) equals mongomock's."""
    fast = compile_filter(filter_doc)
    assert fast is not None
    for doc in DOCUMENTS:
        verdict = fast(doc)
        if verdict is not None:
            assert verdict == filter_applies(filter_doc, doc), doc


@pytest.mark.parametrize(
    "filter_doc",
    [
        pytest.param({"a.b": 1}, id="dotted"),
        pytest.param({"$or": [{"v": 1}]}, id="top-level-operator"),
        pytest.param({"v": {"$exists": True}}, id="exists"),
        pytest.param({"v": None}, id="null"),
        pytest.param({"v": {"$in": [1, "a"]}}, id="mixed-in"),
        pytest.param({"v": float("nan")}, id="nan"),
        pytest.param({"v": {"$gt": UUID_A}}, id="binary-order"),
    ],
)
def test_unsupported_filters_are_not_compiled(filter_doc: dict[str, Any]) -> None:
    """Filters outside the fast subset are left to mongomock."""
    assert compile_filter(filter_doc) is None


NESTED: list[dict[str, Any]] = [
    {},
    {"p": "x"},
    {"p": "x", "e": {}},
    {"p": "x", "e": {"k": {"_id": 1}, "t": Timestamp(5, 1)}},
    {"p": "x", "e": {"k": {"_id": 2}, "t": Timestamp(6, 0)}, "_id": OID_B},
    {"p": "x", "e": {"k": {"_id": 2}, "t": Timestamp(5, 1)}, "_id": OID_A},
    {"p": "x", "e": {"k": {"_id": "2"}, "t": Timestamp(5, 2)}},
    {"p": "y", "e": {"k": {"_id": 1}, "t": Timestamp(7, 0)}},
    {"p": "x", "e": {"k": {"_id": [1, 2]}}},
    {"p": "x", "e": {"k": [{"_id": 1}, {"_id": 3}]}},
    {"p": "x", "e": [{"k": {"_id": 1}}]},
    {"p": "x", "e": {"k": 1}},
    {"p": "x", "e": {"k": {"_id": None}}},
    {"p": "x", "e": {"k": {"_id": 1.0}, "t": 5}},
]


@pytest.mark.parametrize(
    "filter_doc",
    [
        pytest.param({"e.k._id": 1}, id="dotted-eq"),
        pytest.param({"p": "x", "e.k._id": {"$in": [1, 2]}}, id="dotted-in"),
        pytest.param({"e.k._id": {"$nin": [1]}}, id="dotted-nin"),
        pytest.param({"e.t": {"$gt": Timestamp(5, 1)}}, id="dotted-timestamp"),
        pytest.param(
            {
                "p": "x",
                "e.k._id": {"$in": [1, 2]},
                "$or": [
                    {"e.t": {"$gt": Timestamp(5, 1)}},
                    {"e.t": Timestamp(5, 1), "_id": {"$gt": OID_A}},
                ],
            },
            id="held-after",
        ),
        pytest.param({"$and": [{"p": "x"}, {"e.k._id": {"$ne": 2}}]}, id="and"),
    ],
)
def test_the_dotted_fast_path_agrees_with_mongomock_on_documents(
    filter_doc: dict[str, Any],
) -> None:
    """Finds use the change-event compiler (dotted paths, $or / $and) when the top-level one
    declines: on documents too, every verdict it gives is mongomock's, arrays along a path
    and missing fields included."""
    assert compile_filter(filter_doc) is None
    fast = compile_event_filter(filter_doc)
    assert fast is not None
    given = 0
    for doc in NESTED:
        verdict = fast(doc)
        if verdict is not None:
            given += 1
            assert verdict == filter_applies(filter_doc, doc), doc
    assert given >= 3  # the plain documents get a verdict of their own
