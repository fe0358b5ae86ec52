"""The command registry and the per-command context handlers receive."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bson import Timestamp

from devserver._errors import CommandError
from devserver._sessions import Session, Transaction
from devserver._state import ServerState
from devserver._views import TransactionView, View

__all__ = [
    "Connection",
    "Context",
    "CommandSpec",
    "REGISTRY",
    "command",
    "namespace_arg",
    "int_arg",
    "sort_arg",
    "cursor_batch_size",
    "document_arg",
    "batch_size_arg",
]


@dataclass
class Connection:
    """One client connection: its id and what the handshake said about the client."""

    id: int
    peer: str = ""
    app_name: str | None = None
    closing: bool = False


@dataclass
class Context:
    """A command being run: the server, the connection, the session and transaction, if any."""

    state: ServerState
    conn: Connection
    name: str
    body: dict[str, Any]
    db: str
    session: Session | None = None
    txn: Transaction | None = None
    operation_time: Timestamp | None = None
    # Size of the request message (0: unknown); no document in a smaller one can exceed 16 MiB.
    message_bytes: int = 0
    # BSON sizes of the documents of each document sequence of the request (see `Request`).
    sequence_sizes: dict[str, list[int]] = field(default_factory=dict)
    extra_reply: dict[str, Any] = field(default_factory=dict)

    def view(self) -> View:
        if self.txn is not None:
            return TransactionView(
                self.state.storage, self.state.engine, self.txn, self.state.sessions
            )
        return View(self.state.storage, self.state.engine)

    def wrote(self, cluster_time: Timestamp) -> None:
        self.operation_time = cluster_time

    @property
    def lsid_key(self) -> bytes | None:
        return self.session.key if self.session is not None else None


Handler = Callable[[Context], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class CommandSpec:
    """A command: its handler and how sessions treat it."""

    name: str
    handler: Handler
    write: bool = False  # retryable write (txnNumber outside a transaction)
    in_transaction: bool = False  # allowed inside a multi-document transaction
    admin_only: bool = False
    since: str | None = None  # the MongoDB release that added it; unknown to earlier ones


REGISTRY: dict[str, CommandSpec] = {}


def command(
    *names: str,
    write: bool = False,
    in_transaction: bool = False,
    admin_only: bool = False,
    since: str | None = None,
) -> Callable[[Handler], Handler]:
    """Register a handler under one or more command names."""

    def register(handler: Handler) -> Handler:
        for name in names:
            REGISTRY[name] = CommandSpec(
                name=names[0],
                handler=handler,
                write=write,
                in_transaction=in_transaction,
                admin_only=admin_only,
                since=since,
            )
        return handler

    return register


def namespace_arg(ctx: Context) -> str:
    """The collection name a command names in its first field."""
    value = ctx.body[ctx.name]
    if not isinstance(value, str) or not value:
        raise CommandError(
            73,
            "InvalidNamespace",
            f"collection name has invalid type {type(value).__name__}",
        )
    return value


def sort_arg(value: Any) -> list[tuple[str, int]] | None:
    """A sort specification as (path, 1 | -1) pairs; None when absent or empty."""
    if value is None or value == {}:
        return None
    if not isinstance(value, dict):
        raise CommandError(14, "TypeMismatch", "Expected field sort to be of type object")
    sort = []
    for key, direction in value.items():
        if isinstance(direction, bool) or direction not in (1, -1):
            raise CommandError(
                2,
                "BadValue",
                "$sort key ordering must be 1 (for ascending) or -1 (for descending)",
            )
        sort.append((key, int(direction)))
    return sort


def document_arg(ctx: Context, key: str) -> dict[str, Any]:
    """An optional object argument (a filter, a query): {} when absent."""
    value = ctx.body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CommandError(
            14,
            "TypeMismatch",
            f"BSON field '{ctx.name}.{key}' is the wrong type '{type(value).__name__}', "
            "expected type 'object'",
        )
    return value


def cursor_batch_size(ctx: Context) -> int | None:
    """`cursor.batchSize` of a cursor-returning command (None when not given)."""
    options = ctx.body.get("cursor")
    if options is None:
        return None
    if not isinstance(options, dict):
        raise CommandError(14, "TypeMismatch", "the 'cursor' option must be an object")
    return batch_size_arg(options)


def batch_size_arg(container: dict[str, Any]) -> int | None:
    """A non-negative `batchSize` from `container` (None when absent)."""
    if "batchSize" not in container:
        return None
    value = container["batchSize"]
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise CommandError(2, "BadValue", "batchSize must be a non-negative number")
    return int(value)


def int_arg(ctx: Context, key: str, default: int = 0, *, minimum: int | None = 0) -> int:
    """An integer option (any BSON number type), validated."""
    value = ctx.body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandError(
            14, "TypeMismatch", f"Field '{key}' should be a number, not {type(value).__name__}"
        )
    number = int(value)
    if minimum is not None and number < minimum:
        raise CommandError(2, "BadValue", f"{key} value must be >= {minimum}")
    return number
