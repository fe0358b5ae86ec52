"""The one way the worker changes a target document: the smallest write from current to desired.

The engine, the backfill, `verify --repair` and `dlq retry` all end here, so that a write whose
result equals the target's current value is never issued (G3) and a path the direction does not
own (a field the target side keeps for itself) is never touched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cmp_to_key
from typing import Any, Literal

from pymongo import DeleteOne, ReplaceOne, UpdateOne

from transforms import (
    Direction,
    Pair,
    Patch,
    apply_patch,
    diff_documents,
    named_fields,
    unaddressable_field,
)
from worker.engine._plan import unaddressable_failure

__all__ = ["TargetWrite", "plan_target_write", "write_operation"]


@dataclass(frozen=True)
class TargetWrite:
    """A write to one target document: insert a whole document, patch fields, or delete it."""

    kind: Literal["insert", "update", "delete"]
    document_id: Any
    document: Mapping[str, Any] | None = None
    patch: Patch | None = None
    # Paths of `patch` that are top-level field names no update path can address (a `.`
    # inside, a leading `$`): written by name, with `$setField` (`transforms.named_fields`).
    fields: frozenset[str] = frozenset()

    def result(
        self, current: Mapping[str, Any] | None, *, absent: bool = False
    ) -> dict[str, Any] | None:
        """The target document after this write, given what it was before, with its fields in
        the order the server stores them once `write_operation` (with the same `absent`) has
        run. Field order counts: a precondition (`expect`) compares whole documents with
        `$eq`, which MongoDB does field by field in order.

        - An insert: `_id` first, then the document's order; created with `$setOnInsert`, the
          other fields in the order an update processes names (`update_order`).
        - An update by operators: fields keep their place, and those it adds come after them
          level by level in that order, whatever the patch's order.
        - An update by a pipeline (`fields`): its `$set` stage adds fields in the patch's order,
          then each top-level name is set by a stage of its own, in sorted order.
        """
        if self.kind == "delete":
            return None
        if self.kind == "insert":
            document = dict(self.document or {})
            form = _insert_form(document, absent)
            if form == "pipeline":
                return document  # `$replaceWith`: the literal's order
            names = [name for name in document if name != "_id"]
            if form == "setOnInsert":
                names.sort(key=update_order)
            return {"_id": document.get("_id", self.document_id)} | {
                name: document[name] for name in names
            }
        assert self.patch is not None and current is not None
        sets = self.patch.set
        # Fields already there keep their place: the order matters only for those added.
        if len(sets) > 1 and not all(path in current for path in sets):
            if self.fields:
                by_path = [path for path in sets if path not in self.fields]
                by_name = sorted(path for path in sets if path in self.fields)
                order = by_path + by_name
            else:
                order = sorted(sets, key=_path_order)
            sets = {path: sets[path] for path in order}
        return apply_patch(current, Patch(sets, self.patch.unset), self.fields)


def _compare_names(left: str, right: str) -> int:
    """Which of two field names an update processes first (MongoDB 5.0 and later): numeric
    names by number, any other pair by their characters."""
    if len(left) != len(right) and left.isdigit() and right.isdigit():
        return len(left) - len(right)
    return (left > right) - (left < right)


update_order = cmp_to_key(_compare_names)


def _path_order(path: str) -> list[Any]:
    """A dotted path's place among an update's paths: its names level by level."""
    return [update_order(name) for name in path.split(".")]


def plan_target_write(
    current: Mapping[str, Any] | None,
    desired: Mapping[str, Any] | None,
    owns: Callable[[str], bool],
    *,
    document_id: Any,
    pair: Pair | None = None,
    direction: Direction | None = None,
) -> TargetWrite | None:
    """The write that turns `current` into `desired` on the owned paths, or None for a no-op.

    `desired` is the whole converted document (None: the logical document is deleted). Paths
    not owned keep the target's value, except when the document is created. Given the pair and
    direction, sub-documents that may hold fields the target keeps are patched field by field
    (`Pair.target_patch`), so those fields survive. A changed top-level field whose name holds
    a `.` or starts with `$` is written by name; TransformFailed when one cannot be written at
    all (see `transforms.unaddressable_field`).
    """
    if desired is None:
        return None if current is None else TargetWrite("delete", document_id)
    if current is None:
        return TargetWrite("insert", document_id, document=dict(desired))
    if pair is not None and direction is not None:
        patch = pair.target_patch(current, desired, direction).restricted(owns)
    else:
        patch = diff_documents(current, desired).restricted(owns)
    if patch.is_empty():
        return None
    named = named_fields(patch, current, desired)
    unaddressable = unaddressable_field(patch, current, desired, named=named)
    if unaddressable is not None:
        raise unaddressable_failure(pair, unaddressable, document_id)
    return TargetWrite("update", document_id, patch=patch, fields=named)


def write_operation(
    write: TargetWrite,
    *,
    tag: Mapping[str, Any] | None = None,
    namespace: str | None = None,
    expect: Mapping[str, Any] | None = None,
    tag_field: str | None = None,
    absent: bool = False,
) -> DeleteOne | ReplaceOne[dict[str, Any]] | UpdateOne:
    """The planned write as a bulk-write operation, for sending many in one round trip.

    `namespace` ("db.collection") is for a client-level bulk write; a collection's ignores it.
    `expect`: the document as the write was planned on (without `tag_field`); the write then
    applies only to the document still as it was, and matches nothing once a client changed
    it (writes outside a transaction, which nothing else keeps from overwriting a newer one).
    `absent`: the same for a document planned on as absent: the insert leaves one a client
    created since as it is (`$setOnInsert`; for a document holding a top-level name an update
    operator cannot address, a pipeline that keeps any document but the upsert's bare
    `{_id}`).
    """
    where: dict[str, Any] = {"_id": write.document_id}
    if expect is not None:
        where["$expr"] = _unchanged(expect, tag_field)
    # Creating the document (nothing expected) inserts it; replacing one that must still be as
    # it was never does.
    upsert = expect is None
    if write.kind == "delete":
        return DeleteOne(where, namespace=namespace)
    if write.kind == "insert":
        document = {**(write.document or {}), **(tag or {})}
        form = _insert_form(document, absent)
        if form == "setOnInsert":
            fields = {name: value for name, value in document.items() if name != "_id"}
            return UpdateOne(where, {"$setOnInsert": fields}, upsert=True, namespace=namespace)
        if absent and form == "pipeline":
            # The upsert runs the pipeline over `{_id}` alone when nothing matched.
            created = {"$eq": ["$$ROOT", {"$literal": {"_id": write.document_id}}]}
            only_if_created = {"$cond": [created, {"$literal": document}, "$$ROOT"]}
            return UpdateOne(
                where, [{"$replaceWith": only_if_created}], upsert=True, namespace=namespace
            )
        if form == "pipeline":
            # A replacement may not hold a top-level `$` name (DollarPrefixedFieldName); the
            # same document as the pipeline's one stage may.
            return UpdateOne(
                where,
                [{"$replaceWith": {"$literal": document}}],
                upsert=upsert,
                namespace=namespace,
            )
        return ReplaceOne(where, document, upsert=upsert, namespace=namespace)
    assert write.patch is not None
    if write.fields:
        return UpdateOne(where, _pipeline(write.patch, write.fields, tag), namespace=namespace)
    update = write.patch.to_update()
    if tag:
        update.setdefault("$set", {}).update(tag)
    return UpdateOne(where, update, namespace=namespace)


def _insert_form(
    document: Mapping[str, Any], absent: bool
) -> Literal["setOnInsert", "pipeline", "replace"]:
    """How `write_operation` creates `document`: by `$setOnInsert` (planned on as absent), by a
    pipeline's `$replaceWith` (a name an update operator cannot address, or a top-level `$`
    name a replacement may not hold), or by a replacement. `TargetWrite.result` follows it:
    each form leaves the fields in an order of its own."""
    names = [name for name in document if name != "_id"]
    if absent and names:
        return "pipeline" if any(_unaddressable(name) for name in names) else "setOnInsert"
    return "pipeline" if any(name[:1] == "$" for name in document) else "replace"


def _unaddressable(name: str) -> bool:
    """Whether an update operator cannot name top-level field `name` (it would be a path)."""
    return not name or "." in name or name.startswith("$")


def _unchanged(expect: Mapping[str, Any], tag_field: str | None) -> dict[str, Any]:
    """An `$expr` true for the document equal to `expect`, its `tag_field` left aside."""
    root: Any = "$$ROOT"
    if tag_field:
        root = {"$unsetField": {"field": {"$literal": tag_field}, "input": "$$ROOT"}}
    return {"$eq": [root, {"$literal": dict(expect)}]}


def _pipeline(
    patch: Patch, fields: frozenset[str], tag: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """The patch as a pipeline update: the paths (and the tag) by `$set` and `$unset`, each
    top-level field in `fields` by `$setField` / `$unsetField`. Every name and value is a
    `$literal`: in a pipeline a string starting with `$` would be read as a field path."""
    sets = {path: {"$literal": value} for path, value in patch.set.items() if path not in fields}
    sets.update((path, {"$literal": value}) for path, value in (tag or {}).items())
    unsets = [path for path in patch.unset if path not in fields]
    stages: list[dict[str, Any]] = []
    if sets:
        stages.append({"$set": sets})
    if unsets:
        stages.append({"$unset": unsets})
    for name in sorted(fields):
        field = {"field": {"$literal": name}, "input": "$$ROOT"}
        if name in patch.set:
            value = {"$literal": patch.set[name]}
            stages.append({"$replaceWith": {"$setField": {**field, "value": value}}})
        else:
            stages.append({"$replaceWith": {"$unsetField": field}})
    return stages
