"""Update events become minimal patches for the other side, equal to diffing converted documents."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.transforms.pairs import build_reference_pair, update_bases, update_descriptions
from transforms import (
    Direction,
    Pair,
    Patch,
    apply_patch,
    apply_update_description,
    diff_documents,
)

FORWARD, BACKWARD = Direction.FORWARD, Direction.BACKWARD

BASE: dict[str, Any] = {
    "_id": 7,
    "name": "Ada",
    "zip": "12345",
    "geo": {"city": "London", "country": "UK"},
    "age": "36",
    "price": 1.25,
    "first": "Ada",
    "last": "Lovelace",
    "legacy_flag": True,
    "tags": ["a", "b", "c"],
    "address": {"street": "1 Main"},
    "zipcodes": {"plus4": "0001"},
}


@pytest.mark.parametrize(
    ("updated", "removed", "truncated", "expected"),
    [
        pytest.param({"name": "Grace"}, [], [], Patch({"full_name": "Grace"}, ()), id="rename"),
        pytest.param({"zip": "9"}, [], [], Patch({"address.zip": "9"}, ()), id="move-into-sub"),
        pytest.param({"geo.city": "Paris"}, [], [], Patch({"city": "Paris"}, ()), id="move-out"),
        pytest.param(
            {"geo": {"city": "Rome"}},
            [],
            [],
            Patch({"city": "Rome"}, ("geo",)),  # `geo` held only the mapped path now
            id="parent-of-mapped-replaced",
        ),
        pytest.param({}, ["geo"], [], Patch({}, ("city", "geo")), id="parent-of-mapped-removed"),
        pytest.param(
            {"geo": {"city": "Rome", "country": "IT"}},
            [],
            [],
            Patch({"city": "Rome", "geo.country": "IT"}, ()),
            id="parent-of-mapped-replaced-with-more",
        ),
        pytest.param(
            {"address": {"street": "2 Side"}},
            [],
            [],
            Patch({"address.street": "2 Side"}, ()),
            id="unmapped-parent-of-target",
        ),
        pytest.param(
            {}, ["address"], [], Patch({}, ("address.street",)), id="unmapped-parent-gone"
        ),
        pytest.param({"age": "40"}, [], [], Patch({"age": 40}, ()), id="convert"),
        pytest.param({"price": 2.5}, [], [], Patch({"price_cents": 250}, ()), id="convert-rename"),
        pytest.param({"tier": "gold"}, [], [], Patch({"tier": "gold"}, ()), id="require-set"),
        pytest.param({"tier": None}, [], [], Patch({}, ()), id="require-null-is-default"),
        pytest.param(
            {"first": "Grace"},
            [],
            [],
            Patch({"display_name": "Grace Lovelace"}, ()),
            id="derive-reads-base",
        ),
        pytest.param({}, ["last"], [], Patch({"display_name": "Ada"}, ()), id="derive-remove-one"),
        pytest.param({"legacy_flag": False}, [], [], Patch({}, ()), id="original-only"),
        pytest.param({"loyalty": 5}, [], [], Patch({}, ()), id="partner-only-name-in-original"),
        pytest.param(
            {"tags.1": "x"}, [], [], Patch({"tags": ["a", "x", "c"]}, ()), id="array-elem"
        ),
        pytest.param(
            {}, [], [{"field": "tags", "newSize": 1}], Patch({"tags": ["a"]}, ()), id="truncate"
        ),
        pytest.param({"new": {"x": 1}}, [], [], Patch({"new": {"x": 1}}, ()), id="unmapped-new"),
        pytest.param(
            {"zipcodes.plus4": "2"}, [], [], Patch({"zipcodes.plus4": "2"}, ()), id="sim-name"
        ),
        pytest.param({}, ["name"], [], Patch({}, ("full_name",)), id="rename-removed"),
    ],
)
def test_forward_update_shapes(
    reference_pair: Pair,
    updated: dict[str, Any],
    removed: list[str],
    truncated: list[dict[str, Any]],
    expected: Patch,
) -> None:
    """Each update shape gives exactly the expected partner patch."""
    patch = reference_pair.translate_update(FORWARD, BASE, updated, removed, truncated)
    assert patch.set == expected.set
    assert sorted(patch.unset) == sorted(expected.unset)


PARTNER_BASE: dict[str, Any] = {
    "_id": 7,
    "full_name": "Ada",
    "address": {"zip": "12345", "street": "1 Main"},
    "city": "London",
    "age": 36,
    "display_name": "Ada Lovelace",
    "loyalty": 3,
}


@pytest.mark.parametrize(
    ("updated", "removed", "expected"),
    [
        pytest.param({"address.zip": "9"}, [], Patch({"zip": "9"}, ()), id="child-of-parent"),
        pytest.param(
            {"address": {"zip": "1"}}, [], Patch({"zip": "1"}, ("address",)), id="parent-set"
        ),
        pytest.param(
            {"address.zip.plus4": "1"},
            [],
            Patch({"zip": {"plus4": "1"}}, ()),
            id="child-of-mapped-scalar",
        ),
        pytest.param({"city": "Oslo"}, [], Patch({"geo.city": "Oslo"}, ()), id="into-sub"),
        pytest.param({"age": 41}, [], Patch({"age": "41"}, ()), id="convert-back"),
        pytest.param(
            {"display_name": "Grace Hopper"},
            [],
            Patch({"first": "Grace", "last": "Hopper"}, ()),
            id="inverse",
        ),
        pytest.param({"loyalty": 9}, [], Patch({}, ()), id="partner-only"),
        pytest.param({"tier": "basic"}, [], Patch({"tier": "basic"}, ()), id="require-back"),
        pytest.param({}, ["display_name"], Patch({}, ("first", "last")), id="inverse-removed"),
    ],
)
def test_backward_update_shapes(
    reference_pair: Pair, updated: dict[str, Any], removed: list[str], expected: Patch
) -> None:
    """Partner updates come back to the original as the expected patch."""
    patch = reference_pair.translate_update(BACKWARD, PARTNER_BASE, updated, removed, [])
    assert patch.set == expected.set
    assert sorted(patch.unset) == sorted(expected.unset)


def test_address_zip_mapped_whole_then_child_updated() -> None:
    """A child of a whole mapped path (`address.zip.plus4` under `address.zip`) patches below."""
    pair = Pair(original="a.b", partner="a.c")
    pair.rename("address.zip", "postal")
    base = {"_id": 1, "address": {"zip": {"code": "1", "plus4": "2"}}}
    patch = pair.translate_update(FORWARD, base, {"address.zip.plus4": "3"}, [], [])
    assert patch == Patch({"postal.plus4": "3"}, ())


def test_translate_does_not_mutate_inputs(reference_pair: Pair) -> None:
    """Neither the base nor the update description is changed by translating."""
    base = copy.deepcopy(BASE)
    updated = {"geo": {"city": "Rome"}, "tags.1": ["x"]}
    truncated = [{"field": "tags", "newSize": 2}]
    reference_pair.translate_update(FORWARD, base, updated, ["zip"], truncated)
    assert base == BASE
    assert updated == {"geo": {"city": "Rome"}, "tags.1": ["x"]}


# -- properties ---------------------------------------------------------------------------------


def _naive(pair: Pair, direction: Direction, base: dict[str, Any], event: Any) -> Patch:
    updated = apply_update_description(base, *event)
    old, new = pair.convert(base, direction), pair.convert(updated, direction)
    patch = pair.target_patch(old, new, direction)
    # target_patch is the owned part of the plain diff, split field by field where a
    # sub-document may hold unowned fields (which can leave an empty one behind).
    patched = _without_empty(apply_patch(old, patch))
    rest = diff_documents(patched, _without_empty(new))
    assert rest.restricted(lambda path: pair.owns(path, direction)).is_empty()
    return patch


def _without_empty(document: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in document.items():
        if isinstance(value, dict):
            value = _without_empty(value)
            if not value:
                continue
        out[key] = value
    return out


def _same_patch(left: Patch, right: Patch) -> bool:
    return diff_documents(dict(left.set), dict(right.set)).is_empty() and sorted(
        left.unset
    ) == sorted(right.unset)


@pytest.mark.parametrize("unmapped", ["keep", "drop"])
@pytest.mark.parametrize("direction", [FORWARD, BACKWARD])
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fast_path_equals_naive_diff(
    direction: Direction, unmapped: str, data: st.DataObject
) -> None:
    """translate_update equals target_patch(convert(base), convert(updated)): the owned part of
    their diff."""
    pair = _PAIRS[unmapped]
    base = data.draw(update_bases(direction), label="base")
    event = data.draw(update_descriptions(direction), label="event")
    fast = pair.translate_update(direction, base, *event)
    assert _same_patch(fast, _naive(pair, direction, base, event))


@pytest.mark.parametrize("unmapped", ["keep", "drop"])
@pytest.mark.parametrize("direction", [FORWARD, BACKWARD])
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fields_reached_hold_every_field_an_update_changes(
    direction: Direction, unmapped: str, data: st.DataObject
) -> None:
    """Every top-level target field an update's patch sets or unsets is among the fields its
    touched paths reach (the worker patches only those for a document it does not know whole)."""
    pair = _PAIRS[unmapped]
    base = data.draw(update_bases(direction), label="base")
    updated, removed, truncated = data.draw(update_descriptions(direction), label="event")
    touched = [*updated, *removed, *(entry["field"] for entry in truncated)]
    reached = pair.fields_reached(direction, touched)
    patch = pair.translate_update(direction, base, updated, removed, truncated)
    changed = {path.split(".", 1)[0] for path in [*patch.set, *patch.unset]}
    assert changed <= reached
    assert "_id" not in reached


@pytest.mark.parametrize(
    ("direction", "paths", "reached"),
    [
        (FORWARD, ["name"], {"full_name"}),
        (FORWARD, ["geo.city"], {"city", "geo"}),  # moved out, and what stays of `geo`
        (FORWARD, ["zip"], {"address"}),
        (FORWARD, ["first"], {"display_name"}),
        (FORWARD, ["p"], {"pq", "meta"}),  # one derive writing two top-level fields
        (FORWARD, ["legacy_flag", "_id"], set()),
        (BACKWARD, ["display_name"], {"first", "last"}),
        (BACKWARD, [], set()),
    ],
)
def test_fields_reached_by_each_mapping_kind(
    reference_pair: Pair, direction: Direction, paths: list[str], reached: set[str]
) -> None:
    assert reference_pair.fields_reached(direction, paths) == reached


@pytest.mark.parametrize("direction", [FORWARD, BACKWARD])
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_patches_of_successive_updates_compose(direction: Direction, data: st.DataObject) -> None:
    """Applying the patches of two successive updates to the converted base gives the converted
    final document."""
    pair = _PAIRS["keep"]
    base = data.draw(update_bases(direction), label="base")
    first = data.draw(update_descriptions(direction), label="first")
    second = data.draw(update_descriptions(direction), label="second")
    middle = apply_update_description(base, *first)
    final = apply_update_description(middle, *second)
    target = pair.convert(base, direction)
    target = apply_patch(target, pair.translate_update(direction, base, *first))
    target = apply_patch(target, pair.translate_update(direction, middle, *second))
    assert diff_documents(target, pair.convert(final, direction)).is_empty()


_PAIRS = {"keep": build_reference_pair("keep"), "drop": build_reference_pair("drop")}


@pytest.mark.parametrize(
    ("unmapped", "base", "updated", "removed", "expected"),
    [
        pytest.param(
            "drop", {"_id": 1}, {"zip": "9"}, [], Patch({"address.zip": "9"}, ()), id="drop-new"
        ),
        pytest.param(
            "drop", {"_id": 1, "zip": "9"}, {}, ["zip"], Patch({}, ("address.zip",)), id="drop-gone"
        ),
        pytest.param(
            "keep", {"_id": 1}, {"meta": {"x": 1}}, [], Patch({"meta.x": 1}, ()), id="keep-new"
        ),
        pytest.param(
            "keep", {"_id": 1, "meta": {"x": 1}}, {}, ["meta"], Patch({}, ("meta.x",)), id="gone"
        ),
    ],
)
def test_sub_documents_holding_unowned_fields_are_patched_field_by_field(
    unmapped: str,
    base: dict[str, Any],
    updated: dict[str, Any],
    removed: list[str],
    expected: Patch,
) -> None:
    """A sub-document the target may share with its own fields (the parent of a mapped path
    with unmapped="drop", the parent of a partner_only field) is never set or unset whole."""
    pair = Pair(original="a.b", partner="a.c", unmapped=unmapped)  # type: ignore[arg-type]
    pair.rename("zip", "address.zip")
    pair.partner_only("meta.note")
    assert pair.translate_update(FORWARD, base, updated, removed, []) == expected
    old, new = (
        pair.convert(base, FORWARD),
        pair.convert(apply_update_description(base, updated, removed), FORWARD),
    )
    assert pair.target_patch(old, new, FORWARD) == expected
