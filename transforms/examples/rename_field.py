"""Rename fields: flat (`name` -> `full_name`), into a sub-document (`zip` -> `address.zip`)
and out of one (`geo.city` -> `city`)."""

from transforms import Pair

customers = Pair(original="crm.customers", partner="crm.customers_v2")
customers.rename("name", "full_name")
customers.rename("zip", "address.zip")
customers.rename("geo.city", "city")
