"""Errors the development server turns into MongoDB-shaped error replies.

    CommandError        a command failed; becomes {ok: 0, errmsg, code, codeName, errorLabels}
"""

from __future__ import annotations

from typing import Any

__all__ = ["CommandError"]


class CommandError(Exception):
    """A command failed the way MongoDB reports it: code, code name, message and labels."""

    def __init__(
        self,
        code: int,
        code_name: str,
        message: str,
        *,
        labels: tuple[str, ...] = (),
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.code_name = code_name
        self.message = message
        self.labels = labels
        self.extra = dict(extra or {})

    def to_reply(self) -> dict[str, Any]:
        """The error reply document, without `$clusterTime` / `operationTime`."""
        reply: dict[str, Any] = {
            "ok": 0.0,
            "errmsg": self.message,
            "code": self.code,
            "codeName": self.code_name,
        }
        if self.labels:
            reply["errorLabels"] = list(self.labels)
        reply.update(self.extra)
        return reply
