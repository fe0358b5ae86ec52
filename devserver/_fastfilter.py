"""A compiled fast path for the commonest filters: comparisons of top-level fields to scalars.

mongomock interprets a filter afresh for every document (about 10 us each). Filters made only
of equality, $eq/$ne/$gt/$gte/$lt/$lte, $in and $nin on top-level fields against numbers,
strings, ObjectIds, dates or Timestamps (and binary values, for equality only) compile here to
plain Python comparisons. Whenever a document's value is of another kind (missing, null, array,
sub-document, another type) the compiled test answers "unknown" and the caller asks mongomock,
so results never differ from mongomock's.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from datetime import datetime
from typing import Any

from bson import Binary, Int64, ObjectId, Timestamp

__all__ = ["compile_event_filter", "compile_filter", "UNKNOWN"]

UNKNOWN = None
_MISSING = object()

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": operator.eq,
    "$ne": operator.ne,
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}
_FAMILIES: dict[type, str] = {
    int: "number",
    float: "number",
    Int64: "number",
    str: "string",
    ObjectId: "objectid",
    datetime: "date",
    Timestamp: "timestamp",
    # Session ids (`lsid.id`) are UUIDs: equal exactly when subtype and bytes are.
    Binary: "binary",
}

Test = tuple[str, str, Any, str]
Compiled = Callable[[dict[str, Any]], bool | None]


def _family(value: Any) -> str | None:
    family = _FAMILIES.get(type(value))
    if family == "number" and value != value:  # NaN orders differently in MongoDB
        return None
    return family


def _compile_condition(path: str, condition: Any) -> list[Test] | None:
    if isinstance(condition, dict) and condition and all(k.startswith("$") for k in condition):
        tests: list[Test] = []
        for op, operand in condition.items():
            if op in _COMPARE:
                family = _family(operand)
                if family is None or (family == "binary" and op not in ("$eq", "$ne")):
                    return None  # MongoDB orders binary data by length first
                tests.append((path, op, operand, family))
            elif op in ("$in", "$nin") and isinstance(operand, list) and operand:
                families = {_family(v) for v in operand}
                if len(families) != 1 or None in families:
                    return None
                tests.append((path, op, frozenset(operand), families.pop() or ""))
            else:
                return None
        return tests
    family = _family(condition)
    if family is None:
        return None
    return [(path, "$eq", condition, family)]


def compile_filter(filter_doc: dict[str, Any]) -> Compiled | None:
    """A fast test for `filter_doc` (True, False or UNKNOWN per document); None if unsupported."""
    tests: list[Test] = []
    for path, condition in filter_doc.items():
        if path.startswith("$") or "." in path:
            return None
        compiled = _compile_condition(path, condition)
        if compiled is None:
            return None
        tests.extend(compiled)

    def test(doc: dict[str, Any]) -> bool | None:
        for path, op, operand, family in tests:
            value = doc.get(path, _MISSING)
            if op == "$nin" and value is _MISSING:
                continue  # $nin matches documents without the field
            if _FAMILIES.get(type(value)) != family:
                return UNKNOWN
            if op == "$in":
                if value not in operand:
                    return False
            elif op == "$nin":
                if value in operand:
                    return False
            elif not _COMPARE[op](value, operand):
                return False
        return True

    return test


def _dotted(doc: Any, parts: tuple[str, ...]) -> Any:
    """The value at a dotted path through sub-documents; UNKNOWN_PATH past an array."""
    current = doc
    for part in parts:
        if isinstance(current, dict):
            current = current.get(part, _MISSING)
        elif current is _MISSING:
            return _MISSING
        else:
            return _UNKNOWN_PATH  # arrays (and scalars) along a path: mongomock's rules
    return current


_UNKNOWN_PATH = object()


def compile_event_filter(filter_doc: dict[str, Any]) -> Compiled | None:
    """Like `compile_filter`, for change-stream `$match` stages: dotted paths through
    sub-documents (`ns.coll`, `documentKey._id`) and `$or` / `$and` of such filters."""
    parts: list[Compiled] = []
    for path, condition in filter_doc.items():
        if path in ("$or", "$and") and isinstance(condition, list) and condition:
            clauses = []
            for clause in condition:
                if not isinstance(clause, dict):
                    return None
                compiled = compile_event_filter(clause)
                if compiled is None:
                    return None
                clauses.append(compiled)
            parts.append(_any_of(clauses) if path == "$or" else _all_of(clauses))
            continue
        if path.startswith("$"):
            return None
        tests = _compile_condition(path, condition)
        if tests is None:
            return None
        for test in tests:
            parts.append(_field_test(test))
    return _all_of(parts)


def _field_test(test: Test) -> Compiled:
    path, op, operand, family = test
    steps = tuple(path.split("."))

    def check(doc: dict[str, Any]) -> bool | None:
        value = _dotted(doc, steps)
        if op == "$nin" and value is _MISSING:
            return True  # $nin matches documents without the field
        if _FAMILIES.get(type(value)) != family:
            return UNKNOWN
        if op == "$in":
            return value in operand
        if op == "$nin":
            return value not in operand
        return bool(_COMPARE[op](value, operand))

    return check


def _all_of(tests: list[Compiled]) -> Compiled:
    def check(doc: dict[str, Any]) -> bool | None:
        verdict: bool | None = True
        for test in tests:
            result = test(doc)
            if result is False:
                return False
            if result is UNKNOWN:
                verdict = UNKNOWN
        return verdict

    return check


def _any_of(tests: list[Compiled]) -> Compiled:
    def check(doc: dict[str, Any]) -> bool | None:
        verdict: bool | None = False
        for test in tests:
            result = test(doc)
            if result is True:
                return True
            if result is UNKNOWN:
                verdict = UNKNOWN
        return verdict

    return check
