"""`updateDescription` of an update event, computed the way MongoDB's $v:2 delta oplog does.

Operator updates ($set, $inc, $push, ...) log each modified path as the update system does:
the whole new value at the modified path, the first created ancestor when a path is new, one
`arr.N` entry per appended element for $push/$addToSet, nothing for a no-op modifier.
Pipeline updates and replacements-by-pipeline are diffed field by field (sub-documents
become dotted paths, array shrink becomes `truncatedArrays`); when that diff would be larger
than the document MongoDB logs a replacement instead, which change streams show as `replace`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import bson

__all__ = ["UpdateDescription", "describe_update", "same_value"]

_MISSING: Any = object()
# Bytes MongoDB adds around a delta oplog entry when deciding between a delta and a replacement.
_DELTA_METADATA_BYTES = 15
_ARRAY_MODIFIERS = frozenset({"$push", "$addToSet", "$pull", "$pullAll", "$pop"})


Component = str | int


@dataclass
class UpdateDescription:
    """The three lists of an update event's `updateDescription`, and the components (field
    names as strings, array indexes as ints) of the paths the dotted form leaves open."""

    updated_fields: dict[str, Any] = field(default_factory=dict)
    removed_fields: list[str] = field(default_factory=list)
    truncated_arrays: list[dict[str, Any]] = field(default_factory=list)
    ambiguous: dict[str, list[Component]] = field(default_factory=dict)

    def is_empty(self) -> bool:
        """True when the update changed nothing a client could see."""
        return not (self.updated_fields or self.removed_fields or self.truncated_arrays)

    def note(self, path: str, parts: Sequence[Component]) -> None:
        """Keep `path`'s components when a field name among them holds a `.` or is numeric
        (not an array index): what `disambiguatedPaths` reports for it."""
        if any(isinstance(part, str) and ("." in part or part.isdigit()) for part in parts):
            self.ambiguous[path] = list(parts)

    def disambiguated_paths(self) -> dict[str, list[Component]]:
        """What a change stream with `showExpandedEvents` reports under `disambiguatedPaths`
        (MongoDB 6.1), for the paths the description still holds."""
        if not self.ambiguous:
            return {}
        held = {*self.updated_fields, *self.removed_fields}
        held.update(entry["field"] for entry in self.truncated_arrays)
        return {path: parts for path, parts in self.ambiguous.items() if path in held}

    def document(self) -> dict[str, Any]:
        """The `updateDescription` sub-document of a change event."""
        return {
            "updatedFields": dict(self.updated_fields),
            "removedFields": list(self.removed_fields),
            "truncatedArrays": [dict(t) for t in self.truncated_arrays],
        }


def same_value(a: Any, b: Any) -> bool:
    """Binary equality as MongoDB's no-op detection sees it: same types, same field order."""
    if a is b:
        return True
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is dict:
        if list(a) != list(b):
            return False
        return all(same_value(a[k], b[k]) for k in a)
    if kind is list:
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if kind is float and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def describe_update(
    before: dict[str, Any], after: dict[str, Any], update_spec: Any, *, changed: bool = False
) -> UpdateDescription | None:
    """The description of an update, or None when the oplog would record a replacement.

    Returns an empty description for a no-op (callers drop the event). `changed`: the caller
    has compared the documents' bytes already and they differ.
    """
    # MongoDB's no-op test is on the documents' bytes; encoding is C, a Python walk of two
    # equal documents was a twentieth of the server's time under a sync's load.
    if not changed and (before is after or bson.encode(before) == bson.encode(after)):
        return UpdateDescription()
    if _is_operator_update(update_spec):
        described = _describe_operators(before, after, update_spec)
        _cover_unnamed_changes(before, after, described)
        return described
    delta = _diff_document(before, after)
    if len(bson.encode(delta)) + _DELTA_METADATA_BYTES >= _size(after):
        return None
    description = UpdateDescription()
    _describe_delta(delta, "", (), description)
    return description


def _is_operator_update(update_spec: Any) -> bool:
    return (
        isinstance(update_spec, Mapping)
        and bool(update_spec)
        and all(isinstance(k, str) and k.startswith("$") for k in update_spec)
    )


# ---- operator updates --------------------------------------------------------------------


def _describe_operators(
    before: Mapping[str, Any], after: Mapping[str, Any], spec: Mapping[str, Any]
) -> UpdateDescription:
    logged: list[tuple[str | int | None, list[str]]] = []
    for operator, fields in spec.items():
        if not isinstance(fields, dict) or operator == "$setOnInsert":
            continue
        for path, argument in fields.items():
            paths = [path]
            if operator == "$rename" and isinstance(argument, str):
                paths.append(argument)
            for one in paths:
                for parts in _resolve(one.split("."), before, after):
                    target = _get(before, parts)
                    if (
                        operator in _ARRAY_MODIFIERS
                        and target is not _MISSING
                        and not isinstance(target, list)
                    ):
                        # mongod refuses an array modifier on a non-array; an engine that
                        # applied it anyway is described by the whole top-level field.
                        parts = parts[:1]
                    logged.append((_append_mode(operator, argument), parts))
    description = UpdateDescription()
    seen: set[str] = set()
    for mode, parts in logged:
        _log_path(mode, parts, before, after, description, seen)
    _drop_nested(description)
    return description


def _cover_unnamed_changes(
    before: dict[str, Any], after: dict[str, Any], description: UpdateDescription
) -> None:
    """Add top-level fields that changed although no logged path names them.

    A storage engine may apply a modifier differently from mongod; describing such a field
    whole keeps the event true to the document instead of silently missing the change.
    """
    named = {p.partition(".")[0] for p in description.updated_fields}
    named.update(p.partition(".")[0] for p in description.removed_fields)
    for name, value in after.items():
        if name not in named and (name not in before or not same_value(before[name], value)):
            description.updated_fields[name] = value
            description.note(name, [name])
    for name in before:
        if name not in after and name not in named:
            description.removed_fields.append(name)
            description.note(name, [name])


def _append_mode(operator: str, argument: Any) -> str | int | None:
    """How a modifier logs an append: one `arr.N` per new element, or the whole array.

    $addToSet always logs appended elements one by one. $push does when the array was not empty
    and it neither sorts nor slices, and a `$position` only when it lies past the end (returned
    as the int). None: the modifier always logs the whole value.
    """
    if operator == "$addToSet":
        return "addToSet"
    if operator != "$push":
        return None
    if isinstance(argument, dict) and "$each" in argument:
        if {"$sort", "$slice"} & argument.keys():
            return None
        position = argument.get("$position")
        if position is not None:
            return int(position) if int(position) >= 0 else None
    return "push"


def _resolve(parts: list[str], before: Any, after: Any) -> Iterator[list[str]]:
    """Expand positional components ($, $[], $[id]) to the array indexes the update changed."""
    for k, part in enumerate(parts):
        if part == "$" or (part.startswith("$[") and part.endswith("]")):
            head = parts[:k]
            array = _get(after, head)
            if not isinstance(array, list):
                return
            for i in range(len(array)):
                candidate = [*head, str(i)]
                rest = parts[k + 1 :]
                old = _get(before, candidate)
                new = _get(after, candidate)
                if old is _MISSING or not same_value(old, new):
                    yield from _resolve(candidate + rest, before, after)
            return
    yield parts


def _log_path(
    mode: str | int | None,
    parts: list[str],
    before: Any,
    after: Any,
    description: UpdateDescription,
    seen: set[str],
) -> None:
    parts = _addressable(parts, before, after)
    if not parts:
        return
    created = _first_missing(before, parts)
    new = _get(after, parts)
    if new is _MISSING:
        if created is None:
            parent = _get(after, parts[:-1])
            if isinstance(parent, list):
                # An element vanished from an array: only the whole array describes that.
                _add_updated(parts[:-1], parent, description, seen, after)
            else:
                _add_removed(parts, description, seen, before)
        return
    if created is not None:
        prefix = parts[: created + 1]
        _add_updated(prefix, _get(after, prefix), description, seen, after)
        return
    old = _get(before, parts)
    if same_value(old, new):
        return
    if (
        mode is not None
        and isinstance(old, list)
        and (mode == "addToSet" or (old and (mode == "push" or int(mode) > len(old))))
        and isinstance(new, list)
        and len(new) > len(old)
        and same_value(old, new[: len(old)])
    ):
        for i in range(len(old), len(new)):
            _add_updated([*parts, str(i)], new[i], description, seen, after)
        return
    _add_updated(parts, new, description, seen, after)


def _add_updated(
    parts: list[str], value: Any, description: UpdateDescription, seen: set[str], doc: Any
) -> None:
    path = ".".join(parts)
    if path not in seen:
        seen.add(path)
        description.updated_fields[path] = value
        _note_typed(description, path, parts, doc)


def _add_removed(
    parts: list[str], description: UpdateDescription, seen: set[str], doc: Any
) -> None:
    path = ".".join(parts)
    if path not in seen:
        seen.add(path)
        description.removed_fields.append(path)
        _note_typed(description, path, parts, doc)


def _note_typed(description: UpdateDescription, path: str, parts: list[str], doc: Any) -> None:
    """Note an operator's path: its components hold no `.`, so only a numeric one (a field
    name, or an array index of `doc`) can make it ambiguous."""
    if any(part.isdigit() for part in parts):
        description.note(path, _typed(parts, doc))


def _typed(parts: list[str], doc: Any) -> list[Component]:
    """`parts` with the components that index an array in `doc` as ints."""
    typed: list[Component] = []
    current = doc
    for part in parts:
        if isinstance(current, list) and part.isdigit():
            typed.append(int(part))
            current = current[int(part)] if int(part) < len(current) else _MISSING
        else:
            typed.append(part)
            current = current.get(part, _MISSING) if isinstance(current, dict) else _MISSING
    return typed


def _drop_nested(description: UpdateDescription) -> None:
    """Keep only the outermost of overlapping paths (a created ancestor covers its children)."""
    paths = list(description.updated_fields) + description.removed_fields
    if len(paths) < 2 or not any("." in p for p in paths):
        return
    covered = {p for p in paths if any(p.startswith(q + ".") for q in paths)}
    if covered:
        for p in covered:
            description.updated_fields.pop(p, None)
        description.removed_fields = [p for p in description.removed_fields if p not in covered]


def _addressable(parts: list[str], before: Any, after: Any) -> list[str]:
    """`parts` cut before the first component that names a field inside an array.

    MongoDB refuses such paths; when a storage engine applied one anyway, the whole array is
    the smallest path that describes the change.
    """
    for doc in (before, after):
        current = doc
        for k, part in enumerate(parts):
            if isinstance(current, list) and not part.isdigit():
                return parts[:k]
            if isinstance(current, dict):
                current = current.get(part, _MISSING)
            elif isinstance(current, list) and int(part) < len(current):
                current = current[int(part)]
            else:
                break
    return parts


def _get(doc: Any, parts: list[str]) -> Any:
    current = doc
    for part in parts:
        if isinstance(current, dict):
            if part not in current:
                return _MISSING
            current = current[part]
        elif isinstance(current, list):
            if not part.isdigit() or int(part) >= len(current):
                return _MISSING
            current = current[int(part)]
        else:
            return _MISSING
    return current


def _first_missing(doc: Any, parts: list[str]) -> int | None:
    """Index of the first component of `parts` absent from `doc`, None when all exist."""
    current = doc
    for k, part in enumerate(parts):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return k
    return None


# ---- pipeline updates: the document diff of MongoDB's doc_diff -------------------------


def _diff_document(pre: Mapping[str, Any], post: Mapping[str, Any]) -> dict[str, Any]:
    """A $v:2 delta: {"d": deletes, "u": updates, "i": inserts, "s<field>": sub-diffs}."""
    deletes: dict[str, Any] = {}
    updates: dict[str, Any] = {}
    inserts: dict[str, Any] = {}
    subs: dict[str, Any] = {}
    pre_names = list(pre)
    post_names = list(post)
    i = j = 0
    # Fields walked in step keep their place; once the orders diverge, the remaining fields of
    # `post` are re-inserted (appended), which is how the delta preserves field order.
    while i < len(pre_names) and j < len(post_names):
        name = pre_names[i]
        if name == post_names[j]:
            _diff_field(name, pre[name], post[name], updates, subs)
            i += 1
            j += 1
        else:
            if name not in post:
                deletes[name] = False
            i += 1
    for name in pre_names[i:]:
        if name not in post:
            deletes[name] = False
    for name in post_names[j:]:
        inserts[name] = post[name]
    delta: dict[str, Any] = {}
    if deletes:
        delta["d"] = deletes
    if updates:
        delta["u"] = updates
    if inserts:
        delta["i"] = inserts
    delta.update(subs)
    return delta


def _diff_field(
    name: str, old: Any, new: Any, updates: dict[str, Any], subs: dict[str, Any]
) -> None:
    if same_value(old, new):
        return
    sub = _sub_diff(old, new)
    if sub is None:
        updates[name] = new
    else:
        subs["s" + name] = sub


def _diff_array(pre: list[Any], post: list[Any]) -> dict[str, Any]:
    delta: dict[str, Any] = {"a": True}
    if len(post) < len(pre):
        delta["l"] = len(post)
    for i, new in enumerate(post):
        if i >= len(pre):
            delta[f"u{i}"] = new
            continue
        old = pre[i]
        if same_value(old, new):
            continue
        sub = _sub_diff(old, new)
        if sub is None:
            delta[f"u{i}"] = new
        else:
            delta[f"s{i}"] = sub
    return delta


def _sub_diff(old: Any, new: Any) -> dict[str, Any] | None:
    """The diff of two objects or two arrays, None when writing `new` whole is as small."""
    if isinstance(old, dict) and isinstance(new, dict):
        sub = _diff_document(old, new)
    elif isinstance(old, list) and isinstance(new, list):
        sub = _diff_array(old, new)
    else:
        return None
    # doc_diff keeps a sub-diff only when it is smaller than the value it describes.
    return sub if len(bson.encode(sub)) < _size(new) else None


def _size(value: dict[str, Any] | list[Any]) -> int:
    if isinstance(value, list):
        return len(bson.encode({str(i): v for i, v in enumerate(value)}))
    return len(bson.encode(value))


def _describe_delta(
    delta: Mapping[str, Any],
    prefix: str,
    parts: tuple[Component, ...],
    out: UpdateDescription,
) -> None:
    """Add `delta`'s paths under `prefix` (components `parts`) to `out`."""
    if delta.get("a") is True:
        field_path = prefix[:-1]
        if "l" in delta:
            out.truncated_arrays.append({"field": field_path, "newSize": delta["l"]})
            out.note(field_path, parts)
        for key, value in delta.items():
            if key.startswith("u"):
                out.updated_fields[prefix + key[1:]] = value
                out.note(prefix + key[1:], (*parts, int(key[1:])))
            elif key.startswith("s"):
                _describe_delta(value, f"{prefix}{key[1:]}.", (*parts, int(key[1:])), out)
        return
    for name in delta.get("d", {}):
        out.removed_fields.append(prefix + name)
        out.note(prefix + name, (*parts, name))
    for section in ("u", "i"):
        for name, value in delta.get(section, {}).items():
            out.updated_fields[prefix + name] = value
            out.note(prefix + name, (*parts, name))
    for key, value in delta.items():
        if key.startswith("s"):
            _describe_delta(value, f"{prefix}{key[1:]}.", (*parts, key[1:]), out)
