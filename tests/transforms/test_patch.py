"""Patches: diffing documents, applying patches and update descriptions, without mutation."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms import (
    Patch,
    apply_patch,
    apply_update_description,
    diff_documents,
    named_fields,
    unaddressable_field,
)


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
        pytest.param(
            {"p": {"v1.2": 1, "k": 1}, "q": {"r": 1}},
            {"p": {"v1.2": 2, "k": 1}, "q": {"r": 2}},
            Patch({"p": {"v1.2": 2, "k": 1}, "q.r": 2}, ()),
            id="dotted-name-sets-its-sub-document-whole",
        ),
        pytest.param(
            {"p": {"$ref": "x", "k": 1}},
            {"p": {"$ref": "x", "k": 2}},
            Patch({"p": {"$ref": "x", "k": 2}}, ()),
            id="dollar-name-sets-its-sub-document-whole",
        ),
        pytest.param(
            {"p": {"s": {"a.b": 1}, "k": 1}},
            {"p": {"s": {"a.b": 2}, "k": 1}},
            Patch({"p.s": {"a.b": 2}}, ()),
            id="only-the-sub-document-holding-the-name",
        ),
        pytest.param(
            {"p": {"k": 1}},
            {"p": {"k": 1, "a.b": 1}},
            Patch({"p": {"k": 1, "a.b": 1}}, ()),
            id="name-added",
        ),
        pytest.param(
            {"p": {"k": 1, "a.b": 1}},
            {"p": {"k": 1}},
            Patch({"p": {"k": 1}}, ()),
            id="name-removed",
        ),
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


def test_apply_update_description_by_disambiguated_components() -> None:
    """A path listed in disambiguatedPaths is walked by its components: a string names a
    field (even "v1.2" or "0"), an int an array index."""
    document = {"prices": {"v1.2": 1, "0": "a"}, "list": [{"k": 1}], "v1": {"2": 9}}
    after = apply_update_description(
        document,
        {"prices.v1.2": 2, "prices.0": "b", "list.0.k": 5},
        (),
        (),
        {
            "prices.v1.2": ["prices", "v1.2"],
            "prices.0": ["prices", "0"],
            "list.0.k": ["list", 0, "k"],
        },
    )
    assert after == {"prices": {"v1.2": 2, "0": "b"}, "list": [{"k": 5}], "v1": {"2": 9}}
    assert apply_update_description(document, {"prices.v1.2": 2})["v1"] == {"2": 9}
    assert apply_update_description(document, {"v1.2": 3}, (), (), {"v1.2": ["v1.2"]})["v1.2"] == 3


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


_names = st.sampled_from(["a", "b", "v1.2", "$r"])
_odd_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=2), st.dictionaries(_names, inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None)
@given(
    old=st.dictionaries(_keys, _odd_values, max_size=3),
    new=st.dictionaries(_keys, _odd_values, max_size=3),
)
def test_diff_paths_name_only_addressable_fields(old: dict[str, Any], new: dict[str, Any]) -> None:
    """With dotted and `$`-prefixed names below the top level, every path of the diff is made
    of names an update can address, and applying it still gives `new`."""
    patch = diff_documents(old, new)
    for path in (*patch.set, *patch.unset):
        assert all(part and not part.startswith("$") for part in path.split(".")), path
        assert len(path.split(".")) <= 1 or path.split(".")[0] in old
    assert apply_patch(old, patch) == new
    assert unaddressable_field(patch, old, new) is None


_top_names = st.sampled_from(["a", "v1.2", "$r"])
_top_documents = st.dictionaries(_top_names, _odd_values, max_size=3)


@st.composite
def _document_and_edit(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """A document, and the same with fields inside its sub-documents changed, added or
    removed (two documents drawn apart rarely share a sub-document to diff into)."""
    old = draw(_top_documents)
    new = copy.deepcopy(old)
    for name, value in new.items():
        if isinstance(value, dict) and draw(st.booleans()):
            edited = draw(st.dictionaries(_names, _odd_values, max_size=2))
            removed = draw(st.lists(st.sampled_from(sorted(value) or ["a"]), max_size=1))
            new[name] = {k: v for k, v in {**value, **edited}.items() if k not in removed}
    new.update(draw(st.dictionaries(_top_names, _odd_values, max_size=1)))
    return old, new


@settings(max_examples=200, deadline=None)
@given(documents=st.one_of(_document_and_edit(), st.tuples(_top_documents, _top_documents)))
def test_a_top_level_name_no_path_can_address_is_one_path(
    documents: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    """A top-level field named "v1.2" or "$r" appears in the diff only whole, by its name,
    never as the start of a longer path ("v1.2.x" is field `x` of `2` of `v1`);
    `named_fields` finds exactly those, and the diff applied with them gives `new`."""
    old, new = documents
    patch = diff_documents(old, new)
    paths = (*patch.set, *patch.unset)
    odd = {name for name in (*old, *new) if "." in name or name.startswith("$")}
    for path in paths:
        assert not any(path.startswith(name + ".") for name in odd), path
        if path not in odd:
            assert all(p and not p.startswith("$") for p in path.split(".")), path
    named = named_fields(patch, old, new)
    assert named == {path for path in paths if path in odd}
    assert apply_patch(old, patch, named) == new
    # No name here has a first part that is itself a field ("v1" never is): all writable.
    assert unaddressable_field(patch, old, new) is None


def test_named_top_level_fields() -> None:
    """A `$`-prefixed (or empty) top-level name always; a dotted one when it is a field of the
    documents (otherwise "a.b" is field `b` of `a`)."""
    assert named_fields(Patch({"$x": 1}, ())) == {"$x"}
    assert named_fields(Patch({}, ("$x",))) == {"$x"}
    assert named_fields(Patch({"a.b": 1}, ()), {"a.b": 0}) == {"a.b"}
    assert named_fields(Patch({"a.b": 1}, ()), {"a": {"b": 0}}) == frozenset()
    assert named_fields(Patch({"a.b": 1}, ()), None, {"a.b": 1}) == {"a.b"}
    assert named_fields(Patch({"": 1, "c": 2}, ())) == {""}


def test_unwritable_top_level_fields() -> None:
    """An empty name, or a dotted name whose first part is a field too; the rest are written
    by name."""
    assert unaddressable_field(Patch({"$x": 1}, ())) is None
    assert unaddressable_field(Patch({"a.b": 1}, ()), {"a.b": 0}) is None
    assert unaddressable_field(Patch({"a.b": 1}, ()), {"a.b": 0, "a": {"b": 0}}) == "a.b"
    assert unaddressable_field(Patch({}, ("a.b",)), {"a.b": 0}, {"a": 1}) == "a.b"
    assert unaddressable_field(Patch({"": 1}, ())) == ""


def test_apply_patch_by_name() -> None:
    """Paths given as fields are top-level names; the others are paths."""
    document = {"_id": 1, "a.b": 1, "$x": 2, "c": {"d": 0}}
    patch = Patch({"a.b": 5, "c.d": 3, "e.f": 4}, ("$x",))
    assert apply_patch(document, patch, {"a.b", "$x"}) == {
        "_id": 1,
        "a.b": 5,
        "c": {"d": 3},
        "e": {"f": 4},
    }
    assert document == {"_id": 1, "a.b": 1, "$x": 2, "c": {"d": 0}}
