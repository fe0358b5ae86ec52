"""The pure core of the engine: one change event + merge base + current target -> what to do.

No I/O here. The applier loads the merge base and the current documents, calls `plan_event` for
each event in stream order, and writes what the plans say.

The merge base holds, for each logical document, the last state the worker knows of each side
*as of its position in the change stream*. With one ordered stream over both sides, every
target change older than the event being applied has already been folded into the base; so a
target path whose current value differs from the base was written by a client *after* the
event, and that newer write, still ahead in the stream, must win (G2). Those paths are left
alone and counted as conflicts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, overload

from transforms import (
    Direction,
    Pair,
    Patch,
    TransformFailed,
    apply_patch,
    apply_update_description,
    named_fields,
    unaddressable_field,
)

__all__ = [
    "EventPlan",
    "Side",
    "changed_paths",
    "direction_of",
    "names_dotted_fields",
    "other_side",
    "overlaps",
    "plan_event",
    "unaddressable_failure",
    "value_at",
    "without_tag",
]

Side = str  # "original" | "partner"

_MISSING = object()


def other_side(side: Side) -> Side:
    """The side a change on `side` is copied to."""
    return "partner" if side == "original" else "original"


def direction_of(side: Side) -> Direction:
    """The direction a change made on `side` travels."""
    return Direction.FORWARD if side == "original" else Direction.BACKWARD


def value_at(document: Mapping[str, Any] | None, path: str) -> Any:
    """The value at a dotted path, or a sentinel when absent (array indexes allowed)."""
    current: Any = document
    for part in path.split("."):
        if isinstance(current, Mapping):
            if part not in current:
                return _MISSING
            current = current[part]
        elif isinstance(current, list) and part.isdigit():
            index = int(part)
            if index >= len(current):
                return _MISSING
            current = current[index]
        else:
            return _MISSING
    return current


@dataclass
class EventPlan:
    """What one event does: the target's new state, the new merge base, and what to count."""

    source_after: dict[str, Any] | None
    target_after: dict[str, Any] | None
    base_source: dict[str, Any] | None
    base_target: dict[str, Any] | None
    echo: bool = False
    applied: bool = False
    skipped: bool = False
    conflict_paths: list[str] = field(default_factory=list)
    failure: TransformFailed | None = None
    reason: str = ""


@overload
def without_tag(document: Mapping[str, Any], tag_field: str | None) -> dict[str, Any]: ...


@overload
def without_tag(document: None, tag_field: str | None) -> None: ...


def without_tag(document: Mapping[str, Any] | None, tag_field: str | None) -> dict[str, Any] | None:
    """A copy of `document` without the worker's tag field (with field tags), None for None."""
    if document is None:
        return None
    if tag_field and tag_field in document:
        return {k: v for k, v in document.items() if k != tag_field}
    return dict(document)


def names_dotted_fields(event: Mapping[str, Any]) -> bool:
    """Whether an update event changed a field whose name holds a `.`: its dotted paths then
    do not say which fields they name, so only the components in its `disambiguatedPaths`
    (MongoDB 6.1, with expanded events) place it, which the fast path does not read.

    A numeric field name listed there needs nothing: paths are walked by the type of each
    container.
    """
    description = event.get("updateDescription")
    if not description:
        return False
    paths = description.get("disambiguatedPaths")
    if not paths:
        return False
    return any(isinstance(part, str) and "." in part for parts in paths.values() for part in parts)


def with_inferred_paths(
    event: Mapping[str, Any], base_source: Mapping[str, Any] | None
) -> Mapping[str, Any]:
    """An update event from a server before MongoDB 6.1 (no `disambiguatedPaths`), with the
    components of its paths through field names that hold a `.` worked out from the source
    document before the event (the merge base); the event as it is otherwise.

    Such a server reports `{$setField: {field: "a.b", ...}}` as the path `a.b`, which split at
    each `.` names field `b` of a field `a` that does not exist. The document before the event
    tells them apart: its own field named `a.b` is the one written, and a field new at some
    level is reported by its own path (MongoDB reports a new parent whole), so the rest of the
    path is its name. A path the document could read both ways (`a.b` beside `a`) is left as it
    is: planning dead-letters such a document.
    """
    description = event.get("updateDescription")
    if (
        base_source is None
        or not description
        or "disambiguatedPaths" in description
        or event.get("operationType") != "update"
    ):
        return event
    found: dict[str, list[str]] = {}
    for path in changed_paths(event):
        if "." not in path:
            continue
        parts = _components(base_source, path)
        if parts is not None and any("." in part for part in parts):
            found[path] = parts
    if not found:
        return event
    return {**event, "updateDescription": {**description, "disambiguatedPaths": found}}


def _components(document: Mapping[str, Any], path: str) -> list[str] | None:
    """The field names (and array indexes) `path` walks through in `document`, or None when a
    level holds both a name the path could mean and a longer dotted one."""
    parts = path.split(".")
    found: list[str] = []
    node: Any = document
    at = 0
    while at < len(parts):
        if isinstance(node, list) and parts[at].isdigit() and int(parts[at]) < len(node):
            found.append(parts[at])
            node = node[int(parts[at])]
            at += 1
            continue
        if not isinstance(node, Mapping):
            return [*found, *parts[at:]]
        dotted = [end for end in range(len(parts), at + 1, -1) if ".".join(parts[at:end]) in node]
        if dotted:
            if len(dotted) > 1 or parts[at] in node:
                return None
            name = ".".join(parts[at : dotted[0]])
            found.append(name)
            node = node[name]
            at = dotted[0]
        elif parts[at] in node:
            found.append(parts[at])
            node = node[parts[at]]
            at += 1
        else:
            return [*found, ".".join(parts[at:])]
    return found


def _source_after(
    event: Mapping[str, Any],
    base_source: Mapping[str, Any] | None,
    current_source: Mapping[str, Any] | None,
    tag_field: str | None,
) -> tuple[bool, dict[str, Any] | None]:
    """The source document right after the event; (False, None) when it cannot be known."""
    op = event["operationType"]
    if op in ("insert", "replace"):
        return True, without_tag(event.get("fullDocument"), tag_field)
    if op == "delete":
        return True, None
    if op != "update":
        raise ValueError(f"not a document event: {op}")
    if base_source is not None:
        # A path through a dotted field name is placed by its components (disambiguatedPaths).
        # Taking the document as it is now instead made this event carry later changes of
        # the source: those lost to target writes between the two, and their own events, no
        # longer changing the merge base, were passed over as echoes.
        return True, without_tag(_as_of_event(event, base_source), tag_field)
    # No merge base yet (a document older than the sync): the event's own post-image, or the
    # document as it is now. A newer state is safe: its own events will be no-ops on it.
    if event.get("fullDocument") is not None:
        return True, without_tag(event["fullDocument"], tag_field)
    if current_source is not None:
        return True, without_tag(current_source, tag_field)
    return False, None


def plan_event(
    pair: Pair,
    side: Side,
    event: Mapping[str, Any],
    *,
    base_source: Mapping[str, Any] | None,
    base_target: Mapping[str, Any] | None,
    current_source: Mapping[str, Any] | None,
    current_target: Mapping[str, Any] | None,
    tag_field: str | None = None,
    ahead: frozenset[str] = frozenset(),
    fast_path: bool = True,
    shared_target: bool = False,
) -> EventPlan:
    """Plan one insert, update, replace or delete event of `pair` that happened on `side`.

    `ahead` names the target paths that client writes still ahead in the stream have changed
    ("" for the whole document): they are newer than this event and win over it. `fast_path`
    False converts whole documents for updates too (tests hold both ways equal).
    `shared_target`: another pair writes the target collection too (a chain).
    """
    # No merge base at all (a side of None in one means "no document there"): a document the
    # worker does not know whole (see below). Dotted names are told from the source
    # as read, the only version of it there is.
    no_base = base_source is None and base_target is None
    event = with_inferred_paths(event, current_source if no_base else base_source)
    direction = direction_of(side)
    cur_target = without_tag(current_target, tag_field)
    known_target = dict(base_target) if base_target is not None else None
    known, source_after = _source_after(event, base_source, current_source, tag_field)
    if not known:
        return EventPlan(
            source_after=None,
            target_after=cur_target,
            base_source=dict(base_source) if base_source is not None else None,
            base_target=known_target,
            skipped=True,
            reason="source document gone and never seen; its delete follows",
        )
    base_src = dict(base_source) if base_source is not None else None
    if source_after == base_src and (base_src is not None or known_target is not None):
        # Already folded into the merge base: the worker's own write coming back.
        return EventPlan(
            source_after=source_after,
            target_after=cur_target,
            base_source=base_src,
            base_target=known_target,
            echo=True,
        )

    owns = _owned(pair, direction, tag_field)
    if (
        fast_path
        and event["operationType"] == "update"
        and base_src is not None
        and not names_dotted_fields(event)
        and source_after is not None
        and cur_target is not None
        and known_target is not None
        and "" not in ahead
    ):
        # The common case, an update of a document both sides know: only the mappings the
        # update touches run (`Pair.translate_update` equals the diff of the two conversions).
        fast = _translated_update(pair, direction, event, base_src, tag_field)
        # A top-level name no update path can address: the full conversion writes it by name.
        if fast is not None and not named_fields(fast, cur_target, known_target):
            plan = EventPlan(
                source_after=source_after,
                target_after=cur_target,
                base_source=source_after,
                base_target=known_target,
            )
            return _patched(plan, fast.restricted(owns), cur_target, known_target, ahead)
    try:
        target_new = pair.convert(source_after, direction) if source_after is not None else None
    except TransformFailed as exc:
        return EventPlan(
            source_after=source_after,
            target_after=cur_target,
            base_source=source_after,
            base_target=known_target,
            failure=exc,
        )
    try:
        target_old = pair.convert(base_src, direction) if base_src is not None else None
    except TransformFailed:
        target_old = None

    plan = EventPlan(
        source_after=source_after,
        target_after=cur_target,
        base_source=source_after,
        base_target=known_target,
    )

    if target_new is None:
        # The source document was deleted. A target the worker has never known is older than
        # the delete unless a write of it is still ahead.
        if cur_target is None:
            plan.base_target = None if not ahead else known_target
        elif ahead or (not no_base and cur_target != known_target):
            plan.conflict_paths = ["<document>"]
            plan.reason = "target changed after the delete; the later write wins"
        else:
            plan.target_after = None
            plan.base_target = None
            plan.applied = True
        return plan

    if cur_target is None:
        if known_target is not None or ahead:
            plan.conflict_paths = ["<document>"]
            plan.reason = "target deleted after this change; the later delete wins"
            if no_base:
                # "Target absent", read now, would make the delete's own event, still ahead,
                # look like one already seen.
                plan.base_source = None
        else:
            plan.target_after = target_new
            plan.base_target = dict(target_new)
            plan.applied = True
            if no_base and shared_target and event["operationType"] == "update":
                # Created from the source as read, which may hold changes newer than this
                # update: in a chain they must not be taken as folded in here. The chain's
                # other pair, which writes this target too, took their values for this
                # event's, older than its own next change; the newer change, an echo of a
                # merge base that held it, never went further. Still not known whole.
                plan.base_source = plan.base_target = None
        return plan

    whole = event["operationType"] in ("insert", "replace")
    if known_target is None and not no_base:
        # Known to have been absent: re-created since, and that write's event decides.
        plan.conflict_paths = ["<document>"]
        plan.reason = "target holds a version the worker has not seen; its own event decides"
        return plan
    converted = target_new
    if no_base:
        # Not known whole: a document on both sides that the worker has no merge base for
        # (older than the sync and never backfilled, or too large for a merge base record).
        # What the target holds is older than this event, except what a write ahead changes.
        guard_base = cur_target
        if whole:
            # Newer than anything the target holds: it matches the event on every owned path.
            patch = pair.target_patch(cur_target, target_new, direction).restricted(owns)
        else:
            # Only the fields this update touched, at their values in the event: the source's
            # other fields may hold values no event has told the order of.
            assert source_after is not None  # an update's source is there (target_new is)
            try:
                converted = pair.convert(_as_of_event(event, source_after), direction)
            except TransformFailed as exc:
                plan.failure = exc
                plan.base_source = None  # still no merge base
                return plan
            reached = _reached(pair, direction, event)
            patch = pair.target_patch(cur_target, converted, direction).restricted(
                lambda path: owns(path) and _top_level(path, reached) in reached
            )
    else:
        # An update carries only the fields it touched: diff the source's states before and
        # after, so the target's other fields keep their own values. An insert or replace
        # writes the whole document and is newer than anything folded into the base,
        # including target changes this pair did not copy (skipped because this very write
        # was ahead): make the target match it on every owned path, or the two sides stay
        # apart on those paths.
        assert known_target is not None
        reference = target_old if target_old is not None and not whole else known_target
        guard_base = known_target
        # Field by field inside sub-documents that may hold fields the target keeps for itself.
        patch = pair.target_patch(reference, target_new, direction).restricted(owns)
    documents = (cur_target, guard_base, converted)
    named = named_fields(patch, *documents)
    unaddressable = unaddressable_field(patch, *documents, named=named)
    if unaddressable is not None:
        plan.failure = unaddressable_failure(pair, unaddressable, event["documentKey"]["_id"])
        if no_base:
            plan.base_source = None  # still no merge base
        return plan
    if "" in ahead:
        plan.conflict_paths = ["<document>"]
        plan.reason = "target replaced or re-created after this change; the later write wins"
        if no_base:
            plan.base_source = None  # still not known whole (see below)
        return plan
    plan = _patched(plan, patch, cur_target, guard_base, ahead, named)
    if no_base:
        after = plan.target_after
        if whole and not ahead and after is not None:
            # Both sides known whole from here on: the event's source and the target it left.
            plan.base_target = dict(after)
        else:
            # Still not known whole. A merge base side of None means "no document there", so
            # the document keeps no merge base at all. (Nor may the target's values of a write
            # still ahead be taken for known: its own event would look like nothing new.)
            plan.base_source = plan.base_target = None
    return plan


def _as_of_event(event: Mapping[str, Any], source: Mapping[str, Any]) -> dict[str, Any]:
    """`source` with what the update `event` did applied to it: the document after the event
    when `source` is the one before (the merge base); with the document as read after it, that
    document with the fields the update touched at the values it gave them."""
    description = event.get("updateDescription") or {}
    return apply_update_description(
        source,
        description.get("updatedFields") or {},
        description.get("removedFields") or [],
        description.get("truncatedArrays") or [],
        description.get("disambiguatedPaths"),
    )


def _reached(pair: Pair, direction: Direction, event: Mapping[str, Any]) -> frozenset[str]:
    """The target's top-level fields an update event can change: those its paths reach, and
    the top-level names its dotted field names stand for (`disambiguatedPaths`)."""
    description = event.get("updateDescription") or {}
    named = {str(parts[0]) for parts in (description.get("disambiguatedPaths") or {}).values()}
    return pair.fields_reached(direction, changed_paths(event)) | named


def _top_level(path: str, names: frozenset[str]) -> str:
    """The top-level field of a dotted `path` (the path itself when it is a field's name)."""
    return path if path in names else path.split(".", 1)[0]


def unaddressable_failure(pair: Pair | None, name: str, document_id: Any) -> TransformFailed:
    """Why a change to top-level field `name` cannot be written (`unaddressable_field`)."""
    why = (
        "an update cannot name a field with an empty name"
        if not name
        else f"the document also has a top-level field {name.split('.', 1)[0]!r}, so a path"
        f" {name!r} could name either"
    )
    return TransformFailed(
        f"the change to top-level field {name!r} cannot be written: {why}; rename the field,"
        " or nest it in a sub-document (which is then written whole)",
        pair=pair.original if pair is not None else "(any)",
        mapping="field names",
        field=name,
        document_id=document_id,
    )


def _patched(
    plan: EventPlan,
    patch: Patch,
    current: dict[str, Any],
    known: dict[str, Any],
    ahead: frozenset[str],
    fields: frozenset[str] = frozenset(),
) -> EventPlan:
    """`plan` with the guarded part of `patch` applied to the target and its merge base.
    `fields`: paths of the patch that are top-level field names (`named_fields`)."""
    guarded, conflicts = _guard(patch, current, known, ahead, fields)
    plan.conflict_paths = conflicts
    if conflicts:
        plan.reason = "target field changed after this change; the later write wins"
    if not guarded.is_empty():
        plan.target_after = apply_patch(current, guarded, fields)
        plan.base_target = apply_patch(known, guarded, fields)
        plan.applied = plan.target_after != current
    return plan


def _translated_update(
    pair: Pair,
    direction: Direction,
    event: Mapping[str, Any],
    base_source: Mapping[str, Any],
    tag_field: str | None,
) -> Patch | None:
    """The target patch of an update event by the fast path; None to take the full one (a
    transform failed: the full conversion decides between dead letter and merge)."""
    description = event.get("updateDescription") or {}
    updated: Mapping[str, Any] = description.get("updatedFields") or {}
    removed: list[str] = list(description.get("removedFields") or [])
    truncated: list[Mapping[str, Any]] = list(description.get("truncatedArrays") or [])
    if tag_field:

        def untagged(path: str) -> bool:
            return path != tag_field and not path.startswith(tag_field + ".")

        updated = {path: value for path, value in updated.items() if untagged(path)}
        removed = [path for path in removed if untagged(path)]
        truncated = [entry for entry in truncated if untagged(str(entry.get("field", "")))]
    try:
        return pair.translate_update(direction, base_source, updated, removed, truncated)
    except TransformFailed:
        return None


def _owned(pair: Pair, direction: Direction, tag_field: str | None) -> Callable[[str], bool]:
    def owns(path: str) -> bool:
        if tag_field and (path == tag_field or path.startswith(tag_field + ".")):
            return False
        return path != "_id" and pair.owns(path, direction)

    return owns


def overlaps(path: str, others: frozenset[str]) -> bool:
    """True when `path` is, contains, or lies inside one of `others` (dotted paths)."""
    for other in others:
        if path == other or path.startswith(other + ".") or other.startswith(path + "."):
            return True
    return False


def _guard(
    patch: Patch,
    current: Mapping[str, Any],
    known: Mapping[str, Any],
    ahead: frozenset[str] = frozenset(),
    fields: frozenset[str] = frozenset(),
) -> tuple[Patch, list[str]]:
    """Drop the paths a client changed on the target after the event (they are newer).
    `fields`: paths that are top-level field names, read by name."""

    def by_name(document: Mapping[str, Any], path: str) -> Any:
        if path in fields:
            return document.get(path, _MISSING)
        return value_at(document, path)

    at = by_name if fields else value_at

    conflicts: list[str] = []
    kept_set: dict[str, Any] = {}
    kept_unset: list[str] = []
    # A path that already holds what the patch writes is kept (for the merge base) though it
    # differs from the known value: the worker's own write of it landed without its merge base
    # (an attempt outside a transaction that did not see it through), or a client wrote the
    # same value. Counted as a newer write, the merge base would keep the old value for good.
    for path, value in patch.set.items():
        if overlaps(path, ahead):
            conflicts.append(path)
        elif not _equal(at(current, path), at(known, path)):
            if _equal(at(current, path), value):
                kept_set[path] = value
            else:
                conflicts.append(path)
        elif not _equal(at(current, path), value):
            kept_set[path] = value
    for path in patch.unset:
        if overlaps(path, ahead):
            conflicts.append(path)
        elif not _equal(at(current, path), at(known, path)):
            if at(current, path) is _MISSING:
                kept_unset.append(path)
            else:
                conflicts.append(path)
        elif at(current, path) is not _MISSING:
            kept_unset.append(path)
    return Patch(set=kept_set, unset=tuple(kept_unset)), conflicts


def _equal(left: Any, right: Any) -> bool:
    if left is _MISSING or right is _MISSING:
        return left is right
    # MongoDB tells true from 1; Python's == does not.
    if isinstance(left, bool) is not isinstance(right, bool):
        return False
    return bool(left == right)


def changed_paths(event: Mapping[str, Any]) -> frozenset[str]:
    """The paths a change event wrote ("" for a whole-document insert, replace or delete)."""
    if event.get("operationType") != "update":
        return frozenset({""})
    description = event.get("updateDescription") or {}
    paths = set(description.get("updatedFields") or {})
    paths.update(description.get("removedFields") or [])
    paths.update(entry["field"] for entry in description.get("truncatedArrays") or [])
    return frozenset(paths)
