"""Errors the development server turns into MongoDB-shaped error replies.

CommandError        a command failed; becomes {ok: 0, errmsg, code, codeName, errorLabels}
bson_type_name      the BSON type name mongod's messages use for a value
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bson import Binary, Decimal128, Int64, ObjectId, Regex, Timestamp

__all__ = ["CommandError", "bson_type_name"]


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


_TYPE_NAMES: list[tuple[type | tuple[type, ...], str]] = [
    (bool, "bool"),  # before int: a bool is an int to Python
    (Int64, "long"),  # before int, for the same reason
    (int, "int"),
    (float, "double"),
    (str, "string"),
    (dict, "object"),
    (list, "array"),
    (ObjectId, "objectId"),
    (datetime, "date"),
    ((Binary, bytes), "binData"),
    (Decimal128, "decimal"),
    (Timestamp, "timestamp"),
    (Regex, "regex"),
]


def bson_type_name(value: Any) -> str:
    """The BSON type name mongod's messages use for a value."""
    if value is None:
        return "null"
    for types, name in _TYPE_NAMES:
        if isinstance(value, types):
            return name
    return type(value).__name__
