"""The `$changeStream` stage's options, validated the way MongoDB validates them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import Timestamp

from devserver._change_token import ResumeToken, decode_token
from devserver._errors import CommandError

__all__ = ["StreamOptions", "parse_options"]

FULL_DOCUMENT = ("default", "updateLookup", "whenAvailable", "required")
FULL_DOCUMENT_BEFORE_CHANGE = ("off", "whenAvailable", "required")
_BOOLEAN_OPTIONS = (
    "allChangesForCluster",
    "showExpandedEvents",
    "showMigrationEvents",
    "showSystemEvents",
    "showRawUpdateDescription",
    "allowToRunOnConfigDB",
    "allowToRunOnSystemNS",
)
_KNOWN = frozenset(
    {
        "fullDocument",
        "fullDocumentBeforeChange",
        "resumeAfter",
        "startAfter",
        "startAtOperationTime",
        *_BOOLEAN_OPTIONS,
    }
)
_BSON_TYPE_NAMES = {
    bool: "bool",
    int: "int",
    float: "double",
    str: "string",
    dict: "object",
    list: "array",
    Timestamp: "timestamp",
    datetime: "date",
    type(None): "null",
}


@dataclass(frozen=True)
class StreamOptions:
    """What a `$changeStream` stage asked for."""

    full_document: str = "default"
    full_document_before_change: str = "off"
    resume_after: ResumeToken | None = None
    start_after: ResumeToken | None = None
    start_at_operation_time: Timestamp | None = None
    all_changes_for_cluster: bool = False
    show_expanded_events: bool = False
    # Whether the server's updates say which of their paths hold dotted or numeric field names
    # (`disambiguatedPaths`, MongoDB 6.1 and later, with expanded events).
    disambiguates_paths: bool = True


def parse_options(spec: Any, *, db: str, coll: str | None) -> StreamOptions:
    """Validate the stage document against the namespace it was opened on."""
    if not isinstance(spec, dict):
        raise CommandError(
            50808, "Location50808", "$changeStream stage expects a document as argument"
        )
    for name in spec:
        if name not in _KNOWN:
            raise CommandError(
                40415, "IDLUnknownField", f"BSON field '$changeStream.{name}' is an unknown field."
            )
    full_document = _enum(spec, "fullDocument", FULL_DOCUMENT, "default")
    before_change = _enum(spec, "fullDocumentBeforeChange", FULL_DOCUMENT_BEFORE_CHANGE, "off")
    flags = {name: _boolean(spec, name) for name in _BOOLEAN_OPTIONS}
    all_changes = flags["allChangesForCluster"]
    ns = f"{db}.{coll}" if coll is not None else f"{db}.$cmd.aggregate"
    if all_changes and not (db == "admin" and coll is None):
        raise CommandError(
            72,
            "InvalidOptions",
            "A $changeStream with 'allChangesForCluster:true' may only be opened on the 'admin' "
            f"database, and with no collection name; found {ns}",
        )
    internal = db in ("local", "config") or (db == "admin" and not all_changes)
    if internal:
        raise CommandError(
            73, "InvalidNamespace", f"$changeStream may not be opened on the internal {db} database"
        )
    if coll is not None and coll.startswith("system."):
        raise CommandError(
            73,
            "InvalidNamespace",
            f"$changeStream may not be opened on the internal {ns} collection",
        )
    if "resumeAfter" in spec and "startAfter" in spec:
        raise CommandError(
            50865,
            "Location50865",
            "Do not specify both 'resumeAfter' and 'startAfter' in a $changeStream stage",
        )
    resume_after = (
        decode_token(spec["resumeAfter"], "resumeAfter") if "resumeAfter" in spec else None
    )
    start_after = decode_token(spec["startAfter"], "startAfter") if "startAfter" in spec else None
    start_at = spec.get("startAtOperationTime")
    if start_at is not None and not isinstance(start_at, Timestamp):
        raise _wrong_type("startAtOperationTime", start_at, "timestamp")
    if start_at is not None and (resume_after or start_after):
        raise CommandError(
            40674,
            "Location40674",
            "Only one type of resume option is allowed, but multiple were found",
        )
    if resume_after is not None and resume_after.from_invalidate:
        raise CommandError(
            260,
            "InvalidResumeToken",
            "Attempting to resume a change stream using 'resumeAfter' is not allowed from an "
            "invalidate notification",
        )
    return StreamOptions(
        full_document=full_document,
        full_document_before_change=before_change,
        resume_after=resume_after,
        start_after=start_after,
        start_at_operation_time=start_at,
        all_changes_for_cluster=all_changes,
        show_expanded_events=flags["showExpandedEvents"],
    )


def _enum(spec: dict[str, Any], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = spec.get(name, default)
    if not isinstance(value, str):
        raise _wrong_type(name, value, "string")
    if value not in allowed:
        raise CommandError(
            2,
            "BadValue",
            f"Enumeration value '{value}' for field '$changeStream.{name}' is not a valid value.",
        )
    return value


def _boolean(spec: dict[str, Any], name: str) -> bool:
    value = spec.get(name, False)
    if not isinstance(value, bool):
        raise _wrong_type(name, value, "bool")
    return value


def _wrong_type(name: str, value: Any, expected: str) -> CommandError:
    found = _BSON_TYPE_NAMES.get(type(value), type(value).__name__)
    return CommandError(
        14,
        "TypeMismatch",
        f"BSON field '$changeStream.{name}' is the wrong type '{found}', "
        f"expected type '{expected}'",
    )
