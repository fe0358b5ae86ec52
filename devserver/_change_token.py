"""Resume tokens: opaque hex strings whose text order is the order of positions in the history.

A token is ``{"_data": HEX}`` where HEX is a fixed-width, upper-case encoding of
(clusterTime, token kind, txnOpIndex, fromInvalidate, fragment). Fixed width makes the
lexicographic order of the strings equal to the order of the positions, so a client (or this
module) can compare tokens and resuming is a binary search over the history.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from bson import Timestamp

from devserver._errors import CommandError

__all__ = ["ResumeToken", "decode_token", "entry_key", "next_timestamp"]

# Kinds, in sort order: a high-water mark at time T sorts before every event at time T.
HIGH_WATER_MARK = 0x00
EVENT = 0x80

_FORMAT = "82%08X%08X%02X%08X%02X%04X"
_TOKEN_RE = re.compile(r"^82[0-9A-F]{32}$")
_MAX_INC = 0xFFFFFFFF
INVALID_RESUME_TOKEN = 260


class ResumeToken(NamedTuple):
    """A position in the change history; orders like its hex encoding."""

    time: int
    inc: int
    kind: int = EVENT
    txn_op_index: int = 0
    from_invalidate: bool = False
    fragment: int = 0  # 1-based fragment of a split event, 0 when the event is whole

    @classmethod
    def high_water_mark(cls, ts: Timestamp) -> ResumeToken:
        """The position just before every event at `ts`."""
        return cls(ts.time, ts.inc, HIGH_WATER_MARK)

    @property
    def timestamp(self) -> Timestamp:
        """The cluster time the token refers to."""
        return Timestamp(self.time, self.inc)

    @property
    def is_high_water_mark(self) -> bool:
        """True for a token that names a point in time rather than an event."""
        return self.kind == HIGH_WATER_MARK

    @property
    def key(self) -> int:
        """The history key of the entry an event token refers to (see `entry_key`)."""
        return entry_key(self.timestamp, self.txn_op_index)

    def hex(self) -> str:
        """The `_data` string."""
        return _FORMAT % (
            self.time,
            self.inc,
            self.kind,
            self.txn_op_index,
            int(self.from_invalidate),
            self.fragment,
        )

    def document(self) -> dict[str, str]:
        """The token as clients see it: `{"_data": hex}`."""
        return {"_data": self.hex()}


def entry_key(ts: Timestamp, txn_op_index: int) -> int:
    """One integer ordering history entries by (clusterTime, txnOpIndex)."""
    return (ts.time << 64) | (ts.inc << 32) | txn_op_index


def next_timestamp(ts: Timestamp) -> Timestamp:
    """The smallest cluster time after `ts`."""
    if ts.inc >= _MAX_INC:
        return Timestamp(ts.time + 1, 0)
    return Timestamp(ts.time, ts.inc + 1)


def decode_token(value: object, option: str) -> ResumeToken:
    """Parse a client-supplied resume token, failing the way MongoDB does for malformed ones."""
    if not isinstance(value, dict):
        raise CommandError(
            14,
            "TypeMismatch",
            f"BSON field '$changeStream.{option}' is the wrong type "
            f"'{type(value).__name__}', expected type 'object'",
        )
    data = value.get("_data")
    if not isinstance(data, str):
        raise CommandError(
            40647, "Location40647", "Bad resume token: _data of missing or of wrong type"
        )
    if not _TOKEN_RE.match(data.upper()):
        raise CommandError(
            INVALID_RESUME_TOKEN,
            "InvalidResumeToken",
            f'Failed to decode resume token {{ _data: "{data}" }}',
        )
    data = data.upper()
    return ResumeToken(
        time=int(data[2:10], 16),
        inc=int(data[10:18], 16),
        kind=int(data[18:20], 16),
        txn_op_index=int(data[20:28], 16),
        from_invalidate=data[28:30] != "00",
        fragment=int(data[30:34], 16),
    )
