"""Where an operator update puts the fields it adds, as MongoDB 5.0 and later store them.

An update processes the names of each level in lexicographic order (numeric names in numeric
order), whatever order it lists them in, and appends each new field; existing fields keep their
place, and a value written whole keeps its own order. Field order shows: `$eq` on documents and
the documents a client reads back compare it. Each case runs on an update path the server
answers natively and on the general one (an operator it does not take natively beside).
"""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import WriteError

Client = MongoClient[dict[str, Any]]

# An operator the native path declines, added to force the general path; it names a field of
# its own, left out of the comparison.
_GENERAL = {"$max": {"zz_general": 0}}


def _names(document: Any) -> Any:
    """The field names of a document, level by level (values that are documents nested)."""
    if isinstance(document, dict):
        return [
            (name, _names(value)) if isinstance(value, dict | list) else name
            for name, value in document.items()
            if name != "zz_general"
        ]
    if isinstance(document, list):
        return [_names(item) for item in document]
    return document


@pytest.mark.parametrize("general", [False, True], ids=["native", "general"])
@pytest.mark.parametrize(
    ("start", "update", "expected"),
    [
        pytest.param(
            {"k": 1},
            {"$set": {"b": 1, "a": 1}},
            ["_id", "k", "a", "b"],
            id="new-fields-sorted-after-old",
        ),
        pytest.param(
            {"b": 0, "a": 0},
            {"$set": {"a": 1, "c": 1, "b": 1}},
            ["_id", "b", "a", "c"],
            id="old-fields-keep-their-place",
        ),
        pytest.param(
            {},
            {"$set": {"c.z": 1, "c.y": 1}, "$inc": {"b": 1}},
            ["_id", "b", ("c", ["y", "z"])],
            id="across-operators-and-levels",
        ),
        pytest.param(
            {"c": {"z": 0}},
            {"$set": {"c.y": 1, "c.x": 1, "a": 1}},
            ["_id", ("c", ["z", "x", "y"]), "a"],
            id="into-an-existing-sub-document",
        ),
        pytest.param(
            {},
            {"$set": {"c": {"z": 1, "y": 1}, "b": 1}},
            ["_id", "b", ("c", ["z", "y"])],
            id="a-value-written-whole-keeps-its-order",
        ),
        pytest.param(
            {},
            {"$set": {"10": 1, "9": 1, "a": 1, "-": 1}},
            ["_id", "-", "9", "10", "a"],
            id="numeric-names-in-numeric-order",
        ),
    ],
)
def test_an_update_appends_new_fields_in_mongodbs_order(
    client: Client,
    db_name: str,
    start: dict[str, Any],
    update: dict[str, Any],
    expected: list[Any],
    general: bool,
) -> None:
    coll = client[db_name]["order"]
    coll.insert_one({"_id": 1, **start})
    spec = {**update, **_GENERAL} if general else update
    assert coll.update_one({"_id": 1}, spec).modified_count == 1
    assert _names(coll.find_one({"_id": 1})) == expected


@pytest.mark.parametrize("general", [False, True], ids=["native", "general"])
def test_an_upsert_orders_the_fields_it_creates(
    client: Client, db_name: str, general: bool
) -> None:
    """The query's equality fields first (`_id` leading), then `$set` and `$setOnInsert`
    together in MongoDB's order."""
    coll = client[db_name]["upserts"]
    spec: dict[str, Any] = {"$set": {"b": 1, "a.y": 1}, "$setOnInsert": {"a.x": 1, "0": 1}}
    if general:
        spec.update(_GENERAL)
    coll.update_one({"_id": 1}, spec, upsert=True)
    assert _names(coll.find_one({"_id": 1})) == ["_id", "0", ("a", ["x", "y"]), "b"]
    coll.update_one({"q": 5, "_id": 2}, {"$setOnInsert": {"c": 1, "b": 1}}, upsert=True)
    assert _names(coll.find_one({"_id": 2})) == ["_id", "q", "b", "c"]


@pytest.mark.parametrize(
    "update",
    [
        pytest.param({"$set": {"a": 1}, "$setOnInsert": {"a": 2}}, id="set-and-set-on-insert"),
        pytest.param({"$set": {"a": 1}, "$inc": {"a": 2}}, id="set-and-inc"),
        pytest.param({"$set": {"a.b": 1}, "$unset": {"a": ""}}, id="a-path-under-another"),
        pytest.param({"$set": {"t": 1}, "$rename": {"a": "t"}}, id="a-rename-target"),
    ],
)
@pytest.mark.parametrize("upsert", [False, True], ids=["update", "upsert"])
def test_two_paths_of_one_update_that_conflict_are_refused(
    client: Client, db_name: str, update: dict[str, Any], upsert: bool
) -> None:
    """mongod refuses them when it parses the update, before it matches a document."""
    coll = client[db_name]["conflicts"]
    coll.insert_one({"_id": 1, "a": {"b": 0}})
    with pytest.raises(WriteError) as raised:
        coll.update_one({"_id": 2 if upsert else 1}, update, upsert=upsert)
    assert raised.value.code == 40  # ConflictingUpdateOperators
    assert "would create a conflict at" in str(raised.value)
    assert list(coll.find({}, sort=[("_id", 1)])) == [{"_id": 1, "a": {"b": 0}}]


def test_a_renamed_field_is_appended_as_a_new_one(client: Client, db_name: str) -> None:
    """`$rename` unsets both names and sets the new one: the target goes to the end, even
    where a field of that name was."""
    coll = client[db_name]["renames"]
    coll.insert_one({"_id": 1, "a": 1, "t": 0, "m": 2})
    coll.update_one({"_id": 1}, {"$rename": {"a": "t"}})
    assert list(coll.find_one({"_id": 1}) or {}) == ["_id", "m", "t"]
    coll.insert_one({"_id": 2, "z": 1, "m": 2})
    coll.update_one({"_id": 2}, {"$rename": {"z": "b"}, "$set": {"c": 1}})
    assert list(coll.find_one({"_id": 2}) or {}) == ["_id", "m", "b", "c"]


def test_a_new_field_in_an_arrays_document(client: Client, db_name: str) -> None:
    coll = client[db_name]["arrays"]
    coll.insert_one({"_id": 1, "items": [{"k": 1}, {"k": 2}]})
    coll.update_one({"_id": 1}, {"$set": {"items.1.b": 1, "items.1.a": 1}})
    assert _names(coll.find_one({"_id": 1})) == ["_id", ("items", [["k"], ["k", "a", "b"]])]
