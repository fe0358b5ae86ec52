"""Change a field's type with a function each way; `to=` also renames.

`age` goes from a string to an integer. `price` in dollars becomes integer `price_cents`; that
loses sub-cent precision, which the mapping declares with `lossy=True` so `check` reports it
instead of failing. `examples` gives `check` values to round-trip.
"""

from transforms import Pair

products = Pair(original="shop.products", partner="shop.products_v2")
products.convert("age", forward=int, backward=str)
products.examples("age", "0", "36", "120")
products.convert(
    "price",
    to="price_cents",
    forward=lambda dollars: round(dollars * 100),
    backward=lambda cents: cents / 100,
    lossy=True,
)
products.examples("price", 0.0, 1.25, 19.99, 1000.5)
