"""Documents the worker has no merge base for: present on both sides before the sync started
(never backfilled), or too large for a merge base record. Each change still goes through by its
cluster time (G2): an update carries the fields it touched, an insert, replace or delete the
whole document, and a target write still ahead in the stream wins over them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from .engine_helpers import PEOPLE_MODULE, applier_in_process, events_of

ORIGINAL = {"_id": 7, "name": "Ada", "email": "a@x", "age": "30", "first": "Ada", "last": "L"}
# The partner's own version, written before the sync started: the name differs, and so does
# the email (neither side's value is newer than the other's: no change event says so).
PARTNER = {
    "_id": 7,
    "full_name": "Ada Lovelace",
    "email": "old@x",
    "age": 30,
    "display_name": "Ada L",
    "tier": "basic",
    "loyalty": 5,
}


@pytest.fixture(params=["session", "field"])
async def unsynced(
    mongo_uri: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Any, Any]]:
    """A RUNNING pair whose document 7 exists on both sides, with no merge base; the worker
    tags its writes by session, or by a field in them."""
    async with applier_in_process(
        mongo_uri, tmp_path, PEOPLE_MODULE, prefix="unsynced", origin_tag=request.param
    ) as (db, applier):
        await db.people.insert_one(dict(ORIGINAL))
        await db.people_v2.insert_one(dict(PARTNER))
        async with applier.opened():
            yield db, applier


async def _found(collection: Any) -> dict[str, Any] | None:
    """Document 7 without the worker's tag field (written into it with field tags)."""
    document = await collection.find_one({"_id": 7})
    if document is not None:
        document.pop("_psync", None)
    return document


async def _bases(applier: Any) -> dict[Any, Any]:
    return await applier.store.load_bases(applier.registry.pairs[0].original, [7])


async def test_updates_of_a_document_never_synced_carry_the_fields_they_touched(
    unsynced: tuple[Any, Any],
) -> None:
    """The original's newer age reaches the partner, and the partner's later email change does
    not take the original's age back to the partner's older value. The names, which no change
    touched, stay as each side had them (`verify --repair` settles such a document)."""
    db, applier = unsynced
    aged = await events_of(db, 1, lambda: db.people.update_one({"_id": 7}, {"$set": {"age": "31"}}))
    result = await applier.apply(aged)
    assert result.applied == 1 and result.conflicts == 0
    partner = await db.people_v2.find_one({"_id": 7})
    assert partner is not None and partner["age"] == 31

    mailed = await events_of(
        db, 1, lambda: db.people_v2.update_one({"_id": 7}, {"$set": {"email": "new@x"}})
    )
    # The worker's own write to the partner may come back in the same stream: skipped.
    result = await applier.apply(mailed)
    assert result.applied == 1
    original = await _found(db.people)
    partner = await _found(db.people_v2)
    assert original == {**ORIGINAL, "age": "31", "email": "new@x"}
    assert partner == {**PARTNER, "age": 31, "email": "new@x"}
    # Nothing is known of either side as a whole: no merge base is recorded.
    assert await _bases(applier) == {}


async def test_a_replace_of_a_document_never_synced_is_newer_than_the_partners_version(
    unsynced: tuple[Any, Any],
) -> None:
    """A replace writes the whole document at its time: the partner's owned fields follow it
    (its own `loyalty` stays), both sides are known from then on, and a later partner update
    goes through the merge base as for any synced document."""
    db, applier = unsynced
    replacement = {**ORIGINAL, "name": "Ada King", "email": "king@x"}
    replaced = await events_of(db, 1, lambda: db.people.replace_one({"_id": 7}, replacement))
    result = await applier.apply(replaced)
    assert result.applied == 1 and result.conflicts == 0
    partner = await _found(db.people_v2)
    assert partner == {**PARTNER, "full_name": "Ada King", "email": "king@x"}
    bases = await _bases(applier)
    assert bases[7]["o"] == replacement and bases[7]["p"] == partner

    renamed = await events_of(
        db, 1, lambda: db.people_v2.update_one({"_id": 7}, {"$set": {"full_name": "A. King"}})
    )
    assert (await applier.apply(renamed)).applied == 1
    original = await _found(db.people)
    assert original == {**replacement, "name": "A. King"}


async def test_a_delete_of_a_document_never_synced_deletes_the_partners_version(
    unsynced: tuple[Any, Any],
) -> None:
    db, applier = unsynced
    deleted = await events_of(db, 1, lambda: db.people.delete_one({"_id": 7}))
    result = await applier.apply(deleted)
    assert result.applied == 1 and result.conflicts == 0
    assert await db.people_v2.find_one({"_id": 7}) is None


async def test_a_partner_write_ahead_still_wins_over_an_older_change(
    unsynced: tuple[Any, Any],
) -> None:
    """Both sides change the age, the original first: the partner's newer age is kept on both
    sides, in one batch or two."""
    db, applier = unsynced

    async def both() -> None:
        await db.people.update_one({"_id": 7}, {"$set": {"age": "31"}})
        await db.people_v2.update_one({"_id": 7}, {"$set": {"age": 32}})

    events = await events_of(db, 2, both)
    result = await applier.apply(events[:1])
    assert result.applied == 0 and result.conflicts == 1
    await applier.apply(events[1:])
    original = await db.people.find_one({"_id": 7})
    partner = await db.people_v2.find_one({"_id": 7})
    assert original is not None and original["age"] == "32"
    assert partner is not None and partner["age"] == 32
