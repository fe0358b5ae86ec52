"""A pair's migration lifecycle: pause, resume, complete, roll back; and the one-shot workspace.

The one-shot commands (backfill, verify, dlq, the lifecycle ones) share a `Workspace`: one
client, the state store and, when they convert documents, the loaded transforms. The lifecycle
transitions only change the pair record: the running engine re-reads the pairs every half second
and stops (or starts again) applying a pair's changes on its own.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import ConnectionFailure, PyMongoError

from transforms import Pair, Registry, TransformLoadError, load_registry
from worker.config import Config, check_reachable
from worker.errors import ConfigError, PartnerSyncError, ServerUnavailable, StateRefused
from worker.logs import redact_uri
from worker.state import ACTIVE_STATES, StateStore, utcnow

__all__ = [
    "LifecycleResult",
    "Workspace",
    "complete_pair",
    "introduce_session",
    "open_workspace",
    "pause_pair",
    "resume_pair",
    "rollback_pair",
    "run_transaction",
    "translate_errors",
]

T = TypeVar("T")

# States a pair may be paused from; resuming returns to the one recorded in `paused_from`.
_PAUSABLE = ACTIVE_STATES
# A state change takes effect in a running worker at its next read of the pair states (every
# quarter second, between transactions), and the worker records that it has (`seen_serial`,
# see `StateStore.acknowledge_state`). A transition waits this long for that record when a
# worker holds the lease; rollback waits longer, since it deletes what a batch in flight writes.
_WORKER_ACK_S = 5.0
_ROLLBACK_ACK_S = 30.0
# How long a backfill or repair waits for the running worker to know its session.
_SESSION_ACK_S = 30.0
_ACK_POLL_S = 0.05
# A transaction that keeps failing with transient errors for this long is given up: the server
# is overloaded or a writer holds the documents, and the operator should hear about it.
_TRANSACTION_BUDGET_S = 60.0


@dataclass
class Workspace:
    """What a one-shot command works with: client, state store, transforms, write tag."""

    config: Config
    client: AsyncMongoClient[dict[str, Any]]
    store: StateStore
    registry: Registry | None

    def pair(self, original: str) -> Pair:
        """The loaded pair whose original namespace is `original`; exit-2 error if none."""
        pair = self.registry.by_original(original) if self.registry is not None else None
        if pair is None:
            known = ", ".join(p.original for p in self.registry or ()) or "none"
            raise ConfigError(
                f"--pair {original}: no loaded transform module registers this original"
                f" namespace (registered: {known})"
            )
        return pair

    def pairs(self, original: str | None) -> list[Pair]:
        """The pair named by `--pair`, or every loaded pair when it is not given."""
        if original is not None:
            return [self.pair(original)]
        return list(self.registry or ())

    def collection(self, namespace: str) -> AsyncCollection[dict[str, Any]]:
        """The collection of a `db.collection` namespace."""
        database, _, name = namespace.partition(".")
        return self.client[database][name]

    @property
    def tag(self) -> dict[str, Any] | None:
        """The field marking a worker write, when the origin is tagged by field, else None."""
        if self.config.origin_tag != "field":
            return None
        return {self.config.tag_field: f"oneshot:{random.getrandbits(64):016x}"}

    @property
    def ignored_field(self) -> str | None:
        """A metadata field to leave out of every comparison (the origin tag field)."""
        return self.config.tag_field if self.config.origin_tag == "field" else None

    @property
    def transactional(self) -> bool:
        """Whether writes go in transactions; with field tags the deployment may have none."""
        return self.config.origin_tag != "field"


@asynccontextmanager
async def open_workspace(
    config: Config, *, transforms: bool = True, reconcile: bool = False
) -> AsyncIterator[Workspace]:
    """Connect, load the transforms (when asked) and register their pairs; close on exit.

    Registering refuses transforms whose version differs from the recorded one (exit 3) unless
    `reconcile`, which a `backfill --restart` passes.
    """
    registry = None
    if transforms:
        try:
            registry = load_registry(config.transforms)
        except TransformLoadError as exc:
            raise ConfigError(str(exc)) from exc
    await check_reachable(config.uri, config.connect_timeout_s)
    timeout_ms = max(1, int(config.connect_timeout_s * 1000))
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        config.uri,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        tz_aware=True,
        appname="partner-sync",
    )
    try:
        store = StateStore(client[config.state_db])
        await store.ensure_collections()
        if registry is not None:
            await store.register(registry, reconcile=reconcile)
        yield Workspace(config=config, client=client, store=store, registry=registry)
    finally:
        await client.close()


@asynccontextmanager
async def translate_errors(config: Config) -> AsyncIterator[None]:
    """One line for a lost server (exit 2) or a refused operation (exit 1), no traceback."""
    try:
        yield
    except PartnerSyncError:
        raise
    except ConnectionFailure as exc:
        raise ServerUnavailable(
            f"lost the MongoDB server at {redact_uri(config.uri)}: {_one_line(exc)}"
        ) from exc
    except PyMongoError as exc:
        raise PartnerSyncError(f"the MongoDB server refused: {_one_line(exc)}") from exc


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()).split(", Timeout:")[0]
    return redact_uri(text if len(text) <= limit else text[: limit - 3] + "...")


async def run_transaction(
    workspace: Workspace,
    work: Callable[[AsyncClientSession | None], Awaitable[T]],
    *,
    on_retry: Callable[[PyMongoError], None] | None = None,
    session: AsyncClientSession | None = None,
) -> T:
    """Run `work` in one transaction, retried with backoff on transient errors and conflicts.

    A WriteConflict with a client write is expected beside live traffic; the whole unit is
    re-read and re-done. `session` (one is started when not given) lets a caller record its id.
    Without transactions (field-tagged deployments) `work` runs once, without a session, and
    its writes must be idempotent.
    """
    if not workspace.transactional:
        return await work(None)
    if session is None:
        async with workspace.client.start_session() as own:
            return await run_transaction(workspace, work, on_retry=on_retry, session=own)
    deadline = anyio.current_time() + _TRANSACTION_BUDGET_S
    attempt = 0
    while True:
        attempt += 1
        try:
            await session.start_transaction()
            result = await work(session)
            await _commit(session)
            return result
        except PyMongoError as exc:
            if session.in_transaction:
                await session.abort_transaction()
            transient = exc.has_error_label("TransientTransactionError")
            if not transient or anyio.current_time() > deadline:
                raise
            if on_retry is not None:
                on_retry(exc)
            await anyio.sleep(min(2.0, 0.02 * 2**attempt) * random.uniform(0.5, 1.0))
        except BaseException:
            if session.in_transaction:
                with anyio.CancelScope(shield=True):
                    await session.abort_transaction()
            raise


async def _commit(session: AsyncClientSession) -> None:
    """Commit, retrying once more when the outcome is unknown (commit is idempotent)."""
    for attempt in range(3):
        try:
            await session.commit_transaction()
            return
        except PyMongoError as exc:
            if attempt == 2 or not exc.has_error_label("UnknownTransactionCommitResult"):
                raise


# -- transitions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LifecycleResult:
    """What a transition did to one pair: its state before and after, and a line for the user."""

    pair: str
    before: str
    after: str
    message: str
    changed: bool


async def _record(store: StateStore, original: str) -> dict[str, Any]:
    doc = await store.pair_doc(original)
    if doc is None:
        raise ConfigError(
            f"--pair {original}: the state database has no such pair; it is registered by the"
            " first run, backfill or check with its transform module"
        )
    return doc


async def _let_worker_notice(
    store: StateStore, original: str, *, within: float | None = None
) -> str:
    """Wait until the worker holding the lease acts on the pair's latest state change.

    Returns "" once it does, or when no worker holds a live lease (the next one reads the state
    as it starts); else, after `within` seconds (`_WORKER_ACK_S` by default), a sentence for
    the user naming the worker that has not taken the change up yet (stopped by the OS, or
    stuck in a long transaction).
    """
    within = _WORKER_ACK_S if within is None else within
    deadline = anyio.current_time() + within
    doc = await store.pair_doc(original)
    serial = (doc or {}).get("state_serial") or 0
    while True:
        if doc is None or (doc.get("seen_serial") or 0) >= serial:
            return ""
        live = await store.leases.find_one(
            {"holder": {"$ne": None}, "expires_at": {"$gt": utcnow()}}
        )
        if live is None:
            return ""
        if anyio.current_time() >= deadline:
            return (
                f"; worker {live['holder']} has not taken this up within {within:g}s (it does"
                " at its next read of the pair states)"
            )
        await anyio.sleep(_ACK_POLL_S)
        doc = await store.pair_doc(original)


async def introduce_session(
    workspace: Workspace, pair: Pair, session: AsyncClientSession, **fields: Any
) -> str:
    """Tell the worker holding the lease that `session` writes the pair's collections for it
    (`StateStore.record_writer_session`, with `fields` beside it), and wait until it knows.

    With session tags a backfill's or repair's write, made from documents read a moment
    before, is the worker's own to that pair; taken for a client's, a newer-looking write of
    older content, it wins over a change made in between, which is lost. With field tags the
    writes carry the tag: there is nothing to wait for. Returns "", or a sentence for the
    user when a live worker did not take the session up within `_SESSION_ACK_S`.
    """
    await workspace.store.record_writer_session(pair.original, session.session_id, **fields)
    if workspace.tag is not None:
        return ""
    if not await _let_worker_notice(workspace.store, pair.original, within=_SESSION_ACK_S):
        return ""
    return (
        f"the running worker did not take this command's session up within"
        f" {_SESSION_ACK_S:g}s, so a document a client changed while it was written may be"
        f" left apart: run `partner-sync verify --repair --pair {pair.original}` after this"
    )


async def pause_pair(store: StateStore, original: str) -> LifecycleResult:
    """Move an active pair to PAUSED, remembering the state to resume to."""
    doc = await _record(store, original)
    state = doc["state"]
    if state == "PAUSED":
        return LifecycleResult(original, state, state, f"{original}: already paused", False)
    if state not in _PAUSABLE:
        raise StateRefused(
            f"pair {original} is {state}; only a RUNNING or BACKFILLING pair can be paused"
        )
    if not await store.set_state(original, "PAUSED", expect=[state], paused_from=state):
        return await pause_pair(store, original)  # the state moved under us: decide again
    pending = await _let_worker_notice(store, original)
    return LifecycleResult(
        original,
        state,
        "PAUSED",
        f"{original}: paused (was {state}); changes are held and replayed on resume{pending}",
        True,
    )


async def resume_pair(store: StateStore, original: str) -> LifecycleResult:
    """Return a PAUSED pair to the state it was paused from."""
    doc = await _record(store, original)
    state = doc["state"]
    if state in _PAUSABLE:
        return LifecycleResult(original, state, state, f"{original}: not paused ({state})", False)
    if state != "PAUSED":
        raise StateRefused(f"pair {original} is {state}, not PAUSED; there is nothing to resume")
    target = doc.get("paused_from") or "RUNNING"
    if target not in _PAUSABLE:
        target = "RUNNING"
    if not await store.set_state(original, target, expect=["PAUSED"], paused_from=None):
        return await resume_pair(store, original)
    pending = await _let_worker_notice(store, original)
    held = await store.held_events.count_documents({"pair": original})
    return LifecycleResult(
        original,
        state,
        target,
        f"{original}: resumed ({target}); {held} held changes to replay{pending}",
        True,
    )


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _since(moment: Any, now: dt.datetime) -> float | None:
    if not isinstance(moment, dt.datetime):
        return None
    return (now - _aware(moment)).total_seconds()


async def complete_pair(
    store: StateStore, original: str, *, quiet_period_s: float, force: bool = False
) -> LifecycleResult:
    """Record COMPLETED once old clients have been quiet on the original for the quiet period.

    Refused (StateRefused) while the original saw a client write within `quiet_period_s`, while
    the backfill is unfinished or changes are held for a paused pair, unless `force`. Both
    collections are left as they are.
    """
    doc = await _record(store, original)
    state = doc["state"]
    if state == "COMPLETED":
        return LifecycleResult(original, state, state, f"{original}: already completed", False)
    if state not in ("RUNNING", "PAUSED"):
        raise StateRefused(
            f"pair {original} is {state}; only a RUNNING or PAUSED pair can be completed"
        )
    now = utcnow()
    last = (doc.get("last_client_write") or {}).get("original")
    age = _since(last, now)
    if not force:
        if age is not None and age < quiet_period_s:
            raise StateRefused(
                f"pair {original}: an old client wrote to the original at {_iso(last)}"
                f" ({age:.0f}s ago), within the quiet period of {quiet_period_s:g}s; wait"
                " until old clients are gone, or pass --force"
            )
        if doc.get("paused_from") == "BACKFILLING" or not (doc.get("backfill") or {}).get("done"):
            raise StateRefused(
                f"pair {original}: its backfill has not finished; run `partner-sync backfill"
                f" --pair {original}` first, or pass --force"
            )
        held = await store.held_events.count_documents({"pair": original})
        if held:
            raise StateRefused(
                f"pair {original}: {held} changes are held while it is paused; resume it so"
                " they are applied, or pass --force"
            )
    if not await store.set_state(
        original, "COMPLETED", expect=[state], completed_at=now, paused_from=None
    ):
        return await complete_pair(store, original, quiet_period_s=quiet_period_s, force=force)
    pending = await _let_worker_notice(store, original)
    quiet = "never written by a client" if last is None else f"last client write {_iso(last)}"
    return LifecycleResult(
        original,
        state,
        "COMPLETED",
        f"{original}: completed ({quiet}); syncing stopped, both collections left as they are;"
        f" dropping {original} is yours to do when you are ready{pending}",
        True,
    )


async def rollback_pair(
    store: StateStore,
    client: AsyncMongoClient[dict[str, Any]],
    original: str,
    *,
    drop_partner: bool = False,
    announce: Callable[[str], None] = lambda line: None,
) -> LifecycleResult:
    """Record ROLLED_BACK, forget the pair's merge base, and drop the partner when asked.

    The merge base describes a relationship that is over; keeping it would make a later
    `backfill --restart` treat the (dropped or stale) partner as the newer side. `announce`
    receives what will be dropped before it is.
    """
    doc = await _record(store, original)
    state = doc["state"]
    if state == "COMPLETED":
        raise StateRefused(
            f"pair {original} is COMPLETED; a completed migration cannot be rolled back"
        )
    if state != "ROLLED_BACK" and not await store.set_state(
        original,
        "ROLLED_BACK",
        expect=[state],
        rolled_back_at=utcnow(),
        paused_from=None,
        backfill={"done": False, "docs": 0},
    ):
        return await rollback_pair(
            store, client, original, drop_partner=drop_partner, announce=announce
        )
    # The worker must have let go of the pair before its merge base goes, or a batch in flight
    # would write merge base records back.
    pending = await _let_worker_notice(store, original, within=_ROLLBACK_ACK_S)
    await store.merge_base.delete_many({"_id.pair": original})
    await store.held_events.delete_many({"pair": original})
    message = f"{original}: rolled back (was {state}); syncing stopped{pending}"
    if drop_partner:
        partner = doc["partner"]
        database, _, name = partner.partition(".")
        count = await client[database][name].estimated_document_count()
        announce(f"dropping partner collection {partner} ({count} documents)")
        await client[database].drop_collection(name)
        message += f"; dropped {partner} ({count} documents)"
    else:
        message += f"; partner {doc['partner']} left as it is"
    return LifecycleResult(original, state, "ROLLED_BACK", message, state != "ROLLED_BACK")


def _iso(moment: Any) -> str:
    if isinstance(moment, dt.datetime):
        stamp = _aware(moment).astimezone(dt.UTC).isoformat(timespec="seconds")
        return stamp.replace("+00:00", "Z")
    return str(moment)
