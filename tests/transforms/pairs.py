"""Pairs shared by the transform tests and their hypothesis strategies."""

from __future__ import annotations

from typing import Any

from transforms import Pair


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
