"""A MongoDB-compatible development server (not for production)."""

from __future__ import annotations

__all__: list[str] = []
