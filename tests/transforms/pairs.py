"""Pairs shared by the transform tests and their hypothesis strategies."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from transforms import Direction, Pair, apply_update_description

FORWARD, BACKWARD = Direction.FORWARD, Direction.BACKWARD


def build_reference_pair(unmapped: str = "keep") -> Pair:
    """Every mapping kind on one pair: rename, move, convert, require, only-fields, derive."""
    pair = Pair(original="shop.people", partner="shop.people_v2", unmapped=unmapped)  # type: ignore[arg-type]
    pair.rename("name", "full_name")
    pair.rename("zip", "address.zip")
    pair.rename("geo.city", "city")
    pair.convert("age", forward=int, backward=str)
    pair.convert(
        "price", to="price_cents", forward=lambda p: round(p * 100), backward=lambda c: c / 100
    )
    pair.require("tier", default="basic")
    pair.original_only("legacy_flag")
    pair.partner_only("loyalty", default=0)

    @pair.derive(original=("first", "last"), partner=("display_name",))
    def to_display(first: Any, last: Any) -> dict[str, Any]:
        return {"display_name": f"{first or ''} {last or ''}".strip()}

    @to_display.inverse
    def from_display(display_name: Any) -> dict[str, Any]:
        first, _, last = (display_name or "").partition(" ")
        return {"first": first, "last": last}

    # A derive writing two top-level fields, and a nested partner-only default, so that the
    # fields rebuilt together span several top-level keys.
    @pair.derive(original=("p", "q"), partner=("pq.pair", "meta.count"))
    def to_pq(p: Any, q: Any) -> dict[str, Any]:
        return {"pq.pair": [p, q], "meta.count": sum(v is not None for v in (p, q))}

    @to_pq.inverse
    def from_pq(pair: Any, count: Any) -> dict[str, Any]:
        p, q = pair if isinstance(pair, list) and len(pair) == 2 else (None, None)
        return {"p": p, "q": q}

    pair.partner_only("meta.loyalty", default=0)
    return pair


# -- hypothesis strategies for update events of the reference pair ------------------------------

_ORIGINAL_PATHS = [
    "name", "zip", "geo", "geo.city", "geo.country", "age", "price", "tier", "first", "last",
    "legacy_flag", "tags", "tags.1", "tags.4", "address", "address.street", "address.zip",
    "full_name", "loyalty", "display_name", "city", "other", "other.x", "p", "q", "pq",
    "pq.pair", "meta", "meta.x",
]  # fmt: skip
_PARTNER_PATHS = [
    "full_name", "address", "address.zip", "address.zip.plus4", "address.street", "city", "age",
    "price_cents", "tier", "display_name", "loyalty", "legacy_flag", "name", "zip", "geo",
    "geo.city", "first", "tags", "tags.0", "other", "pq", "pq.pair", "pq.x", "meta.count", "meta",
    "meta.loyalty", "meta.x", "p",
]  # fmt: skip

_plain = st.one_of(st.none(), st.text(alphabet="ab ", max_size=3), st.booleans())
_any_value = st.recursive(
    _plain,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["zip", "city", "x", "plus4"]), inner, max_size=2),
    ),
    max_leaves=4,
)


def _value_for(path: str, direction: Direction) -> st.SearchStrategy[Any]:
    """Values a path can hold without making a user function raise (those are tested apart)."""
    leaf = path.rsplit(".", 1)[-1]
    if direction is FORWARD and path == "age":
        return st.one_of(st.none(), st.integers(0, 120).map(str))
    if direction is FORWARD and path == "price":
        return st.one_of(st.none(), st.floats(0, 1e6, allow_nan=False))
    if direction is BACKWARD and path in ("age", "price_cents"):
        return st.one_of(st.none(), st.integers(-1000, 1000))
    if path in ("first", "last", "display_name"):
        return st.one_of(st.none(), st.text(alphabet="ab ", max_size=4))
    del leaf
    return _any_value


def update_bases(direction: Direction) -> st.SearchStrategy[dict[str, Any]]:
    """Source documents of the reference pair, on the side `direction` copies from."""
    paths = _ORIGINAL_PATHS if direction is FORWARD else _PARTNER_PATHS

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        chosen = draw(st.lists(st.sampled_from(paths), unique=True, max_size=8))
        updates = {path: draw(_value_for(path, direction)) for path in chosen}
        return apply_update_description({"_id": 1}, updates, [], [])

    return build()


def update_descriptions(
    direction: Direction,
) -> st.SearchStrategy[tuple[dict[str, Any], list[str], list[Any]]]:
    """(updatedFields, removedFields, truncatedArrays) of an update on that side."""
    paths = _ORIGINAL_PATHS if direction is FORWARD else _PARTNER_PATHS

    @st.composite
    def build(draw: st.DrawFn) -> tuple[dict[str, Any], list[str], list[Any]]:
        touched = draw(st.lists(st.sampled_from(paths), unique=True, min_size=1, max_size=3))
        updated: dict[str, Any] = {}
        removed: list[str] = []
        for path in touched:
            if draw(st.booleans()):
                updated[path] = draw(_value_for(path, direction))
            else:
                removed.append(path)
        truncated = (
            [{"field": "tags", "newSize": draw(st.integers(0, 2))}] if draw(st.booleans()) else []
        )
        return updated, removed, truncated

    return build()
