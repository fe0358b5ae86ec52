"""Loading transform modules (dotted names, `.py` paths, entry points) into a `Registry`."""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import traceback
from collections.abc import Sequence
from types import ModuleType

from transforms._pair import Pair, created_pairs
from transforms._registry import Registry
from transforms.errors import TransformLoadError

__all__ = ["ENTRY_POINT_GROUP", "load_registry"]

ENTRY_POINT_GROUP = "partner_sync.transforms"


def _import(spec: str) -> tuple[str, ModuleType]:
    """Import a module by dotted name or `.py` path; returns (display name, module)."""
    if spec.endswith(".py") or os.sep in spec or "/" in spec:
        path = os.path.abspath(spec)
        if not os.path.isfile(path):
            raise TransformLoadError(
                f"transform file {spec} does not exist",
                fix="pass an existing .py file or an importable module name",
                module=spec,
            )
        # A name derived from the path: stable, and two files called shop.py do not collide.
        digest = hashlib.sha256(path.encode()).hexdigest()[:8]
        stem = os.path.splitext(os.path.basename(path))[0]
        name = f"partner_sync_transforms_{stem}_{digest}"
        existing = sys.modules.get(name)
        if existing is not None:
            return spec, existing
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise TransformLoadError(f"cannot import {spec}", module=spec)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return spec, module
    try:
        return spec, importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name and spec.startswith(exc.name):
            raise TransformLoadError(
                f"no module named {spec!r}",
                fix="check the name, install the package, or pass a .py file path",
                module=spec,
            ) from exc
        raise


def _load_one(spec: str) -> list[Pair]:
    """The pairs a module defines; pairs it created while importing, else its Pair globals."""
    before = len(created_pairs())
    try:
        name, module = _import(spec)
    except TransformLoadError as exc:
        raise exc.in_module(spec) from exc.__cause__
    except Exception as exc:
        trace = "".join(traceback.format_exception(exc))
        raise TransformLoadError(
            f"raised {type(exc).__name__} while importing:\n{trace}",
            fix="fix the error above; the worker does not start with a broken transform module",
            module=spec,
        ) from exc
    created = created_pairs()[before:]
    if not created:  # imported earlier in this process: find the pairs it created then
        created = [pair for pair in created_pairs() if pair.module == module.__name__]
    for pair in created:
        try:
            pair.validate()
        except TransformLoadError as exc:
            raise exc.in_module(name) from exc
    return created


def _entry_point_modules() -> list[str]:
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return [entry.value.partition(":")[0] for entry in sorted(found, key=lambda e: e.name)]


def load_registry(modules: Sequence[str], *, entry_points: bool = True) -> Registry:
    """Import transform modules and validate every pair, before any data is read.

    `modules` are dotted module names or `.py` paths; with `entry_points`, modules named by the
    `partner_sync.transforms` entry point group of installed packages are loaded too. Raises
    TransformLoadError naming module, pair, field, registering line and the fix.
    """
    specs = list(dict.fromkeys([*modules, *(_entry_point_modules() if entry_points else [])]))
    pairs: list[Pair] = []
    origin: dict[int, str] = {}
    for spec in specs:
        for pair in _load_one(spec):
            if id(pair) in origin:
                continue
            origin[id(pair)] = spec
            pairs.append(pair)
    seen: dict[tuple[str, str], Pair] = {}
    for pair in pairs:
        for key in ((pair.original, pair.partner), (pair.partner, pair.original)):
            other = seen.get(key)
            if other is not None:
                raise TransformLoadError(
                    f"pair registered twice: also at {other.location} (module {origin[id(other)]})",
                    fix="register each pair of collections once, in one module",
                    module=origin[id(pair)],
                    pair=pair.name,
                    location=pair.location,
                )
        seen[(pair.original, pair.partner)] = pair
    return Registry(pairs)
