"""Split one field into several, and merge several into one, with `derive` and its inverse.

`name` splits into `first` / `last`; `street` and `number` merge into `line1`. The inverse of
each undoes it; `check` round-trips the examples and generated values of their types.
"""

from typing import Any

from transforms import Pair

people = Pair(original="hr.people", partner="hr.people_v2")


# Extra spaces in a name do not survive a split and a join: declared lossy, so `check` reports
# the counter-example without failing.
@people.derive(original=("name",), partner=("first", "last"), lossy=True)
def split_name(name: Any) -> dict[str, Any]:
    first, _, last = (name or "").partition(" ")
    return {"first": first, "last": last}


@split_name.inverse
def join_name(first: Any, last: Any) -> dict[str, Any]:
    return {"name": f"{first or ''} {last or ''}".strip() if last else first or ""}


people.examples("split_name", "Ada Lovelace", "Grace", "Mary Ann Evans")


@people.derive(original=("street", "number"), partner=("line1",))
def merge_address(street: Any, number: Any) -> dict[str, Any]:
    return {"line1": {"street": street, "number": number}}


@merge_address.inverse
def unmerge_address(line1: Any) -> dict[str, Any]:
    line1 = line1 or {}
    return {"street": line1.get("street"), "number": line1.get("number")}


people.examples("merge_address", ("Main St", 1), {"street": "High St", "number": 22})
