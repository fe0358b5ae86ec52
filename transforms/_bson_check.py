"""Whether a value returned by a transform function can be stored by MongoDB."""

from __future__ import annotations

import datetime
import decimal
import re
import uuid
from collections.abc import Mapping
from typing import Any, Final

import bson
from bson.errors import InvalidDocument

__all__ = ["bson_problem"]

_INT64: Final = (-(2**63), 2**63 - 1)
_SIMPLE: Final = frozenset({str, float, bool, type(None), bytes, datetime.datetime})


def bson_problem(value: Any) -> str | None:
    """Why BSON cannot encode `value`, or None when it can (fast path for the usual types)."""
    kind = type(value)
    if kind in _SIMPLE:
        return None
    if kind is int:
        if _INT64[0] <= value <= _INT64[1]:
            return None
        return f"integer {value} does not fit in 64 bits"
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"sub-document key {key!r} is not a string"
            problem = bson_problem(item)
            if problem:
                return problem
        return None
    if kind is list or kind is tuple:
        for item in value:
            problem = bson_problem(item)
            if problem:
                return problem
        return None
    if isinstance(value, decimal.Decimal | uuid.UUID | re.Pattern | set | frozenset | complex):
        return f"a value of type {kind.__name__} cannot be stored as BSON as it is"
    try:
        bson.encode({"v": value})
    except (InvalidDocument, TypeError, OverflowError) as exc:
        return f"a value of type {kind.__name__} cannot be stored as BSON ({exc})"
    return None
