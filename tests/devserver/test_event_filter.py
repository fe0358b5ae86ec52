"""The compiled change-stream `$match` fast path answers as mongomock does, or not at all."""

from __future__ import annotations

from typing import Any

import pytest
from bson import Binary
from hypothesis import given, settings
from hypothesis import strategies as st
from mongomock import filtering

from devserver._change_pipeline import EventPipeline
from devserver._fastfilter import compile_event_filter

names = st.sampled_from(["a", "b", "c"])
ids = st.one_of(st.integers(0, 4), st.sampled_from(["x", "y"]), st.none())
events = st.fixed_dictionaries(
    {
        "operationType": st.sampled_from(["insert", "update", "delete", "dropDatabase"]),
        "ns": st.one_of(
            st.fixed_dictionaries({"db": names, "coll": names}),
            st.fixed_dictionaries({"db": names}),
        ),
        "documentKey": st.one_of(st.fixed_dictionaries({"_id": ids}), st.just([1, 2])),
    }
)
clauses = st.fixed_dictionaries(
    {"ns.db": names},
    optional={
        "ns.coll": names,
        "documentKey._id": st.one_of(
            st.integers(0, 4),
            st.fixed_dictionaries({"$in": st.lists(st.integers(0, 4), min_size=1)}),
        ),
        "operationType": st.sampled_from(["insert", "dropDatabase"]),
    },
)
filters = st.one_of(
    clauses, st.fixed_dictionaries({"$or": st.lists(clauses, min_size=1, max_size=4)})
)


@settings(max_examples=400, deadline=None)
@given(filters, events)
def test_compiled_event_filter_agrees_with_mongomock(
    filter_doc: dict[str, Any], event: dict[str, Any]
) -> None:
    """Whenever the compiled filter answers, its answer is mongomock's."""
    compiled = compile_event_filter(filter_doc)
    assert compiled is not None
    verdict = compiled(event)
    if verdict is not None:
        assert verdict == filtering.filter_applies(filter_doc, event)


def test_namespace_filter_is_compiled() -> None:
    """The worker's namespace filter and look-ahead filter both take the fast path."""
    compiled = compile_event_filter(
        {
            "$or": [
                {"ns.db": "shop", "ns.coll": "customers", "documentKey._id": {"$in": [1, 2]}},
                {"operationType": "dropDatabase", "ns.db": {"$in": ["shop"]}},
            ]
        }
    )
    assert compiled is not None
    event = {"operationType": "update", "ns": {"db": "shop", "coll": "customers"}}
    assert compiled({**event, "documentKey": {"_id": 2}}) is True
    assert compiled({**event, "documentKey": {"_id": 3}}) is False


def test_session_filter_is_compiled_and_answers_for_events_without_a_session() -> None:
    """The worker's filter leaving out its own sessions' events takes the fast path, and an
    event without `lsid` (a write outside a transaction) passes it without asking mongomock."""
    own, other = Binary(b"\x01" * 16, 4), Binary(b"\x02" * 16, 4)
    filter_doc = {"lsid.id": {"$nin": [own]}}
    compiled = compile_event_filter(filter_doc)
    assert compiled is not None
    for event, expected in [
        ({"operationType": "insert"}, True),
        ({"operationType": "insert", "lsid": {"id": other}}, True),
        ({"operationType": "insert", "lsid": {"id": own}}, False),
    ]:
        assert compiled(event) is expected
        assert filtering.filter_applies(filter_doc, event) is expected


@pytest.mark.parametrize(
    ("stages", "reads_images"),
    [
        pytest.param([{"$match": {"documentKey._id": {"$in": [1, 2]}}}], False, id="key"),
        pytest.param(
            [{"$match": {"$or": [{"ns.coll": "a"}, {"operationType": "drop"}]}}],
            False,
            id="or-of-namespaces",
        ),
        pytest.param([{"$match": {"fullDocument.x": 1}}], True, id="post-image-field"),
        pytest.param(
            [{"$match": {"$or": [{"ns.coll": "a"}, {"fullDocumentBeforeChange": None}]}}],
            True,
            id="pre-image-inside-or",
        ),
        pytest.param([{"$match": {"$expr": {"$eq": [1, 1]}}}], True, id="expression"),
        pytest.param(
            [{"$addFields": {"k": 1}}, {"$match": {"ns.coll": "a"}}], True, id="after-a-stage"
        ),
    ],
)
def test_pipeline_decides_before_images_only_on_leading_matches_that_read_none(
    stages: list[dict[str, Any]], reads_images: bool
) -> None:
    """A stream skips the post-image lookup of an event only when leading `$match` stages that
    read no image field drop it; anything else is decided on the whole event."""
    pipeline = EventPipeline(stages)
    assert pipeline.reads_images is reads_images


def test_early_rejection_agrees_with_the_whole_pipeline() -> None:
    """An event the early test rejects is one the whole pipeline drops; one it keeps (or
    cannot judge) goes on to the whole pipeline."""
    pipeline = EventPipeline(
        [{"$match": {"ns.coll": "a", "documentKey._id": {"$in": [1, 2]}}}, {"$project": {"x": 0}}]
    )
    kept = {"_id": {"_data": "01"}, "ns": {"db": "d", "coll": "a"}, "documentKey": {"_id": 1}}
    dropped = {**kept, "documentKey": {"_id": 3}}
    unknown = {**kept, "documentKey": {"_id": [1]}}
    assert not pipeline.rejects_early(kept) and pipeline.apply(kept) is not None
    assert pipeline.rejects_early(dropped) and pipeline.apply(dropped) is None
    assert not pipeline.rejects_early(unknown)
