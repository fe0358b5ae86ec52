"""Remove a field from the new schema: old clients keep `legacy_flag`, new clients never see it.

Partner writes never touch it, so an old client's value survives every round trip.
"""

from transforms import Pair

orders = Pair(original="app.orders", partner="app.orders_v2")
orders.original_only("legacy_flag", "fax_number")
