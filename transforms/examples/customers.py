"""The module of INTERFACE.md, line for line: every kind of field mapping on one pair."""

# ruff: noqa: E501
# mypy: disable-error-code="no-untyped-def"
# fmt: off

from transforms import Pair

customers = Pair(
    original="shop.customers",      # db.collection, old schema
    partner="shop.customers_v2",     # db.collection, new schema
    unmapped="keep",                 # fields no mapping names: "keep" (copied both ways) or "drop"
)
customers.rename("name", "full_name")                    # dotted paths allowed on both sides
customers.rename("zip", "address.zip")
customers.convert("age", forward=int, backward=str)      # same name, new type
customers.convert("price", to="price_cents",
                  forward=lambda p: round(p * 100), backward=lambda c: c / 100)
customers.require("tier", default="basic")               # absent or null in original -> default in partner
customers.original_only("legacy_flag")                   # never copied to partner, never touched by partner writes
customers.partner_only("loyalty", default=0)             # never copied back; default when created from original

@customers.derive(original=("first", "last"), partner=("display_name",))
def to_display(first, last):
    return {"display_name": f"{first} {last}".strip()}

@to_display.inverse
def from_display(display_name):
    first, _, last = (display_name or "").partition(" ")
    return {"first": first, "last": last}
