"""The BSON of documents written lately, kept by object identity so it is encoded once.

A stored document is never changed in place: every write stores a new object (see
`_fastupdate`). So the bytes of a document object stay right for as long as the object lives,
and the cache holds the object itself, which keeps its `id` from being reused. A write encodes
the new version to measure it; the next write to the document compares against those bytes
(MongoDB's no-op test), and a find replying with it sends them, instead of encoding it again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import bson

__all__ = ["EncodedDocuments", "ENCODED"]

# Bounds on what the cache keeps alive: old versions stay referenced until they are evicted.
MAX_ENTRIES = 16_384
MAX_BYTES = 64 * 1024 * 1024
MAX_DOCUMENT_BYTES = 1024 * 1024


class EncodedDocuments:
    """Encoded documents by identity, the oldest evicted first past the bounds."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        # Oldest first; OrderedDict pops its oldest in constant time (a dict's first-key scan
        # walks past every slot freed before it).
        self._by_id: OrderedDict[int, tuple[dict[str, Any], bytes]] = OrderedDict()
        self._bytes = 0
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        # Servers in threads of one process share the cache; lookups are one dict read each.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_id)

    def encode(self, doc: dict[str, Any]) -> bytes:
        """The document's BSON, from the cache or encoded (not kept: see `remember`)."""
        hit = self._by_id.get(id(doc))
        if hit is not None and hit[0] is doc:
            return hit[1]
        return bson.encode(doc)

    def remember(self, doc: dict[str, Any], raw: bytes) -> None:
        """Keep the bytes of a document just written (a stored object, never changed again)."""
        if len(raw) > MAX_DOCUMENT_BYTES:
            return
        key = id(doc)
        with self._lock:
            old = self._by_id.pop(key, None)
            if old is not None:
                self._bytes -= len(old[1])
            self._by_id[key] = (doc, raw)
            self._bytes += len(raw)
            while len(self._by_id) > self._max_entries or self._bytes > self._max_bytes:
                self._bytes -= len(self._by_id.popitem(last=False)[1][1])

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def entries(self) -> list[tuple[dict[str, Any], bytes]]:
        """What is kept, oldest first (for checks)."""
        with self._lock:
            return list(self._by_id.values())


# One per process: identity makes entries right whichever server in the process wrote them.
ENCODED = EncodedDocuments()
