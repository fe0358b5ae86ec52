"""Canonical keys for ids and index keys: equal BSON values (1, 1.0, Int64(1)) collide."""

from __future__ import annotations

import struct
from typing import Any

import bson
from bson import ObjectId
from bson.int64 import Int64

__all__ = ["MISSING", "canonical", "dotted_get", "id_key", "store_key", "format_key_value"]


class _Missing:
    """A field that is absent (distinct from null); unique indexes treat it as null."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def canonical(value: Any) -> Any:
    """A value normalised so that MongoDB-equal numbers encode to identical BSON bytes."""
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 2**63:
            return int(value)
        return value
    if isinstance(value, Int64):
        return int(value)
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    return value


_INT32 = struct.Struct("<i")
_INT32_ELEMENT = struct.Struct("<i3si")
# {"k": value} for the commonest `_id` types, spelled out: the same bytes `bson.encode` gives,
# without its generic walk (ids are keyed several times per write).
_INT_KEY_HEAD = b"\x0c\x00\x00\x00\x10k\x00"
_OBJECTID_KEY_HEAD = b"\x14\x00\x00\x00\x07k\x00"


def id_key(doc_id: Any) -> bytes:
    """A hashable key for an `_id` value, equal for MongoDB-equal ids."""
    kind = type(doc_id)
    if kind is ObjectId:
        binary: bytes = doc_id.binary
        return _OBJECTID_KEY_HEAD + binary + b"\x00"
    if kind is int and -(2**31) <= doc_id < 2**31:
        return _INT_KEY_HEAD + _INT32.pack(doc_id) + b"\x00"
    if kind is str:
        try:
            text: bytes = doc_id.encode()
        except UnicodeEncodeError:
            return bson.encode({"k": doc_id})  # raises as bson would
        return _INT32_ELEMENT.pack(len(text) + 13, b"\x02k\x00", len(text) + 1) + text + b"\x00\x00"
    if kind is dict and all(type(value) in _CANONICAL_TYPES for value in doc_id.values()):
        # A sub-document of such values is canonical as it is (the merge base's ids, say):
        # `canonical` would walk it to return an equal copy.
        return bson.encode({"k": doc_id})
    return bson.encode({"k": canonical(doc_id)})


# Value types `canonical` returns unchanged (it changes floats, Int64 and the containers).
_CANONICAL_TYPES = frozenset({str, int, bool, ObjectId, type(None)})


def store_key(doc_id: Any) -> bytes:
    """The key of a document in its collection's store (mongomock's `_documents`): equal for
    MongoDB-equal ids (1, 1.0), distinct for ids MongoDB tells apart and Python does not (true
    and 1; sub-documents with their fields in another order)."""
    return id_key(doc_id)


def dotted_get(doc: Any, path: str) -> Any:
    """The value at a dotted path, or MISSING; arrays along the path are not traversed."""
    current = doc
    for part in path.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return MISSING
    return current


def _format_value(value: Any) -> str:
    if value is MISSING or value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, bson.ObjectId):
        return f"ObjectId('{value}')"
    if isinstance(value, dict):
        return format_key_value(value)
    if isinstance(value, list):
        return "[ " + ", ".join(_format_value(v) for v in value) + " ]" if value else "[]"
    return str(value)


def format_key_value(key_value: dict[str, Any]) -> str:
    """A key value in mongod's log style, as in `dup key: { name: "x" }`."""
    if not key_value:
        return "{}"
    return "{ " + ", ".join(f"{k}: {_format_value(v)}" for k, v in key_value.items()) + " }"
