"""A chain's batch looks ahead on every collection it writes: a change on v1 reaches v3
through v2 in the same transaction, so a client's newer writes on v3 must be known to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from worker.engine._applier import _StaleRead
from worker.state import merge_base_id

from .engine_helpers import applier_in_process, events_of
from .test_chains import CHAIN_MODULE
from .test_field_tag_races import _after_reads, _drain, _tagged


@pytest.fixture
async def chain(mongo_uri: str, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """v1 <-> v2 <-> v3, both pairs RUNNING, and an applier in this process."""
    async with applier_in_process(mongo_uri, tmp_path, CHAIN_MODULE, prefix="chain") as (
        db,
        applier,
    ):
        yield {"db": db, "applier": applier}


async def _synced(db: Any, applier: Any, *documents: dict[str, Any]) -> None:
    """Clients insert `documents` on v1; the applier takes them along the chain, then their
    echoes, so that what follows starts from three collections in step."""

    async def insert() -> None:
        for document in documents:
            await db.v1.insert_one(document)

    created = await events_of(db, len(documents), insert)
    async with await db.watch(max_await_time_ms=50) as stream:
        await applier.apply(created)
        await applier.apply(await _drain(stream))  # the echoes


async def _untagged_everywhere(db: Any, document_id: Any) -> dict[str, Any]:
    """The document in each collection of the chain, without the tag field."""
    return {
        name: await db[name].find_one({"_id": document_id}, {"_psync": 0})
        for name in ("v1", "v2", "v3")
    }


async def _split_by_a_stale_read(
    db: Any,
    applier: Any,
    changes: Callable[[], Awaitable[None]],
    count: int,
    client_write: Callable[[], Awaitable[Any]],
) -> tuple[Any, dict[str, Any]]:
    """Clients make `count` changes (`changes`), and the applier takes them in one delivery
    while `client_write` lands right after the batch's reads: the batch is planned again, split
    in parts. Its result, and document 5 in each collection of the chain."""
    changed = await events_of(db, count, changes)
    _after_reads(applier, client_write)
    result = await applier.apply(changed)
    assert applier.batch_limit is not None  # the stale read split the batch
    return result, await _untagged_everywhere(db, 5)


async def test_batch_does_not_recreate_a_document_deleted_further_along_the_chain(
    chain: dict[str, Any],
) -> None:
    """v1 inserts a document; before the worker reads, a client inserts it on v3 and deletes
    it again. The batch holding only v1's insert (the rest of the stream comes after it) must
    not write v1's older content onto v3: v3's delete is newer. Once the rest is applied, the
    whole chain agrees."""
    db, applier = chain["db"], chain["applier"]

    async def writes() -> None:
        await db.v1.insert_one({"_id": 7, "name": "from v1"})
        await db.v3.insert_one({"_id": 7, "display": "from v3"})
        await db.v3.delete_one({"_id": 7})

    events = await events_of(db, 3, writes)
    async with applier.opened():
        # The insert alone, as the first part of a split delivery: v3's writes are ahead of
        # it in the stream (read from the server here, as no reader runs).
        await applier.apply(events[:1])
        assert await db.v3.find_one({"_id": 7}) is None
        await applier.apply(events[1:])
    state = {
        coll: [doc async for doc in db[coll].find({}, {"_id": 1})] for coll in ("v1", "v2", "v3")
    }
    assert state["v1"] == state["v2"] == state["v3"], state


async def test_the_workers_own_delete_further_along_is_not_taken_for_a_clients(
    mongo_uri: str, tmp_path: Path
) -> None:
    """Field tags (a delete carries no tag: only its record tells the worker's own). A client
    deletes the document on v2 while another updates it on v1. The first batch keeps v1 (its
    update is newer) and deletes v3; the next applies v1's update, which re-creates v2, and
    the hop re-creates v3. That batch's look-ahead meets the worker's own delete on v3: taken
    for a client's newer delete, it dropped v3's copy, and v3 stayed without the document."""
    async with applier_in_process(
        mongo_uri, tmp_path, CHAIN_MODULE, prefix="chainown", origin_tag="field"
    ) as (db, applier):
        async with applier.opened():
            created = await events_of(db, 1, lambda: db.v1.insert_one({"_id": 3, "name": "Ann"}))
            await applier.apply(created)

            async def writes() -> None:
                await db.v2.delete_one({"_id": 3})
                await db.v1.update_one({"_id": 3}, {"$set": {"city": "Oslo"}})

            changed = await events_of(db, 2, writes)
            await applier.apply(changed[:1])
            assert await db.v3.find_one({"_id": 3}) is None
            await applier.apply(changed[1:])
        state = {
            name: await db[name].find_one({"_id": 3}, {"_psync": 0}) for name in ("v1", "v2", "v3")
        }
    assert state["v1"] == {"_id": 3, "name": "Ann", "city": "Oslo"}
    assert state["v2"] == {"_id": 3, "full_name": "Ann", "city": "Oslo"}
    assert state["v3"] == {"_id": 3, "display": "Ann", "city": "Oslo"}


async def test_a_write_landed_in_the_middle_by_an_attempt_cut_short_still_goes_further(
    mongo_uri: str, tmp_path: Path
) -> None:
    """Field tags. A client changes `city` on v3; the batch writes v2 and, hopping along the
    chain, v1. Between the batch's read and its writes a client changes another field on v1,
    so the write to v1 matches nothing (its precondition) while the write to v2 lands, and the
    batch is planned again. The retry finds v2 written already: it must still carry the change
    on to v1 (before, it wrote nothing, and v1 kept the old city for good)."""
    async with applier_in_process(
        mongo_uri, tmp_path, CHAIN_MODULE, prefix="chainland", origin_tag="field"
    ) as (db, applier):
        async with applier.opened():
            created = await events_of(
                db, 1, lambda: db.v1.insert_one({"_id": 5, "name": "Ann", "city": "Oslo"})
            )
            await applier.apply(created)
            changed = await events_of(
                db, 1, lambda: db.v3.update_one({"_id": 5}, {"$set": {"city": "Rome"}})
            )
            _after_reads(applier, lambda: db.v1.update_one({"_id": 5}, {"$set": {"zip": "1"}}))
            await applier.apply(changed)
        state = await _untagged_everywhere(db, 5)
    assert state["v1"] == {"_id": 5, "name": "Ann", "city": "Rome", "zip": "1"}
    assert state["v2"] == {"_id": 5, "full_name": "Ann", "city": "Rome"}
    assert state["v3"] == {"_id": 5, "display": "Ann", "city": "Rome"}


@pytest.fixture
async def field_chain(mongo_uri: str, tmp_path: Path) -> AsyncIterator[tuple[Any, Any]]:
    """v1 <-> v2 <-> v3 with field tags, an applier opened in this process, and documents 5 and
    6 in step on all three: (database, applier)."""
    async with applier_in_process(
        mongo_uri, tmp_path, CHAIN_MODULE, prefix="fieldchain", origin_tag="field"
    ) as (db, applier):
        async with applier.opened():
            await _synced(
                db, applier, {"_id": 5, "name": "Ann", "city": "Oslo"}, {"_id": 6, "name": "Cy"}
            )
            yield db, applier


async def test_the_echoes_of_writes_landed_by_an_attempt_cut_short_are_known_as_echoes(
    field_chain: tuple[Any, Any],
) -> None:
    """Field tags. Clients set `city` on v3, `name` on v1, then `city` on v3 again on document
    5; both pairs write v2, so the batch writes it once per change (`city` "Rome", `full_name`,
    `city` "Paris"). A client write to document 6 on v2 after the batch's reads makes the
    batch's write of it match nothing while those of document 5 land, and the batch is planned
    again. The echoes of the landed writes come later although that attempt never committed:
    they are the worker's own, for both pairs. Before, neither pair expected them, and each
    took the first one (city "Rome", older than "Paris") for a client change and wrote it to v1
    and v3 again."""
    db, applier = field_chain

    async def four_changes() -> None:
        await db.v3.update_one({"_id": 5}, {"$set": {"city": "Rome"}})
        await db.v1.update_one({"_id": 5}, {"$set": {"name": "Bo"}})
        await db.v3.update_one({"_id": 5}, {"$set": {"city": "Paris"}})
        await db.v1.update_one({"_id": 6}, {"$set": {"name": "Di"}})

    changed = await events_of(db, 4, four_changes)
    async with await db.watch(max_await_time_ms=50) as stream:
        # Document 6 on v2 is read before the look-ahead; this makes its write stale.
        _after_reads(applier, lambda: db.v2.update_one({"_id": 6}, {"$set": {"zip": "1"}}))
        await applier.apply(changed)
        after = await _drain(stream)
    echoes = [event for event in after if _tagged(event)]
    on_v2 = [e for e in echoes if e["ns"]["coll"] == "v2" and e["documentKey"]["_id"] == 5]
    # The first attempt's writes to v2 landed (the retry had nothing left to write
    # there): the first one's echo holds the older city.
    assert [e["updateDescription"]["updatedFields"].get("city") for e in on_v2] == [
        "Rome",
        None,
        "Paris",
    ]
    # One batch each, as a worker keeping up meets them (in one batch, the later echo
    # hides the earlier one's older city).
    results = []
    async with await db.watch(max_await_time_ms=50) as stream:
        for echo in echoes:
            results.append(await applier.apply([echo]))
        later = await _drain(stream)
    state = await _untagged_everywhere(db, 5)
    # An echo on v2 is skipped by both pairs, one on v1 or v3 by one.
    assert [(r.echoes, r.applied, r.writes) for r in results] == [
        (2 if echo["ns"]["coll"] == "v2" else 1, 0, 0) for echo in echoes
    ]
    assert later == []
    assert state["v1"] == {"_id": 5, "name": "Bo", "city": "Paris"}
    assert state["v2"] == {"_id": 5, "full_name": "Bo", "city": "Paris"}
    assert state["v3"] == {"_id": 5, "display": "Bo", "city": "Paris"}


async def test_a_landed_write_still_goes_further_when_the_retry_is_split(
    field_chain: tuple[Any, Any],
) -> None:
    """Field tags. As above (a client's write to v1 after the batch's reads makes the batch's
    write there stale while its write to v2 lands), with an event on another document first:
    the stale read halves the batch, so the first part commits without the `city` change, and
    the second part plans it again. That part must still carry v2's landed `city` on to v1
    (before, the first part's commit forgot the landed write, and v1 kept the old city)."""
    db, applier = field_chain

    async def two_changes() -> None:
        await db.v1.update_one({"_id": 6}, {"$set": {"name": "Di"}})
        await db.v3.update_one({"_id": 5}, {"$set": {"city": "Rome"}})

    result, state = await _split_by_a_stale_read(
        db, applier, two_changes, 2, lambda: db.v1.update_one({"_id": 5}, {"$set": {"zip": "1"}})
    )
    assert result.events == 2
    assert state["v1"] == {"_id": 5, "name": "Ann", "city": "Rome", "zip": "1"}
    assert state["v2"] == {"_id": 5, "full_name": "Ann", "city": "Rome"}
    assert state["v3"] == {"_id": 5, "display": "Ann", "city": "Rome"}


async def test_a_landed_write_is_carried_on_by_the_pair_that_made_it(
    field_chain: tuple[Any, Any],
) -> None:
    """Field tags. Clients change document 5 on v3 (`display`), v2 (`zip`) and v1 (`city`); the
    batch writes v2 for the first and the last, v1 and v3 for the others. A client write to v3
    after the batch's reads makes the write there stale while those to v2 and v1 land; the
    batch is split to one event per part. The part of v3's change finds v2 written and carries
    it on to v1, its other side. That must not count as carrying v1's change: the part of v1's
    change still carries v2's landed `city` on to v3 (before, v3 never got it)."""
    db, applier = field_chain

    async def three_changes() -> None:
        await db.v3.update_one({"_id": 5}, {"$set": {"display": "Bo"}})
        await db.v2.update_one({"_id": 5}, {"$set": {"zip": "9"}})
        await db.v1.update_one({"_id": 5}, {"$set": {"city": "Rome"}})

    result, state = await _split_by_a_stale_read(
        db, applier, three_changes, 3, lambda: db.v3.update_one({"_id": 5}, {"$set": {"tel": "1"}})
    )
    assert result.events == 3
    assert state["v3"] == {"_id": 5, "display": "Bo", "city": "Rome", "zip": "9", "tel": "1"}
    assert state["v2"] == {"_id": 5, "full_name": "Bo", "city": "Rome", "zip": "9"}
    assert state["v1"] == {"_id": 5, "name": "Bo", "city": "Rome", "zip": "9"}


async def test_a_landed_write_is_carried_beside_newer_client_writes(
    field_chain: tuple[Any, Any],
) -> None:
    """Field tags. A client changes `city` on v3; the batch's write to v2 lands and its write to
    v1 is stale (a client wrote v1 after the batch's reads). Before the retry, one client
    renames the document on v1 and then another on v2. The retry carries v2's landed `city` on
    to v1 (the change as the attempt wrote it); the names are newer changes with events of
    their own, and v2's, the last, wins everywhere."""
    db, applier = field_chain
    changed = await events_of(
        db, 1, lambda: db.v3.update_one({"_id": 5}, {"$set": {"city": "Rome"}})
    )
    _after_reads(applier, lambda: db.v1.update_one({"_id": 5}, {"$set": {"zip": "1"}}))
    verify = applier._verify_written
    renamed: list[Any] = []

    async def two_renames() -> None:
        await db.v1.update_one({"_id": 5}, {"$set": {"name": "Cy"}})
        await db.v2.update_one({"_id": 5}, {"$set": {"full_name": "Bo"}})

    async def rename_after_a_stale_read(prepared: Any) -> None:
        try:
            await verify(prepared)
        except _StaleRead:
            if not renamed:
                renamed.extend(await events_of(db, 2, two_renames))
            raise

    applier._verify_written = rename_after_a_stale_read
    async with await db.watch(max_await_time_ms=50) as stream:
        await applier.apply(changed)
        echoes = [event for event in await _drain(stream) if _tagged(event)]
    applier._verify_written = verify
    assert len(renamed) == 2
    # The clients' renames, then the echoes of the retry, as the stream has them.
    await applier.apply(renamed + echoes)
    state = await _untagged_everywhere(db, 5)
    assert state["v2"] == {"_id": 5, "full_name": "Bo", "city": "Rome"}
    assert state["v3"] == {"_id": 5, "display": "Bo", "city": "Rome"}
    assert state["v1"] == {"_id": 5, "name": "Bo", "city": "Rome", "zip": "1"}


async def test_a_change_folded_in_before_a_split_is_not_applied_again_in_a_later_part(
    field_chain: tuple[Any, Any],
) -> None:
    """Field tags. Clients change document 6 on v1, then document 5: `city` on v3, `name` on
    v1 ("Bo"), `display` on v3 ("Cy", the last name). A client write to document 6 on v2 after
    the batch's reads makes that write stale while all of document 5's land, and the batch is
    split in two. The v1 <-> v2 pair's record of document 5 says its writes landed, up to the
    time of the last change, which reached that pair by the chain (so no change of its own has
    that time). The first part settles that record; the second plans `name` "Bo" again and must
    find it folded in. Before, the first part's commit dropped the record's note of what was
    folded in, and the second part wrote the older "Bo" over "Cy"."""
    db, applier = field_chain

    async def four_changes() -> None:
        await db.v1.update_one({"_id": 6}, {"$set": {"zip": "6"}})
        await db.v3.update_one({"_id": 5}, {"$set": {"city": "Rome"}})
        await db.v1.update_one({"_id": 5}, {"$set": {"name": "Bo"}})
        await db.v3.update_one({"_id": 5}, {"$set": {"display": "Cy"}})

    result, state = await _split_by_a_stale_read(
        db, applier, four_changes, 4, lambda: db.v2.update_one({"_id": 6}, {"$set": {"tel": "1"}})
    )
    assert result.events == 4
    assert state["v1"] == {"_id": 5, "name": "Cy", "city": "Rome"}
    assert state["v2"] == {"_id": 5, "full_name": "Cy", "city": "Rome"}
    assert state["v3"] == {"_id": 5, "display": "Cy", "city": "Rome"}


async def test_a_change_to_a_document_without_a_merge_base_is_folded_in_too(
    field_chain: tuple[Any, Any],
) -> None:
    """Field tags. Document 5 has no merge base in the v2 <-> v3 pair (one it does not know
    whole: its changes there go by cluster time). Clients set `zip` on v3 ("A"), then on v1
    ("B", the later). The batch writes v2 for both; a client write to document 6 on v2 after
    its reads makes it plan again, split in parts. The part of v3's change must find it folded
    in. Before, such a document had no pending record, so that part planned the change again
    by cluster time and wrote the older "A" over the "B" the chain had brought to v2 (a write
    of the worker's own is no newer client write to the look-ahead)."""
    db, applier = field_chain
    await applier.store.merge_base.delete_one({"_id": merge_base_id(f"{db.name}.v2", 5)})

    async def three_changes() -> None:
        await db.v1.update_one({"_id": 6}, {"$set": {"zip": "6"}})
        await db.v3.update_one({"_id": 5}, {"$set": {"zip": "A"}})
        await db.v1.update_one({"_id": 5}, {"$set": {"zip": "B"}})

    result, state = await _split_by_a_stale_read(
        db, applier, three_changes, 3, lambda: db.v2.update_one({"_id": 6}, {"$set": {"tel": "1"}})
    )
    assert result.events == 3
    assert state["v1"] == {"_id": 5, "name": "Ann", "city": "Oslo", "zip": "B"}
    assert state["v2"] == {"_id": 5, "full_name": "Ann", "city": "Oslo", "zip": "B"}
    assert state["v3"] == {"_id": 5, "display": "Ann", "city": "Oslo", "zip": "B"}
