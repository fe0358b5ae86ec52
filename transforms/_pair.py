"""`Pair`: the user-facing registration of an original collection, its partner and the mappings."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import FrameType
from typing import Any, Literal, TypeVar, overload

from transforms._mappings import Direction, FieldMapping, MappingKind
from transforms._patch import Patch
from transforms._paths import MISSING
from transforms._plan import DirectionPlan
from transforms._validation import (
    check_arity,
    check_callable,
    check_default,
    check_namespace,
    check_new_path,
    check_path,
)
from transforms._version import definition_digest
from transforms.errors import TransformLoadError

__all__ = ["Derivation", "Pair", "created_pairs"]

F = TypeVar("F", bound=Callable[..., Any])

# Every Pair in creation order, so the loader can tell which ones a module's import created.
_CREATED: list[Pair] = []


def created_pairs() -> list[Pair]:
    """The pairs created in this process so far, oldest first (the loader slices this)."""
    return _CREATED


def _caller_frame() -> FrameType:
    """The frame of the user code that called into this package."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(
        "transforms._"
    ):
        frame = frame.f_back
    return frame


def _caller_location() -> str:
    """`file:line` of the user code that called into this package."""
    frame = _caller_frame()
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


class Derivation:
    """What `@pair.derive(...)` returns: the function, still callable, plus `.inverse`."""

    def __init__(self, pair: Pair, index: int, function: Callable[..., Any]) -> None:
        self._pair = pair
        self._index = index
        self.function = function
        self.__name__ = getattr(function, "__name__", "derive")
        self.__doc__ = getattr(function, "__doc__", None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    def inverse(self, function: F) -> F:
        """Register the partner -> original direction of this derive; returns `function`."""
        self._pair._set_inverse(self._index, function)
        return function


class Pair:
    """An original collection, its partner, and how each field maps between the two schemas.

    Build it at import time of a transform module; the loader validates it before any data is
    read. See INTERFACE.md ("A transform module") and docs/transforms.md.
    """

    def __init__(
        self,
        original: str,
        partner: str,
        *,
        unmapped: Literal["keep", "drop"] = "keep",
        version: str | None = None,
    ) -> None:
        frame = _caller_frame()
        location = f"{frame.f_code.co_filename}:{frame.f_lineno}"
        # The module that created the pair, so the loader finds it again after a first import.
        self.module: str = frame.f_globals.get("__name__", "")
        check_namespace(original, "original", location)
        check_namespace(partner, "partner", location)
        self.original = original
        self.partner = partner
        self.location = location
        if original == partner:
            raise TransformLoadError(
                "original and partner are the same collection",
                fix=f"give the partner collection its own name, e.g. partner={original + '_v2'!r}",
                pair=self.name,
                location=location,
            )
        if unmapped not in ("keep", "drop"):
            raise TransformLoadError(
                f"unmapped={unmapped!r} is neither 'keep' nor 'drop'",
                fix='pass unmapped="keep" (copy unmapped fields both ways) or unmapped="drop"',
                pair=self.name,
                location=location,
            )
        if version is not None and (not isinstance(version, str) or not version):
            raise TransformLoadError(
                f"version={version!r} is not a non-empty string",
                fix='pass version="2" or leave it out to use a digest of the mappings',
                pair=self.name,
                location=location,
            )
        self.unmapped = unmapped
        self._given_version = version
        self._mappings: list[FieldMapping] = []
        self._original_only: dict[str, str] = {}  # path -> location
        self._partner_only: dict[str, Any] = {}  # path -> default (MISSING for none)
        self._partner_only_at: dict[str, str] = {}
        self._examples: dict[str, list[Any]] = {}
        self._plans: dict[Direction, DirectionPlan] = {}
        self._version: str | None = None
        _CREATED.append(self)

    # -- identity ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """`original -> partner`, as messages name the pair."""
        return f"{self.original} -> {self.partner}"

    def __repr__(self) -> str:
        return (
            f"Pair(original={self.original!r}, partner={self.partner!r}, version={self.version!r})"
        )

    @property
    def version(self) -> str:
        """The given version, or a digest of the definitions that changes only when they do."""
        if self._given_version is not None:
            return self._given_version
        if self._version is None:
            self._version = definition_digest(
                original=self.original,
                partner=self.partner,
                unmapped=self.unmapped,
                mappings=self._mappings,
                original_only=self._original_only,
                partner_only=self._partner_only,
            )
        return self._version

    @property
    def mappings(self) -> tuple[FieldMapping, ...]:
        """The registered mappings, in registration order."""
        return tuple(self._mappings)

    @property
    def original_only_fields(self) -> tuple[str, ...]:
        """Original fields that never cross to the partner."""
        return tuple(self._original_only)

    @property
    def partner_only_fields(self) -> dict[str, Any]:
        """Partner fields that never cross back, with their defaults (`MISSING`: no default)."""
        return dict(self._partner_only)

    # -- registration -----------------------------------------------------------------------

    def _taken(self, side: str) -> list[tuple[str, str]]:
        taken: list[tuple[str, str]] = []
        for mapping in self._mappings:
            for path in mapping.original if side == "original" else mapping.partner:
                taken.append((path, mapping.location))
        only = self._original_only if side == "original" else self._partner_only_at
        taken.extend(only.items())
        return taken

    def _claim(self, side: str, paths: Sequence[str], location: str) -> None:
        taken = self._taken(side)
        for path in paths:
            check_path(path, self.name, location)
            check_new_path(path, side, taken, self.name, location)
            taken.append((path, location))

    def _add(self, mapping: FieldMapping) -> int:
        self._mappings.append(mapping)
        self._changed()
        return len(self._mappings) - 1

    def _changed(self) -> None:
        self._plans.clear()
        self._version = None

    def rename(self, original: str, partner: str) -> None:
        """Same value, new path; dotted paths move a field into or out of a sub-document."""
        location = _caller_location()
        self._claim("original", [original], location)
        self._claim("partner", [partner], location)
        self._add(
            FieldMapping(
                MappingKind.RENAME,
                (original,),
                (partner,),
                _identity,
                _identity,
                location,
                f"rename({original} -> {partner})",
            )
        )

    @overload
    def convert(self, document: Mapping[str, Any], direction: Direction, /) -> dict[str, Any]: ...

    @overload
    def convert(
        self,
        field: str,
        /,
        *,
        forward: Callable[[Any], Any],
        backward: Callable[[Any], Any],
        to: str | None = None,
        lossy: bool = False,
    ) -> None: ...

    def convert(
        self,
        field_or_document: str | Mapping[str, Any],
        direction: Direction | None = None,
        /,
        *,
        forward: Callable[[Any], Any] | None = None,
        backward: Callable[[Any], Any] | None = None,
        to: str | None = None,
        lossy: bool = False,
    ) -> dict[str, Any] | None:
        """Two jobs told apart by the first argument.

        `convert(field, forward=f, backward=g, to=None, lossy=False)` registers a type change
        (null and absent pass through unconverted; `to` also renames; `lossy=True` declares
        that g(f(x)) may differ from x, which `check` reports instead of failing).
        `convert(document, direction)` converts a whole document: `_id` carried through,
        FORWARD adds partner_only and require defaults and never carries original_only fields,
        BACKWARD never carries partner_only ones. Pure; raises TransformFailed.
        """
        if isinstance(field_or_document, Mapping):
            if direction is None:
                raise TypeError("convert(document, direction): direction is missing")
            return self._plan(direction).convert(field_or_document)
        self._register_convert(
            field_or_document, forward=forward, backward=backward, to=to, lossy=lossy
        )
        return None

    def _register_convert(
        self,
        field: str,
        *,
        forward: Any,
        backward: Any,
        to: str | None,
        lossy: bool,
    ) -> None:
        location = _caller_location()
        target = field if to is None else to
        self._claim("original", [field], location)
        self._claim("partner", [target], location)
        for what, function in (("forward", forward), ("backward", backward)):
            check_callable(function, what, self.name, field, location)
            check_arity(function, 1, what, self.name, field, location)
        name = f"convert({field})" if to is None else f"convert({field} -> {target})"
        self._add(
            FieldMapping(
                MappingKind.CONVERT,
                (field,),
                (target,),
                forward,
                backward,
                location,
                name,
                lossy=bool(lossy),
            )
        )

    def require(self, field: str, *, default: Any, to: str | None = None) -> None:
        """Optional in the original, required in the partner: absent or null gets `default`.

        Backward copies the value back, so an original that lacked the field gets the default
        once the partner side writes it: absence in the original cannot be told from it.
        """
        location = _caller_location()
        target = field if to is None else to
        self._claim("original", [field], location)
        self._claim("partner", [target], location)
        check_default(default, self.name, field, location)
        self._add(
            FieldMapping(
                MappingKind.REQUIRE,
                (field,),
                (target,),
                _identity,
                _identity,
                location,
                f"require({field})" if to is None else f"require({field} -> {target})",
                default=default,
            )
        )

    def original_only(self, *fields: str) -> None:
        """Original fields that are never copied to the partner nor touched by partner writes."""
        location = _caller_location()
        self._claim("original", fields, location)
        for field in fields:
            self._original_only[field] = location
        self._changed()

    def partner_only(self, field: str, *, default: Any = MISSING) -> None:
        """A partner field never copied back; `default` is written when created from original."""
        location = _caller_location()
        self._claim("partner", [field], location)
        if default is not MISSING:
            check_default(default, self.name, field, location)
        self._partner_only[field] = default
        self._partner_only_at[field] = location
        self._changed()

    def derive(
        self,
        *,
        original: Sequence[str],
        partner: Sequence[str],
        one_way: bool = False,
        lossy: bool = False,
    ) -> Callable[[Callable[..., Any]], Derivation]:
        """Split or merge fields: the decorated function takes the original fields, in order,
        and returns a dict of the partner fields. Register its `.inverse` unless `one_way`.
        """
        location = _caller_location()
        original_paths = (original,) if isinstance(original, str) else tuple(original)
        partner_paths = (partner,) if isinstance(partner, str) else tuple(partner)
        for side, paths in (("original", original_paths), ("partner", partner_paths)):
            if not paths:
                raise TransformLoadError(
                    f"derive names no {side} field",
                    fix=f'pass {side}=("field", ...)',
                    pair=self.name,
                    location=location,
                )

        def register(function: Callable[..., Any]) -> Derivation:
            field = ", ".join(original_paths)
            check_callable(function, "the derive function", self.name, field, location)
            check_arity(function, len(original_paths), "derive", self.name, field, location)
            self._claim("original", original_paths, location)
            self._claim("partner", partner_paths, location)
            index = self._add(
                FieldMapping(
                    MappingKind.DERIVE,
                    original_paths,
                    partner_paths,
                    function,
                    None,
                    location,
                    getattr(function, "__name__", "derive"),
                    lossy=bool(lossy),
                    one_way=bool(one_way),
                )
            )
            return Derivation(self, index, function)

        return register

    def _set_inverse(self, index: int, function: Callable[..., Any]) -> None:
        mapping = self._mappings[index]
        location = _caller_location()
        field = ", ".join(mapping.partner)
        check_callable(function, "the inverse", self.name, field, location)
        check_arity(function, len(mapping.partner), "inverse", self.name, field, location)
        if mapping.one_way:
            raise TransformLoadError(
                f"derive {mapping.name} is one_way=True but has an inverse",
                fix="drop one_way=True, or drop the inverse",
                pair=self.name,
                field=field,
                location=location,
            )
        if mapping.backward is not None:
            raise TransformLoadError(
                f"derive {mapping.name} already has an inverse",
                fix="register one inverse per derive",
                pair=self.name,
                field=field,
                location=location,
            )
        self._mappings[index] = FieldMapping(
            mapping.kind,
            mapping.original,
            mapping.partner,
            mapping.forward,
            function,
            mapping.location,
            mapping.name,
            lossy=mapping.lossy,
        )
        self._changed()

    def examples(self, mapping_or_field: str, *values: Any) -> None:
        """Example values `check` round-trips through a mapping (named by function or field).

        For a derive reading several fields, give each example as a dict of those fields or a
        tuple in their order.
        """
        location = _caller_location()
        if self.find_mapping(mapping_or_field) is None:
            raise TransformLoadError(
                f"examples for {mapping_or_field!r}, which names no mapping of this pair",
                fix="name a derive function or a field a mapping reads or writes",
                pair=self.name,
                field=str(mapping_or_field),
                location=location,
            )
        self._examples.setdefault(mapping_or_field, []).extend(values)

    def find_mapping(self, mapping_or_field: str) -> FieldMapping | None:
        """The mapping with this name, derive function name, or a field on either side."""
        for mapping in self._mappings:
            names = (mapping.name, *mapping.original, *mapping.partner)
            if mapping_or_field in names:
                return mapping
        return None

    def examples_for(self, mapping: FieldMapping) -> list[Any]:
        """The example values registered for `mapping`, under any of its names."""
        found: list[Any] = []
        for key, values in self._examples.items():
            if self.find_mapping(key) is mapping:
                found.extend(values)
        return found

    def validate(self) -> None:
        """The rules only checkable once the module finished registering (the loader calls it)."""
        for mapping in self._mappings:
            if mapping.kind is MappingKind.DERIVE and mapping.backward is None:
                if not mapping.one_way:
                    raise TransformLoadError(
                        f"derive {mapping.name} has no inverse",
                        fix=f"add @{mapping.name}.inverse, or declare one_way=True "
                        "(partner writes to these fields are then not copied back)",
                        pair=self.name,
                        field=", ".join(mapping.partner),
                        location=mapping.location,
                    )
        self._probe_derives()

    def _probe_derives(self) -> None:
        """Call each derive on its examples to catch returned keys that differ from declared."""
        for mapping in self._mappings:
            if mapping.kind is not MappingKind.DERIVE:
                continue
            probes = [
                tuple(example.get(p) for p in mapping.original)
                if isinstance(example, Mapping)
                else (example if isinstance(example, tuple) else (example,))
                for example in self.examples_for(mapping)
            ]
            for arguments in probes or [(None,) * len(mapping.original)]:
                try:
                    result = mapping.forward(*arguments) if mapping.forward else None
                except Exception:
                    continue  # a function that rejects a probe is `check`'s business
                if isinstance(result, dict) and set(result) != set(mapping.partner):
                    raise TransformLoadError(
                        f"derive {mapping.name} returned keys {sorted(result)}, "
                        f"but declares partner={list(mapping.partner)}",
                        fix="return exactly the declared partner fields, or declare them",
                        pair=self.name,
                        field=", ".join(mapping.partner),
                        location=mapping.location,
                    )

    # -- translation ------------------------------------------------------------------------

    def _plan(self, direction: Direction) -> DirectionPlan:
        plan = self._plans.get(direction)
        if plan is None:
            direction = Direction(direction)
            named: list[str] = [*self._original_only, *self._partner_only]
            for mapping in self._mappings:
                named.extend(mapping.original)
                named.extend(mapping.partner)
            if direction is Direction.FORWARD:
                kept = list(self._partner_only)
                defaults = {p: v for p, v in self._partner_only.items() if v is not MISSING}
            else:
                kept = list(self._original_only)
                for mapping in self._mappings:
                    if not mapping.runs(direction):
                        kept.extend(mapping.original)
                defaults = {}
            plan = self._plans[direction] = DirectionPlan(
                pair=self.name,
                direction=direction,
                mappings=self._mappings,
                named=named,
                kept_by_target=kept,
                defaults=defaults,
                keep_unmapped=self.unmapped == "keep",
            )
        return plan

    def owns(self, path: str, direction: Direction) -> bool:
        """True when `direction` writes the target side's dotted `path`.

        Not owned: fields the target keeps for itself (partner_only going forward,
        original_only and one-way derive inputs going backward) and, with unmapped="drop",
        target fields no mapping writes. The engine never sets or unsets a path it does not own.
        """
        return self._plan(direction).owns(path)

    def target_patch(
        self, old: Mapping[str, Any], new: Mapping[str, Any], direction: Direction
    ) -> Patch:
        """The patch turning target document `old` into `new`, touching owned paths only.

        Like `diff_documents(old, new).restricted(lambda p: self.owns(p, direction))`, except
        that a sub-document which may hold fields the target keeps for itself (a nested
        partner_only field; with unmapped="drop", the parent of a mapped path) is set or unset
        field by field, never whole, so those fields survive. Use it on converted documents.
        """
        return self._plan(direction).target_patch(old, new)

    def fields_reached(self, direction: Direction, paths: Iterable[str]) -> frozenset[str]:
        """The target's top-level fields that a change of the source at dotted `paths` can
        change: those `translate_update` rebuilds for an update touching these paths."""
        return self._plan(direction).fields_reached(paths)

    def translate_update(
        self,
        direction: Direction,
        base: Mapping[str, Any],
        updated_fields: Mapping[str, Any],
        removed_fields: Sequence[str] = (),
        truncated_arrays: Sequence[Mapping[str, Any]] = (),
    ) -> Patch:
        """The minimal target patch for an update event on the source side.

        `base` is the source document as known before the event. Equal to
        `target_patch(convert(base), convert(updated), direction)` (the diff of the converted
        documents restricted to owned paths), but only the mappings the touched paths reach run.
        """
        return self._plan(direction).translate_update(
            base, updated_fields, removed_fields, truncated_arrays
        )


def _identity(value: Any) -> Any:
    return value
