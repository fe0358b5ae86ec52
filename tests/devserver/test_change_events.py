"""Unit tests of the change history, its cursors and updateDescription (no server)."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime
from typing import Any

import bson
import mongomock
import pytest
from bson import Binary, Int64, ObjectId, Timestamp
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import devserver._change_history as history_module
import devserver._changes as changes
from devserver._changes import (
    ChangeHistory,
    ChangeRecord,
    ChangeStreamCursor,
    ResumeToken,
    decode_token,
    describe_update,
)
from devserver._errors import CommandError

WALL = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


# ---- helpers -------------------------------------------------------------------------------


class Server:
    """A history plus a tiny document store and clock, standing in for the core server."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.docs: dict[tuple[str, str, Any], dict[str, Any]] = {}
        self.history = ChangeHistory(max_bytes=max_bytes, lookup=self.lookup)
        self.time = Timestamp(1_700_000_000, 0)

    def lookup(self, db: str, coll: str, key: dict[str, Any]) -> dict[str, Any] | None:
        return self.docs.get((db, coll, key["_id"]))

    def tick(self) -> Timestamp:
        self.time = Timestamp(self.time.time, self.time.inc + 1)
        return self.time

    def commit(self, *records: ChangeRecord, **txn: Any) -> list[dict[str, Any]]:
        return self.history.append(list(records), cluster_time=self.tick(), wall_time=WALL, **txn)

    def insert(
        self, coll: str, doc: dict[str, Any], *, db: str = "d", images: bool = False
    ) -> None:
        self.docs[(db, coll, doc["_id"])] = doc
        self.commit(
            ChangeRecord("insert", db, coll, {"_id": doc["_id"]}, after=doc, images_enabled=images)
        )

    def update(
        self, coll: str, _id: Any, spec: Any, *, db: str = "d", images: bool = False
    ) -> list[dict[str, Any]]:
        before = self.docs[(db, coll, _id)]
        after = apply_update(before, spec)
        self.docs[(db, coll, _id)] = after
        return self.commit(
            ChangeRecord(
                "update",
                db,
                coll,
                {"_id": _id},
                before=before,
                after=after,
                update_spec=spec,
                images_enabled=images,
            )
        )

    def delete(self, coll: str, _id: Any, *, db: str = "d", images: bool = False) -> None:
        before = self.docs.pop((db, coll, _id))
        self.commit(
            ChangeRecord("delete", db, coll, {"_id": _id}, before=before, images_enabled=images)
        )

    def open(
        self,
        *,
        db: str = "d",
        coll: str | None = "c",
        pipeline: list[dict[str, Any]] | None = None,
        **spec: Any,
    ) -> ChangeStreamCursor:
        return self.history.open(
            db=db,
            coll=coll,
            spec=spec,
            pipeline=pipeline or [],
            batch_size=None,
            cluster_time=self.time,
        )


_SCRATCH = mongomock.MongoClient().db.scratch


def _scratch() -> Any:
    """An empty mongomock collection (one shared instance: creating clients is slow)."""
    _SCRATCH.delete_many({})
    return _SCRATCH


def apply_update(before: dict[str, Any], spec: Any) -> dict[str, Any]:
    """The document after `spec`, as mongomock computes it."""
    coll = _scratch()
    coll.insert_one(copy.deepcopy(before))
    coll.update_one({"_id": before["_id"]}, spec)
    after = coll.find_one({"_id": before["_id"]})
    assert after is not None
    return dict(after)


def apply_description(before: dict[str, Any], description: dict[str, Any]) -> dict[str, Any]:
    """Apply an updateDescription the way a consumer patches its copy of the document."""
    doc = copy.deepcopy(before)
    for truncation in description["truncatedArrays"]:
        target: Any = doc
        *parents, last = truncation["field"].split(".")
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        key: Any = int(last) if isinstance(target, list) else last
        del target[key][truncation["newSize"] :]
    coll = _scratch()
    coll.insert_one(doc)
    update: dict[str, Any] = {}
    if description["updatedFields"]:
        update["$set"] = description["updatedFields"]
    if description["removedFields"]:
        update["$unset"] = {f: "" for f in description["removedFields"]}
    if update:
        coll.update_one({"_id": doc["_id"]}, update)
    result = coll.find_one({"_id": doc["_id"]})
    assert result is not None
    return dict(result)


def drain(cursor: ChangeStreamCursor, max_docs: int | None = None) -> list[dict[str, Any]]:
    return asyncio.run(cursor.next_batch(max_docs, 0))


def ops(events: list[dict[str, Any]]) -> list[str]:
    return [e["operationType"] for e in events]


# ---- updateDescription ---------------------------------------------------------------------

BASE = {
    "_id": 1,
    "empty": [],
    "a": {"b": 1, "c": 2},
    "arr": [1, 2, 3],
    "n": 5,
    "s": "x",
    "docs": [{"f": 1}, {"f": 2}],
}


@pytest.mark.parametrize(
    ("spec", "updated", "removed"),
    [
        pytest.param({"$set": {"s": "y"}}, {"s": "y"}, [], id="set-top-level"),
        pytest.param({"$set": {"new": 1}}, {"new": 1}, [], id="set-new-field"),
        pytest.param({"$set": {"a.b": 7}}, {"a.b": 7}, [], id="set-dotted-path"),
        pytest.param(
            {"$set": {"a": {"b": 1, "c": 3}}},
            {"a": {"b": 1, "c": 3}},
            [],
            id="set-whole-subdocument-logs-whole-value",
        ),
        pytest.param(
            {"$set": {"x.y.z": 1}},
            {"x": {"y": {"z": 1}}},
            [],
            id="set-creates-first-missing-ancestor",
        ),
        pytest.param(
            {"$set": {"a.d.e": 1}}, {"a.d": {"e": 1}}, [], id="set-creates-under-existing"
        ),
        pytest.param({"$unset": {"s": ""}}, {}, ["s"], id="unset"),
        pytest.param({"$unset": {"a.b": ""}}, {}, ["a.b"], id="unset-dotted"),
        pytest.param(
            {"$unset": {"arr.1": ""}}, {"arr.1": None}, [], id="unset-array-element-nulls"
        ),
        pytest.param({"$inc": {"n": 2}}, {"n": 7}, [], id="inc"),
        pytest.param({"$inc": {"m": 1}}, {"m": 1}, [], id="inc-missing-creates"),
        pytest.param({"$push": {"arr": 4}}, {"arr.3": 4}, [], id="push-appends-element"),
        pytest.param(
            {"$push": {"arr": {"$each": [4, 5]}}}, {"arr.3": 4, "arr.4": 5}, [], id="push-each"
        ),
        pytest.param({"$push": {"fresh": 1}}, {"fresh": [1]}, [], id="push-creates-array"),
        pytest.param(
            {"$push": {"arr": {"$each": [0], "$position": 0}}},
            {"arr": [0, 1, 2, 3]},
            [],
            id="push-position-logs-whole-array",
        ),
        pytest.param({"$addToSet": {"arr": 9}}, {"arr.3": 9}, [], id="add-to-set-appends"),
        pytest.param({"$push": {"empty": 1}}, {"empty": [1]}, [], id="push-onto-empty-logs-whole"),
        pytest.param({"$addToSet": {"empty": 1}}, {"empty.0": 1}, [], id="add-to-set-onto-empty"),
        pytest.param(
            {"$push": {"arr": {"$each": [4], "$slice": -5}}},
            {"arr": [1, 2, 3, 4]},
            [],
            id="push-slice-logs-whole",
        ),
        pytest.param(
            {"$push": {"arr": {"$each": [4], "$position": 9}}},
            {"arr.3": 4},
            [],
            id="push-position-past-end-appends",
        ),
        pytest.param({"$pull": {"arr": 2}}, {"arr": [1, 3]}, [], id="pull-logs-whole-array"),
        pytest.param({"$pop": {"arr": 1}}, {"arr": [1, 2]}, [], id="pop-logs-whole-array"),
        pytest.param({"$rename": {"s": "t"}}, {"t": "x"}, ["s"], id="rename"),
        pytest.param({"$set": {"arr.1": 20}}, {"arr.1": 20}, [], id="set-array-index"),
        pytest.param({"$set": {"arr.5": 6}}, {"arr.5": 6}, [], id="set-beyond-end-pads"),
        pytest.param({"$set": {"docs.1.f": 3}}, {"docs.1.f": 3}, [], id="set-in-array-element"),
        pytest.param(
            {"$set": {"docs.$[].f": 2}},
            {"docs.0.f": 2},
            [],
            id="all-positional-logs-changed-elements-only",
        ),
        pytest.param({"$set": {"s": "x", "n": 6}}, {"n": 6}, [], id="no-op-modifier-not-logged"),
        pytest.param({"$set": {"n": 5.0}}, {"n": 5.0}, [], id="type-change-is-a-change"),
    ],
)
def test_operator_update_descriptions(
    spec: dict[str, Any], updated: dict[str, Any], removed: list[str]
) -> None:
    """Operator updates log modified paths like MongoDB's $v:2 delta oplog entries."""
    # mongomock lacks $[] and unsetting array elements; those results are written out.
    handmade = {
        "docs.$[].f": {**BASE, "docs": [{"f": 2}, {"f": 2}]},
        "arr.1": {**BASE, "arr": [1, None, 3]} if "$unset" in spec else None,
    }
    path = next(iter(next(iter(spec.values()))))
    after = handmade.get(path) or apply_update(BASE, spec)
    description = describe_update(BASE, after, spec)
    assert description is not None
    assert description.document() == {
        "updatedFields": updated,
        "removedFields": removed,
        "truncatedArrays": [],
    }


def test_positional_update_resolves_to_changed_index() -> None:
    """`arr.$.f` (resolved by the query) is logged as the concrete index that changed."""
    after = {**BASE, "docs": [{"f": 1}, {"f": 5}]}
    description = describe_update(BASE, after, {"$set": {"docs.$.f": 5}})
    assert description is not None
    assert description.updated_fields == {"docs.1.f": 5}


def test_array_filters_resolve_to_changed_indexes() -> None:
    """`$[id]` with arrayFilters logs each element the filter selected and changed."""
    before = {"_id": 1, "docs": [{"f": 1}, {"f": 2}, {"f": 3}]}
    after = {"_id": 1, "docs": [{"f": 1}, {"f": 0}, {"f": 0}]}
    description = describe_update(before, after, {"$set": {"docs.$[big].f": 0}})
    assert description is not None
    assert description.updated_fields == {"docs.1.f": 0, "docs.2.f": 0}


def test_change_the_modifiers_do_not_name_is_still_described() -> None:
    """A document that changed beyond what its modifiers name is diffed, never dropped."""
    before = {**BASE, "other": 1}
    after = {**BASE, "other": 2}
    description = describe_update(before, after, {"$set": {"n": 5}})
    assert description is not None
    assert description.updated_fields == {"other": 2}


def test_no_op_update_has_empty_description() -> None:
    """An update that leaves the document unchanged yields an empty description."""
    description = describe_update(BASE, copy.deepcopy(BASE), {"$set": {"n": 5}})
    assert description is not None and description.is_empty()


BIG = {
    "_id": 1,
    "title": "t" * 200,
    "arr": list(range(20)),
    "sub": {"x": 1, "y": "y" * 100},
    "keep": "k" * 100,
}


@pytest.mark.parametrize(
    ("after", "updated", "removed", "truncated"),
    [
        pytest.param(
            {**BIG, "arr": list(range(10))},
            {},
            [],
            [{"field": "arr", "newSize": 10}],
            id="slice-truncates",
        ),
        pytest.param(
            {**BIG, "arr": [*range(9), 99]},
            {"arr.9": 99},
            [],
            [{"field": "arr", "newSize": 10}],
            id="truncate-and-change",
        ),
        pytest.param({**BIG, "arr": [*range(20), 20]}, {"arr.20": 20}, [], [], id="append"),
        pytest.param(
            {**BIG, "arr": [5, 6]},
            {"arr": [5, 6]},
            [],
            [],
            id="short-array-logged-whole-when-smaller",
        ),
        pytest.param(
            {**BIG, "sub": {"x": 2, "y": "y" * 100}},
            {"sub.x": 2},
            [],
            [],
            id="subdocument-becomes-dotted-path",
        ),
        pytest.param(
            {k: v for k, v in BIG.items() if k != "keep"}, {}, ["keep"], [], id="removed-field"
        ),
        pytest.param({**BIG, "new": 1}, {"new": 1}, [], [], id="added-field"),
        pytest.param(
            {**BIG, "arr": "now a string"}, {"arr": "now a string"}, [], [], id="type-change"
        ),
    ],
)
def test_pipeline_update_descriptions(
    after: dict[str, Any],
    updated: dict[str, Any],
    removed: list[str],
    truncated: list[dict[str, Any]],
) -> None:
    """Pipeline updates are diffed: dotted paths, appended `arr.N`, truncatedArrays."""
    description = describe_update(BIG, after, [{"$set": {"x": 1}}])
    assert description is not None
    assert description.document() == {
        "updatedFields": updated,
        "removedFields": removed,
        "truncatedArrays": truncated,
    }


def test_small_subdocument_change_is_logged_whole() -> None:
    """A sub-diff no smaller than the sub-document is replaced by the whole value (doc_diff)."""
    before = {**BIG, "tiny": {"b": 1}}
    after = {**BIG, "tiny": {"b": 2}}
    description = describe_update(before, after, [{"$set": {"tiny.b": 2}}])
    assert description is not None
    assert description.updated_fields == {"tiny": {"b": 2}}


def test_pipeline_update_of_small_document_is_a_replacement() -> None:
    """When the delta is larger than the document, MongoDB logs a replacement instead."""
    before = {"_id": 1, "a": 1}
    assert describe_update(before, {"_id": 1, "a": 2}, [{"$set": {"a": 2}}]) is None


_names = st.sampled_from(["a", "b", "c"])
_scalars = st.one_of(st.integers(-5, 5), st.text("xy", max_size=2), st.booleans(), st.none())
_flat = st.one_of(_scalars, st.lists(_scalars, max_size=4))
# Two levels of nesting, built directly: st.recursive is slow to draw from.
_values = st.one_of(
    _flat,
    st.dictionaries(_names, _flat, max_size=3),
    st.lists(st.dictionaries(_names, _scalars, max_size=2), max_size=3),
)
_documents = st.dictionaries(_names, _values, max_size=3).map(lambda d: {"_id": 1, **d})
# Padding keeps pipeline diffs smaller than the document, so they stay updates.
_padded = _documents.map(lambda d: {"_id": 1, "pad": "p" * 300, **d})
_paths = st.one_of(
    _names,
    st.tuples(_names, _names).map(".".join),
    st.tuples(_names, st.sampled_from(["0", "1", "3"])).map(".".join),
)


@st.composite
def _operator_updates(draw: st.DrawFn) -> dict[str, Any]:
    operator = draw(
        st.sampled_from(
            ["$set", "$unset", "$inc", "$push", "$pull", "$pop", "$rename", "$addToSet", "$max"]
        )
    )
    paths = draw(st.lists(_paths, min_size=1, max_size=2, unique=True))
    fields: dict[str, Any] = {}
    for path in paths:
        if operator == "$inc":
            fields[path] = draw(st.integers(-2, 2))
        elif operator == "$pop":
            fields[path] = draw(st.sampled_from([1, -1]))
        elif operator == "$rename":
            fields[path] = draw(_names.filter(lambda n, p=path: n != p.split(".")[0]))
        elif operator == "$unset":
            fields[path] = ""
        else:
            fields[path] = draw(_values)
    return {operator: fields}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=_documents, spec=_operator_updates())
def test_operator_description_replays_to_after(
    before: dict[str, Any], spec: dict[str, Any]
) -> None:
    """Applying the updateDescription of a random operator update to `before` gives `after`."""
    try:
        after = apply_update(before, spec)
    except Exception:  # mongomock refused the update (type errors, conflicts): not a case
        assume(False)
        raise
    description = describe_update(before, after, spec)
    assert description is not None
    assert apply_description(before, description.document()) == after


def _edit(draw: st.DrawFn, value: Any) -> Any:
    """`value` with a random edit: kept, replaced, cut or extended, or edited inside."""
    choice = draw(st.sampled_from(["keep", "replace", "cut", "extend", "inside"]))
    if choice == "replace":
        return draw(_values)
    if isinstance(value, list):
        if choice == "cut":
            return value[: draw(st.integers(0, len(value)))]
        if choice == "extend":
            return value + draw(st.lists(_scalars, min_size=1, max_size=2))
        if choice == "inside":
            return [_edit(draw, v) for v in value]
    if isinstance(value, dict) and choice != "keep":
        edited = {k: _edit(draw, v) for k, v in value.items() if draw(st.booleans())}
        return {**edited, **draw(st.dictionaries(_names, _scalars, max_size=1))}
    return value


@st.composite
def _edited_pairs(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    # Arrays at several depths, so cuts and appends (truncatedArrays, arr.N) come up often.
    arrays = {
        "arr": draw(st.lists(_scalars, min_size=1, max_size=5)),
        "sub": {"inner": draw(st.lists(_scalars, min_size=1, max_size=5)), "k": 1},
        "docs": draw(st.lists(st.dictionaries(_names, _flat, max_size=2), min_size=1, max_size=3)),
    }
    before = {**draw(_padded), **arrays}
    kept = {
        k: v if k in ("_id", "pad") else _edit(draw, v)
        for k, v in before.items()
        if k in ("_id", "pad") or draw(st.booleans())
    }
    return before, {**kept, **draw(st.dictionaries(_names, _values, max_size=1))}


@settings(max_examples=200, deadline=None)
@given(pair=st.one_of(_edited_pairs(), st.tuples(_padded, _padded)))
def test_pipeline_description_replays_to_after(
    pair: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    """Applying a pipeline update's description to `before` gives `after` (up to field order)."""
    before, after = pair
    description = describe_update(before, after, [{"$replaceWith": "$$ROOT"}])
    assume(description is not None)
    assert description is not None
    if description.is_empty():
        assert before == after
        return
    assert apply_description(before, description.document()) == after


# ---- events --------------------------------------------------------------------------------


def test_document_events_have_mongodb_fields() -> None:
    """insert/update/replace/delete carry _id, operationType, clusterTime, wallTime, ns..."""
    server = Server()
    cursor = server.open()
    server.insert("c", {"_id": 1, "a": 1})
    server.update("c", 1, {"$set": {"a": 2}})
    server.commit(
        ChangeRecord(
            "replace", "d", "c", {"_id": 1}, before={"_id": 1, "a": 2}, after={"_id": 1, "z": 0}
        )
    )
    server.delete("c", 1)
    events = drain(cursor)
    assert ops(events) == ["insert", "update", "replace", "delete"]
    insert, update, replace, delete = events
    assert set(insert) == {
        "_id",
        "operationType",
        "clusterTime",
        "wallTime",
        "fullDocument",
        "ns",
        "documentKey",
    }
    assert insert["fullDocument"] == {"_id": 1, "a": 1}
    assert insert["ns"] == {"db": "d", "coll": "c"}
    assert insert["documentKey"] == {"_id": 1}
    assert isinstance(insert["clusterTime"], Timestamp)
    assert insert["wallTime"] == WALL.replace(tzinfo=None)
    assert "fullDocument" not in update
    assert update["updateDescription"] == {
        "updatedFields": {"a": 2},
        "removedFields": [],
        "truncatedArrays": [],
    }
    assert replace["fullDocument"] == {"_id": 1, "z": 0}
    assert "fullDocument" not in delete and delete["documentKey"] == {"_id": 1}
    assert [e["clusterTime"] for e in events] == sorted(e["clusterTime"] for e in events)
    assert [e["_id"]["_data"] for e in events] == sorted(e["_id"]["_data"] for e in events)


def test_no_op_update_produces_no_event() -> None:
    """An update that changes nothing is not recorded and no event is shown."""
    server = Server()
    server.insert("c", {"_id": 1, "a": 1})
    cursor = server.open()
    assert server.update("c", 1, {"$set": {"a": 1}}) == []
    assert drain(cursor) == []


def test_transaction_events_share_cluster_time_and_carry_lsid() -> None:
    """A committed transaction's events share clusterTime, keep order, carry lsid+txnNumber."""
    server = Server()
    cursor = server.open()
    lsid = {"id": "session-uuid"}
    server.commit(
        ChangeRecord("insert", "d", "c", {"_id": 1}, after={"_id": 1}),
        ChangeRecord("insert", "d", "other", {"_id": 2}, after={"_id": 2}),
        ChangeRecord("insert", "d", "c", {"_id": 3}, after={"_id": 3}),
        lsid=lsid,
        txn_number=7,
    )
    events = drain(cursor)
    assert [e["documentKey"]["_id"] for e in events] == [1, 3]
    assert events[0]["clusterTime"] == events[1]["clusterTime"]
    assert events[0]["_id"]["_data"] < events[1]["_id"]["_data"]
    for event in events:
        assert event["lsid"] == lsid
        assert event["txnNumber"] == Int64(7) and isinstance(event["txnNumber"], Int64)
        assert "txnOpIndex" not in event


def test_non_transactional_events_have_no_lsid() -> None:
    """Writes outside a transaction produce events without lsid or txnNumber."""
    server = Server()
    cursor = server.open()
    server.insert("c", {"_id": 1})
    (event,) = drain(cursor)
    assert "lsid" not in event and "txnNumber" not in event


@pytest.mark.parametrize(
    ("spec", "images", "expected"),
    [
        pytest.param({}, True, None, id="default-has-no-fullDocument"),
        pytest.param(
            {"fullDocument": "updateLookup"},
            False,
            {"_id": 1, "a": 3},
            id="updateLookup-reads-current",
        ),
        pytest.param(
            {"fullDocument": "whenAvailable"},
            True,
            {"_id": 1, "a": 2},
            id="whenAvailable-post-image",
        ),
        pytest.param({"fullDocument": "whenAvailable"}, False, "null", id="whenAvailable-null"),
        pytest.param(
            {"fullDocument": "required"}, True, {"_id": 1, "a": 2}, id="required-post-image"
        ),
    ],
)
def test_full_document_options(spec: dict[str, Any], images: bool, expected: Any) -> None:
    """fullDocument on update events follows the option and the collection's images."""
    server = Server()
    server.insert("c", {"_id": 1, "a": 1}, images=images)
    cursor = server.open(**spec)
    server.update("c", 1, {"$set": {"a": 2}}, images=images)
    server.update("c", 1, {"$set": {"a": 3}}, images=images)
    first = drain(cursor)[0]
    if expected is None:
        assert "fullDocument" not in first
    else:
        assert first["fullDocument"] == (None if expected == "null" else expected)


def test_full_document_required_without_images_fails() -> None:
    """fullDocument: required on a collection without post-images fails with 47."""
    server = Server()
    server.insert("c", {"_id": 1, "a": 1})
    cursor = server.open(fullDocument="required")
    server.update("c", 1, {"$set": {"a": 2}})
    with pytest.raises(CommandError) as caught:
        drain(cursor)
    assert caught.value.code == 47 and caught.value.code_name == "NoMatchingDocument"
    assert caught.value.message.startswith(
        "Change stream was configured to require a post-image for all update events"
    )


@pytest.mark.parametrize(
    ("mode", "images", "expected"),
    [
        pytest.param("off", True, "absent", id="off"),
        pytest.param("whenAvailable", True, {"_id": 1, "a": 1}, id="whenAvailable-pre-image"),
        pytest.param("whenAvailable", False, None, id="whenAvailable-null"),
        pytest.param("required", True, {"_id": 1, "a": 1}, id="required"),
        pytest.param("required", False, 47, id="required-missing-fails"),
    ],
)
def test_full_document_before_change(mode: str, images: bool, expected: Any) -> None:
    """fullDocumentBeforeChange uses pre-images only where the collection records them."""
    server = Server()
    server.insert("c", {"_id": 1, "a": 1}, images=images)
    cursor = server.open(fullDocumentBeforeChange=mode)
    server.update("c", 1, {"$set": {"a": 2}}, images=images)
    if expected == 47:
        with pytest.raises(CommandError) as caught:
            drain(cursor)
        assert caught.value.code == 47
        assert "pre-image for all update, delete and replace events" in caught.value.message
        return
    (event,) = drain(cursor)
    if expected == "absent":
        assert "fullDocumentBeforeChange" not in event
    else:
        assert event["fullDocumentBeforeChange"] == expected


def test_delete_pre_image() -> None:
    """A delete on a collection with images shows the deleted document as the pre-image."""
    server = Server()
    server.insert("c", {"_id": 1, "a": 1}, images=True)
    cursor = server.open(fullDocumentBeforeChange="whenAvailable")
    server.delete("c", 1, images=True)
    (event,) = drain(cursor)
    assert event["fullDocumentBeforeChange"] == {"_id": 1, "a": 1}


# ---- invalidation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(ChangeRecord("drop", "d", "c"), id="drop"),
        pytest.param(ChangeRecord("rename", "d", "c", to=("d", "c2")), id="rename"),
    ],
)
def test_collection_stream_invalidated(record: ChangeRecord) -> None:
    """A collection stream sees the drop/rename, then invalidate, then is exhausted."""
    server = Server()
    cursor = server.open()
    server.commit(record)
    server.insert("c", {"_id": 1})
    events = drain(cursor)
    assert ops(events) == [record.op, "invalidate"]
    assert cursor.exhausted
    assert set(events[1]) == {"_id", "operationType", "clusterTime", "wallTime"}
    assert cursor.post_batch_resume_token == events[1]["_id"]
    assert drain(cursor) == []
    if record.op == "rename":
        assert events[0]["to"] == {"db": "d", "coll": "c2"}


def test_invalidate_waits_for_room_in_batch() -> None:
    """With batch size 1, the drop comes first and the invalidate in the next batch."""
    server = Server()
    cursor = server.open()
    server.commit(ChangeRecord("drop", "d", "c"))
    assert ops(drain(cursor, 1)) == ["drop"]
    assert not cursor.exhausted
    assert ops(drain(cursor, 1)) == ["invalidate"]
    assert cursor.exhausted


def test_database_stream_sees_drops_and_is_invalidated_by_drop_database() -> None:
    """A database stream sees collection drops and ends with dropDatabase + invalidate."""
    server = Server()
    cursor = server.open(coll=None)
    assert cursor.ns == "d.$cmd.aggregate"
    server.insert("a", {"_id": 1})
    server.insert("b", {"_id": 1}, db="other")
    server.commit(ChangeRecord("drop", "d", "a"))
    server.commit(ChangeRecord("dropDatabase", "d", None))
    events = drain(cursor)
    assert ops(events) == ["insert", "drop", "dropDatabase", "invalidate"]
    assert events[2]["ns"] == {"db": "d"}
    assert cursor.exhausted


def test_cluster_stream_sees_every_database_and_is_never_invalidated() -> None:
    """allChangesForCluster on admin sees all user databases and survives dropDatabase."""
    server = Server()
    cursor = server.open(db="admin", coll=None, allChangesForCluster=True)
    assert cursor.ns == "admin.$cmd.aggregate"
    server.insert("a", {"_id": 1})
    server.insert("b", {"_id": 1}, db="other")
    server.insert("x", {"_id": 1}, db="config")
    server.insert("system.views", {"_id": 1})
    server.commit(ChangeRecord("dropDatabase", "other", None))
    server.insert("a", {"_id": 2})
    events = drain(cursor)
    assert ops(events) == ["insert", "insert", "dropDatabase", "insert"]
    assert not cursor.exhausted


def test_resume_after_invalidate_is_refused_and_start_after_works() -> None:
    """resumeAfter an invalidate token fails with 260; startAfter it opens a new stream."""
    server = Server()
    cursor = server.open()
    server.commit(ChangeRecord("drop", "d", "c"))
    invalidate = drain(cursor)[-1]
    with pytest.raises(CommandError) as caught:
        server.open(resumeAfter=invalidate["_id"])
    assert caught.value.code == 260 and caught.value.code_name == "InvalidResumeToken"
    assert caught.value.message == (
        "Attempting to resume a change stream using 'resumeAfter' is not allowed from an "
        "invalidate notification"
    )
    after = server.open(startAfter=invalidate["_id"])
    server.insert("c", {"_id": 5})
    assert [e["documentKey"] for e in drain(after)] == [{"_id": 5}]


def test_resume_after_drop_token_gives_invalidate() -> None:
    """Resuming a collection stream after its drop event delivers the invalidate."""
    server = Server()
    cursor = server.open()
    server.commit(ChangeRecord("drop", "d", "c"))
    drop = drain(cursor, 1)[0]
    resumed = server.open(resumeAfter=drop["_id"])
    assert ops(drain(resumed)) == ["invalidate"]
    assert resumed.exhausted


# ---- resuming ------------------------------------------------------------------------------


def test_resume_after_each_event_returns_the_rest() -> None:
    """resumeAfter any event's token returns exactly the events after it."""
    server = Server()
    cursor = server.open()
    for i in range(6):
        server.insert("c", {"_id": i})
    events = drain(cursor)
    for k, event in enumerate(events):
        resumed = server.open(resumeAfter=event["_id"])
        assert [e["documentKey"]["_id"] for e in drain(resumed)] == list(range(k + 1, 6))


def test_start_at_operation_time_is_inclusive() -> None:
    """startAtOperationTime T returns events with clusterTime >= T, even in the past."""
    server = Server()
    for i in range(4):
        server.insert("c", {"_id": i})
    everything = drain(server.open(startAtOperationTime=Timestamp(0, 1)))
    third = everything[2]["clusterTime"]
    events = drain(server.open(startAtOperationTime=third))
    assert [e["documentKey"]["_id"] for e in events] == [2, 3]


def test_start_at_future_time_skips_until_then() -> None:
    """A start time in the future is accepted and skips earlier events."""
    server = Server()
    future = Timestamp(server.time.time + 10, 0)
    cursor = server.open(startAtOperationTime=future)
    server.insert("c", {"_id": 1})
    assert drain(cursor) == []
    assert cursor.post_batch_resume_token == ResumeToken.high_water_mark(future).document()
    server.time = Timestamp(future.time, 0)
    server.insert("c", {"_id": 2})
    assert [e["documentKey"] for e in drain(cursor)] == [{"_id": 2}]


def test_post_batch_resume_token_advances_and_resumes_without_rereading() -> None:
    """An empty batch's postBatchResumeToken is a high-water mark past unrelated events."""
    server = Server()
    cursor = server.open()
    initial = cursor.post_batch_resume_token
    server.insert("elsewhere", {"_id": 1})
    assert drain(cursor) == []
    moved = cursor.post_batch_resume_token
    assert moved["_data"] > initial["_data"]
    server.insert("c", {"_id": 2})
    resumed = server.open(resumeAfter=moved)
    assert [e["documentKey"] for e in drain(resumed)] == [{"_id": 2}]
    batch = drain(cursor)
    assert cursor.post_batch_resume_token["_data"] >= batch[-1]["_id"]["_data"]


def test_fresh_stream_token_resumes_after_existing_events() -> None:
    """Resuming from a new stream's initial token does not replay earlier writes."""
    server = Server()
    server.insert("c", {"_id": 1})
    token = server.open().post_batch_resume_token
    server.insert("c", {"_id": 2})
    assert [e["documentKey"] for e in drain(server.open(resumeAfter=token))] == [{"_id": 2}]


def test_unknown_resume_token_is_fatal() -> None:
    """An event token whose event is not in the retained history fails with 280."""
    server = Server()
    server.insert("c", {"_id": 1})
    bogus = ResumeToken(server.time.time, server.time.inc, txn_op_index=3).document()
    server.insert("c", {"_id": 2})
    server.insert("c", {"_id": 3})
    server.insert("c", {"_id": 4})
    server.insert("c", {"_id": 5})
    server.insert("c", {"_id": 6})
    with pytest.raises(CommandError) as caught:
        server.open(resumeAfter=bogus)
    assert caught.value.code == 280


def test_token_older_than_history_is_history_lost() -> None:
    """A token from before everything retained (a previous server's) gets 286, not 280."""
    server = Server()
    server.insert("c", {"_id": 1})
    stale = ResumeToken(server.time.time - 100, 1).document()
    with pytest.raises(CommandError) as caught:
        server.open(resumeAfter=stale)
    assert caught.value.code == 286
    empty = Server()
    with pytest.raises(CommandError) as caught:
        empty.open(resumeAfter=stale)
    assert caught.value.code == 286


@pytest.mark.parametrize(
    "token",
    [
        pytest.param({"_data": "zz"}, id="not-hex"),
        pytest.param({"_data": 5}, id="wrong-type"),
        pytest.param("plain", id="not-a-document"),
    ],
)
def test_malformed_resume_tokens_are_rejected(token: Any) -> None:
    """Malformed resume tokens fail the aggregate with an error, not a crash."""
    with pytest.raises(CommandError):
        Server().open(resumeAfter=token)


def test_tokens_sort_like_positions() -> None:
    """Token strings order like (clusterTime, kind, txnOpIndex, invalidate, fragment)."""
    tokens = [
        ResumeToken(1, 5, kind=0),
        ResumeToken(1, 5),
        ResumeToken(1, 5, txn_op_index=1),
        ResumeToken(1, 5, txn_op_index=1, from_invalidate=True),
        ResumeToken(1, 6),
        ResumeToken(2, 0, kind=0),
        ResumeToken(2, 0, fragment=3),
    ]
    assert sorted(tokens, key=lambda t: t.hex()) == sorted(tokens) == tokens
    for token in tokens:
        assert decode_token(token.document(), "resumeAfter") == token


# ---- history bounds ------------------------------------------------------------------------


def test_history_lost_when_resume_point_dropped() -> None:
    """Resuming from a point older than the retained history fails with 286."""
    server = Server(max_bytes=2_000)
    cursor = server.open()
    server.insert("c", {"_id": 0, "pad": "x" * 100})
    first = drain(cursor)[0]
    start = first["clusterTime"]
    for i in range(1, 40):
        server.insert("c", {"_id": i, "pad": "x" * 100})
    assert server.history.size_bytes <= 2_000
    for spec in (
        {"resumeAfter": first["_id"]},
        {"startAtOperationTime": start},
        {"startAfter": first["_id"]},
    ):
        with pytest.raises(CommandError) as caught:
            server.open(**spec)
        error = caught.value
        assert (error.code, error.code_name) == (286, "ChangeStreamHistoryLost")
        assert error.message == (
            "Resume of change stream was not possible, as the resume point may no longer be in "
            "the oplog."
        )
    assert server.open(startAtOperationTime=server.time) is not None
    future = Timestamp(server.time.time + 100, 0)
    assert server.open(startAtOperationTime=future) is not None


def _sized_insert(server: Server, doc: dict[str, Any], **txn: Any) -> list[dict[str, Any]]:
    """An insert whose record carries the document's size, as the server's insert path does."""
    record = ChangeRecord(
        "insert", "d", "c", {"_id": doc["_id"]}, after=doc, after_size=len(bson.encode(doc))
    )
    return server.commit(record, **txn)


@pytest.mark.parametrize(
    "doc_id",
    [
        pytest.param(ObjectId(), id="objectid"),
        pytest.param(7, id="int32"),
        pytest.param(2**40, id="int64"),
        pytest.param("k\u00e9y", id="string"),
        pytest.param({"a": 1, "b": [1, 2]}, id="sub-document"),
        pytest.param(Int64(3), id="Int64"),
        pytest.param(1.5, id="double"),
    ],
)
@pytest.mark.parametrize("in_transaction", [False, True], ids=["plain", "transaction"])
def test_estimated_entry_size_is_the_encoded_size(doc_id: Any, in_transaction: bool) -> None:
    """An insert or replace entry sized from its document's known size measures what BSON says."""
    server = Server()
    txn: dict[str, Any] = {}
    if in_transaction:
        txn = {"lsid": {"id": Binary(b"\x01" * 16, 4)}, "txn_number": 5}
    doc = {"_id": doc_id, "name": "user", "tags": ["a", "b"], "n": 3}
    (entry,) = _sized_insert(server, doc, **txn)
    replaced = {"_id": doc_id, "other": "x" * 50}
    (replace_entry,) = server.commit(
        ChangeRecord(
            "replace",
            "d",
            "c",
            {"_id": doc_id},
            before=doc,
            after=replaced,
            after_size=len(bson.encode(replaced)),
        ),
        **txn,
    )
    assert server.history.size_bytes == len(bson.encode(entry)) + len(bson.encode(replace_entry))


def test_size_is_measured_when_the_record_does_not_know_it() -> None:
    """Entries without a known document size (updates, images, no hint) are measured."""
    server = Server()
    server.insert("c", {"_id": 1, "a": 1}, images=True)
    server.update("c", 1, {"$set": {"a": "x" * 30}}, images=True)
    server.delete("c", 1, images=True)
    assert server.history.size_bytes == sum(len(bson.encode(e)) for e in server.history.retained)


def test_history_bound_holds_with_estimated_sizes() -> None:
    """With sizes estimated from the documents, the bound still trims the oldest entries and a
    stream resuming before them gets 286."""
    server = Server(max_bytes=2_000)
    cursor = server.open()
    first = _sized_insert(server, {"_id": 0, "pad": "x" * 100})[0]
    for i in range(1, 40):
        _sized_insert(server, {"_id": i, "pad": "x" * 100})
    retained = server.history.retained
    assert server.history.size_bytes <= 2_000
    assert server.history.size_bytes == sum(len(bson.encode(e)) for e in retained)
    assert 0 < len(retained) < 40
    assert retained[-1]["documentKey"] == {"_id": 39}
    with pytest.raises(CommandError) as caught:
        server.open(startAtOperationTime=first["ts"])
    assert caught.value.code == 286
    with pytest.raises(CommandError) as caught:
        drain(cursor)
    assert caught.value.code == 286


def test_idle_cursor_that_fell_behind_gets_history_lost() -> None:
    """A getMore on a cursor whose next events were dropped while idle fails with 286."""
    server = Server(max_bytes=2_000)
    cursor = server.open()
    for i in range(40):
        server.insert("c", {"_id": i, "pad": "x" * 100})
    with pytest.raises(CommandError) as caught:
        drain(cursor)
    assert caught.value.code == 286


def test_future_start_survives_dropping_older_entries() -> None:
    """Dropping entries older than a stream's future start time does not lose its history."""
    server = Server(max_bytes=2_000)
    future = Timestamp(server.time.time + 1, 0)
    cursor = server.open(startAtOperationTime=future)
    for i in range(40):
        server.insert("c", {"_id": i, "pad": "x" * 100})
    assert drain(cursor) == []
    server.time = future
    server.insert("c", {"_id": "late"})
    assert [e["documentKey"] for e in drain(cursor)] == [{"_id": "late"}]


def test_restore_reloads_entries_and_trims() -> None:
    """Entries returned by append and restored at start-up give the same events."""
    server = Server()
    cursor = server.open()
    stored: list[dict[str, Any]] = []
    for i in range(5):
        stored += server.history.append(
            [ChangeRecord("insert", "d", "c", {"_id": i}, after={"_id": i})],
            cluster_time=server.tick(),
            wall_time=WALL,
        )
    original = drain(cursor)
    restarted = ChangeHistory(max_bytes=1 << 20, lookup=server.lookup)
    restarted.restore(copy.deepcopy(stored))
    again = restarted.open(
        db="d",
        coll="c",
        spec={"startAtOperationTime": Timestamp(0, 1)},
        pipeline=[],
        batch_size=None,
        cluster_time=server.time,
    )
    assert asyncio.run(again.next_batch(None, 0)) == original
    partial = ChangeHistory(max_bytes=1 << 20, lookup=server.lookup)
    partial.restore(copy.deepcopy(stored[2:]))
    with pytest.raises(CommandError) as caught:
        partial.open(
            db="d",
            coll="c",
            spec={"resumeAfter": original[0]["_id"]},
            pipeline=[],
            batch_size=None,
            cluster_time=server.time,
        )
    assert caught.value.code == 286


# ---- options and pipelines -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("db", "coll", "spec", "code"),
    [
        pytest.param("d", "c", {"fullDocument": "sometimes"}, 2, id="bad-fullDocument"),
        pytest.param("d", "c", {"fullDocument": 1}, 14, id="fullDocument-type"),
        pytest.param("d", "c", {"fullDocumentBeforeChange": "always"}, 2, id="bad-before-change"),
        pytest.param("d", "c", {"bogus": 1}, 40415, id="unknown-option"),
        pytest.param(
            "d",
            "c",
            {
                "resumeAfter": ResumeToken(1, 1).document(),
                "startAfter": ResumeToken(1, 1).document(),
            },
            50865,
            id="resumeAfter-and-startAfter",
        ),
        pytest.param(
            "d",
            "c",
            {"resumeAfter": ResumeToken(1, 1).document(), "startAtOperationTime": Timestamp(1, 1)},
            40674,
            id="token-and-time",
        ),
        pytest.param("d", None, {"allChangesForCluster": True}, 72, id="cluster-not-on-admin"),
        pytest.param("admin", None, {}, 73, id="admin-without-cluster"),
        pytest.param("local", "oplog.rs", {}, 73, id="local"),
        pytest.param("d", "system.views", {}, 73, id="system-collection"),
        pytest.param("d", "c", {"startAtOperationTime": 5}, 14, id="time-type"),
    ],
)
def test_bad_options_are_rejected(
    db: str, coll: str | None, spec: dict[str, Any], code: int
) -> None:
    """Invalid $changeStream options fail with MongoDB's codes."""
    with pytest.raises(CommandError) as caught:
        Server().open(db=db, coll=coll, **spec)
    assert caught.value.code == code


def test_show_expanded_events_is_accepted() -> None:
    """showExpandedEvents is accepted and document events still flow."""
    server = Server()
    cursor = server.open(showExpandedEvents=True)
    server.insert("c", {"_id": 1})
    assert ops(drain(cursor)) == ["insert"]


@pytest.mark.parametrize(
    ("pipeline", "code"),
    [
        pytest.param([{"$group": {"_id": None}}], 20, id="group-not-permitted"),
        pytest.param([{"$changeStream": {}}], 40602, id="second-changeStream"),
        pytest.param(
            [{"$changeStreamSplitLargeEvent": {}}, {"$match": {}}], 7182802, id="split-not-last"
        ),
        pytest.param([{"$match": {"a": {"$bogus": 1}}}], None, id="bad-match-operator"),
    ],
)
def test_bad_pipelines_are_rejected(pipeline: list[dict[str, Any]], code: int | None) -> None:
    """Stages a change stream does not allow fail the aggregate with a clear error."""
    with pytest.raises(CommandError) as caught:
        Server().open(pipeline=pipeline)
    if code is not None:
        assert caught.value.code == code


@pytest.mark.parametrize(
    ("pipeline", "expected"),
    [
        pytest.param([{"$match": {"operationType": "update"}}], [2], id="match-operationType"),
        pytest.param(
            [{"$match": {"ns.coll": {"$in": ["c", "x"]}}}], [1, 2, 3], id="match-ns-coll-in"
        ),
        pytest.param([{"$match": {"fullDocument.a": {"$gte": 1}}}], [1], id="match-fullDocument"),
        pytest.param([{"$match": {"lsid": {"$exists": True}}}], [3], id="match-lsid"),
        pytest.param(
            [{"$match": {"clusterTime": {"$gte": Timestamp(1_700_000_000, 2)}}}],
            [2, 3, 4],
            id="match-clusterTime",
        ),
    ],
)
def test_match_filters_events(pipeline: list[dict[str, Any]], expected: list[int]) -> None:
    """$match after $changeStream filters on any event field."""
    server = Server()
    cursor = server.open(coll=None, pipeline=pipeline)
    server.insert("c", {"_id": 1, "a": 1})
    server.update("c", 1, {"$set": {"a": 0}})
    server.commit(
        ChangeRecord("insert", "d", "x", {"_id": 3}, after={"_id": 3}), lsid={"id": 1}, txn_number=1
    )
    server.insert("y", {"_id": 4})
    # Events are numbered by write: the update of document 1 is write 2.
    events = drain(cursor)
    assert [2 if e["operationType"] == "update" else e["documentKey"]["_id"] for e in events] == (
        expected
    )


@pytest.mark.parametrize(
    ("pipeline", "check"),
    [
        pytest.param(
            [{"$project": {"operationType": 1, "documentKey": 1}}],
            lambda e: set(e) == {"_id", "operationType", "documentKey"},
            id="project",
        ),
        pytest.param(
            [{"$addFields": {"extra": "$fullDocument.a"}}],
            lambda e: e["extra"] == 1,
            id="addFields",
        ),
        pytest.param([{"$set": {"flag": True}}], lambda e: e["flag"] is True, id="set"),
        pytest.param(
            [{"$unset": ["wallTime", "clusterTime"]}],
            lambda e: "wallTime" not in e and "clusterTime" not in e,
            id="unset",
        ),
        pytest.param(
            [{"$replaceRoot": {"newRoot": {"_id": "$_id", "k": "$documentKey"}}}],
            lambda e: e["k"] == {"_id": 1},
            id="replaceRoot",
        ),
        pytest.param(
            [{"$replaceWith": {"_id": "$_id", "op": "$operationType"}}],
            lambda e: e["op"] == "insert",
            id="replaceWith",
        ),
    ],
)
def test_transforming_stages(pipeline: list[dict[str, Any]], check: Any) -> None:
    """$project, $addFields/$set, $unset, $replaceRoot/$replaceWith reshape events."""
    server = Server()
    cursor = server.open(pipeline=pipeline)
    server.insert("c", {"_id": 1, "a": 1, "sub": {"x": 1}})
    (event,) = drain(cursor)
    assert check(event)
    assert event["_id"]["_data"]


def test_stages_do_not_alter_stored_history() -> None:
    """A reshaping stage works on a copy: other streams see the original event."""
    server = Server()
    shaped = server.open(pipeline=[{"$addFields": {"fullDocument.sub.y": 2}}])
    plain = server.open()
    server.insert("c", {"_id": 1, "sub": {"x": 1}})
    assert drain(shaped)[0]["fullDocument"]["sub"] == {"x": 1, "y": 2}
    assert drain(plain)[0]["fullDocument"]["sub"] == {"x": 1}


@pytest.mark.parametrize(
    "pipeline",
    [
        pytest.param([{"$project": {"_id": 0}}], id="project-out-id"),
        pytest.param([{"$set": {"_id": "mine"}}], id="set-id"),
    ],
)
def test_modifying_id_is_fatal(pipeline: list[dict[str, Any]]) -> None:
    """A pipeline that changes the resume token fails with ChangeStreamFatalError 280."""
    server = Server()
    cursor = server.open(pipeline=pipeline)
    server.insert("c", {"_id": 1})
    with pytest.raises(CommandError) as caught:
        drain(cursor)
    assert (caught.value.code, caught.value.code_name) == (280, "ChangeStreamFatalError")
    assert "was modified by the pipeline" in caught.value.message


def test_split_large_event_fragments_and_resumes() -> None:
    """Events over 16 MiB split into fragments with splitEvent; resuming mid-event works."""
    server = Server(max_bytes=1 << 30)
    big = "x" * (6 * 1024 * 1024)
    server.insert("c", {"_id": 1, "a": big}, images=True)
    split = [{"$changeStreamSplitLargeEvent": {}}]
    cursor = server.open(
        pipeline=split, fullDocument="updateLookup", fullDocumentBeforeChange="required"
    )
    server.update("c", 1, {"$set": {"b": big}}, images=True)
    batches = [drain(cursor)]
    while batches[-1] and len(batches) < 10:
        batches.append(drain(cursor))
    # Each fragment is near 16 MiB, so a reply carries one (a reply stays under 16 MiB).
    assert all(len(batch) <= 1 for batch in batches)
    fragments = [fragment for batch in batches for fragment in batch]
    assert [f["splitEvent"] for f in fragments] == [
        {"fragment": n, "of": len(fragments)} for n in range(1, len(fragments) + 1)
    ]
    assert len(fragments) >= 2
    merged: dict[str, Any] = {}
    for fragment in fragments:
        merged.update({k: v for k, v in fragment.items() if k not in ("_id", "splitEvent")})
    assert merged["operationType"] == "update"
    assert merged["fullDocumentBeforeChange"]["a"] == big
    resumed = server.open(
        pipeline=split,
        fullDocument="updateLookup",
        fullDocumentBeforeChange="required",
        resumeAfter=fragments[0]["_id"],
    )
    assert drain(resumed) == fragments[1:]
    unsplit = server.open(
        fullDocument="updateLookup",
        fullDocumentBeforeChange="required",
        startAtOperationTime=fragments[0]["clusterTime"],
    )
    with pytest.raises(CommandError) as caught:
        drain(unsplit)
    assert caught.value.code == 10334


# ---- waiting -------------------------------------------------------------------------------


async def test_get_more_waits_for_an_append() -> None:
    """A waiting next_batch returns as soon as a matching event is appended."""
    server = Server()
    cursor = server.open()
    waiting = asyncio.create_task(cursor.next_batch(None, 10_000))
    await asyncio.sleep(0)
    server.insert("other", {"_id": 0})
    server.insert("c", {"_id": 1})
    events = await asyncio.wait_for(waiting, 5)
    assert [e["documentKey"] for e in events] == [{"_id": 1}]


async def test_get_more_times_out_empty_without_busy_loop() -> None:
    """With nothing to return, next_batch waits its max time, then returns an empty batch."""
    server = Server()
    cursor = server.open()
    calls = 0
    original = cursor._collect

    def counting(max_docs: int | None) -> list[dict[str, Any]]:
        nonlocal calls
        calls += 1
        return original(max_docs)

    cursor._collect = counting  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await cursor.next_batch(None, 200) == []
    assert loop.time() - started >= 0.19
    assert calls == 1


async def test_a_long_scan_lets_other_commands_run_between_its_slices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stream that skips most of a long history scans it in slices and lets other commands
    run in between (mongod serves everyone while one stream scans its oplog; here one
    look-ahead held every client for over a second). The batch is what one scan returns, with
    what was written meanwhile after the rest."""
    server = Server()
    cursor = server.open(pipeline=[{"$match": {"documentKey._id": {"$in": [0, 999, 5000]}}}])
    for i in range(1000):
        server.insert("c", {"_id": i})
    monkeypatch.setattr(history_module, "_SCAN_SLICE_S", 0.0)
    scan = asyncio.create_task(cursor.next_batch(None, 0))
    turns = 0
    while not scan.done() and turns < 10_000:
        turns += 1
        if turns == 2:
            server.insert("c", {"_id": 5000})  # written while the scan is under way
        await asyncio.sleep(0)
    events = await asyncio.wait_for(scan, 5)
    assert [e["documentKey"]["_id"] for e in events] == [0, 999, 5000]
    assert turns >= 10  # 1,000 entries, a slice every 64


async def test_unrelated_appends_do_not_end_the_wait_early() -> None:
    """Events filtered out by the stream keep the getMore waiting for a matching one."""
    server = Server()
    cursor = server.open(pipeline=[{"$match": {"documentKey._id": 2}}])
    waiting = asyncio.create_task(cursor.next_batch(None, 10_000))
    await asyncio.sleep(0)
    server.insert("c", {"_id": 1})
    await asyncio.sleep(0)
    assert not waiting.done()
    server.insert("c", {"_id": 2})
    events = await asyncio.wait_for(waiting, 5)
    assert [e["documentKey"] for e in events] == [{"_id": 2}]


def test_batch_size_limits_batches() -> None:
    """max_docs bounds each batch and the rest comes in the next ones, in order."""
    server = Server()
    cursor = server.open()
    for i in range(7):
        server.insert("c", {"_id": i})
    sizes = []
    seen = []
    for _ in range(5):
        batch = drain(cursor, 3)
        sizes.append(len(batch))
        seen += [e["documentKey"]["_id"] for e in batch]
    assert sizes == [3, 3, 1, 0, 0]
    assert seen == list(range(7))


def test_closed_cursor_returns_nothing() -> None:
    """After close, next_batch returns an empty batch."""
    server = Server()
    cursor = server.open()
    server.insert("c", {"_id": 1})
    cursor.close()
    assert drain(cursor) == []


def test_public_names() -> None:
    """The change-stream module exports exactly its public API."""
    assert set(changes.__all__) == {
        "ChangeHistory",
        "ChangeRecord",
        "ChangeStreamCursor",
        "ResumeToken",
        "UpdateDescription",
        "decode_token",
        "describe_update",
        "history_lost",
    }
