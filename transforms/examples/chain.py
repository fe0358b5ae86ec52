"""A second migration of an already migrated collection: `customers_v2` is original here.

Load it together with `transforms.examples.customers`: the v2 collection belongs to both pairs.
"""

from transforms import Pair

customers_v3 = Pair(original="shop.customers_v2", partner="shop.customers_v3")
customers_v3.rename("full_name", "name.full")
