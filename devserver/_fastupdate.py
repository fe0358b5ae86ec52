"""A native path for the commonest operator updates: `$set`, `$unset` and `$inc` on plain paths.

mongomock applies an update to a deep copy of the whole document (twice, counting the engine's
own copy) and re-runs the query; for the small `$set`/`$unset` updates clients and the sync
engine send, that copying is most of a write's cost. Here only the sub-documents along the
modified paths are copied and everything else stays shared (stored documents are never changed
in place: writes replace them). Anything outside the subset this module is sure of (arrays or
non-documents on a path, positional or numeric path components, conflicting paths, other
operators, unusual values) returns None, and the caller takes the mongomock path, which also
produces the errors MongoDB gives.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Union

from bson import Int64, Timestamp

__all__ = ["fast_update"]

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_MISSING: Any = object()

# One modified path ends in a leaf (operator, operand); the tree merges every operator's paths,
# as mongod's update tree does, so siblings can be processed in MongoDB's order.
Leaf = tuple[str, Any]
Node = dict[str, Union["Node", Leaf]]


class _Decline(Exception):
    """The update or the document is outside the fast subset."""


def fast_update(doc: dict[str, Any], update: Any) -> dict[str, Any] | None:
    """`doc` after a simple operator update, or None when the update is not simple.

    The result shares every sub-document the update does not touch with `doc`.
    """
    tree = _plan(update)
    if tree is None:
        return None
    try:
        return _apply(tree, doc)
    except _Decline:
        return None


def _plan(update: Any) -> Node | None:
    """The update's paths as one tree, or None when an operator, path or value is not simple."""
    if not isinstance(update, dict) or not update:
        return None
    tree: Node = {}
    for operator, fields in update.items():
        if operator not in _CHECKS or not isinstance(fields, dict) or not fields:
            return None
        accepts = _CHECKS[operator]
        for path, operand in fields.items():
            parts = _path_parts(path)
            if (
                parts is None
                or not accepts(operand)
                or not _insert(tree, parts, (operator, operand))
            ):
                return None
    return tree


def _path_parts(path: Any) -> list[str] | None:
    """The components of a plain dotted path; None for `_id`, positional, numeric or empty ones.

    A component below the top level may be a `$`-prefixed field name (MongoDB 5.0 and later
    store those, and an operator may name them); `$`, `$[]` and `$[name]` are positional
    operators, and a top-level `$` name is refused by the caller.
    """
    if not isinstance(path, str) or "\0" in path:
        return None
    parts = path.split(".")
    if parts[0] == "_id" or parts[0].startswith("$"):
        return None
    for part in parts:
        if not part or part.isdigit() or part == "$" or part.startswith("$["):
            return None
    return parts


def _insert(tree: Node, parts: list[str], leaf: Leaf) -> bool:
    """Add one path; False when it conflicts with another (mongod: ConflictingUpdateOperators)."""
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if isinstance(child, tuple):
            return False
        node = child
    if parts[-1] in node:
        return False
    node[parts[-1]] = leaf
    return True


def _apply(node: Node, current: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of `current` (None: a document being created) with `node`'s paths applied.

    Since MongoDB 5.0 an update processes the fields at each level in lexicographic order of
    their names, so that is the order in which new fields are appended.
    """
    out: dict[str, Any] = {} if current is None else dict(current)
    for name in sorted(node):
        child = node[name]
        existing = out.get(name, _MISSING)
        if isinstance(child, tuple):
            operator, operand = child
            if operator == "$set":
                out[name] = operand
            elif operator == "$unset":
                if existing is not _MISSING:
                    del out[name]
            else:
                out[name] = _increment(existing, operand)
        elif existing is _MISSING:
            if _creates(child):
                out[name] = _apply(child, None)
        elif isinstance(existing, dict):
            out[name] = _apply(child, existing)
        else:
            raise _Decline  # an array or a non-document on the path
    return out


def _creates(node: Node) -> bool:
    """Whether applying `node` under a missing field creates it (anything but `$unset` does)."""
    return any(
        child[0] != "$unset" if isinstance(child, tuple) else _creates(child)
        for child in node.values()
    )


def _is_long(value: int) -> bool:
    """Whether an integer is stored as a BSON int64 (an Int64, or too large for int32)."""
    return type(value) is Int64 or not _INT32_MIN <= value <= _INT32_MAX


def _increment(existing: Any, operand: Any) -> Any:
    """`existing + operand` with MongoDB's numeric types: int32 overflows into int64, a double
    makes a double, a missing field takes the operand as it is."""
    if existing is _MISSING:
        return operand
    kind = type(existing)
    if kind not in _NUMBERS:
        raise _Decline  # a non-numeric target: the other path raises MongoDB's error
    if kind is float or type(operand) is float:
        return float(existing) + float(operand)
    total = existing + operand
    if _is_long(existing) or _is_long(operand) or not _INT32_MIN <= total <= _INT32_MAX:
        if not _INT64_MIN <= total <= _INT64_MAX:
            raise _Decline  # int64 overflow is an error in MongoDB
        return Int64(total)
    return total


def _storable(value: Any) -> bool:
    """Whether a `$set` value is stored exactly as given.

    Not so, and left to the other path: an empty Timestamp (filled in by the server), datetimes
    finer than milliseconds or with a time zone (BSON keeps neither), tuples and subclasses of
    the container types. Sub-documents may hold `$`-prefixed and dotted names (MongoDB 5.0).
    """
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if not isinstance(key, str) or "\0" in key or not _storable(item):
                return False
        return True
    if kind is list:
        return all(_storable(item) for item in value)
    if kind is datetime:
        return value.tzinfo is None and value.microsecond % 1000 == 0
    if kind is Timestamp:
        return bool(value.time or value.inc)
    return not isinstance(value, dict | list | tuple | datetime)


def _is_number(value: Any) -> bool:
    return type(value) in _NUMBERS


_NUMBERS = frozenset({int, Int64, float})
_CHECKS = {"$set": _storable, "$unset": lambda _value: True, "$inc": _is_number}
