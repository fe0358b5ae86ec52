"""The bridge to the change-history module: ChangeRecord and ChangeHistory, or stand-ins.

The change-stream module is developed separately; until it is importable the server still runs
(without change streams), recording writes with a local ChangeRecord of the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ChangeRecord", "ChangeHistory", "HAVE_CHANGE_STREAMS"]

try:
    from devserver._changes import ChangeHistory, ChangeRecord

    HAVE_CHANGE_STREAMS = True
except ImportError:  # the change-stream module has not landed yet
    HAVE_CHANGE_STREAMS = False
    ChangeHistory = None  # type: ignore[assignment,misc]

    @dataclass(frozen=True)
    class ChangeRecord:  # type: ignore[no-redef]
        """One committed change (stand-in with the change-stream module's fields)."""

        op: str
        db: str
        coll: str | None
        document_key: dict[str, Any] | None = None
        before: dict[str, Any] | None = None
        after: dict[str, Any] | None = None
        update_spec: Any = None
        to: tuple[str, str] | None = None
        images_enabled: bool = False
