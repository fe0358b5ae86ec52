"""A batch's writes, in the order they must take effect, sent in as few commands as the server
allows.

From MongoDB 8.0 (wire version 25) one `bulkWrite` command writes to any number of collections:
a batch's target writes, merge base, dead letters, counters and checkpoint then cost one round
trip instead of one per collection and kind, and in a transaction the target writes of both
sides run in the command that takes the snapshot, so no client write can come between the
snapshot and the later side's writes. Older servers get one `bulk_write` per run of writes to
the same collection, in the same order.

A write marked `refusable` is a target write: the server refusing it for good (validation,
duplicate key) raises `Refused`, for the applier to retry the batch one event at a time and
dead-letter the refused event. A refusal of any other write is the driver's error, as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import BulkWriteError, ClientBulkWriteException, OperationFailure

__all__ = ["BatchWrites", "Refused", "supports_bulk_write"]

# The first wire version with the cross-collection bulkWrite command (MongoDB 8.0).
BULK_WRITE_WIRE_VERSION = 25

Write = Any  # a pymongo write model (InsertOne, UpdateOne, ReplaceOne, DeleteOne, DeleteMany)


class Refused(Exception):
    """The server refused a target write for good; `error` is the driver's error for it."""

    def __init__(self, error: OperationFailure) -> None:
        super().__init__(str(error))
        self.error = error


async def supports_bulk_write(client: AsyncMongoClient[Any]) -> bool:
    """Whether the server has the cross-collection bulkWrite command."""
    hello = await client.admin.command("hello")
    return int(hello.get("maxWireVersion", 0)) >= BULK_WRITE_WIRE_VERSION


@dataclass
class _Queued:
    namespace: str
    write: Write
    refusable: bool
    # Given the write's matched count; raises when the write did not match what it must.
    check: Callable[[int], None] | None


class BatchWrites:
    """Writes queued in order and sent by `send`, in one command when `combined`."""

    def __init__(self, client: AsyncMongoClient[Any], *, combined: bool) -> None:
        self.client = client
        self.combined = combined
        self._queued: list[_Queued] = []

    def __len__(self) -> int:
        return len(self._queued)

    def add(
        self,
        namespace: str,
        writes: Sequence[Write],
        *,
        refusable: bool = False,
        check: Callable[[int], None] | None = None,
    ) -> None:
        """Queue `writes` to `namespace`, each made with `namespace=` (the client-level command
        needs it, a collection's bulk_write ignores it); `check` (one write only) is given its
        matched count."""
        assert check is None or len(writes) == 1, "a checked write is queued alone"
        for write in writes:
            self._queued.append(_Queued(namespace, write, refusable, check))

    def extend(self, other: BatchWrites) -> None:
        """Queue `other`'s writes after these, taking them from it."""
        self._queued.extend(other._queued)
        other._queued = []

    async def send(self, session: AsyncClientSession | None) -> None:
        """Send what is queued, in order, and empty the queue (a failed send empties it too)."""
        queued, self._queued = self._queued, []
        if not queued:
            return
        if self.combined:
            await self._send_combined(queued, session)
            return
        start = 0
        while start < len(queued):
            end = start + 1
            # One command per run of writes to one collection; a checked write goes alone, so
            # that the command's matched count is its own.
            while (
                end < len(queued)
                and queued[end].namespace == queued[start].namespace
                and queued[end].refusable == queued[start].refusable
                and queued[start].check is None
                and queued[end].check is None
            ):
                end += 1
            await self._send_run(queued[start:end], session)
            start = end

    async def _send_run(self, run: list[_Queued], session: AsyncClientSession | None) -> None:
        database, _, collection = run[0].namespace.partition(".")
        try:
            result = await self.client[database][collection].bulk_write(
                [queued.write for queued in run], ordered=True, session=session
            )
        except OperationFailure as exc:
            if run[0].refusable and not is_transient(exc):
                raise Refused(exc) from exc
            raise
        if run[0].check is not None:
            run[0].check(result.matched_count)

    async def _send_combined(
        self, queued: list[_Queued], session: AsyncClientSession | None
    ) -> None:
        models = [entry.write for entry in queued]
        checked = any(entry.check is not None for entry in queued)
        try:
            result = await self.client.bulk_write(
                models, session=session, ordered=True, verbose_results=checked
            )
        except ClientBulkWriteException as exc:
            if exc.error is not None:
                # Not one write's fault: a dropped connection, a write conflict in a
                # transaction, an interrupted command. Raised as the driver raised it.
                if isinstance(exc.error, BaseException):
                    raise exc.error from exc
                reply = dict(exc.error)
                raise OperationFailure(reply.get("errmsg", ""), reply.get("code"), reply) from exc
            # The error entries of the server's reply (the driver's annotation says WriteError).
            errors: list[dict[str, Any]] = list(exc.details.get("writeErrors") or [])
            if not errors:
                raise
            first = errors[0]
            entry = queued[int(first["idx"])]
            if entry.refusable:
                # Shaped like a collection bulk_write's error, as the dead letter reads it.
                raise Refused(BulkWriteError({"writeErrors": [_entry_error(first)]})) from exc
            raise OperationFailure(
                f"{entry.namespace}: {first.get('errmsg', '')}", first.get("code"), first
            ) from exc
        for index, entry in enumerate(queued):
            if entry.check is not None:
                entry.check(result.update_results[index].matched_count)


def _entry_error(error: dict[str, Any]) -> dict[str, Any]:
    """A bulkWrite error entry as a per-collection command's write error (`index` for `idx`)."""
    entry = {key: value for key, value in error.items() if key not in ("ok", "idx")}
    entry["index"] = error["idx"]
    return entry


def is_transient(exc: OperationFailure) -> bool:
    """An error a later attempt of the same transaction may not meet."""
    return (
        exc.has_error_label("TransientTransactionError")
        or exc.has_error_label("UnknownTransactionCommitResult")
        or exc.code in (112, 251, 24, 262, 189, 91, 11600, 11602, 10107, 13435, 13436)
    )
