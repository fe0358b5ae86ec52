"""Loading a program of the repository (a benchmark, a deploy script) as a module by its path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def module_from_file(name: str, path: Path, *, register: bool = False) -> ModuleType:
    """The program at `path` as module `name`; `register` puts it in `sys.modules` first (a
    module whose dataclasses look themselves up there needs it)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
