"""Open cursors: query results held between `find`/`aggregate` and `getMore`, and change streams."""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from bson.raw_bson import RawBSONDocument

from devserver._encoded import ENCODED
from devserver._errors import CommandError

__all__ = ["CursorTable", "DocumentCursor", "BATCH_BYTES", "take_batch"]

# A reply holds at most 16 MiB of documents; leave room for the envelope.
BATCH_BYTES = 16 * 1024 * 1024 - 16 * 1024
DEFAULT_FIRST_BATCH = 101


@dataclass
class DocumentCursor:
    """The remaining documents of a find or aggregate, served in batches."""

    ns: str
    remaining: deque[dict[str, Any]]
    lsid: bytes | None = None
    batch_size: int | None = None
    # set for change-stream cursors: the ChangeStreamCursor from the change history
    stream: Any = None
    last_used: float = field(default_factory=time.monotonic)


def take_batch(remaining: deque[dict[str, Any]], limit: int | None) -> list[Any]:
    """Pop up to `limit` documents (all when None/0) without exceeding the reply size.

    Documents come back already encoded (RawBSONDocument): measuring them is encoding them,
    and the reply embeds the bytes as they are.
    """
    batch: list[Any] = []
    size = 0
    while remaining and (not limit or len(batch) < limit):
        encoded = RawBSONDocument(ENCODED.encode(remaining[0]))
        if batch and size + len(encoded.raw) > BATCH_BYTES:
            break
        size += len(encoded.raw)
        remaining.popleft()
        batch.append(encoded)
    return batch


class CursorTable:
    """Cursor ids to open cursors; ids are random positive int64 like mongod's."""

    def __init__(self) -> None:
        self._cursors: dict[int, DocumentCursor] = {}

    def __len__(self) -> int:
        return len(self._cursors)

    def register(self, cursor: DocumentCursor) -> int:
        cursor_id = random.getrandbits(62) | 1
        while cursor_id in self._cursors:
            cursor_id = random.getrandbits(62) | 1
        self._cursors[cursor_id] = cursor
        return cursor_id

    def get(self, cursor_id: int, ns: str) -> DocumentCursor:
        cursor = self._cursors.get(cursor_id)
        if cursor is None:
            raise CommandError(43, "CursorNotFound", f"cursor id {cursor_id} not found")
        cursor.last_used = time.monotonic()
        if cursor.ns != ns:
            raise CommandError(
                13,
                "Unauthorized",
                f"Requested getMore on namespace '{ns}', but cursor belongs to a different "
                f"namespace {cursor.ns}",
            )
        return cursor

    def close(self, cursor_id: int) -> bool:
        cursor = self._cursors.pop(cursor_id, None)
        if cursor is None:
            return False
        if cursor.stream is not None:
            cursor.stream.close()
        return True

    def close_for_sessions(self, lsids: set[bytes]) -> None:
        for cursor_id, cursor in list(self._cursors.items()):
            if cursor.lsid is not None and cursor.lsid in lsids:
                self.close(cursor_id)

    def close_idle(self, idle_seconds: float) -> None:
        """Close cursors no getMore touched for `idle_seconds` (mongod's cursor timeout)."""
        deadline = time.monotonic() - idle_seconds
        for cursor_id, cursor in list(self._cursors.items()):
            if cursor.last_used < deadline:
                self.close(cursor_id)

    def close_all(self) -> None:
        for cursor_id in list(self._cursors):
            self.close(cursor_id)
