"""Prove both sides of a pair agree through the transforms, and repair what does not.

Both collections are read once, sorted by `_id`, and merged as two streams, so memory holds a
cursor batch and the documents awaiting a re-check, whatever the collection size. A document
that differs is read again after the worker's current lag before it counts as drift, because a
change still in flight is not drift. `repair` settles each drifted document in a transaction:
the side that wrote last (judged from the merge base) is converted onto the other side through
the same guarded write path as the engine, and the merge base records the result.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
from pymongo.asynchronous.client_session import AsyncClientSession

from transforms import Direction, Pair, TransformFailed
from worker.backfill import (
    Settled,
    bson_sort_key,
    last_writer,
    same_document,
    settle,
    write_settled,
)
from worker.engine import cluster_time
from worker.lifecycle import Workspace, introduce_session, run_transaction
from worker.state import id_key, settled_base, utcnow

__all__ = [
    "DRIFT_KINDS",
    "Drift",
    "VerifyReport",
    "compare_documents",
    "verify_pair",
]

DRIFT_KINDS = ("missing_partner", "missing_original", "differs", "unconvertible")
SAMPLES_PER_KIND = 20
# Documents waiting for their re-check; past this many the scan waits for the oldest to be due.
_PENDING_LIMIT = 500
# A document still changing after this long counts as drift: it is written faster than the
# worker copies it, which the operator should see.
_SETTLE_BUDGET_S = 30.0
_CURSOR_BATCH = 1000
# A worker checkpoint that has not moved for this long means nothing is left in flight: a busy
# worker commits a batch far more often, and an idle one records its high-water mark every 2 s.
_IDLE_S = 3.0
_MAX_RECHECK_DELAY_S = 10.0


@dataclass(frozen=True)
class Drift:
    """How one logical document disagrees: its kind and the partner paths that differ."""

    kind: str
    document_id: Any
    fields: tuple[str, ...] = ()
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready sample."""
        sample: dict[str, Any] = {"kind": self.kind, "document_id": self.document_id}
        if self.fields:
            sample["fields"] = list(self.fields)
        if self.error:
            sample["error"] = self.error
        return sample


@dataclass
class VerifyReport:
    """What `verify` found on one pair."""

    pair: str
    partner: str
    original_docs: int = 0
    partner_docs: int = 0
    compared: int = 0
    in_flight: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DRIFT_KINDS, 0))
    samples: dict[str, list[Drift]] = field(default_factory=dict)
    repaired: int = 0
    unrepaired: int = 0
    recheck_delay_s: float = 0.0
    # Something the user must act on after a repair (a worker that did not learn its session).
    warning: str = ""

    @property
    def drift(self) -> int:
        """Drifted documents found."""
        return sum(self.counts.values())

    @property
    def remaining(self) -> int:
        """Drifted documents still drifted (all of them unless repaired)."""
        return self.drift - self.repaired

    def add(self, drift: Drift) -> None:
        self.counts[drift.kind] += 1
        samples = self.samples.setdefault(drift.kind, [])
        if len(samples) < SAMPLES_PER_KIND:
            samples.append(drift)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready report."""
        return {
            "pair": self.pair,
            "partner": self.partner,
            "original_docs": self.original_docs,
            "partner_docs": self.partner_docs,
            "compared": self.compared,
            "in_flight": self.in_flight,
            "drift": self.drift,
            "counts": dict(self.counts),
            "samples": {
                kind: [sample.as_dict() for sample in samples]
                for kind, samples in self.samples.items()
            },
            "repaired": self.repaired,
            "unrepaired": self.unrepaired,
            **({"warning": self.warning} if self.warning else {}),
        }


def compare_documents(
    pair: Pair,
    original: Mapping[str, Any] | None,
    partner: Mapping[str, Any] | None,
    *,
    ignored: str | None = None,
) -> Drift | None:
    """How the partner differs from the converted original on the paths sync writes, or None."""
    if original is None and partner is None:
        return None
    document_id = (original if original is not None else partner or {}).get("_id")
    if original is None:
        return Drift("missing_original", document_id)
    try:
        desired = pair.convert(original, Direction.FORWARD)
    except TransformFailed as exc:
        return Drift("unconvertible", document_id, (exc.field,), str(exc))
    if partner is None:
        return Drift("missing_partner", document_id)

    def compared(path: str) -> bool:
        if ignored and (path == ignored or path.startswith(ignored + ".")):
            return False
        return pair.owns(path, Direction.FORWARD)

    patch = pair.target_patch(partner, desired, Direction.FORWARD).restricted(compared)
    if patch.is_empty():
        return None
    return Drift("differs", document_id, tuple(sorted([*patch.set, *patch.unset])))


async def _merged(
    originals: AsyncIterator[dict[str, Any]], partners: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[tuple[dict[str, Any] | None, dict[str, Any] | None]]:
    """Both `_id`-sorted streams merged: (original, partner) with None where one side lacks it."""
    original = await anext(originals, None)
    partner = await anext(partners, None)
    while original is not None or partner is not None:
        if partner is None:
            order = -1
        elif original is None:
            order = 1
        else:
            left, right = bson_sort_key(original["_id"]), bson_sort_key(partner["_id"])
            order = -1 if left < right else (1 if right < left else 0)
        if order < 0:
            yield original, None
            original = await anext(originals, None)
        elif order > 0:
            yield None, partner
            partner = await anext(partners, None)
        else:
            yield original, partner
            original = await anext(originals, None)
            partner = await anext(partners, None)


async def recheck_delay(workspace: Workspace, pair_doc: Mapping[str, Any] | None) -> float:
    """How long a change may still be in flight: twice the current lag, when a worker runs.

    With no live lease no worker is copying anything, so a difference is drift at once.
    """
    now = utcnow()
    live = await workspace.store.leases.find_one(
        {"holder": {"$ne": None}, "expires_at": {"$gt": now}}
    )
    if live is None:
        return 0.0
    lag = (pair_doc or {}).get("lag_seconds") or 0.0
    return min(_MAX_RECHECK_DELAY_S, 0.5 + 2 * float(lag))


@dataclass
class _Suspect:
    drift: Drift
    original: dict[str, Any] | None
    partner: dict[str, Any] | None
    due: float
    first_seen: float


class _Verifier:
    """One pair's verification: the scan, the re-check queue and the repairs."""

    def __init__(
        self, workspace: Workspace, pair: Pair, report: VerifyReport, *, repair: bool
    ) -> None:
        self.workspace = workspace
        self.pair = pair
        self.report = report
        self.repair = repair
        self.pending: deque[_Suspect] = deque()
        self.ignored = workspace.ignored_field
        # The session the repairs write in, introduced to the running worker before the first
        # (`introduce_session`); None until then, and without transactions.
        self.session: AsyncClientSession | None = None

    async def scan(self) -> None:
        originals = self.workspace.collection(self.pair.original).find(
            {}, sort=[("_id", 1)], batch_size=_CURSOR_BATCH
        )
        partners = self.workspace.collection(self.pair.partner).find(
            {}, sort=[("_id", 1)], batch_size=_CURSOR_BATCH
        )
        try:
            async for original, partner in _merged(aiter(originals), aiter(partners)):
                self.report.original_docs += original is not None
                self.report.partner_docs += partner is not None
                self.report.compared += 1
                drift = compare_documents(self.pair, original, partner, ignored=self.ignored)
                if drift is not None:
                    now = anyio.current_time()
                    due = now + self.report.recheck_delay_s
                    self.pending.append(_Suspect(drift, original, partner, due, now))
                    if len(self.pending) >= _PENDING_LIMIT:
                        await self.recheck(until_empty=False)
        finally:
            await originals.close()
            await partners.close()
        await self.recheck(until_empty=True)

    async def recheck(self, *, until_empty: bool) -> None:
        """Re-read the suspects that are due (all of them when `until_empty`)."""
        while self.pending:
            wait = self.pending[0].due - anyio.current_time()
            if wait > 0:
                await anyio.sleep(wait)
            now = anyio.current_time()
            due: list[_Suspect] = []
            while self.pending and self.pending[0].due <= now and len(due) < _CURSOR_BATCH:
                due.append(self.pending.popleft())
            if self.report.recheck_delay_s:
                await self._worker_caught_up()
            confirmed = await self._reread(due)
            if confirmed:
                await self._confirm(confirmed)
            if not until_empty and len(self.pending) < _PENDING_LIMIT // 2:
                return

    async def _worker_caught_up(self) -> None:
        """Wait until the worker applied every change made before now, or has gone idle.

        Its checkpoint passing the current cluster time proves the first; a checkpoint that
        stops moving means the worker has nothing left to apply. Bounded by the settle budget.
        """
        observed = await cluster_time(self.workspace.client)
        deadline = anyio.current_time() + _SETTLE_BUDGET_S
        last: Any = None
        last_change = anyio.current_time()
        while anyio.current_time() < deadline:
            checkpoint = await self.workspace.store.checkpoint()
            reached = (checkpoint or {}).get("cluster_time")
            if reached is not None and reached >= observed:
                return
            now = anyio.current_time()
            if reached != last:
                last, last_change = reached, now
            elif now - last_change >= _IDLE_S:
                return
            await anyio.sleep(0.05)

    async def _reread(self, suspects: Sequence[_Suspect]) -> list[Drift]:
        ids = [suspect.drift.document_id for suspect in suspects]
        originals = await self._load(self.pair.original, ids)
        partners = await self._load(self.pair.partner, ids)
        confirmed: list[Drift] = []
        for suspect in suspects:
            key = id_key(suspect.drift.document_id)
            original, partner = originals.get(key), partners.get(key)
            drift = compare_documents(self.pair, original, partner, ignored=self.ignored)
            if drift is None:
                self.report.in_flight += 1
                continue
            moved = not (
                same_document(original, suspect.original)
                and same_document(partner, suspect.partner)
            )
            now = anyio.current_time()
            if moved and now - suspect.first_seen < _SETTLE_BUDGET_S:
                # Still being written: look again once the worker had the time to copy it.
                due = now + max(0.1, self.report.recheck_delay_s)
                self.pending.append(_Suspect(drift, original, partner, due, suspect.first_seen))
                continue
            confirmed.append(drift)
        return confirmed

    async def _load(
        self, namespace: str, ids: Sequence[Any], session: AsyncClientSession | None = None
    ) -> dict[Any, dict[str, Any]]:
        cursor = self.workspace.collection(namespace).find(
            {"_id": {"$in": list(ids)}}, session=session
        )
        return {id_key(doc["_id"]): doc async for doc in cursor}

    async def _confirm(self, drifts: Sequence[Drift]) -> None:
        for drift in drifts:
            self.report.add(drift)
        if not self.repair:
            return
        if self.session is None and self.workspace.transactional:
            self.session = self.workspace.client.start_session()
            self.report.warning = await introduce_session(self.workspace, self.pair, self.session)
        for start in range(0, len(drifts), 100):
            chunk = [drift.document_id for drift in drifts[start : start + 100]]
            repaired, failed = await run_transaction(
                self.workspace, partial(self._repair, chunk), session=self.session
            )
            self.report.repaired += repaired
            self.report.unrepaired += failed

    async def _repair(
        self, ids: Sequence[Any], session: AsyncClientSession | None
    ) -> tuple[int, int]:
        """Settle drifted documents from the side that wrote last; (repaired, failed)."""
        originals = await self._load(self.pair.original, ids, session)
        partners = await self._load(self.pair.partner, ids, session)
        bases = await self.workspace.store.load_bases(self.pair.original, ids, session=session)
        settled: list[Settled] = []
        repaired = failed = 0
        for document_id in ids:
            key = id_key(document_id)
            original, partner = originals.get(key), partners.get(key)
            if compare_documents(self.pair, original, partner, ignored=self.ignored) is None:
                repaired += 1  # settled meanwhile (the worker caught up)
                continue
            base = settled_base(bases.get(key), original, partner, self.ignored)
            winner = last_writer(original, partner, base, ignored=self.ignored)
            try:
                settled.append(settle(self.pair, winner, document_id, original, partner))
            except TransformFailed:
                failed += 1
                continue
            repaired += 1
        await write_settled(self.workspace, self.pair, settled, session)
        return repaired, failed


async def verify_pair(workspace: Workspace, pair: Pair, *, repair: bool = False) -> VerifyReport:
    """Compare (and with `repair`, settle) one pair; the report says what was found."""
    pair_doc = await workspace.store.pair_doc(pair.original)
    report = VerifyReport(pair.original, pair.partner)
    report.recheck_delay_s = await recheck_delay(workspace, pair_doc)
    verifier = _Verifier(workspace, pair, report, repair=repair)
    try:
        await verifier.scan()
    finally:
        if verifier.session is not None:
            await verifier.session.end_session()
    return report
