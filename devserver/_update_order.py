"""Where an operator update puts the fields it adds: MongoDB's order, not mongomock's.

Since MongoDB 5.0 an update operator processes the fields it names level by level in
lexicographic order of their names, numeric names in numeric order (its manual, "Update
Operators", Behavior), whatever order the update lists them in and across operators. A field
that exists keeps its place; a field an update adds is appended, so the new fields of one level
end up after the old ones, in that order. An upsert builds its document the same way, from the
query's equality fields (`_id` first). mongomock appends them in the order the update names
them, so `{$set: {b: 1, a: 1}}` left `{b, a}` where MongoDB stores `{a, b}`; and a client (or the
worker) comparing whole documents, field order included (`$eq` on documents does), would be
told apart from what MongoDB answers.

Only the levels a dotted path walks through are reordered: a value written whole
(`{$set: {c: {z: 1, y: 2}}}`) keeps the order it was given, as MongoDB keeps it. `$rename`
removes both names and then sets the new one, so its target is a new field even where a field of
that name was. (`_fastupdate` applies the same order on its own path.)
"""

from __future__ import annotations

from functools import cmp_to_key
from typing import Any

__all__ = ["update_order_key", "with_update_order"]

# A level of the tree of paths an update names: name -> the level below, or None for a path's
# last component (its value is written whole).
_Level = dict[str, "_Level | None"]


def _compare_names(left: str, right: str) -> int:
    """MongoDB's processing order of two field names: numerically when both are numeric,
    else by their bytes (UTF-8 keeps code point order, which Python compares)."""
    if left.isdigit() and right.isdigit() and len(left) != len(right):
        return -1 if len(left) < len(right) else 1
    return -1 if left < right else (1 if left > right else 0)


update_order_key = cmp_to_key(_compare_names)


def with_update_order(
    new: dict[str, Any], old: dict[str, Any], update: dict[str, Any]
) -> dict[str, Any]:
    """`new`, the document operator update `update` made of `old` (for an upsert: the
    document built from the query), with its fields where MongoDB would have put them."""
    tree: _Level = {}
    renamed: list[list[str]] = []
    for operator, fields in update.items():
        if not isinstance(fields, dict):
            continue
        for path, operand in fields.items():
            _add(tree, str(path).split("."))
            if operator == "$rename" and isinstance(operand, str):
                _add(tree, operand.split("."))
                renamed.append(operand.split("."))
    for path in renamed:
        old = _without(old, path)
    ordered: dict[str, Any] = _ordered(new, old, tree)
    return ordered


def _add(tree: _Level, parts: list[str]) -> None:
    level = tree
    for part in parts[:-1]:
        below = level.get(part)
        if below is None:
            below = level[part] = {}
        level = below
    level.setdefault(parts[-1], None)


def _without(document: Any, path: list[str]) -> Any:
    """A copy of `document` without the field at `path` (documents only along the way)."""
    if not isinstance(document, dict) or path[0] not in document:
        return document
    copied = dict(document)
    if len(path) == 1:
        del copied[path[0]]
    else:
        copied[path[0]] = _without(copied[path[0]], path[1:])
    return copied


def _ordered(new: Any, old: Any, level: _Level) -> Any:
    """`new` at one level the update's paths walk through, reordered; `old`: that level
    before the update (anything but a document: none)."""
    if isinstance(new, list):
        # Numeric components into an array reach the documents it holds.
        items = list(new)
        for name, below in level.items():
            if below is not None and name.isdigit() and int(name) < len(items):
                before = old[int(name)] if isinstance(old, list) and int(name) < len(old) else None
                items[int(name)] = _ordered(items[int(name)], before, below)
        return items
    if not isinstance(new, dict):
        return new
    before = old if isinstance(old, dict) else {}
    out: dict[str, Any] = {}
    for name in before:
        if name in new:
            out[name] = _child(new, before, level, name)
    added = sorted((name for name in new if name not in before), key=update_order_key)
    for name in added:
        out[name] = _child(new, before, level, name)
    return out


def _child(new: dict[str, Any], old: dict[str, Any], level: _Level, name: str) -> Any:
    below = level.get(name)
    if below is None:
        return new[name]  # not on a path, or written whole
    return _ordered(new[name], old.get(name), below)
