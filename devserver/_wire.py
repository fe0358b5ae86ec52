"""MongoDB wire protocol framing: OP_MSG and the legacy OP_QUERY handshake, in and out.

Only framing lives here; what a command means is decided by the command layer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.codec_options import CodecOptions

__all__ = [
    "HEADER",
    "OP_MSG",
    "OP_QUERY",
    "OP_REPLY",
    "MAX_MESSAGE_BYTES",
    "CHECKSUM_PRESENT",
    "MORE_TO_COME",
    "EXHAUST_ALLOWED",
    "ProtocolError",
    "Request",
    "crc32c",
    "decode_message",
    "encode_op_msg",
    "encode_op_reply",
]

HEADER = struct.Struct("<iiii")
OP_REPLY = 1
OP_QUERY = 2004
OP_MSG = 2013
MAX_MESSAGE_BYTES = 48_000_000

CHECKSUM_PRESENT = 1 << 0
MORE_TO_COME = 1 << 1
EXHAUST_ALLOWED = 1 << 16
# Bits 0-15 are "required": a receiver must reject a message with a required bit it does not know.
_KNOWN_REQUIRED = CHECKSUM_PRESENT | MORE_TO_COME

# Decoding keeps int64 as Int64 and datetimes naive UTC, so documents re-encode byte-faithfully.
CODEC: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=False)


class ProtocolError(Exception):
    """A message that cannot be parsed; the connection that sent it is closed."""


@dataclass
class Request:
    """One decoded request: the command document plus how the client framed it."""

    request_id: int
    op_code: int
    body: dict[str, Any]
    flags: int = 0
    # OP_QUERY only: the namespace the query was addressed to.
    namespace: str = ""
    sequences: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # The BSON size of every document of each sequence, in order (what the bytes already say).
    sequence_sizes: dict[str, list[int]] = field(default_factory=dict)
    size: int = 0

    @property
    def more_to_come(self) -> bool:
        return bool(self.flags & MORE_TO_COME)

    @property
    def checksum(self) -> bool:
        return bool(self.flags & CHECKSUM_PRESENT)


def _make_crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _make_crc32c_table()


def crc32c(data: bytes | memoryview) -> int:
    """CRC-32C (Castagnoli), the OP_MSG checksum; drivers rarely send one, so a table suffices."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _cstring(data: bytes, offset: int) -> tuple[str, int]:
    end = data.find(b"\x00", offset)
    if end < 0:
        raise ProtocolError("unterminated cstring")
    return data[offset:end].decode("utf-8", errors="strict"), end + 1


def _bson_at(data: bytes, offset: int, limit: int) -> tuple[dict[str, Any], int]:
    if offset + 4 > limit:
        raise ProtocolError("truncated BSON document")
    (size,) = struct.unpack_from("<i", data, offset)
    if size < 5 or offset + size > limit:
        raise ProtocolError("invalid BSON document length")
    try:
        doc = bson.decode(data[offset : offset + size], CODEC)
    except Exception as exc:  # bson raises several types for garbage
        raise ProtocolError(f"invalid BSON: {exc}") from exc
    return doc, offset + size


def decode_message(request_id: int, op_code: int, payload: bytes, whole: bytes) -> Request:
    """Parse the bytes after the 16-byte header; `whole` includes the header (for checksums)."""
    if op_code == OP_MSG:
        request = _decode_op_msg(request_id, payload, whole)
    elif op_code == OP_QUERY:
        request = _decode_op_query(request_id, payload)
    else:
        raise ProtocolError(f"unsupported opCode {op_code}")
    request.size = len(whole)
    return request


def _decode_op_msg(request_id: int, payload: bytes, whole: bytes) -> Request:
    if len(payload) < 5:
        raise ProtocolError("OP_MSG too short")
    (flags,) = struct.unpack_from("<I", payload, 0)
    if flags & 0xFFFF & ~_KNOWN_REQUIRED:
        raise ProtocolError(f"unknown required OP_MSG flag bits {flags:#x}")
    limit = len(payload)
    if flags & CHECKSUM_PRESENT:
        limit -= 4
        if limit < 5:
            raise ProtocolError("OP_MSG too short for its checksum")
        (expected,) = struct.unpack_from("<I", payload, limit)
        if crc32c(whole[:-4]) != expected:
            raise ProtocolError("OP_MSG checksum mismatch")
    offset = 4
    body: dict[str, Any] | None = None
    sequences: dict[str, list[dict[str, Any]]] = {}
    sizes: dict[str, list[int]] = {}
    while offset < limit:
        kind = payload[offset]
        offset += 1
        if kind == 0:
            if body is not None:
                raise ProtocolError("OP_MSG with more than one body section")
            body, offset = _bson_at(payload, offset, limit)
        elif kind == 1:
            if offset + 4 > limit:
                raise ProtocolError("truncated document sequence")
            (size,) = struct.unpack_from("<i", payload, offset)
            end = offset + size
            if size < 5 or end > limit:
                raise ProtocolError("invalid document sequence length")
            name, cursor = _cstring(payload, offset + 4)
            if name in sequences:
                raise ProtocolError(f"duplicate document sequence {name!r}")
            sequences[name], sizes[name] = _bson_sequence(payload, cursor, end)
            offset = end
        else:
            raise ProtocolError(f"unknown OP_MSG section kind {kind}")
    if body is None:
        raise ProtocolError("OP_MSG without a body section")
    for name, docs in sequences.items():
        if name in body:
            raise ProtocolError(f"field {name!r} given both in the body and as a sequence")
        body[name] = docs
    return Request(request_id, OP_MSG, body, flags=flags, sequences=sequences, sequence_sizes=sizes)


def _bson_sequence(data: bytes, offset: int, end: int) -> tuple[list[dict[str, Any]], list[int]]:
    """The documents packed between `offset` and `end`, and their sizes (decoded in one call)."""
    sizes: list[int] = []
    cursor = offset
    while cursor < end:
        if cursor + 4 > end:
            raise ProtocolError("truncated BSON document")
        (size,) = struct.unpack_from("<i", data, cursor)
        if size < 5 or cursor + size > end:
            raise ProtocolError("invalid BSON document length")
        sizes.append(size)
        cursor += size
    try:
        docs = bson.decode_all(data[offset:end], CODEC)
    except Exception as exc:  # bson raises several types for garbage
        raise ProtocolError(f"invalid BSON: {exc}") from exc
    return docs, sizes


def _decode_op_query(request_id: int, payload: bytes) -> Request:
    if len(payload) < 4:
        raise ProtocolError("OP_QUERY too short")
    (flags,) = struct.unpack_from("<i", payload, 0)
    namespace, offset = _cstring(payload, 4)
    offset += 8  # numberToSkip, numberToReturn
    query, offset = _bson_at(payload, offset, len(payload))
    # Old drivers wrap the command as {$query: {...}, $readPreference: ...}.
    if "$query" in query and isinstance(query["$query"], dict):
        query = query["$query"]
    return Request(request_id, OP_QUERY, query, flags=flags, namespace=namespace)


def encode_op_msg(
    request_id: int, response_to: int, doc: dict[str, Any], *, checksum: bool = False
) -> bytes:
    """An OP_MSG reply with a single body section (and a CRC-32C when the request had one)."""
    body = bson.encode(doc)
    flags = CHECKSUM_PRESENT if checksum else 0
    length = HEADER.size + 4 + 1 + len(body) + (4 if checksum else 0)
    message = b"".join(
        (
            HEADER.pack(length, request_id, response_to, OP_MSG),
            struct.pack("<I", flags),
            b"\x00",
            body,
        )
    )
    if checksum:
        message += struct.pack("<I", crc32c(message))
    return message


def encode_op_reply(request_id: int, response_to: int, doc: dict[str, Any]) -> bytes:
    """An OP_REPLY carrying one document, the answer to a legacy OP_QUERY command."""
    body = bson.encode(doc)
    length = HEADER.size + 20 + len(body)
    return b"".join(
        (
            HEADER.pack(length, request_id, response_to, OP_REPLY),
            struct.pack("<iqii", 0, 0, 0, 1),
            body,
        )
    )
