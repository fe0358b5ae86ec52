"""MongoDB's comparison order for Timestamps, which mongomock's filters cannot place.

mongomock compares two values by a number per type (the order MongoDB documents: null, numbers,
strings, objects, arrays, binary data, ObjectId, booleans, dates, timestamps, regular
expressions) and raises NotImplementedError for a type it has no number for. Timestamps were
one, so a filter such as `{"event.clusterTime": {"$gt": Timestamp(...)}}` failed, where MongoDB
compares them as it sorts them (seconds, then increment).

`install()` puts a version that knows them into mongomock's filtering module, with MongoDB's
canonical number for them (47: after dates, before regular expressions). The comparison
operators still match values of one type only, as MongoDB's type bracketing has it (`{"ts":
{"$gt": 5}}` matches no Timestamp). MinKey and MaxKey remain unknown to mongomock: MongoDB lets
comparisons with them cross types, which mongomock's bracketing does not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bson import Timestamp
from mongomock import filtering

__all__ = ["install"]

_TIMESTAMP = 47
_installed = False


def install() -> None:
    """Teach mongomock's comparisons the Timestamp type (once per process)."""
    global _installed
    if _installed:
        return
    original: Callable[[Any], int] = filtering._get_compare_type

    def compare_type(value: Any) -> int:
        return _TIMESTAMP if type(value) is Timestamp else original(value)

    filtering._get_compare_type = compare_type
    _installed = True
