"""Properties: the server's fast query paths agree with mongomock's reference semantics."""

from __future__ import annotations

import datetime
from typing import Any

from bson import Int64, ObjectId, Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st
from mongomock.filtering import filter_applies, resolve_sort_key

from devserver._engine import Engine, sort_documents
from devserver._fastfilter import compile_filter
from devserver._fastproject import BAIL, inclusion_tree, project_document

SCALARS = st.one_of(
    st.integers(-5, 5),
    st.integers(-5, 5).map(Int64),
    st.floats(-5, 5, allow_nan=False),
    st.sampled_from(["", "a", "b", "é", "ab"]),
    st.sampled_from([ObjectId("0123456789ab0123456789ab"), ObjectId("0123456789ab0123456789ac")]),
    st.sampled_from([datetime.datetime(2024, 1, 1), datetime.datetime(2025, 1, 1)]),
    st.none(),
    st.booleans(),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.fixed_dictionaries({"x": SCALARS}))
DOCUMENTS = st.lists(
    st.fixed_dictionaries({}, optional={"v": VALUES, "w": VALUES}), min_size=0, max_size=12
)
OPERATORS = st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte"])
CONDITIONS = st.one_of(
    SCALARS,
    st.dictionaries(OPERATORS, SCALARS, min_size=1, max_size=2),
    st.lists(SCALARS, min_size=1, max_size=3).map(lambda values: {"$in": values}),
)
FILTERS = st.dictionaries(st.sampled_from(["v", "w"]), CONDITIONS, min_size=1, max_size=2)


@settings(max_examples=150, deadline=None)
@given(docs=DOCUMENTS, filter_doc=FILTERS)
def test_compiled_filter_never_contradicts_mongomock(
    docs: list[dict[str, Any]], filter_doc: dict[str, Any]
) -> None:
    """Whenever the compiled filter gives a verdict, it is mongomock's verdict."""
    fast = compile_filter(filter_doc)
    if fast is None:
        return
    for doc in docs:
        verdict = fast(doc)
        if verdict is not None:
            assert verdict == filter_applies(filter_doc, doc), (filter_doc, doc)


def _reference_sort(docs: list[dict[str, Any]], sort: list[tuple[str, int]]) -> list[Any]:
    for key, direction in reversed(sort):
        docs = sorted(docs, key=lambda d: resolve_sort_key(key, d), reverse=direction < 0)
    return docs


@settings(max_examples=150, deadline=None)
@given(
    docs=DOCUMENTS,
    sort=st.lists(
        st.tuples(st.sampled_from(["v", "w", "v.x"]), st.sampled_from([1, -1])),
        min_size=1,
        max_size=2,
        unique_by=lambda item: item[0],
    ),
)
def test_sort_matches_mongomock_order(
    docs: list[dict[str, Any]], sort: list[tuple[str, int]]
) -> None:
    """sort_documents orders documents exactly as mongomock's sort does."""
    assert sort_documents(docs, sort) == _reference_sort(docs, sort)


@settings(max_examples=100, deadline=None)
@given(
    stamps=st.lists(
        st.one_of(
            st.none(),
            st.just("missing"),
            st.tuples(st.integers(1, 3), st.integers(0, 3)).map(lambda t: Timestamp(*t)),
        ),
        max_size=8,
    ),
    nested=st.booleans(),
    direction=st.sampled_from([1, -1]),
)
def test_timestamps_sort_by_time_then_increment_after_null_and_missing(
    stamps: list[Any], nested: bool, direction: int
) -> None:
    """mongomock cannot sort Timestamps; MongoDB orders them by time, then increment, after
    null and missing (which sort as equals), at the top level or under a sub-document."""
    docs = []
    for n, stamp in enumerate(stamps):
        value = {} if stamp == "missing" else {"t": stamp}
        docs.append({"_id": n, "e": value} if nested else {"_id": n, **value})
    key = "e.t" if nested else "t"
    ordered = sort_documents(docs, [(key, direction), ("_id", 1)])

    def rank(doc: dict[str, Any]) -> tuple[Any, ...]:
        stamp = (doc.get("e", {}) if nested else doc).get("t")
        return (0,) if stamp is None else (1, stamp.time, stamp.inc)

    ranks = [rank(doc) for doc in ordered]
    assert ranks == sorted(ranks, reverse=direction < 0)
    for before, after in zip(ordered, ordered[1:], strict=False):
        if rank(before) == rank(after):
            assert before["_id"] < after["_id"]  # the second key orders equals


PATHS = st.sampled_from(["v", "w", "v.x", "w.x", "v.y", "_id", "x.y.z"])
PROJECTIONS = st.dictionaries(PATHS, st.sampled_from([1, True, 0, False]), min_size=1, max_size=3)
NESTED = st.one_of(
    VALUES,
    st.fixed_dictionaries({}, optional={"x": VALUES, "y": VALUES}),
    st.lists(st.fixed_dictionaries({}, optional={"x": SCALARS}), max_size=2),
)
PROJECTED_DOCUMENTS = st.lists(
    st.fixed_dictionaries({"_id": st.integers(0, 9)}, optional={"v": NESTED, "w": NESTED}),
    min_size=1,
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(docs=PROJECTED_DOCUMENTS, projection=PROJECTIONS)
def test_fast_inclusion_projection_is_mongomock_s(
    docs: list[dict[str, Any]], projection: dict[str, Any]
) -> None:
    """Whenever the fast path projects a document, the result is what the reference engine
    gives. (Field order aside: the fast path keeps the document's, `_id` first, as MongoDB
    does; mongomock puts the fields it was asked for first.)"""
    tree = inclusion_tree(projection)
    if tree is None:
        return
    engine = Engine()
    for doc in docs:
        fast = project_document(doc, tree)
        if fast is BAIL:
            continue
        reference = engine.find([doc], {}, projection=projection)
        assert [fast] == reference, (projection, doc)
        assert list(fast) == [name for name in doc if name in fast]
