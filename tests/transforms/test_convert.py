"""Whole-document conversion each way, for every kind of mapping, and its failures."""

from __future__ import annotations

import copy
import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms import Direction, Pair, TransformFailed

FORWARD, BACKWARD = Direction.FORWARD, Direction.BACKWARD


def _pair(build: Any, unmapped: str = "keep") -> Pair:
    pair = Pair(original="db.old", partner="db.new", unmapped=unmapped)  # type: ignore[arg-type]
    build(pair)
    return pair


def _derive_split(pair: Pair) -> None:
    @pair.derive(original=("name",), partner=("first", "last"))
    def split(name: Any) -> dict[str, Any]:
        first, _, last = (name or "").partition(" ")
        return {"first": first, "last": last}

    @split.inverse
    def merge(first: Any, last: Any) -> dict[str, Any]:
        return {"name": f"{first or ''} {last or ''}".strip()}


@pytest.mark.parametrize(
    ("build", "original", "partner"),
    [
        pytest.param(
            lambda p: p.rename("name", "full_name"),
            {"_id": 1, "name": "Ada", "x": 1},
            {"_id": 1, "x": 1, "full_name": "Ada"},
            id="rename-flat",
        ),
        pytest.param(
            lambda p: p.rename("zip", "address.zip"),
            {"_id": 1, "zip": "1"},
            {"_id": 1, "address": {"zip": "1"}},
            id="rename-into-subdocument",
        ),
        pytest.param(
            lambda p: p.rename("address.zip", "zip"),
            {"_id": 1, "address": {"zip": "1", "city": "X"}},
            {"_id": 1, "address": {"city": "X"}, "zip": "1"},
            id="rename-out-of-subdocument",
        ),
        pytest.param(
            lambda p: p.convert("age", forward=int, backward=str),
            {"_id": 1, "age": "36"},
            {"_id": 1, "age": 36},
            id="convert-type",
        ),
        pytest.param(
            lambda p: p.convert("age", forward=int, backward=str),
            {"_id": 1, "age": None},
            {"_id": 1, "age": None},
            id="convert-null-passes",
        ),
        pytest.param(
            lambda p: p.convert(
                "price", to="cents", forward=lambda v: round(v * 100), backward=lambda c: c / 100
            ),
            {"_id": 1, "price": 2.5},
            {"_id": 1, "cents": 250},
            id="convert-and-rename",
        ),
        pytest.param(
            lambda p: p.require("tier", default="basic"),
            {"_id": 1, "tier": "gold"},
            {"_id": 1, "tier": "gold"},
            id="require-present",
        ),
        pytest.param(
            lambda p: p.original_only("legacy"),
            {"_id": 1, "legacy": True, "a": 1},
            {"_id": 1, "a": 1},
            id="original-only",
        ),
        pytest.param(
            _derive_split,
            {"_id": 1, "name": "Ada Lovelace"},
            {"_id": 1, "first": "Ada", "last": "Lovelace"},
            id="derive-split",
        ),
        pytest.param(
            lambda p: None,
            {"_id": 1, "a": {"b": [1, {"c": 2}]}},
            {"_id": 1, "a": {"b": [1, {"c": 2}]}},
            id="collection-rename",
        ),
    ],
)
def test_round_trip(build: Any, original: dict[str, Any], partner: dict[str, Any]) -> None:
    """Forward gives the partner document; backward gives the original back (less only-fields)."""
    pair = _pair(build)
    snapshot = copy.deepcopy(original)
    assert pair.convert(original, FORWARD) == partner
    assert original == snapshot
    expected_back = {k: v for k, v in original.items() if k not in pair.original_only_fields}
    assert pair.convert(partner, BACKWARD) == expected_back


@pytest.mark.parametrize(
    ("original", "partner"),
    [
        pytest.param({"_id": 1}, {"_id": 1, "tier": "basic", "loyalty": 0}, id="absent"),
        pytest.param(
            {"_id": 1, "tier": None}, {"_id": 1, "tier": "basic", "loyalty": 0}, id="null"
        ),
    ],
)
def test_require_and_partner_only_defaults(
    original: dict[str, Any], partner: dict[str, Any]
) -> None:
    """Forward fills the require default and the partner_only default; backward copies back."""

    def build(pair: Pair) -> None:
        pair.require("tier", default="basic")
        pair.partner_only("loyalty", default=0)

    pair = _pair(build)
    assert pair.convert(original, FORWARD) == partner
    # The default crosses back: the original's absence cannot be told apart (documented).
    assert pair.convert(partner, BACKWARD) == {"_id": 1, "tier": "basic"}


def test_unmapped_drop_copies_only_mapped_fields() -> None:
    """With unmapped="drop" only mapped fields and `_id` cross, each way."""
    pair = _pair(lambda p: p.rename("a", "b"), unmapped="drop")
    assert pair.convert({"_id": 2, "a": 1, "x": 2}, FORWARD) == {"_id": 2, "b": 1}
    assert pair.convert({"_id": 2, "b": 1, "y": 3}, BACKWARD) == {"_id": 2, "a": 1}
    assert pair.owns("b", FORWARD) and not pair.owns("y", FORWARD)


def test_owned_paths() -> None:
    """owns() is False for what the target side keeps for itself and for `_id`."""

    def build(pair: Pair) -> None:
        pair.original_only("legacy")
        pair.partner_only("meta.loyalty")
        pair.rename("zip", "address.zip")

        @pair.derive(original=("a",), partner=("b",), one_way=True)
        def copy_a(a: Any) -> dict[str, Any]:
            return {"b": a}

    pair = _pair(build)
    assert not pair.owns("_id", FORWARD)
    assert not pair.owns("meta.loyalty", FORWARD) and not pair.owns("meta.loyalty.x", FORWARD)
    assert pair.owns("meta.other", FORWARD) and pair.owns("address.zip", FORWARD)
    assert pair.owns("address", FORWARD) and pair.owns("anything", BACKWARD)
    assert not pair.owns("legacy", BACKWARD)
    assert not pair.owns("a", BACKWARD), "a one-way derive does not write back"
    assert pair.owns("b", FORWARD)


def test_key_order_is_deterministic() -> None:
    """The same input gives the same key order: unmapped fields first, mapped in order."""
    pair = _pair(lambda p: (p.rename("b", "z"), p.rename("a", "y")))
    converted = pair.convert({"_id": 1, "a": 1, "c": 3, "b": 2}, FORWARD)
    assert list(converted) == ["_id", "c", "z", "y"]


@pytest.mark.parametrize(
    ("build", "document", "message"),
    [
        pytest.param(
            lambda p: p.convert("age", forward=int, backward=str),
            {"_id": "x1", "age": "old"},
            "ValueError",
            id="function-raises",
        ),
        pytest.param(
            lambda p: p.convert("age", forward=lambda v: {1, 2}, backward=str),
            {"_id": "x1", "age": "1"},
            "set",
            id="returns-a-set",
        ),
        pytest.param(
            lambda p: p.convert("age", forward=lambda v: 2**80, backward=str),
            {"_id": "x1", "age": "1"},
            "64 bits",
            id="int-too-big",
        ),
        pytest.param(
            lambda p: p.derive(original=("age",), partner=("b",))(lambda age: {"c": age}),
            {"_id": "x1", "age": "1"},
            "expected a dict with keys ['b']",
            id="derive-wrong-keys",
        ),
    ],
)
def test_transform_failed_names_everything(build: Any, document: Any, message: str) -> None:
    """A failing transform raises TransformFailed naming pair, mapping, field and `_id`."""
    pair = _pair(build)
    with pytest.raises(TransformFailed) as caught:
        pair.convert(document, FORWARD)
    error = caught.value
    assert error.pair == "db.old -> db.new" and error.field == "age"
    assert error.document_id == "x1"
    for part in ("db.old -> db.new", "'age'", "'x1'", error.mapping, message):
        assert part in str(error)


def test_transform_failed_chains_the_cause() -> None:
    """The user function's exception is chained, for the dead letter's traceback."""
    pair = _pair(lambda p: p.convert("age", forward=int, backward=str))
    with pytest.raises(TransformFailed) as caught:
        pair.translate_update(FORWARD, {"_id": 3}, {"age": "x"}, [], [])
    assert isinstance(caught.value.__cause__, ValueError)


def test_bson_types_are_accepted() -> None:
    """Values BSON stores (dates, nested lists) pass the encodability check."""
    when = datetime.datetime(2024, 1, 2, tzinfo=datetime.UTC)
    pair = _pair(lambda p: p.convert("d", forward=lambda v: [when, {"x": v}], backward=str))
    assert pair.convert({"_id": 1, "d": 1}, FORWARD) == {"_id": 1, "d": [when, {"x": 1}]}


_fields = st.dictionaries(
    st.sampled_from(["x", "y", "note", "address"]),
    st.one_of(st.none(), st.integers(-(2**40), 2**40), st.text(max_size=5), st.booleans()),
)


@settings(max_examples=100, deadline=None)
@given(
    extra=_fields,
    name=st.one_of(st.none(), st.text(alphabet="abc", min_size=1, max_size=4)),
    cents=st.integers(-(10**6), 10**6),
    zip_code=st.text(max_size=5),
)
def test_round_trip_property(extra: dict[str, Any], name: Any, cents: int, zip_code: str) -> None:
    """backward(forward(doc)) == doc for documents the mappings can represent losslessly."""
    pair = Pair(original="db.a", partner="db.b")
    pair.rename("zip", "address.zip")
    pair.convert("cents", to="price", forward=lambda c: str(c), backward=int)
    pair.rename("name", "info.name")
    document = {"_id": 9, **{k: v for k, v in extra.items() if k != "address"}}
    document.update(zip=zip_code, cents=cents, name=name)
    assert pair.convert(pair.convert(document, FORWARD), BACKWARD) == document
