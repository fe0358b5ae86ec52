"""The API users write their transforms against."""

from __future__ import annotations

__all__: list[str] = []
