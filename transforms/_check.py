"""Property tests of a pair's mappings: does backward(forward(x)) give x back? (`check`'s core).

Values come from three places: examples the module registers (`Pair.examples`), values sampled
from live documents, and hypothesis-generated values of the types seen in those two. A failure
keeps the smallest counter-example found.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transforms._mappings import Direction, FieldMapping, MappingKind
from transforms._pair import Pair
from transforms._paths import MISSING, get_path, same_value, split_path
from transforms.errors import TransformFailed

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = ["CheckStatus", "MappingReport", "check_pair"]


class CheckStatus(enum.StrEnum):
    """Outcome of checking one mapping."""

    OK = "ok"
    FAILED = "failed"
    LOSSY = "lossy"  # round trip differs, and the mapping says lossy=True
    IDENTITY = "identity"  # renames and requires copy values: nothing to test
    ONE_WAY = "one-way"
    UNTESTED = "untested"  # no example nor sample gave a value to try


@dataclass
class MappingReport:
    """What `check` found for one mapping, printable by the CLI."""

    mapping: FieldMapping
    status: CheckStatus
    tried: int = 0
    counter_example: Any = None
    detail: str = ""


def _strategy_for(kind: type) -> SearchStrategy[Any] | None:
    """Values of one BSON-ish Python type, or None for a type we cannot generate."""
    from hypothesis import strategies as st  # imported on use: it costs ~1 s at start-up

    scalars: dict[type, SearchStrategy[Any]] = {
        str: st.text(max_size=20),
        bool: st.booleans(),
        int: st.integers(-(2**63), 2**63 - 1),
        float: st.floats(allow_nan=False),
        type(None): st.none(),
        bytes: st.binary(max_size=16),
        datetime.datetime: st.datetimes(
            min_value=datetime.datetime(1900, 1, 1), max_value=datetime.datetime(2200, 1, 1)
        ).map(lambda value: value.replace(microsecond=value.microsecond // 1000 * 1000)),
    }
    if kind in scalars:
        return scalars[kind]
    leaves = st.one_of(st.none(), st.booleans(), st.integers(-(2**31), 2**31), st.text(max_size=8))
    if issubclass(kind, Mapping):
        return st.dictionaries(st.text(min_size=1, max_size=6), leaves, max_size=4)
    if issubclass(kind, list | tuple):
        return st.lists(leaves, max_size=4)
    return None


def _types_strategy(seen: Iterable[Any]) -> SearchStrategy[Any] | None:
    from hypothesis import strategies as st

    strategies = []
    for kind in dict.fromkeys(type(value) for value in seen if value is not MISSING):
        strategy = _strategy_for(kind)
        if strategy is not None:
            strategies.append(strategy)
    return st.one_of(strategies) if strategies else None


class _RoundTrip:
    """One mapping's round trip as a function of its original-side values (a tuple)."""

    def __init__(self, pair: Pair, mapping: FieldMapping) -> None:
        self.mapping = mapping
        self._forward = mapping.compile(Direction.FORWARD, pair.name)
        self._backward = None if mapping.one_way else mapping.compile(Direction.BACKWARD, pair.name)

    def problem(self, values: Sequence[Any]) -> str | None:
        """Why the round trip of `values` does not give them back, or None when it does.

        Raises TransformFailed when a function raises; a one-way mapping only runs forward.
        """
        partner = self._forward.run(values, "check")
        if self._backward is None:
            return None
        back = self._backward.run(partner, "check")
        derive = self.mapping.kind is MappingKind.DERIVE
        for path, before, after in zip(self.mapping.original, values, back, strict=True):
            # A derive sees an absent input as None, so None coming back is the same value.
            expected = None if before is MISSING and derive else before
            if after is MISSING and expected is MISSING:
                continue
            if after is MISSING or expected is MISSING or not same_value(expected, after):
                shown = dict(zip(self.mapping.partner, partner, strict=True))
                return f"{path}: {_show(before)} -> {_show(shown)} -> {_show(after)}"
        return None


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return "absent" if value is MISSING else repr(value)


def _examples(pair: Pair, mapping: FieldMapping) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = []
    for example in pair.examples_for(mapping):
        if len(mapping.original) == 1 and not isinstance(example, Mapping | tuple):
            found.append((example,))
        elif isinstance(example, Mapping):
            found.append(tuple(example.get(path, MISSING) for path in mapping.original))
        elif isinstance(example, tuple) and len(example) == len(mapping.original):
            found.append(example)
        else:
            found.append((example,))
    return found


def _sampled(
    mapping: FieldMapping, documents: Iterable[Mapping[str, Any]]
) -> list[tuple[Any, ...]]:
    paths = [split_path(path) for path in mapping.original]
    found = []
    for document in documents:
        values = tuple(get_path(document, path) for path in paths)
        if any(value is not MISSING for value in values):
            found.append(values)
    return found


def _size(values: tuple[Any, ...]) -> tuple[int, str]:
    text = repr(values)
    return (len(text), text)


def check_mapping(
    pair: Pair,
    mapping: FieldMapping,
    samples: Sequence[Mapping[str, Any]] = (),
    *,
    max_examples: int = 200,
) -> MappingReport:
    """Round-trip one mapping over examples, samples and generated values of the types seen."""
    if mapping.kind in (MappingKind.RENAME, MappingKind.REQUIRE):
        return MappingReport(mapping, CheckStatus.IDENTITY)
    trip = _RoundTrip(pair, mapping)
    candidates = [("example", values) for values in _examples(pair, mapping)]
    candidates += [("sample", values) for values in _sampled(mapping, samples)]
    failures: list[tuple[tuple[Any, ...], str]] = []
    raising: list[tuple[tuple[Any, ...], str]] = []
    for _origin, values in candidates:
        try:
            problem = trip.problem(values)
        except TransformFailed as exc:
            # A value a real document holds (or the module offers) must convert: never lossy.
            raising.append((values, f"raised: {exc}"))
            continue
        if problem:
            failures.append((values, problem))
    tried = len(candidates)
    per_field = [
        _types_strategy(values[index] for _, values in candidates)
        for index in range(len(mapping.original))
    ]
    if candidates and all(strategy is not None for strategy in per_field):
        from hypothesis import HealthCheck, find, settings
        from hypothesis import strategies as st
        from hypothesis.errors import NoSuchExample, Unsatisfiable

        generated = st.tuples(*per_field)

        def breaks(values: tuple[Any, ...]) -> bool:
            try:
                return trip.problem(values) is not None
            except TransformFailed:
                return False  # a generated value the function rejects is not a counter-example

        try:
            smallest = find(
                generated,
                breaks,
                settings=settings(
                    max_examples=max_examples,
                    database=None,
                    derandomize=True,
                    suppress_health_check=list(HealthCheck),
                ),
            )
            failures.append((smallest, trip.problem(smallest) or ""))
        except (NoSuchExample, Unsatisfiable):
            pass
        tried += max_examples
    if not candidates:
        status = CheckStatus.ONE_WAY if mapping.one_way else CheckStatus.UNTESTED
        return MappingReport(mapping, status, detail="no example or sample values to try")
    if raising:
        values, problem = min(raising, key=lambda failure: _size(failure[0]))
        return MappingReport(
            mapping, CheckStatus.FAILED, tried=tried, counter_example=values, detail=problem
        )
    if mapping.one_way:
        return MappingReport(mapping, CheckStatus.ONE_WAY, tried=tried)
    if not failures:
        return MappingReport(mapping, CheckStatus.OK, tried=tried)
    values, problem = min(failures, key=lambda failure: _size(failure[0]))
    status = CheckStatus.LOSSY if mapping.lossy else CheckStatus.FAILED
    return MappingReport(mapping, status, tried=tried, counter_example=values, detail=problem)


def check_pair(
    pair: Pair,
    samples: Sequence[Mapping[str, Any]] = (),
    *,
    max_examples: int = 200,
    progress: Callable[[MappingReport], None] | None = None,
) -> list[MappingReport]:
    """Check every mapping of `pair`; `samples` are live original documents (may be empty)."""
    reports = []
    for mapping in pair.mappings:
        report = check_mapping(pair, mapping, samples, max_examples=max_examples)
        reports.append(report)
        if progress is not None:
            progress(report)
    return reports
