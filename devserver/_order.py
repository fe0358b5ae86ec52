"""MongoDB's comparison order for the types mongomock's filters cannot place.

mongomock compares two values by a number per type (the order MongoDB documents: null, numbers,
strings, objects, arrays, binary data, ObjectId, booleans, dates, timestamps, regular
expressions) and raises NotImplementedError for a type it has no number for. Three of those:

- Timestamp: a filter such as `{"event.clusterTime": {"$gt": Timestamp(...)}}` failed, where
  MongoDB compares them as it sorts them (seconds, then increment). Its canonical number is 47:
  after dates, before regular expressions. The comparison operators still match values of one
  type only, as MongoDB's type bracketing has it (`{"ts": {"$gt": 5}}` matches no Timestamp).
- MinKey and MaxKey sort below and above every other value. A comparison *with* one of them is
  the one exception to type bracketing: `$gt`/`$gte` MinKey match every value of another type,
  a missing field included, and `$lt`/`$lte` MaxKey the same; `$lt`/`$lte` MinKey and
  `$gt`/`$gte` MaxKey match only MinKey (MaxKey) itself, with `$lte`/`$gte`. An array matches
  when the array itself or one of its elements does.

`install()` puts versions that know them into mongomock's filtering module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bson import MaxKey, MinKey, Timestamp
from mongomock import filtering

from devserver._nan import NaNValue

__all__ = ["install"]

_TIMESTAMP = 47
# mongomock's number for numbers (a filter's NaN, `devserver._nan`, is one).
_NUMBER = 10
# MongoDB's canonical numbers: below and above every other type.
_MIN_KEY = -1
_MAX_KEY = 127
_installed = False

Compare = Callable[[Any, Any], bool]


def install() -> None:
    """Teach mongomock's comparisons Timestamp, MinKey and MaxKey (once per process)."""
    global _installed
    if _installed:
        return
    original: Callable[[Any], int] = filtering._get_compare_type

    def compare_type(value: Any) -> int:
        kind = type(value)
        if kind is Timestamp:
            return _TIMESTAMP
        if kind is MinKey:
            return _MIN_KEY
        if kind is MaxKey:
            return _MAX_KEY
        if kind is NaNValue:
            return _NUMBER
        return original(value)

    filtering._get_compare_type = compare_type
    operators: dict[str, Compare] = filtering._filterer_inst._operator_map
    for name in ("$gt", "$gte", "$lt", "$lte"):
        operators[name] = _with_bounds(name, operators[name])
    _installed = True


def _with_bounds(name: str, compare: Compare) -> Compare:
    """`compare` (mongomock's operator `name`), with MongoDB's rule for a MinKey or MaxKey
    operand in front of it."""
    inclusive = name in ("$gte", "$lte")
    # The bound every value of another type passes: MinKey from above, MaxKey from below.
    crossing = MinKey if name in ("$gt", "$gte") else MaxKey

    def against(value: Any, operand: Any) -> bool:
        if type(operand) is not MinKey and type(operand) is not MaxKey:
            return compare(value, operand)
        candidates = [value, *value] if isinstance(value, list) else [value]
        for candidate in candidates:
            if type(candidate) is type(operand):
                if inclusive:
                    return True
            elif type(operand) is crossing:
                return True
        return False

    return against
