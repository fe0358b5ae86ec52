"""bulkWrite (MongoDB 8.0): inserts, updates and deletes on many namespaces in one command.

The whole request is parsed first, as mongod's IDL parser does, so a malformed operation
anywhere fails the command before anything is written. The operations then run one by one
through the same single-statement writes as insert, update and delete (`devserver._writes`,
under `run_statements`), so validation, unique indexes, held documents, transactions and change
events are theirs. The reply is a cursor on `admin.$cmd.bulkWrite` with one entry per operation
run (only the failed ones with `errorsOnly`) and the summary counts.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from bson import Decimal128

from devserver._cmd_read import cursor_reply
from devserver._cmd_write import reject_collation, run_statements
from devserver._command import Context, command, cursor_batch_size, sort_arg
from devserver._cursors import DocumentCursor, take_batch
from devserver._errors import CommandError, bson_type_name
from devserver._keys import format_key_value
from devserver._storage import validate_namespace
from devserver._writes import Deadline, delete_matching, insert_one, prepare_insert, update_matching

__all__: list[str] = []

_CURSOR_NS = "admin.$cmd.bulkWrite"
_MAX_OPS = 100_000  # hello's maxWriteBatchSize

# The command's own fields; any other must be a generic argument.
_FIELDS = frozenset(
    {
        "bulkWrite",
        "ops",
        "nsInfo",
        "cursor",
        "bypassDocumentValidation",
        "ordered",
        "stmtId",
        "stmtIds",
        "let",
        "errorsOnly",
        "bypassEmptyTsReplacement",
    }
)
# Arguments every command takes (mongod's generic arguments; `$`-prefixed ones are all allowed).
_GENERIC_FIELDS = frozenset(
    {
        "apiVersion",
        "apiStrict",
        "apiDeprecationErrors",
        "autocommit",
        "clientOperationKey",
        "comment",
        "lsid",
        "maxTimeMS",
        "maxTimeMSOpOnly",
        "mayBypassWriteBlocking",
        "readConcern",
        "startTransaction",
        "txnNumber",
        "writeConcern",
    }
)
# Each operation kind's fields (its namespace index first); mongod's parser is strict. Fields
# mongos and the sampler set (sampleId, upsertSupplied, ...) are accepted and ignored.
_OP_FIELDS = {
    "insert": frozenset({"insert", "document"}),
    "update": frozenset(
        {
            "update",
            "filter",
            "updateMods",
            "sort",
            "multi",
            "upsert",
            "upsertSupplied",
            "arrayFilters",
            "hint",
            "constants",
            "collation",
            "sampleId",
            "$_allowShardKeyUpdatesWithoutFullShardKeyInQuery",
        }
    ),
    "delete": frozenset({"delete", "filter", "multi", "hint", "collation", "sampleId"}),
}
_REQUIRED_OP_FIELDS = {
    "insert": ("document",),
    "update": ("filter", "updateMods"),
    "delete": ("filter",),
}
_OBJECT_OP_FIELDS = ("document", "filter", "sort", "constants", "collation")
_BOOL_OP_FIELDS = ("multi", "upsert")
_NS_INFO_FIELDS = frozenset(
    {
        "ns",
        "collectionUUID",
        "encryptionInformation",
        "isTimeseriesNamespace",
        "shardVersion",
        "databaseVersion",
    }
)
_NUMBER_TYPES = "[long, int, decimal, double]"


@dataclass(frozen=True)
class _BulkOp:
    """One parsed operation: its kind, the namespace it writes and its fields."""

    kind: str  # insert | update | delete
    db: str
    coll: str
    spec: dict[str, Any]


@dataclass
class _BulkResults:
    """The reply entries and summary counts of one bulkWrite, filled as operations run."""

    errors_only: bool
    entries: list[dict[str, Any]] = field(default_factory=list)
    n_errors: int = 0
    n_inserted: int = 0
    n_matched: int = 0
    n_modified: int = 0
    n_upserted: int = 0
    n_deleted: int = 0

    def succeeded(self, entry: dict[str, Any]) -> None:
        if not self.errors_only:
            self.entries.append(entry)

    def failed(self, index: int, error: CommandError, kind: str) -> None:
        # mongod's entry: ok, idx, code, errmsg, the error's extra info, then n (and nModified
        # for an update); it carries no codeName.
        entry = {"ok": 0.0, "idx": index, "code": error.code, "errmsg": error.message}
        entry.update(error.extra)
        entry["n"] = 0
        if kind == "update":
            entry["nModified"] = 0
        self.entries.append(entry)
        self.n_errors += 1

    def summary(self) -> dict[str, Any]:
        return {
            "nErrors": self.n_errors,
            "nInserted": self.n_inserted,
            "nMatched": self.n_matched,
            "nModified": self.n_modified,
            "nUpserted": self.n_upserted,
            "nDeleted": self.n_deleted,
        }


def _wrong_type(path: str, value: Any, expected: str) -> CommandError:
    plural = "s" if expected.startswith("[") else ""
    return CommandError(
        14,
        "TypeMismatch",
        f"BSON field '{path}' is the wrong type '{bson_type_name(value)}', expected type{plural} "
        f"'{expected}'",
    )


def _missing(path: str) -> CommandError:
    return CommandError(
        40414, "Location40414", f"BSON field '{path}' is missing but a required field"
    )


def _unknown(path: str) -> CommandError:
    return CommandError(40415, "Location40415", f"BSON field '{path}' is an unknown field.")


def _array(body: dict[str, Any], key: str) -> list[Any]:
    if key not in body:
        raise _missing(f"bulkWrite.{key}")
    value = body[key]
    if not isinstance(value, list):
        raise _wrong_type(f"bulkWrite.{key}", value, "array")
    return value


def _ns_index(op: dict[str, Any], kind: str) -> int:
    """The namespace index an operation names first (mongod's safeInt, at least 0)."""
    value = op[kind]
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal128):
        raise _wrong_type(f"bulkWrite.ops.{kind}", value, _NUMBER_TYPES)
    try:
        index = int(value.to_decimal() if isinstance(value, Decimal128) else value)
    except (ValueError, OverflowError):  # NaN, infinity
        raise _wrong_type(f"bulkWrite.ops.{kind}", value, _NUMBER_TYPES) from None
    if index < 0:
        raise CommandError(
            2, "BadValue", f"BSON field '{kind}' value must be >= 0, actual value '{index}'"
        )
    return index


def _parse_op(op: Any) -> tuple[str, int]:
    """Check one operation's fields and types; returns its kind and namespace index."""
    if not isinstance(op, dict):
        raise _wrong_type("bulkWrite.ops", op, "object")
    kind = next(iter(op), "")
    if kind not in _OP_FIELDS:
        # mongod tells the kind by the first field and reports any other as unknown.
        raise _unknown(f"bulkWrite.ops.{kind}")
    index = _ns_index(op, kind)
    for key, value in op.items():
        path = f"bulkWrite.ops.{key}"
        if key not in _OP_FIELDS[kind]:
            raise _unknown(path)
        if key in _OBJECT_OP_FIELDS and not isinstance(value, dict):
            raise _wrong_type(path, value, "object")
        if key in _BOOL_OP_FIELDS and not isinstance(value, bool):
            raise _wrong_type(path, value, "bool")
        if key == "updateMods" and not isinstance(value, dict | list):
            # write_ops_parsers' message; its code is FailedToParse.
            raise CommandError(
                9, "FailedToParse", "Update argument must be either an object or an array"
            )
        if key == "arrayFilters" and (
            not isinstance(value, list) or not all(isinstance(f, dict) for f in value)
        ):
            raise _wrong_type(path, value, "array")
        if key == "hint" and not isinstance(value, dict | str):
            raise _wrong_type(path, value, "[string, object]")
    for key in _REQUIRED_OP_FIELDS[kind]:
        if key not in op:
            raise _missing(f"bulkWrite.ops.{key}")
    return kind, index


def _namespace_entry(entry: Any) -> str:
    """The `ns` of one nsInfo entry, its fields checked."""
    if not isinstance(entry, dict):
        raise _wrong_type("bulkWrite.nsInfo", entry, "object")
    for key in entry:
        if key not in _NS_INFO_FIELDS:
            raise _unknown(f"bulkWrite.nsInfo.{key}")
    for option in ("collectionUUID", "encryptionInformation"):
        if option in entry:
            raise CommandError(
                238,
                "NotImplemented",
                f"bulkWrite nsInfo option '{option}' is not supported by the development server",
            )
    if "ns" not in entry:
        raise _missing("bulkWrite.nsInfo.ns")
    ns = entry["ns"]
    if not isinstance(ns, str):
        raise _wrong_type("bulkWrite.nsInfo.ns", ns, "string")
    return ns


def _split_namespace(ns: str) -> tuple[str, str]:
    db, _, coll = ns.partition(".")
    try:
        validate_namespace(db, coll)
    except CommandError:
        raise CommandError(
            73, "InvalidNamespace", f"Invalid namespace specified for bulkWrite: '{ns}'"
        ) from None
    return db, coll


def _check_options(body: dict[str, Any]) -> None:
    for key in body:
        if key not in _FIELDS and key not in _GENERIC_FIELDS and not key.startswith("$"):
            raise _unknown(f"bulkWrite.{key}")
    for key in ("ordered", "errorsOnly"):
        if key in body and not isinstance(body[key], bool):
            raise _wrong_type(f"bulkWrite.{key}", body[key], "bool")
    if "let" in body and not isinstance(body["let"], dict):
        raise _wrong_type("bulkWrite.let", body["let"], "object")
    if "stmtId" in body and "stmtIds" in body:
        raise CommandError(
            72, "InvalidOptions", "May not specify both stmtId and stmtIds in bulkWrite command."
        )


def _parse_request(body: dict[str, Any]) -> list[_BulkOp]:
    """Every operation of a bulkWrite with its namespace; raises for any malformed part."""
    _check_options(body)
    raw_ops = _array(body, "ops")
    raw_namespaces = _array(body, "nsInfo")
    parsed = [_parse_op(op) for op in raw_ops]
    names = [_namespace_entry(entry) for entry in raw_namespaces]
    # What mongod checks once the request has parsed, in its order.
    if not raw_ops or len(raw_ops) > _MAX_OPS:
        raise CommandError(
            16,
            "InvalidLength",
            f"Write batch sizes must be between 1 and {_MAX_OPS}. Got {len(raw_ops)} operations.",
        )
    stmt_ids = body.get("stmtIds")
    if isinstance(stmt_ids, list) and len(stmt_ids) != len(raw_ops):
        raise CommandError(
            16,
            "InvalidLength",
            "Number of statement ids must match the number of batch entries. Got "
            f"{len(stmt_ids)} statement ids but {len(raw_ops)} operations.",
        )
    namespaces = [_split_namespace(ns) for ns in names]
    ops = []
    for op, (kind, index) in zip(raw_ops, parsed, strict=True):
        if index >= len(namespaces):
            raise CommandError(
                2,
                "BadValue",
                f"BulkWrite ops entry {format_key_value(op)} has an invalid nsInfo index.",
            )
        db, coll = namespaces[index]
        ops.append(_BulkOp(kind=kind, db=db, coll=coll, spec=op))
    return ops


def _unacknowledged(body: dict[str, Any]) -> bool:
    concern = body.get("writeConcern")
    return isinstance(concern, dict) and concern.get("w") == 0 and not concern.get("j")


def _results_reply(ctx: Context, results: _BulkResults, batch_size: int | None) -> dict[str, Any]:
    """The cursor reply: every entry in the first batch if they fit, the rest for getMore."""
    remaining = deque([] if _unacknowledged(ctx.body) else results.entries)
    # mongod fills the first batch up to the reply size unless batchSize (non-zero) says less.
    batch = take_batch(remaining, batch_size or None)
    cursor_id = 0
    if remaining:
        cursor_id = ctx.state.cursors.register(
            DocumentCursor(ns=_CURSOR_NS, remaining=remaining, lsid=ctx.lsid_key)
        )
    return {**cursor_reply(_CURSOR_NS, cursor_id, batch, first=True), **results.summary()}


@command("bulkWrite", write=True, in_transaction=True, admin_only=True, since="8.0")
async def bulk_write(ctx: Context) -> dict[str, Any]:
    ops = _parse_request(ctx.body)
    batch_size = cursor_batch_size(ctx)
    deadline = Deadline(ctx.body.get("maxTimeMS"))
    view = ctx.view()
    retryable = "txnNumber" in ctx.body and ctx.txn is None
    results = _BulkResults(errors_only=ctx.body.get("errorsOnly", False) is True)

    def no_multi_when_retryable(spec: dict[str, Any]) -> None:
        if retryable and spec.get("multi"):
            raise CommandError(72, "InvalidOptions", "Cannot use retryable writes with multi=true")

    async def run_one(index: int, op: _BulkOp) -> None:
        spec = op.spec
        if op.kind == "insert":
            doc = prepare_insert(spec["document"])
            await insert_one(ctx, op.db, op.coll, doc, deadline, view=view)
            results.n_inserted += 1
            results.succeeded({"ok": 1.0, "idx": index, "n": 1})
        elif op.kind == "update":
            no_multi_when_retryable(spec)
            multi = spec.get("multi", False)
            if "sort" in spec and multi:
                raise CommandError(9, "FailedToParse", "Cannot specify sort with multi=true")
            reject_collation(spec)
            result = await update_matching(
                ctx,
                op.db,
                op.coll,
                spec["filter"],
                spec["updateMods"],
                multi=multi,
                upsert=spec.get("upsert", False),
                array_filters=spec.get("arrayFilters"),
                sort=sort_arg(spec.get("sort")),
                deadline=deadline,
                view=view,
            )
            results.n_modified += result.modified
            if result.upserted:
                results.n_upserted += 1
                upserted = {"_id": result.upserted_id}
                results.succeeded(
                    {"ok": 1.0, "idx": index, "n": 1, "nModified": 0, "upserted": upserted}
                )
            else:
                results.n_matched += result.matched
                results.succeeded(
                    {"ok": 1.0, "idx": index, "n": result.matched, "nModified": result.modified}
                )
        else:
            no_multi_when_retryable(spec)
            reject_collation(spec)
            removed = await delete_matching(
                ctx,
                op.db,
                op.coll,
                spec["filter"],
                limit_one=not spec.get("multi", False),
                sort=None,
                deadline=deadline,
            )
            results.n_deleted += len(removed)
            results.succeeded({"ok": 1.0, "idx": index, "n": len(removed)})

    await run_statements(
        ctx, ops, run_one, lambda index, error: results.failed(index, error, ops[index].kind)
    )
    return _results_reply(ctx, results, batch_size)
