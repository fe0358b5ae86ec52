"""Run one command: fail points, sessions, transactions, retryable writes, the reply envelope."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bson import Binary, Int64, Timestamp

# Importing the command modules registers their handlers.
from devserver import _cmd_admin, _cmd_bulk, _cmd_ddl, _cmd_read, _cmd_txn, _cmd_write  # noqa: F401
from devserver._command import REGISTRY, CommandSpec, Connection, Context
from devserver._errors import CommandError
from devserver._failpoints import RETRYABLE_CODES, FailAction
from devserver._sessions import no_such_transaction
from devserver._state import ServerState

__all__ = ["CloseConnection", "run_command"]

log = logging.getLogger("devserver")

_SIGNATURE = {"hash": Binary(b"\x00" * 20, 0), "keyId": Int64(0)}
_TXN_COMMANDS = ("commitTransaction", "abortTransaction")
_CODE_NAMES = {
    1: "InternalError",
    2: "BadValue",
    6: "HostUnreachable",
    7: "HostNotFound",
    11: "UserNotFound",
    13: "Unauthorized",
    24: "LockTimeout",
    50: "MaxTimeMSExpired",
    59: "CommandNotFound",
    89: "NetworkTimeout",
    91: "ShutdownInProgress",
    112: "WriteConflict",
    115: "CommandNotSupported",
    121: "DocumentValidationFailure",
    189: "PrimarySteppedDown",
    251: "NoSuchTransaction",
    262: "ExceededTimeLimit",
    9001: "SocketException",
    10107: "NotWritablePrimary",
    11600: "InterruptedAtShutdown",
    11602: "InterruptedDueToReplStateChange",
    13435: "NotPrimaryNoSecondaryOk",
    13436: "NotPrimaryOrSecondary",
    11000: "DuplicateKey",
}


_STATE_CHANGE_CODES = frozenset({91, 189, 10107, 11600, 11602, 13435, 13436})


class CloseConnection(Exception):
    """Close the client's connection without replying (fail point closeConnection)."""


def _with_cluster_time(
    state: ServerState, reply: dict[str, Any], op_time: Timestamp | None
) -> dict[str, Any]:
    now = state.clock.now
    reply["$clusterTime"] = {"clusterTime": now, "signature": _SIGNATURE}
    reply["operationTime"] = op_time or now
    return reply


def _failpoint_reply(
    state: ServerState, action: FailAction, name: str, body: dict[str, Any], spec: CommandSpec
) -> dict[str, Any]:
    code = int(action.error_code or 0)
    reply: dict[str, Any] = {
        "ok": 0.0,
        "errmsg": "Failing command via 'failCommand' failpoint",
        "code": code,
        "codeName": _CODE_NAMES.get(code, "UnknownError"),
    }
    labels = action.error_labels
    if labels is None:
        retryable_write = spec.write and "txnNumber" in body and "autocommit" not in body
        labels = (
            ["RetryableWriteError"]
            if code in RETRYABLE_CODES and (retryable_write or name in _TXN_COMMANDS)
            else []
        )
    if labels:
        reply["errorLabels"] = labels
    if code in _STATE_CHANGE_CODES:
        # mongod stamps "not primary" / shutdown errors with its topologyVersion; a driver
        # compares it with what it knows and ignores the error as stale when it is not newer.
        reply["topologyVersion"] = {
            "processId": state.process_id,
            "counter": Int64(_cmd_admin.TOPOLOGY_COUNTER),
        }
    return reply


def _find_transaction(ctx: Context, spec: CommandSpec) -> dict[str, Any] | None:
    """Attach the transaction a command with autocommit:false belongs to (or start one).

    Returns a reply when the command is answered without running (a retried commit).
    """
    body, state = ctx.body, ctx.state
    if body.get("autocommit") is not False:
        raise CommandError(50768, "Location50768", "autocommit field can only be set to false")
    txn_number = body.get("txnNumber")
    if ctx.session is None or not isinstance(txn_number, int):
        raise CommandError(
            50768,
            "Location50768",
            "txnNumber and lsid are required for multi-document transactions",
        )
    if not spec.in_transaction:
        raise CommandError(
            263,
            "OperationNotSupportedInTransaction",
            f"Cannot run '{ctx.name}' in a multi-document transaction.",
        )
    session = ctx.session
    txn_number = int(txn_number)
    if txn_number < session.txn_number:
        raise CommandError(
            225,
            "TransactionTooOld",
            f"Cannot start transaction {txn_number} on session because a newer transaction "
            f"{session.txn_number} has already started.",
        )
    if body.get("startTransaction"):
        if txn_number == session.txn_number:
            raise CommandError(
                117,
                "ConflictingOperationInProgress",
                f"Cannot start a transaction at given transaction number {txn_number}: a "
                "transaction or retryable write with the same number was already run",
            )
        if session.txn is not None and session.txn.is_open:
            state.abort(session.txn, "a newer transaction started on the session")
        read_concern = body.get("readConcern") or {}
        after = read_concern.get("afterClusterTime")
        if isinstance(after, Timestamp):
            state.clock.advance_to(after)
        ctx.txn = state.sessions.begin(session, txn_number, state.clock.now)
        ctx.txn.read_concern = dict(read_concern)
        session.retry_replies.clear()
        return None
    txn = session.txn
    if txn is None or txn.txn_number != txn_number:
        raise no_such_transaction(txn_number)
    if not txn.is_open:
        if txn.state == "committed":
            if ctx.name == "commitTransaction":
                return _with_cluster_time(state, {"ok": 1.0}, txn.commit_time)
            raise CommandError(
                256,
                "TransactionCommitted",
                f"Transaction with {{ txnNumber: {txn_number} }} has been committed.",
            )
        raise no_such_transaction(txn_number, txn.abort_reason)
    ctx.txn = txn
    return None


# A write command's statements, each one operation of its kind (as mongod counts them).
_STATEMENTS = {"insert": "documents", "update": "updates", "delete": "deletes"}


def count_operations(counters: dict[str, int], name: str, body: dict[str, Any]) -> None:
    """Add a received command to serverStatus's opcounters: inserts, updates and deletes by
    statement (a bulkWrite's by operation), `find` as a query, `getMore` on its own, any other
    command (aggregate included) as a command."""
    statements = _STATEMENTS.get(name)
    if statements is not None:
        listed = body.get(statements)
        counters[name] += len(listed) if isinstance(listed, list) else 0
    elif name == "find":
        counters["query"] += 1
    elif name == "getMore":
        counters["getmore"] += 1
    elif name == "bulkWrite" and isinstance(body.get("ops"), list):
        for op in body["ops"]:
            kind = next((k for k in _STATEMENTS if isinstance(op, dict) and k in op), None)
            if kind is not None:
                counters[kind] += 1
        counters["command"] += 1
    else:
        counters["command"] += 1


async def run_command(
    state: ServerState,
    conn: Connection,
    body: dict[str, Any],
    db: str,
    *,
    message_bytes: int = 0,
    sequence_sizes: dict[str, list[int]] | None = None,
) -> dict[str, Any]:
    """The full reply to one command document (raises CloseConnection to drop the connection)."""
    if not body:
        return _with_cluster_time(
            state, CommandError(59, "CommandNotFound", "no command given").to_reply(), None
        )
    name = next(iter(body))
    spec = REGISTRY.get(name)
    # A command added after the release the server presents itself as is unknown, as there.
    if spec is None or spec.since is not None and not state.version.at_least(spec.since):
        error = CommandError(59, "CommandNotFound", f"no such command: '{name}'")
        return _with_cluster_time(state, error.to_reply(), None)
    if name in ("hello", "isMaster", "ismaster") and isinstance(body.get("client"), dict):
        application = body["client"].get("application")
        if isinstance(application, dict) and isinstance(application.get("name"), str):
            conn.app_name = application["name"]
    count_operations(state.opcounters, name, body)
    action = state.fail_command.check(name, conn.app_name)
    if action is not None:
        if action.block_ms:
            await asyncio.sleep(action.block_ms / 1000)
        if action.close_connection:
            raise CloseConnection()
        if action.error_code is not None:
            return _with_cluster_time(
                state, _failpoint_reply(state, action, name, body, spec), None
            )
    ctx = Context(
        state=state,
        conn=conn,
        name=name,
        body=body,
        db=db,
        message_bytes=message_bytes,
        sequence_sizes=sequence_sizes or {},
    )
    reply = await _run(ctx, spec)
    if action is not None and action.write_concern_error is not None:
        wce = dict(action.write_concern_error)
        reply["writeConcernError"] = wce
        if isinstance(wce.get("errorLabels"), list):
            reply["errorLabels"] = list(wce.pop("errorLabels"))
    return _with_cluster_time(state, reply, ctx.operation_time)


async def _run(ctx: Context, spec: CommandSpec) -> dict[str, Any]:
    body, state = ctx.body, ctx.state
    retry_number: int | None = None
    try:
        if spec.admin_only and ctx.db != "admin":
            raise CommandError(
                13, "Unauthorized", f"{ctx.name} may only be run against the admin database."
            )
        lsid = body.get("lsid")
        if lsid is not None:
            ctx.session = state.sessions.session(lsid)
        if "autocommit" in body or "startTransaction" in body:
            answered = _find_transaction(ctx, spec)
            if answered is not None:
                return answered
        elif ctx.name in _TXN_COMMANDS:
            raise CommandError(125, "CommandFailed", f"{ctx.name} must be run within a transaction")
        elif "txnNumber" in body:
            retry_number = _retryable(ctx, spec)
            if retry_number is not None and ctx.session is not None:
                cached = ctx.session.retry_replies.get(retry_number)
                if cached is not None:
                    return dict(cached)
        read_concern = body.get("readConcern")
        if isinstance(read_concern, dict) and isinstance(
            read_concern.get("afterClusterTime"), Timestamp
        ):
            state.clock.advance_to(read_concern["afterClusterTime"])
        reply = await spec.handler(ctx)
        reply.setdefault("ok", 1.0)
        failed_writes = reply.get("writeErrors") or reply.get("nErrors")  # nErrors: bulkWrite
        if ctx.txn is not None and failed_writes and ctx.txn.is_open:
            state.abort(ctx.txn, "a write in the transaction failed")
        if retry_number is not None and ctx.session is not None:
            ctx.session.retry_replies[retry_number] = dict(reply)
            state.remember_retryable(ctx.session.lsid, retry_number, reply)
        return reply
    except CommandError as error:
        if ctx.txn is not None and ctx.txn.is_open and ctx.name != "abortTransaction":
            state.abort(ctx.txn, f"{error.code_name} in {ctx.name}")
        return error.to_reply()
    except Exception as exc:  # a bug in a handler must not take the server down
        log.exception("command %s failed", ctx.name)
        return CommandError(1, "InternalError", f"{type(exc).__name__}: {exc}").to_reply()


def _retryable(ctx: Context, spec: CommandSpec) -> int | None:
    """Validate a retryable write's txnNumber; returns it (None for commands that ignore it)."""
    txn_number = ctx.body.get("txnNumber")
    session = ctx.session
    if not spec.write:
        raise CommandError(
            50768,
            "Location50768",
            "txnNumber may only be provided for multi-document transactions and retryable "
            f"write commands, not '{ctx.name}'",
        )
    if session is None or not isinstance(txn_number, int):
        raise CommandError(
            50768, "Location50768", "a retryable write needs lsid and an integer txnNumber"
        )
    txn_number = int(txn_number)
    if txn_number < session.txn_number:
        raise CommandError(
            225,
            "TransactionTooOld",
            f"Retryable write with txnNumber {txn_number} is prohibited on session because a "
            f"newer retryable write with txnNumber {session.txn_number} has already started",
        )
    if txn_number > session.txn_number:
        if session.txn is not None and session.txn.is_open:
            ctx.state.abort(session.txn, "a newer retryable write started on the session")
        session.txn_number = txn_number
        session.retry_replies.clear()
    return txn_number
