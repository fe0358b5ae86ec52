"""Dead letters: list them, re-drive them once the transform is fixed, purge them.

A retry does not replay the stored event: it converts the source side's *current* document with
the *current* transforms and writes the difference to the target, as the engine would, in one
transaction with the merge base update and the dead letter's removal. A retry that fails again
keeps the dead letter with the new error and one more in `retries`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession

from transforms import Side, TransformFailed
from worker.backfill import settle, write_settled
from worker.lifecycle import Workspace, run_transaction
from worker.state import StateStore, merge_base_id, settled_base, utcnow

__all__ = [
    "RetryReport",
    "describe_age",
    "list_dead_letters",
    "purge_dead_letters",
    "retry_dead_letters",
]

# Pairs whose collections a retry must not write any more.
_FINISHED = ("COMPLETED", "ROLLED_BACK")


def _query(pair: str | None) -> dict[str, Any]:
    return {} if pair is None else {"pair": pair}


async def list_dead_letters(
    store: StateStore, pair: str | None = None, *, limit: int | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Dead letters, oldest first (of one pair when given)."""
    cursor = store.dead_letters.find(_query(pair), sort=[("at", 1), ("_id", 1)])
    if limit is not None:
        cursor = cursor.limit(limit)
    async for letter in cursor:
        yield letter


async def purge_dead_letters(store: StateStore, pair: str | None = None) -> int:
    """Delete dead letters (of one pair when given); how many were deleted."""
    result = await store.dead_letters.delete_many(_query(pair))
    return result.deleted_count


@dataclass(frozen=True)
class RetryOutcome:
    """What happened to one dead letter on retry."""

    letter_id: Any
    pair: str
    document_id: Any
    status: str  # "fixed", "failed", "skipped"
    detail: str = ""


@dataclass
class RetryReport:
    """Counts of a `dlq retry` run, and the dead letters that stay (with why)."""

    fixed: int = 0
    failed: int = 0
    skipped: int = 0
    remaining: list[RetryOutcome] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "fixed": self.fixed,
            "failed": self.failed,
            "skipped": self.skipped,
            "remaining": [
                {
                    "pair": outcome.pair,
                    "document_id": outcome.document_id,
                    "status": outcome.status,
                    "detail": outcome.detail,
                }
                for outcome in self.remaining
            ],
        }


async def _retry_one(
    workspace: Workspace, letter_id: Any, session: AsyncClientSession | None
) -> RetryOutcome:
    store = workspace.store
    letter = await store.dead_letters.find_one({"_id": letter_id}, session=session)
    if letter is None:
        return RetryOutcome(letter_id, "", None, "fixed", "already re-driven elsewhere")
    pair_ns, document_id = letter["pair"], letter["document_id"]
    registry = workspace.registry
    pair = registry.by_original(pair_ns) if registry is not None else None
    if pair is None:
        return RetryOutcome(
            letter_id, pair_ns, document_id, "skipped", "no loaded transform module has this pair"
        )
    record = await store.pairs.find_one({"_id": pair_ns}, session=session)
    state = (record or {}).get("state")
    if state in _FINISHED:
        return RetryOutcome(letter_id, pair_ns, document_id, "skipped", f"pair is {state}")
    side: Side = "partner" if letter.get("side") == "partner" else "original"
    if letter.get("direction") == "backward" and letter.get("side") is None:
        side = "partner"
    original = await workspace.collection(pair.original).find_one(
        {"_id": document_id}, session=session
    )
    partner = await workspace.collection(pair.partner).find_one(
        {"_id": document_id}, session=session
    )
    source = original if side == "original" else partner
    base = settled_base(
        await store.merge_base.find_one(
            {"_id": merge_base_id(pair_ns, document_id)}, session=session
        ),
        original,
        partner,
        workspace.ignored_field,
    )
    if source is None and base is None:
        # Gone before it was ever synced: nothing to copy, and the other side's document (if
        # any) is not the worker's to delete.
        await store.dead_letters.delete_one({"_id": letter_id}, session=session)
        return RetryOutcome(letter_id, pair_ns, document_id, "fixed", "source document is gone")
    try:
        outcome = settle(pair, side, document_id, original, partner)
    except TransformFailed as exc:
        await store.dead_letters.update_one(
            {"_id": letter_id},
            {
                "$set": {
                    "error": str(exc),
                    "mapping": exc.mapping,
                    "field": exc.field,
                    "last_retry_at": utcnow(),
                },
                "$inc": {"retries": 1},
            },
            session=session,
        )
        return RetryOutcome(letter_id, pair_ns, document_id, "failed", str(exc))
    await write_settled(workspace, pair, [outcome], session)
    await store.dead_letters.delete_one({"_id": letter_id}, session=session)
    return RetryOutcome(letter_id, pair_ns, document_id, "fixed")


async def retry_dead_letters(
    workspace: Workspace, pair: str | None = None, *, keep_details: int = 50
) -> RetryReport:
    """Re-drive every dead letter (of one pair when given), one transaction each."""
    report = RetryReport()
    ids = [
        letter["_id"]
        async for letter in workspace.store.dead_letters.find(
            _query(pair), {"_id": 1}, sort=[("at", 1), ("_id", 1)]
        )
    ]
    for letter_id in ids:
        outcome = await run_transaction(workspace, partial(_retry_one, workspace, letter_id))
        if outcome.status == "fixed":
            report.fixed += 1
            continue
        if outcome.status == "failed":
            report.failed += 1
        else:
            report.skipped += 1
        if len(report.remaining) < keep_details:
            report.remaining.append(outcome)
    return report


def describe_age(moment: Any, now: dt.datetime | None = None) -> str:
    """A short age ("42s", "3m", "5h", "2d") of a timestamp, for tables."""
    if not isinstance(moment, dt.datetime):
        return "-"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    seconds = max(0.0, ((now or utcnow()) - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"
