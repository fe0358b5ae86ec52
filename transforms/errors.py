"""Errors of the transform API.

TransformError                   root of everything the transforms package raises on purpose
├── TransformLoadError           a transform module cannot be imported or breaks a rule at load
└── TransformFailed              a transform function raised, or returned a value BSON cannot store
"""

from __future__ import annotations

from typing import Any

__all__ = ["TransformError", "TransformFailed", "TransformLoadError"]


class TransformError(Exception):
    """Root of the errors the transforms package raises on purpose."""


class TransformLoadError(TransformError):
    """A transform module failed to import or a registration breaks a rule; nothing was synced."""

    def __init__(
        self,
        problem: str,
        *,
        fix: str = "",
        module: str | None = None,
        pair: str | None = None,
        field: str | None = None,
        location: str | None = None,
    ) -> None:
        self.problem = problem
        self.fix = fix
        self.module = module
        self.pair = pair
        self.field = field
        self.location = location
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.module:
            where.append(f"module {self.module}")
        if self.pair:
            where.append(f"pair {self.pair}")
        if self.field:
            where.append(f"field {self.field!r}")
        if self.location:
            where.append(f"registered at {self.location}")
        text = f"{', '.join(where)}: {self.problem}" if where else self.problem
        return f"{text}. Fix: {self.fix}" if self.fix else text

    def in_module(self, module: str) -> TransformLoadError:
        """The same error, naming the module it was raised while loading."""
        if self.module:
            return self
        return TransformLoadError(
            self.problem,
            fix=self.fix,
            module=module,
            pair=self.pair,
            field=self.field,
            location=self.location,
        )


class TransformFailed(TransformError):
    """A transform function raised or returned a value BSON cannot encode, for one document."""

    def __init__(
        self, problem: str, *, pair: str, mapping: str, field: str, document_id: Any
    ) -> None:
        self.pair = pair
        self.mapping = mapping
        self.field = field
        self.document_id = document_id
        super().__init__(
            f"pair {pair}, mapping {mapping}, field {field!r}, document _id {document_id!r}: "
            f"{problem}"
        )
