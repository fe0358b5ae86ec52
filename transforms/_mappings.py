"""One registered mapping, normalised into a small frozen value, and how it runs each way."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from transforms._bson_check import bson_problem
from transforms._paths import MISSING, split_path
from transforms.errors import TransformFailed

__all__ = ["Direction", "FieldMapping", "MappingKind"]


class Direction(enum.StrEnum):
    """Which way a change travels."""

    FORWARD = "forward"  # original -> partner
    BACKWARD = "backward"  # partner -> original


class MappingKind(enum.StrEnum):
    """What a mapping does; `check` and `docs/transforms.md` use these names."""

    RENAME = "rename"
    CONVERT = "convert"
    REQUIRE = "require"
    DERIVE = "derive"


@dataclass(frozen=True)
class FieldMapping:
    """A registered mapping: original-side paths, partner-side paths and a function each way.

    `forward` / `backward` are None only for a one-way derive's missing inverse. `location` is
    the `file:line` that registered it, for error messages.
    """

    kind: MappingKind
    original: tuple[str, ...]
    partner: tuple[str, ...]
    forward: Callable[..., Any] | None
    backward: Callable[..., Any] | None
    location: str
    name: str
    default: Any = MISSING
    lossy: bool = False
    one_way: bool = False

    def sources(self, direction: Direction) -> tuple[str, ...]:
        """The paths this mapping reads when converting in `direction`."""
        return self.original if direction is Direction.FORWARD else self.partner

    def targets(self, direction: Direction) -> tuple[str, ...]:
        """The paths this mapping writes when converting in `direction`."""
        return self.partner if direction is Direction.FORWARD else self.original

    def runs(self, direction: Direction) -> bool:
        """False for the backward direction of a one-way derive."""
        return (self.forward if direction is Direction.FORWARD else self.backward) is not None

    def describe(self) -> str:
        """One line for `check` and error messages."""
        arrow = "->" if self.one_way else "<->"
        left = ", ".join(self.original)
        right = ", ".join(self.partner)
        extra = ""
        if self.default is not MISSING:
            extra = f" (default {self.default!r})"
        if self.lossy:
            extra += " (lossy)"
        return f"{self.name}: {left} {arrow} {right}{extra}"

    def compile(self, direction: Direction, pair: str) -> CompiledMapping:
        """The mapping ready to run in `direction`, with its paths pre-split."""
        return CompiledMapping(self, direction, pair)


class CompiledMapping:
    """A mapping bound to one direction: reads source values, returns target values."""

    __slots__ = (
        "_all_missing",
        "_function",
        "_target_names",
        "_target_set",
        "mapping",
        "pair",
        "run",
        "sources",
        "targets",
    )

    def __init__(self, mapping: FieldMapping, direction: Direction, pair: str) -> None:
        self.mapping = mapping
        self.pair = pair
        self.sources = tuple(split_path(p) for p in mapping.sources(direction))
        self.targets = tuple(split_path(p) for p in mapping.targets(direction))
        self._target_names = list(mapping.targets(direction))
        self._target_set = frozenset(self._target_names)
        self._all_missing = (MISSING,) * len(self.targets)
        function = mapping.forward if direction is Direction.FORWARD else mapping.backward
        self._function = function
        # `run(values, document_id)`: target values (MISSING: leave absent) from source values
        # (MISSING: absent). A bound method chosen once, as it runs for every event.
        self.run: Callable[[Sequence[Any], Any], Sequence[Any]]
        kind = mapping.kind
        if kind is MappingKind.RENAME:
            self.run = self._copy
        elif kind is MappingKind.REQUIRE:
            self.run = self._require if direction is Direction.FORWARD else self._copy
        elif kind is MappingKind.CONVERT:
            self.run = self._convert
        else:
            self.run = self._derive

    def _copy(self, values: Sequence[Any], document_id: Any) -> Sequence[Any]:
        return values

    def _require(self, values: Sequence[Any], document_id: Any) -> Sequence[Any]:
        value = values[0]
        if value is MISSING or value is None:
            return (self.mapping.default,)
        return values

    def _convert(self, values: Sequence[Any], document_id: Any) -> Sequence[Any]:
        value = values[0]
        # Absent stays absent and null stays null: a type change has no value to convert there.
        if value is MISSING or value is None:
            return values
        result = self._call((value,), document_id)
        problem = bson_problem(result)
        if problem:
            raise self._failed(problem, document_id)
        return (result,)

    def _derive(self, values: Sequence[Any], document_id: Any) -> Sequence[Any]:
        arguments = [None if value is MISSING else value for value in values]
        if arguments.count(None) == len(arguments) and MISSING in values:
            if all(value is MISSING for value in values):
                return self._all_missing
        result = self._call(arguments, document_id)
        names = self._target_names
        if type(result) is not dict or result.keys() != self._target_set:
            got = sorted(result) if isinstance(result, dict) else type(result).__name__
            raise self._failed(f"returned {got}, expected a dict with keys {names}", document_id)
        outputs = [result[name] for name in names]
        for output in outputs:
            if type(output) is not str:  # the usual derived value, and always encodable
                problem = bson_problem(output)
                if problem:
                    raise self._failed(problem, document_id)
        return outputs

    def _call(self, arguments: Sequence[Any], document_id: Any) -> Any:
        assert self._function is not None
        try:
            return self._function(*arguments)
        except Exception as exc:
            raise self._failed(f"{type(exc).__name__}: {exc}", document_id) from exc

    def _failed(self, problem: str, document_id: Any) -> TransformFailed:
        return TransformFailed(
            problem,
            pair=self.pair,
            mapping=self.mapping.name,
            field=", ".join(".".join(source) for source in self.sources),
            document_id=document_id,
        )
