"""Patches: diffing documents, applying patches and update descriptions, without mutation."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms import Patch, apply_patch, apply_update_description, diff_documents


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param({"a": 1}, {"a": 1}, Patch({}, ()), id="equal"),
        pytest.param({"a": 1}, {"a": 2}, Patch({"a": 2}, ()), id="scalar-changed"),
        pytest.param({"a": 1}, {}, Patch({}, ("a",)), id="removed"),
        pytest.param({}, {"a": {"b": 1}}, Patch({"a": {"b": 1}}, ()), id="new-subdocument"),
        pytest.param(
            {"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}, Patch({"a.b": 3}, ("a.c",)), id="recurse"
        ),
        pytest.param({"a": [1, 2]}, {"a": [1, 3]}, Patch({"a": [1, 3]}, ()), id="array-whole"),
        pytest.param({"a": 1}, {"a": 1.0}, Patch({"a": 1.0}, ()), id="int-to-float"),
        pytest.param({"a": 1}, {"a": True}, Patch({"a": True}, ()), id="int-to-bool"),
        pytest.param({"a": {"b": 1}}, {"a": 5}, Patch({"a": 5}, ()), id="type-changed"),
        pytest.param({"_id": 1}, {"_id": 2, "x": 1}, Patch({"x": 1}, ()), id="id-ignored"),
        pytest.param({"a": {"_id": 1}}, {"a": {"_id": 2}}, Patch({"a._id": 2}, ()), id="nested-id"),
    ],
)
def test_diff_documents(old: dict[str, Any], new: dict[str, Any], expected: Patch) -> None:
    """The diff is minimal: sub-documents recurse, arrays and type changes are set whole."""
    assert diff_documents(old, new) == expected


@pytest.mark.parametrize(
    ("document", "updated", "removed", "truncated", "expected"),
    [
        pytest.param({"a": 1}, {"a": 2}, [], [], {"a": 2}, id="set"),
        pytest.param({"a": 1, "b": 2}, {}, ["b"], [], {"a": 1}, id="remove"),
        pytest.param({"a": {"b": 1}}, {"a.c": 2}, [], [], {"a": {"b": 1, "c": 2}}, id="dotted"),
        pytest.param({}, {"a.b": 2}, [], [], {"a": {"b": 2}}, id="dotted-creates"),
        pytest.param({"t": [1, 2, 3]}, {"t.1": 9}, [], [], {"t": [1, 9, 3]}, id="array-element"),
        pytest.param({"t": [1]}, {"t.3": 9}, [], [], {"t": [1, None, None, 9]}, id="array-pads"),
        pytest.param(
            {"t": [1, 2, 3, 4]},
            {"t.1": 5},
            [],
            [{"field": "t", "newSize": 2}],
            {"t": [1, 5]},
            id="truncate-then-set",
        ),
        pytest.param({"t": [{"x": 1}]}, {"t.0.x": 2}, [], [], {"t": [{"x": 2}]}, id="in-array"),
        pytest.param({"a": {"b": 1}}, {}, ["a.b"], [], {"a": {}}, id="remove-nested"),
        pytest.param({"a": 1}, {}, ["x.y"], [], {"a": 1}, id="remove-absent"),
    ],
)
def test_apply_update_description(
    document: dict[str, Any],
    updated: dict[str, Any],
    removed: list[str],
    truncated: list[dict[str, Any]],
    expected: dict[str, Any],
) -> None:
    """The result is the document MongoDB holds after the described update; input untouched."""
    before = copy.deepcopy(document)
    assert apply_update_description(document, updated, removed, truncated) == expected
    assert document == before


def test_patch_to_update_and_restricted() -> None:
    """`to_update` leaves out empty operators; `restricted` keeps only accepted paths."""
    patch = Patch({"a": 1, "b.c": 2}, ("d",))
    assert patch.to_update() == {"$set": {"a": 1, "b.c": 2}, "$unset": {"d": ""}}
    assert Patch({}, ("d",)).to_update() == {"$unset": {"d": ""}}
    assert Patch({}, ()).to_update() == {}
    assert Patch({}, ()).is_empty() and not patch.is_empty()
    assert patch.restricted(lambda path: path.startswith("b")) == Patch({"b.c": 2}, ())


_keys = st.sampled_from(["a", "b", "c"])
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=2))
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_keys, inner, max_size=3)),
    max_leaves=6,
)
_documents = st.dictionaries(_keys, _values, max_size=3)


@settings(max_examples=150, deadline=None)
@given(old=_documents, new=_documents)
def test_apply_diff_gives_new(old: dict[str, Any], new: dict[str, Any]) -> None:
    """Applying diff(old, new) to old gives new, and neither input is mutated."""
    old_copy, new_copy = copy.deepcopy(old), copy.deepcopy(new)
    patched = apply_patch(old, diff_documents(old, new))
    assert patched == new
    assert diff_documents(patched, new).is_empty()
    assert old == old_copy and new == new_copy
