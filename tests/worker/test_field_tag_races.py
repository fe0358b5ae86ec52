"""Without transactions (`origin_tag = "field"`) nothing holds a target document between the
batch's read of it and the worker's write: a client write that lands in between must still
win (G2), and the two sides must still agree (G1)."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from worker.engine._applier import PRECONDITION_TRIES, _StaleRead

from .engine_helpers import PEOPLE_MODULE, applier_in_process, events_of, next_events


def _after_reads(applier: Any, write: Callable[[], Awaitable[Any]]) -> None:
    """Make `write` (a client's) once, right after the next batch has read its documents and
    looked ahead in the stream for newer writes: just before the batch writes."""
    peek_ahead = applier._peek_ahead
    pending = [write]

    async def peek_then_write(*args: Any, **kwargs: Any) -> Any:
        found = await peek_ahead(*args, **kwargs)
        if pending:
            await pending.pop()()
        return found

    applier._peek_ahead = peek_then_write


async def _drain(stream: Any, quiet_reads: int = 4, most: int = 40) -> list[dict[str, Any]]:
    """The stream's events until it has nothing new for a few reads (bounded)."""
    events: list[dict[str, Any]] = []
    quiet = 0
    for _ in range(most):
        event = await stream.try_next()
        if event is None:
            quiet += 1
            if quiet >= quiet_reads:
                break
        else:
            quiet = 0
            events.append(event)
    return events


def _tagged(event: dict[str, Any]) -> bool:
    """A write the worker made (field tags): it sets the tag field."""
    if event["operationType"] == "update":
        return "_psync" in event["updateDescription"]["updatedFields"]
    return "_psync" in (event.get("fullDocument") or {})


async def _untagged(collection: Any, document_id: Any) -> dict[str, Any] | None:
    document = await collection.find_one({"_id": document_id})
    if document is not None:
        document.pop("_psync", None)
    return document


async def _synced(db: Any, applier: Any) -> None:
    """Document 1 created on the original side and copied to the partner."""
    inserted = await events_of(
        db, 1, lambda: db.people.insert_one({"_id": 1, "name": "Ada", "email": "a@x"})
    )
    await applier.apply(inserted)


@pytest.mark.parametrize(
    "client_write",
    [
        pytest.param(
            lambda db: db.people_v2.update_one({"_id": 1}, {"$set": {"email": "late@x"}}),
            id="update",
        ),
        pytest.param(
            lambda db: db.people_v2.replace_one(
                {"_id": 1}, {"full_name": "Ada", "email": "late@x", "tier": "basic", "loyalty": 0}
            ),
            id="replace",
        ),
    ],
)
async def test_a_client_write_between_the_read_and_the_write_wins(
    mongo_uri: str, tmp_path: Path, client_write: Callable[[Any], Awaitable[Any]]
) -> None:
    async with applier_in_process(
        mongo_uri, tmp_path, PEOPLE_MODULE, prefix="race", origin_tag="field"
    ) as (db, applier):
        async with applier.opened():
            await _synced(db, applier)
            async with await db.watch(max_await_time_ms=50) as stream:
                await db.people.update_one({"_id": 1}, {"$set": {"email": "ada@x"}})
                changed = await next_events(stream, 1, tries=40)
                _after_reads(applier, lambda: client_write(db))
                await applier.apply(changed)
                # The client's write comes next (the worker's own writes, tagged, are left out).
                later = [e for e in await _drain(stream) if not _tagged(e)]
            assert [e["ns"]["coll"] for e in later] == ["people_v2"]
            await applier.apply(later)
        original = await _untagged(db.people, 1)
        partner = await _untagged(db.people_v2, 1)
    assert original is not None and partner is not None
    assert original["email"] == partner["email"] == "late@x"


async def test_a_document_holding_nan_still_syncs(mongo_uri: str, tmp_path: Path) -> None:
    """NaN is not equal to itself in Python; in MongoDB's comparisons it is. A document holding
    one must still read back as written (or the batch would plan again for ever), and its
    change must land."""
    async with applier_in_process(
        mongo_uri, tmp_path, PEOPLE_MODULE, prefix="nan", origin_tag="field"
    ) as (db, applier):
        async with applier.opened():
            inserted = await events_of(
                db,
                1,
                lambda: db.people.insert_one({"_id": 1, "name": "Ada", "score": float("nan")}),
            )
            await applier.apply(inserted)
            renamed = await events_of(
                db, 1, lambda: db.people.update_one({"_id": 1}, {"$set": {"name": "Ada L"}})
            )
            with anyio.fail_after(30):
                result = await applier.apply(renamed)
        partner = await _untagged(db.people_v2, 1)
    assert result.applied == 1
    assert partner is not None and partner["full_name"] == "Ada L"
    assert math.isnan(partner["score"])


async def test_giving_the_preconditions_up_is_logged(
    mongo_uri: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A document that never reads back as written (one the server and the worker compare
    otherwise) must not hold the stream up: after `PRECONDITION_TRIES` stale attempts the
    batch writes without preconditions, which can overwrite a client's write made in between,
    and says so."""
    caplog.set_level(logging.WARNING)
    async with applier_in_process(
        mongo_uri, tmp_path, PEOPLE_MODULE, prefix="giveup", origin_tag="field"
    ) as (db, applier):
        async with applier.opened():
            await _synced(db, applier)
            verified: list[int] = []

            async def never_as_written(prepared: Any) -> None:
                verified.append(len(prepared.written_ids))
                raise _StaleRead([(ns, key) for ns, key, _ in prepared.written_ids])

            applier._verify_written = never_as_written
            renamed = await events_of(
                db, 1, lambda: db.people.update_one({"_id": 1}, {"$set": {"name": "Ada L"}})
            )
            with anyio.fail_after(30):
                result = await applier.apply(renamed)
        partner = await _untagged(db.people_v2, 1)
    logged = [getattr(r, "event_name", None) for r in caplog.records]
    assert len(verified) == PRECONDITION_TRIES
    assert logged.count("preconditions_given_up") == 1
    assert result.applied == 1
    assert partner is not None and partner["full_name"] == "Ada L"
