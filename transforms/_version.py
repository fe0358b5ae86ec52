"""A pair's stable version digest: the same definitions give the same digest in every process."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from transforms._mappings import FieldMapping

__all__ = ["definition_digest"]


def _function_text(function: Callable[..., Any] | None) -> str:
    """The function's source where Python has it, else its qualified name (builtins)."""
    if function is None:
        return "-"
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        module = getattr(function, "__module__", None) or ""
        name = getattr(function, "__qualname__", None) or repr(type(function))
        return f"{module}.{name}"


def definition_digest(
    *,
    original: str,
    partner: str,
    unmapped: str,
    mappings: Iterable[FieldMapping],
    original_only: Iterable[str],
    partner_only: Mapping[str, Any],
) -> str:
    """Hex digest of everything that decides how documents are converted (not line numbers)."""
    lines = [f"pair {original} {partner} {unmapped}"]
    for mapping in mappings:
        lines.append(
            f"{mapping.kind} {mapping.original!r} {mapping.partner!r} {mapping.default!r} "
            f"{mapping.lossy} {mapping.one_way}"
        )
        lines.append(_function_text(mapping.forward))
        lines.append(_function_text(mapping.backward))
    lines.extend(f"original_only {path}" for path in original_only)
    lines.extend(f"partner_only {path} {value!r}" for path, value in partner_only.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
