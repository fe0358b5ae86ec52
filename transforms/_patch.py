"""Field-level patches: the minimal `$set` / `$unset` between two documents, and applying them."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from transforms._paths import MISSING, SCALAR_TYPES, copy_value, same_value, split_path

__all__ = [
    "Patch",
    "apply_patch",
    "apply_update_description",
    "diff_documents",
    "diff_into",
    "make_patch",
    "named_fields",
    "unaddressable_field",
]


@dataclass(frozen=True)
class Patch:
    """A field-level change to one document: dotted paths to set, and dotted paths to unset."""

    set: Mapping[str, Any] = field(default_factory=dict)
    unset: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        """True when the patch changes nothing."""
        return not self.set and not self.unset

    def to_update(self) -> dict[str, Any]:
        """The MongoDB update document, without empty operators (the server rejects those)."""
        update: dict[str, Any] = {}
        if self.set:
            update["$set"] = dict(self.set)
        if self.unset:
            update["$unset"] = dict.fromkeys(self.unset, "")
        return update

    def restricted(self, keep: Callable[[str], bool]) -> Patch:
        """The part of the patch whose paths `keep` accepts."""
        return Patch(
            {path: value for path, value in self.set.items() if keep(path)},
            tuple(path for path in self.unset if keep(path)),
        )


def make_patch(sets: dict[str, Any], unsets: tuple[str, ...]) -> Patch:
    """`Patch(sets, unsets)` without the dataclass `__init__`: the hot path builds one per event."""
    patch = object.__new__(Patch)
    fields = patch.__dict__
    fields["set"] = sets
    fields["unset"] = unsets
    return patch


def _is_document(value: Any) -> bool:
    kind = type(value)
    return kind is dict or (kind not in SCALAR_TYPES and isinstance(value, Mapping))


def _addressable_fields(document: Mapping[str, Any]) -> bool:
    """Whether an update path can name every field of `document`: none is empty, holds a `.`
    or starts with `$`. MongoDB 5.0 stores such names, but `$set: {"a.b": ...}` means field `b`
    of `a`, and a `$`-prefixed component may be read as an operator or a positional `$`."""
    for name in document:
        if not _addressable_name(name):
            return False
    return True


def _addressable_name(name: str) -> bool:
    return bool(name) and "." not in name and name[0] != "$"


def named_fields(patch: Patch, *documents: Mapping[str, Any] | None) -> frozenset[str]:
    """The paths of `patch` that are top-level field names no update path can address.

    `diff_into` sets a sub-document holding such names whole, so only top-level fields remain:
    a `$`-prefixed (or empty) name, or a name with a `.` that is a field of one of `documents`
    (the documents the patch was computed from; elsewhere a dotted path is a nested field).
    Such a field is written by name (`$setField` in a pipeline update) and read by name
    (`apply_patch(..., fields=)`).
    """
    names: set[str] = set()
    for path in (*patch.set, *patch.unset):
        if not path or path[0] == "$":
            names.add(path)
        elif "." in path and any(doc is not None and path in doc for doc in documents):
            names.add(path)
    return frozenset(names)


def unaddressable_field(
    patch: Patch, *documents: Mapping[str, Any] | None, named: frozenset[str] | None = None
) -> str | None:
    """A top-level field of `patch` that no update can write (see `named_fields`), or None.

    An empty name; or a dotted name whose first part is itself a top-level field of one of
    `documents` (with fields `a` and `a.b`, the path `a.b` of a patch could mean either).
    `named`: `named_fields(patch, *documents)` when the caller has it already.
    """
    for name in named_fields(patch, *documents) if named is None else named:
        if not name:
            return name
        first = name.split(".", 1)[0]
        if "." in name and any(doc is not None and first in doc for doc in documents):
            return name
    return None


def diff_into(
    prefix: str,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    sets: dict[str, Any],
    unsets: list[str],
    leafwise: frozenset[str] = frozenset(),
) -> None:
    """Add to `sets` / `unsets` what turns sub-document `old` into `new`, paths under `prefix`.

    A sub-document at a path in `leafwise` that appears or disappears is patched field by
    field instead of whole, so fields of it the patch must not touch survive. A sub-document
    holding a name no update path can address (`_addressable_fields`) is set whole: inside it, the
    last writer wins for the sub-document rather than field by field.
    """
    for key, value in new.items():
        if key == "_id" and not prefix:
            continue
        before = old.get(key, MISSING)
        if before is MISSING:
            path = prefix + key
            if leafwise and path in leafwise and _is_document(value) and _addressable_fields(value):
                diff_into(path + ".", {}, value, sets, unsets, leafwise)
            else:
                sets[path] = copy_value(value)
        elif before is value:
            continue
        elif (
            _is_document(value)
            and _is_document(before)
            and _addressable_fields(value)
            and _addressable_fields(before)
            # A top-level field named `a.b` or `$a` is no path prefix: `a.b.c` means field `c`
            # of `b` of `a`. Set whole, it is the one path `unaddressable_field` finds.
            and (prefix or _addressable_name(key))
        ):
            diff_into(f"{prefix}{key}.", before, value, sets, unsets, leafwise)
        elif not same_value(before, value):
            sets[prefix + key] = copy_value(value)
    for key, before in old.items():
        if key not in new and not (key == "_id" and not prefix):
            path = prefix + key
            if (
                leafwise
                and path in leafwise
                and _is_document(before)
                and _addressable_fields(before)
            ):
                diff_into(path + ".", before, {}, sets, unsets, leafwise)
            else:
                unsets.append(path)


def diff_documents(old: Mapping[str, Any], new: Mapping[str, Any]) -> Patch:
    """The minimal patch turning `old` into `new`; sub-documents recurse, `_id` is never patched.

    Arrays and values whose BSON type changed are set whole, removed paths are unset.
    """
    sets: dict[str, Any] = {}
    unsets: list[str] = []
    diff_into("", old, new, sets, unsets)
    return make_patch(sets, tuple(unsets))


class _Writer:
    """Copy-on-write edits of a document: each container on an edited path is copied once."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.root: dict[str, Any] = dict(document)
        self._owned: set[int] = {id(self.root)}

    def _own(self, parent: Any, key: Any, child: Any) -> Any:
        if id(child) in self._owned:
            return child
        copied: Any = dict(child) if isinstance(child, Mapping) else list(child)
        parent[key] = copied
        self._owned.add(id(copied))
        return copied

    def _container(self, path: Sequence[str], create: bool) -> Any:
        """The owned container holding the last part of `path`, or None when it is absent."""
        target: Any = self.root
        for part in path[:-1]:
            if isinstance(target, dict):
                child = target.get(part, MISSING)
                key: Any = part
            elif part.isdigit() and int(part) < len(target):
                key = int(part)
                child = target[key]
            elif part.isdigit() and create:
                key = int(part)
                target.extend([None] * (key + 1 - len(target)))
                child = None
            else:
                return None
            if isinstance(child, Mapping | list):
                target = self._own(target, key, child)
            elif create:
                # MongoDB refuses to set below a scalar; an update event never asks for it, and
                # replacing the scalar keeps this function total for hand-written inputs.
                fresh: dict[str, Any] = {}
                target[key] = fresh
                self._owned.add(id(fresh))
                target = fresh
            else:
                return None
        return target

    def set(self, path: Sequence[str], value: Any) -> None:
        target = self._container(path, create=True)
        last = path[-1]
        if target is None:
            return  # a named field inside an array: MongoDB rejects such an update
        if isinstance(target, list):
            if not last.isdigit():
                return
            index = int(last)
            if index >= len(target):
                target.extend([None] * (index + 1 - len(target)))
            target[index] = value
        else:
            target[last] = value

    def unset(self, path: Sequence[str]) -> None:
        target = self._container(path, create=False)
        last = path[-1]
        if isinstance(target, dict):
            target.pop(last, None)
        elif isinstance(target, list) and last.isdigit() and int(last) < len(target):
            target[int(last)] = None  # $unset of an array element leaves a null, as in MongoDB

    def truncate(self, path: Sequence[str], size: int) -> None:
        target = self._container(path, create=False)
        last = path[-1]
        if isinstance(target, dict) and isinstance(target.get(last), list):
            target[last] = list(target[last][:size])
            self._owned.add(id(target[last]))


def apply_update_description(
    document: Mapping[str, Any],
    updated_fields: Mapping[str, Any],
    removed_fields: Sequence[str] = (),
    truncated_arrays: Sequence[Mapping[str, Any]] = (),
    disambiguated_paths: Mapping[str, Sequence[Any]] | None = None,
) -> dict[str, Any]:
    """What an update event's `updateDescription` did to `document`, as a new document.

    Arrays are truncated first, then fields set, then removed, which is how MongoDB describes a
    pipeline update that shortened an array and rewrote some of its elements. Inputs are not
    mutated; the result shares unchanged sub-documents with `document`. `disambiguated_paths`
    (MongoDB 6.1's `disambiguatedPaths`): the components of paths that a split at each `.`
    would get wrong, such as `prices.v1.2` for field "v1.2" of `prices`.
    """
    components = disambiguated_paths or {}

    def by_components(path: str) -> Sequence[str]:
        listed = components.get(path)
        if listed is None:
            return split_path(path)
        # An int is an array index, a string a field name: the container's type decides.
        return [str(part) for part in listed]

    parts = by_components if components else split_path

    writer = _Writer(document)
    for truncation in truncated_arrays:
        writer.truncate(parts(truncation["field"]), int(truncation["newSize"]))
    for path, value in updated_fields.items():
        writer.set(parts(path), value)
    for path in removed_fields:
        writer.unset(parts(path))
    return writer.root


def apply_patch(
    document: Mapping[str, Any], patch: Patch, fields: Collection[str] = ()
) -> dict[str, Any]:
    """`document` with `patch` applied, as a new document (the input is not mutated). The
    paths in `fields` are top-level field names, not paths (see `named_fields`)."""
    writer = _Writer(document)
    for path, value in patch.set.items():
        if fields and path in fields:
            writer.root[path] = copy_value(value)
        else:
            writer.set(split_path(path), copy_value(value))
    for path in patch.unset:
        if fields and path in fields:
            writer.root.pop(path, None)
        else:
            writer.unset(split_path(path))
    return writer.root
