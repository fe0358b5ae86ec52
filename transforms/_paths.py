"""Dotted paths into BSON-like documents: reading, writing into fresh copies, and relations."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "MISSING",
    "SCALAR_TYPES",
    "Missing",
    "copy_value",
    "get_path",
    "is_prefix",
    "related",
    "same_value",
    "set_path",
    "split_path",
]


class Missing(enum.Enum):
    """The type of `MISSING`: a field that is absent, as opposed to present with value null."""

    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = Missing.MISSING


def split_path(path: str) -> tuple[str, ...]:
    """`"a.b.3"` -> `("a", "b", "3")`."""
    return tuple(path.split("."))


def is_prefix(prefix: tuple[str, ...], path: tuple[str, ...]) -> bool:
    """True when `prefix` equals `path` or is one of its ancestors."""
    return path[: len(prefix)] == prefix


def related(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """True when one path equals or contains the other: changing one may change the other."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def get_path(document: Any, path: tuple[str, ...]) -> Any:
    """The value at `path`, or `MISSING`; digits index arrays, as MongoDB's dotted notation does."""
    if len(path) == 1 and type(document) is dict:
        return document.get(path[0], MISSING)
    value = document
    for part in path:
        if type(value) is dict or isinstance(value, Mapping):
            value = value.get(part, MISSING)
            if value is MISSING:
                return MISSING
        elif isinstance(value, list) and part.isdigit():
            index = int(part)
            if index >= len(value):
                return MISSING
            value = value[index]
        else:
            return MISSING
    return value


def set_path(document: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """Set `path` in `document`, a dict this module's caller owns (created by it, not an input).

    Intermediate sub-documents are created; an intermediate value that is not a sub-document is
    replaced by one, so a mapped path always lands.
    """
    target = document
    for part in path[:-1]:
        child = target.get(part)
        if not isinstance(child, dict):
            child = {}
            target[part] = child
        target = child
    target[path[-1]] = value


# Types that are never containers, tested before the slow `isinstance(x, Mapping)`.
SCALAR_TYPES: Final = frozenset({str, int, float, bool, type(None), bytes})


def copy_value(value: Any) -> Any:
    """A copy of `value` sharing no mutable container with it (faster than `copy.deepcopy`)."""
    kind = type(value)
    if kind in SCALAR_TYPES:
        return value
    if kind is dict or isinstance(value, Mapping):
        return {key: copy_value(item) for key, item in value.items()}
    if kind is list or kind is tuple:
        return [copy_value(item) for item in value]
    return value


def same_value(a: Any, b: Any) -> bool:
    """BSON equality: like `==`, but `1`, `1.0` and `True` differ, as their BSON types do."""
    if a is b:
        return True
    kind = type(a)
    if kind is not type(b):
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            kind = dict
        else:
            return False
    if kind in SCALAR_TYPES:
        return bool(a == b)
    if kind is dict or isinstance(a, Mapping):
        if len(a) != len(b):
            return False
        for key, item in a.items():
            other = b.get(key, MISSING)
            if other is MISSING or not same_value(item, other):
                return False
        return True
    if kind is list or kind is tuple:
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
