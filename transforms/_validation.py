"""The rules a registration must follow, checked when it is made (before any data is read)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from typing import Any, Final

from transforms._bson_check import bson_problem
from transforms._paths import is_prefix, split_path
from transforms.errors import TransformLoadError

__all__ = [
    "check_arity",
    "check_callable",
    "check_default",
    "check_namespace",
    "check_new_path",
    "check_path",
]

# MongoDB: database names may not contain these characters; collection names may not hold "$"
# nor start with "system.".
_BAD_DB_CHARS: Final = re.compile(r'[/\\. "$*<>:|?\x00]')


def check_namespace(namespace: Any, role: str, location: str) -> None:
    """Raise unless `namespace` is a well-formed "database.collection" string."""
    fix = f'give {role}="database.collection", e.g. {role}="shop.customers"'
    if not isinstance(namespace, str) or "." not in namespace:
        raise TransformLoadError(
            f"{role} namespace {namespace!r} is not 'database.collection'",
            fix=fix,
            location=location,
        )
    database, _, collection = namespace.partition(".")
    problem = None
    if not database or _BAD_DB_CHARS.search(database):
        problem = f"database name {database!r} is empty or holds a character MongoDB forbids"
    elif not collection or "$" in collection or "\x00" in collection:
        problem = f"collection name {collection!r} is empty or holds '$' or NUL"
    elif collection.startswith("system."):
        problem = f"collection {collection!r} is a system collection"
    if problem:
        raise TransformLoadError(
            f"{role} namespace {namespace!r}: {problem}", fix=fix, location=location
        )


def check_path(path: Any, pair: str, location: str) -> str:
    """Return `path` when it is a valid dotted field path a mapping may name; raise otherwise."""
    if not isinstance(path, str) or not path:
        raise TransformLoadError(
            f"field path {path!r} is not a non-empty string",
            fix='name fields as dotted strings, e.g. "address.zip"',
            pair=pair,
            location=location,
        )
    parts = split_path(path)
    if any(not part for part in parts) or any(part.startswith("$") for part in parts):
        raise TransformLoadError(
            "a path has an empty part or a part starting with '$'",
            fix='name fields as dotted strings, e.g. "address.zip"',
            pair=pair,
            field=path,
            location=location,
        )
    if parts[0] == "_id":
        raise TransformLoadError(
            "_id is always carried through unchanged and may not be mapped",
            fix="remove this mapping; to change the identity, write a new collection instead",
            pair=pair,
            field=path,
            location=location,
        )
    return path


def check_new_path(
    path: str, side: str, taken: Iterable[tuple[str, str]], pair: str, location: str
) -> None:
    """Raise when `path` is already named on `side`, or is a parent or child of a named path.

    `taken` holds (path, "file:line") of what the pair already names on that side.
    """
    parts = split_path(path)
    for other, where in taken:
        other_parts = split_path(other)
        if other_parts == parts:
            problem = f"{side} field is already named by the mapping registered at {where}"
        elif is_prefix(parts, other_parts) or is_prefix(other_parts, parts):
            problem = (
                f"{side} field overlaps {other!r} (registered at {where}): one is inside the "
                "other, so the two mappings would write the same data"
            )
        else:
            continue
        raise TransformLoadError(
            problem,
            fix="map each field once; map the parent or its children, not both",
            pair=pair,
            field=path,
            location=location,
        )


def check_callable(function: Any, what: str, pair: str, field: str, location: str) -> None:
    """Raise unless `function` is callable."""
    if not callable(function):
        raise TransformLoadError(
            f"{what} is {function!r}, which is not callable",
            fix=f"pass a function or lambda as {what}",
            pair=pair,
            field=field,
            location=location,
        )


def check_arity(
    function: Callable[..., Any], count: int, what: str, pair: str, field: str, location: str
) -> None:
    """Raise when `function` cannot be called with `count` positional arguments."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return  # builtins without a signature: the call itself will tell
    try:
        signature.bind(*([None] * count))
    except TypeError as exc:
        raise TransformLoadError(
            f"{what} {getattr(function, '__name__', function)!r} cannot take {count} "
            f"positional argument(s), one per field it reads ({exc})",
            fix="make its parameters match the declared fields, in order",
            pair=pair,
            field=field,
            location=location,
        ) from exc


def check_default(value: Any, pair: str, field: str, location: str) -> None:
    """Raise when a default cannot be stored by MongoDB."""
    problem = bson_problem(value)
    if problem:
        raise TransformLoadError(
            f"default {value!r}: {problem}",
            fix="use a value MongoDB can store (str, int, float, bool, None, dict, list, ...)",
            pair=pair,
            field=field,
            location=location,
        )
