"""NaN in query filters, as MongoDB compares it.

To MongoDB NaN equals NaN: `{"a": NaN}`, `{"a": {"$in": [NaN]}}` and an `$expr` `$eq` over a
document holding NaN all match a document whose `a` is NaN, and a double NaN equals a
Decimal128 NaN. Python's `float("nan") != float("nan")` made mongomock match none of them. A
filter holding NaN is therefore evaluated over copies of the filter and the document in which
every NaN is one value (`NAN`) that equals itself only. To the comparison operators it is a
number that orders with itself only: `$gte`/`$lte` NaN match NaN and `$gt`/`$lt` NaN match
nothing. A filter without NaN is evaluated as it is: a NaN in the document equals nothing it
names, and a range over other numbers leaves it out. (The ranges are this server's reading of
MongoDB's comparison rules, not checked against a server.)
"""

from __future__ import annotations

import math
from typing import Any

from bson import Decimal128

__all__ = ["NAN", "NaNValue", "has_nan", "same_nan"]


class NaNValue:
    """Every NaN of a filter and its document, as one value that equals only itself."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NaNValue)

    def __ne__(self, other: object) -> bool:
        return not isinstance(other, NaNValue)

    def __hash__(self) -> int:
        return 0x7FF8

    def __lt__(self, other: object) -> bool:
        return False

    def __gt__(self, other: object) -> bool:
        return False

    def __le__(self, other: object) -> bool:
        return isinstance(other, NaNValue)

    def __ge__(self, other: object) -> bool:
        return isinstance(other, NaNValue)

    def __repr__(self) -> str:
        return "NaN"


NAN = NaNValue()


def _is_nan(value: Any) -> bool:
    kind = type(value)
    if kind is float:
        return math.isnan(value)
    return kind is Decimal128 and value.to_decimal().is_nan()


def has_nan(value: Any) -> bool:
    """Whether `value` (a filter) holds a NaN anywhere."""
    if isinstance(value, dict):
        return any(has_nan(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(has_nan(item) for item in value)
    return _is_nan(value)


def same_nan(value: Any) -> Any:
    """A copy of `value` with every NaN replaced by `NAN` (containers copied only as needed)."""
    if isinstance(value, dict):
        return {key: same_nan(item) for key, item in value.items()}
    if isinstance(value, list):
        return [same_nan(item) for item in value]
    if isinstance(value, tuple):
        return tuple(same_nan(item) for item in value)
    return NAN if _is_nan(value) else value
