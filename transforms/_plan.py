"""A pair's mappings compiled for one direction: whole-document conversion and update patches.

Everything here is pure. The fast path of `translate_update` relies on one fact: a target
top-level field is built only from the source field of the same name (unmapped fields copied as
they are) and from the mappings writing under it. So only the target fields reachable from the
touched source paths need rebuilding, before and after the update, and their diff is the patch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transforms._mappings import CompiledMapping, Direction, FieldMapping
from transforms._patch import Patch, apply_update_description, diff_into, make_patch
from transforms._paths import (
    MISSING,
    copy_value,
    get_path,
    is_prefix,
    related,
    set_path,
    split_path,
)

__all__ = ["DirectionPlan"]

# A trie of paths unmapped fields must not carry: key -> True (the whole field) or a sub-trie.
Trie = dict[str, Any]


def _trie(paths: Iterable[tuple[str, ...]]) -> Trie:
    root: Trie = {}
    for path in paths:
        node = root
        for part in path[:-1]:
            child = node.get(part)
            if child is True:
                break
            node = node.setdefault(part, {})
        else:
            node[path[-1]] = True
    return root


def _prune(value: Any, trie: Trie) -> Any:
    """`value` without the paths in `trie`; a sub-document emptied by pruning disappears."""
    if not isinstance(value, Mapping):
        return copy_value(value)
    out: dict[str, Any] = {}
    for key, item in value.items():
        below = trie.get(key)
        if below is None:
            out[key] = copy_value(item)
        elif below is not True:
            pruned = _prune(item, below)
            if pruned is not MISSING:
                out[key] = pruned
    if not out and value:
        return MISSING
    return out


def _place_copied(out: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    set_path(out, path, copy_value(value))


def _place_shared(out: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    target = out
    for part in path[:-1]:
        child = target.get(part)
        # `out` may hold a sub-document of the input: copy it before writing into it.
        child = dict(child) if isinstance(child, dict) else {}
        target[part] = child
        target = child
    target[path[-1]] = value


@dataclass(frozen=True)
class _Group:
    """Target top-level fields that must be rebuilt together, and what builds them."""

    keys: tuple[str, ...]
    mappings: tuple[CompiledMapping, ...]
    defaults: tuple[tuple[tuple[str, ...], Any], ...]


class DirectionPlan:
    """One direction of a pair, compiled: what to copy, what to compute, what is owned."""

    def __init__(
        self,
        *,
        pair: str,
        direction: Direction,
        mappings: Sequence[FieldMapping],
        named: Iterable[str],
        kept_by_target: Iterable[str],
        defaults: Mapping[str, Any],
        keep_unmapped: bool,
    ) -> None:
        self.direction = direction
        self.keep_unmapped = keep_unmapped
        self.mappings = tuple(m.compile(direction, pair) for m in mappings if m.runs(direction))
        # Unmapped fields are copied under the same name, so neither a name mapped on either
        # side nor a one-side-only name may be copied: it would cross or collide.
        self._excluded = _trie(split_path(p) for p in named)
        self._defaults = tuple((split_path(p), v) for p, v in defaults.items())
        self._written = tuple(t for m in self.mappings for t in m.targets)
        self._not_owned = tuple(split_path(p) for p in kept_by_target)
        self.leafwise = self._leafwise_paths()
        self._owns_cache: dict[str, bool] = {}
        self._split_cache: dict[str, tuple[str, ...]] = {}
        self._top_groups: dict[str, tuple[_Group, ...]] = {}
        self._by_source_top: dict[str, list[tuple[CompiledMapping, tuple[str, ...]]]] = {}
        for compiled in self.mappings:
            for source in compiled.sources:
                self._by_source_top.setdefault(source[0], []).append((compiled, source))
        self._groups = self._build_groups()

    def _leafwise_paths(self) -> frozenset[str]:
        """Sub-documents that may hold target fields this direction does not own.

        Setting or unsetting one of them whole would write those fields too, so patches treat
        them field by field: ancestors of the fields the target keeps for itself, and with
        unmapped="drop", ancestors of every written path (the rest of such a sub-document is
        the target's own).
        """
        unowned = list(self._not_owned)
        if not self.keep_unmapped:
            unowned += list(self._written)
        return frozenset(".".join(path[:end]) for path in unowned for end in range(1, len(path)))

    def _build_groups(self) -> dict[str, _Group]:
        """Join target top-level keys written by one mapping (a derive may write several)."""
        parent: dict[str, str] = {}

        def find(key: str) -> str:
            while parent.setdefault(key, key) != key:
                key = parent[key]
            return key

        for compiled in self.mappings:
            tops = [target[0] for target in compiled.targets]
            find(tops[0])
            for top in tops[1:]:
                parent[find(top)] = find(tops[0])
        for path, _ in self._defaults:
            find(path[0])
        members: dict[str, list[str]] = {}
        for key in list(parent):
            members.setdefault(find(key), []).append(key)
        groups: dict[str, _Group] = {}
        for keys in members.values():
            keyset = set(keys)
            group = _Group(
                tuple(keys),
                tuple(m for m in self.mappings if m.targets[0][0] in keyset),
                tuple(d for d in self._defaults if d[0][0] in keyset),
            )
            for key in keys:
                groups[key] = group
        return groups

    def _group(self, key: str) -> _Group:
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group((key,), (), ())
        return group

    def _copy_unmapped(self, key: str, value: Any, out: dict[str, Any], share: bool) -> None:
        below = self._excluded.get(key)
        if below is None:
            out[key] = value if share else copy_value(value)
        elif below is not True:
            pruned = _prune(value, below)
            if pruned is not MISSING:
                out[key] = pruned

    def _write_mapped(
        self,
        document: Mapping[str, Any],
        mappings: Iterable[CompiledMapping],
        defaults: Iterable[tuple[tuple[str, ...], Any]],
        out: dict[str, Any],
        share: bool,
    ) -> None:
        """Write mapping outputs and defaults into `out`.

        With `share`, values are not copied (the result is only diffed, never returned), and
        sub-documents on the way to a nested target are copied before being written into.
        """
        document_id = document.get("_id")
        place = _place_shared if share else _place_copied
        for compiled in mappings:
            sources = compiled.sources
            if len(sources) == 1:
                values: Sequence[Any] = (get_path(document, sources[0]),)
            else:
                values = [get_path(document, source) for source in sources]
            outputs = compiled.run(values, document_id)
            for index, target in enumerate(compiled.targets):
                value = outputs[index]
                if value is not MISSING:
                    place(out, target, value)
        for path, value in defaults:
            place(out, path, value)

    def convert(self, document: Mapping[str, Any]) -> dict[str, Any]:
        """The whole document converted: `_id`, unmapped fields, mapped fields, defaults."""
        out: dict[str, Any] = {}
        if "_id" in document:
            out["_id"] = document["_id"]
        if self.keep_unmapped:
            for key, value in document.items():
                if key != "_id":
                    self._copy_unmapped(key, value, out, share=False)
        self._write_mapped(document, self.mappings, self._defaults, out, share=False)
        return out

    def _build_part(self, document: Mapping[str, Any], groups: Iterable[_Group]) -> dict[str, Any]:
        """The converted document's top-level fields of `groups` only, sharing values."""
        out: dict[str, Any] = {}
        for group in groups:
            if self.keep_unmapped:
                for key in group.keys:
                    value = document.get(key, MISSING)
                    if value is not MISSING:
                        self._copy_unmapped(key, value, out, share=True)
            if group.mappings or group.defaults:
                self._write_mapped(document, group.mappings, group.defaults, out, share=True)
        return out

    def _groups_touched(self, path: tuple[str, ...]) -> tuple[_Group, ...]:
        """The groups a change at `path` can reach (cached for top-level paths, the usual)."""
        if len(path) == 1:
            cached = self._top_groups.get(path[0])
            if cached is not None:
                return cached
        found: dict[int, _Group] = {}
        top = path[0]
        if top != "_id":
            for compiled, source in self._by_source_top.get(top, ()):
                if related(path, source):
                    group = self._groups[compiled.targets[0][0]]
                    found[id(group)] = group
            if self.keep_unmapped and self._excluded.get(top) is not True:
                group = self._group(top)
                found[id(group)] = group
        result = tuple(found.values())
        if len(path) == 1 and len(self._top_groups) < 4096:
            self._top_groups[top] = result
        return result

    def fields_reached(self, paths: Iterable[str]) -> frozenset[str]:
        """The target's top-level fields that a change at these source paths can rebuild."""
        keys: set[str] = set()
        for path in paths:
            for group in self._groups_touched(self._split(path)):
                keys.update(group.keys)
        return frozenset(keys)

    def translate_update(
        self,
        base: Mapping[str, Any],
        updated_fields: Mapping[str, Any],
        removed_fields: Sequence[str],
        truncated_arrays: Sequence[Mapping[str, Any]],
    ) -> Patch:
        """The target patch for one update event, rebuilding only the target fields it reaches."""
        touched: list[str] = [*updated_fields, *removed_fields]
        if truncated_arrays:
            touched += [item["field"] for item in truncated_arrays]
        groups: dict[int, _Group] = {}
        nested = bool(truncated_arrays)
        for path in touched:
            cached = self._top_groups.get(path)
            if cached is None:
                parts = self._split(path)
                nested = nested or len(parts) > 1
                cached = self._groups_touched(parts)
            for group in cached:
                groups[id(group)] = group
        if not groups:
            return make_patch({}, ())
        if nested:
            updated = apply_update_description(
                base, updated_fields, removed_fields, truncated_arrays
            )
        else:  # top-level fields only, the usual event: no paths to walk
            updated = dict(base)
            updated.update(updated_fields)
            for name in removed_fields:
                updated.pop(name, None)
        chosen = groups.values()
        sets: dict[str, Any] = {}
        unsets: list[str] = []
        before = self._build_part(base, chosen)
        diff_into("", before, self._build_part(updated, chosen), sets, unsets, self.leafwise)
        return make_patch(sets, tuple(unsets))

    def target_patch(self, old: Mapping[str, Any], new: Mapping[str, Any]) -> Patch:
        """The owned patch turning converted document `old` into converted `new`."""
        sets: dict[str, Any] = {}
        unsets: list[str] = []
        diff_into("", old, new, sets, unsets, self.leafwise)
        return Patch(sets, tuple(unsets)).restricted(self.owns)

    def _split(self, path: str) -> tuple[str, ...]:
        parts = self._split_cache.get(path)
        if parts is None:
            if len(self._split_cache) > 4096:  # array indexes make paths unbounded
                self._split_cache.clear()
            parts = self._split_cache[path] = split_path(path)
        return parts

    def owns(self, path: str) -> bool:
        """True when this direction may write the target's `path` (see `Pair.owns`)."""
        cached = self._owns_cache.get(path)
        if cached is None:
            if len(self._owns_cache) > 4096:  # array indexes make paths unbounded
                self._owns_cache.clear()
            cached = self._owns_cache[path] = self._compute_owns(split_path(path))
        return cached

    def _compute_owns(self, parts: tuple[str, ...]) -> bool:
        if parts[0] == "_id":
            return False
        if any(related(parts, written) for written in self._written):
            return True
        if any(is_prefix(kept, parts) for kept in self._not_owned):
            return False
        if not self.keep_unmapped:
            return False
        node: Any = self._excluded
        for part in parts:
            node = node.get(part)
            if node is None:
                return True
            if node is True:
                return False
        return True
