"""A chain's batch looks ahead on every collection it writes: a change on v1 reaches v3
through v2 in the same transaction, so a client's newer writes on v3 must be known to it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from .engine_helpers import applier_in_process, events_of
from .test_chains import CHAIN_MODULE


@pytest.fixture
async def chain(mongo_uri: str, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """v1 <-> v2 <-> v3, both pairs RUNNING, and an applier in this process."""
    async with applier_in_process(mongo_uri, tmp_path, CHAIN_MODULE, prefix="chain") as (
        db,
        applier,
    ):
        yield {"db": db, "applier": applier}


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
