"""MongoDB's comparison of values, where mongomock compares them as Python does.

mongomock answers equality in filters (`{"a": v}`, `$eq`, `$ne`, `$in`, `$nin`, `$all`) and in
aggregation expressions (`$eq`, `$ne`, `$in`) with Python's `==`, which differs from MongoDB's:

- `True == 1`: Python's booleans are numbers; to MongoDB a boolean equals only a boolean;
- `{"a": 1, "b": 2} == {"b": 2, "a": 1}`: MongoDB compares embedded documents field by field,
  in their order, names and values;
- `Decimal128("1") != 1`: MongoDB compares numbers by value, whatever their BSON type;
- NaN: Python's NaN equals nothing, MongoDB's equals NaN (double or decimal).

An aggregation comparison also failed on a missing field (`{"$eq": ["$a", 1]}` for a document
without `a`), where MongoDB takes the missing value as a value of its own: below null, and
equal only to another missing value.

`compare` orders two values as MongoDB does (BSON comparison order across types, then within
the type); `install()` makes mongomock's filters, aggregation comparisons and the `$in`
expression use it.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from bson import Binary, Code, DatetimeMS, Decimal128, MaxKey, MinKey, ObjectId, Regex, Timestamp
from mongomock import OperationFailure, aggregate, filtering

from devserver._nan import NaNValue

# mongomock's value for a missing field.
NOTHING: Any = getattr(filtering, "NOTHING")  # noqa: B009 (not re-exported for typing)

__all__ = ["compare", "equal", "install"]

_REGEX_TYPES = (re.Pattern, Regex)

# MongoDB's comparison order of types (lowest first). A missing value (aggregation only)
# comes below null.
_MIN_KEY = 0
_MISSING = 1
_NULL = 2
_NUMBER = 3
_STRING = 4
_OBJECT = 5
_ARRAY = 6
_BINARY = 7
_OBJECT_ID = 8
_BOOLEAN = 9
_DATE = 10
_TIMESTAMP = 11
_REGEX = 12
_CODE = 13
_MAX_KEY = 14
_UNKNOWN = 15

_RANKS: dict[type, int] = {
    type(None): _NULL,
    int: _NUMBER,
    float: _NUMBER,
    Decimal128: _NUMBER,
    NaNValue: _NUMBER,
    str: _STRING,
    dict: _OBJECT,
    list: _ARRAY,
    tuple: _ARRAY,
    bytes: _BINARY,
    Binary: _BINARY,
    uuid.UUID: _BINARY,
    ObjectId: _OBJECT_ID,
    bool: _BOOLEAN,
    dt.datetime: _DATE,
    DatetimeMS: _DATE,
    Timestamp: _TIMESTAMP,
    Regex: _REGEX,
    re.Pattern: _REGEX,
    Code: _CODE,
    MinKey: _MIN_KEY,
    MaxKey: _MAX_KEY,
}


def _rank(value: Any) -> int:
    rank = _RANKS.get(type(value))
    if rank is not None:
        return rank
    if value is NOTHING:
        return _MISSING
    # Subclasses: Int64 (int), SON and RawBSONDocument-like mappings, str subclasses.
    if isinstance(value, bool):
        return _BOOLEAN
    if isinstance(value, Code):
        return _CODE
    if isinstance(value, Binary):
        return _BINARY
    for kind, rank in (
        (int, _NUMBER),
        (float, _NUMBER),
        (str, _STRING),
        (Mapping, _OBJECT),
        (list, _ARRAY),
        (tuple, _ARRAY),
        (bytes, _BINARY),
        (dt.datetime, _DATE),
        (_REGEX_TYPES, _REGEX),
    ):
        if isinstance(value, kind):
            return rank
    return _UNKNOWN


def _sign(left: Any, right: Any) -> int:
    return int(left > right) - int(left < right)


def _number(value: Any) -> int | float | decimal.Decimal | None:
    """A number as Python compares it exactly across types; None for NaN."""
    if type(value) is NaNValue:
        return None
    if isinstance(value, Decimal128):
        number = value.to_decimal()
        return None if number.is_nan() else number
    if isinstance(value, float) and math.isnan(value):
        return None
    return int(value) if isinstance(value, int) else float(value)


def _binary(value: Any) -> tuple[int, int, bytes]:
    """(length, subtype, bytes): MongoDB orders binary data by length, then subtype."""
    if isinstance(value, uuid.UUID):
        return (16, 4, value.bytes)
    subtype = value.subtype if isinstance(value, Binary) else 0
    return (len(value), subtype, bytes(value))


def _utc(value: Any) -> Any:
    if isinstance(value, DatetimeMS):
        return int(value)
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    # Milliseconds since the epoch, as BSON stores a date.
    return (value - dt.datetime(1970, 1, 1)) // dt.timedelta(milliseconds=1)


def compare(left: Any, right: Any) -> int:
    """-1, 0 or 1 as MongoDB orders `left` and `right` (mongomock's NOTHING: a missing value)."""
    left_rank, right_rank = _rank(left), _rank(right)
    if left_rank != right_rank:
        return _sign(left_rank, right_rank)
    rank = left_rank
    if rank in (_NULL, _MISSING, _MIN_KEY, _MAX_KEY):
        return 0
    if rank == _NUMBER:
        left_number, right_number = _number(left), _number(right)
        if left_number is None or right_number is None:
            # NaN equals NaN and comes below every other number.
            return _sign(left_number is not None, right_number is not None)
        return _sign(left_number, right_number)
    if rank in (_STRING, _CODE):
        return _sign(str(left), str(right))  # code points: the order of UTF-8 bytes
    if rank == _OBJECT:
        return _compare_objects(left, right)
    if rank == _ARRAY:
        for left_item, right_item in zip(left, right, strict=False):
            order = compare(left_item, right_item)
            if order:
                return order
        return _sign(len(left), len(right))
    if rank == _BINARY:
        return _sign(_binary(left), _binary(right))
    if rank == _OBJECT_ID:
        return _sign(left.binary, right.binary)
    if rank == _BOOLEAN:
        return _sign(bool(left), bool(right))
    if rank == _DATE:
        return _sign(_utc(left), _utc(right))
    if rank == _TIMESTAMP:
        return _sign((left.time, left.inc), (right.time, right.inc))
    if rank == _REGEX:
        return _sign((left.pattern, _flags(left)), (right.pattern, _flags(right)))
    if left == right:
        return 0
    return _sign(repr(left), repr(right))


def _compare_objects(left: Mapping[str, Any], right: Mapping[str, Any]) -> int:
    """Field by field, in order: each pair by its value's type, then its name, then its value;
    a document that runs out of fields first is the lower."""
    left_items, right_items = iter(left.items()), iter(right.items())
    while True:
        left_item = next(left_items, None)
        right_item = next(right_items, None)
        if left_item is None or right_item is None:
            return _sign(left_item is not None, right_item is not None)
        (left_name, left_value), (right_name, right_value) = left_item, right_item
        order = _sign(_rank(left_value), _rank(right_value)) or _sign(left_name, right_name)
        if order:
            return order
        order = compare(left_value, right_value)
        if order:
            return order


def _flags(pattern: Any) -> str:
    """A regular expression's options as letters, the form in which BSON stores them."""
    if isinstance(pattern, Regex) and isinstance(pattern.flags, str):
        return "".join(sorted(pattern.flags))
    flags = int(pattern.flags)
    letters = (
        (re.IGNORECASE, "i"),
        (re.LOCALE, "l"),
        (re.MULTILINE, "m"),
        (re.DOTALL, "s"),
        (re.UNICODE, "u"),
        (re.VERBOSE, "x"),
    )
    return "".join(letter for flag, letter in letters if flags & flag and letter != "u")


def equal(left: Any, right: Any) -> bool:
    """Whether MongoDB takes `left` and `right` for the same value."""
    return compare(left, right) == 0


# -- filters ----------------------------------------------------------------------------------


def _equals(value: Any, operand: Any) -> bool:
    """A filter's equality: `value` (a document's, NOTHING when missing) is `operand`, or is an
    array holding it; null also matches a missing field."""
    if value is NOTHING:
        return operand is None
    if equal(value, operand):
        return True
    if isinstance(value, list):
        return any(equal(item, operand) for item in value)
    return False


def _in(value: Any, operands: Any) -> bool:
    if not isinstance(operands, list | tuple):
        raise OperationFailure("$in needs an array")
    for operand in operands:
        if isinstance(operand, _REGEX_TYPES) and _pattern_matches(value, operand):
            return True
        if _equals(value, operand):
            return True
    return False


_pattern_matches: Callable[[Any, Any], bool] = filtering._regex


def _not_in(value: Any, operands: Any) -> bool:
    if not isinstance(operands, list | tuple):
        raise OperationFailure("$nin needs an array")
    return not _in(value, operands)


def _explicit(search_filter: Any) -> Any:
    """`search_filter` with each implicit equality (`{"a": v}`) said as `{"a": {"$eq": v}}`,
    so that it goes through `_equals`; the same object when there is none. A regular
    expression (a pattern match), null (mongomock's own rule for missing fields) and a
    document of operators stay as they are."""
    if not isinstance(search_filter, dict):
        return search_filter
    changed: dict[str, Any] | None = None
    for key, search in search_filter.items():
        if key.startswith("$") or search is None or isinstance(search, _REGEX_TYPES):
            continue
        if isinstance(search, dict) and search and all(name.startswith("$") for name in search):
            continue
        if changed is None:
            changed = dict(search_filter)
        changed[key] = {"$eq": search}
    return search_filter if changed is None else changed


def _install_filters() -> None:
    inst: Any = filtering._filterer_inst
    apply: Callable[[Any, Any, Any], bool] = type(inst).apply
    all_of: Callable[[Any, Any, Any], bool] = type(inst)._all_op

    def explicit_apply(search_filter: Any, document: Any) -> bool:
        return apply(inst, _explicit(search_filter), document)

    def all_op(value: Any, operands: Any) -> bool:
        if not isinstance(operands, list | tuple):
            return all_of(inst, value, operands)
        if not operands:
            return False  # `$all: []` matches no document
        # The values the field holds: each candidate (mongomock passes a path's candidates as
        # a list), and the elements of those that are arrays.
        pool: list[Any] = []
        for candidate in value if isinstance(value, list) else [value]:
            pool.append(candidate)
            if isinstance(candidate, list):
                pool.extend(candidate)
        for operand in operands:
            if isinstance(operand, dict) and "$elemMatch" in operand:
                if not inst._elem_match_op(value, operand["$elemMatch"]):
                    return False
            elif not any(equal(held, operand) for held in pool if held is not NOTHING):
                return False
        return True

    # Instance attributes: mongomock calls them through `self`, recursion included.
    inst.apply = explicit_apply
    inst._all_op = all_op
    operators: dict[str, Callable[[Any, Any], bool]] = inst._operator_map
    operators["$eq"] = _equals
    operators["$ne"] = lambda value, operand: not _equals(value, operand)
    operators["$in"] = _in
    operators["$nin"] = _not_in
    operators["$all"] = all_op


# -- aggregation expressions ------------------------------------------------------------------

_VERDICTS: dict[str, Callable[[int], Any]] = {
    "$eq": lambda order: order == 0,
    "$ne": lambda order: order != 0,
    "$gt": lambda order: order > 0,
    "$gte": lambda order: order >= 0,
    "$lt": lambda order: order < 0,
    "$lte": lambda order: order <= 0,
    "$cmp": lambda order: order,
}


def _two_operands(parser: Any, operator: str, values: Any) -> tuple[Any, Any]:
    """The two operands of expression `operator`, evaluated (NOTHING for a missing field)."""
    if not isinstance(values, list) or len(values) != 2:
        count = len(values) if isinstance(values, list) else 1
        raise OperationFailure(
            f"Expression {operator} takes exactly 2 arguments. {count} were passed in."
        )
    return parser._parse_or_nothing(values[0]), parser._parse_or_nothing(values[1])


def _install_expressions() -> None:
    def comparison(parser: Any, operator: str, values: Any) -> Any:
        left, right = _two_operands(parser, operator, values)
        return _VERDICTS[operator](compare(left, right))

    parser: Any = aggregate._Parser
    parser._handle_comparison_operator = comparison
    set_operator = parser._handle_set_operator

    def membership(parser: Any, operator: str, values: Any) -> Any:
        if operator != "$in":
            return set_operator(parser, operator, values)
        value, array = _two_operands(parser, operator, values)
        if not isinstance(array, list):
            raise OperationFailure("$in requires an array as a second argument")
        return any(equal(value, item) for item in array)

    parser._handle_set_operator = membership


_installed = False


def install() -> None:
    """Make mongomock's filters and aggregation comparisons compare as MongoDB (once)."""
    global _installed
    if _installed:
        return
    _install_filters()
    _install_expressions()
    _installed = True
