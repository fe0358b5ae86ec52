"""Without transactions each target write expects the document as the server holds it, and the
server compares documents field by field in order (`$eq`). A batch that writes one document
twice (a chain: both pairs write the middle collection) expects, on the second write, what the
first left: fields in the server's order, which appends an update's new fields sorted by name,
not in the order the worker's patch listed them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from worker.engine._applier import _StaleRead

from .engine_helpers import applier_in_process, events_of
from .test_chains import CHAIN_MODULE


async def test_a_document_written_twice_in_a_batch_is_expected_as_the_server_holds_it(
    mongo_uri: str, tmp_path: Path
) -> None:
    """v1 is replaced with two new fields named out of order (`zeta`, `alpha`), and a client
    then renames the document on v3: one batch writes v2 for the first pair (the server appends
    `alpha`, `zeta`) and then for the second. The second write's precondition must hold at
    once; before, it expected `zeta`, `alpha`, matched nothing, and the batch was planned again
    and again until the worker gave its preconditions up."""
    async with applier_in_process(
        mongo_uri, tmp_path, CHAIN_MODULE, prefix="order", origin_tag="field"
    ) as (db, applier):
        stale: list[Any] = []
        verify = applier._verify_written

        async def counted(prepared: Any) -> None:
            try:
                await verify(prepared)
            except _StaleRead as exc:
                stale.append(exc.documents)
                raise

        applier._verify_written = counted
        async with applier.opened():
            created = await events_of(db, 1, lambda: db.v1.insert_one({"_id": 7, "name": "Ann"}))
            await applier.apply(created)

            async def writes() -> None:
                await db.v1.replace_one({"_id": 7}, {"name": "Ann", "zeta": 1, "alpha": 2})
                await db.v3.update_one({"_id": 7}, {"$set": {"display": "Bo"}})

            changed = await events_of(db, 2, writes)
            with anyio.fail_after(30):
                result = await applier.apply(changed)
        documents = {
            name: await db[name].find_one({"_id": 7}, {"_psync": 0}) for name in ("v1", "v2", "v3")
        }
    assert stale == []
    assert result.events == 2 and result.writes == 4  # v2 and v3, then v2 and v1
    assert documents["v1"] == {"_id": 7, "name": "Bo", "zeta": 1, "alpha": 2}
    assert documents["v2"] == {"_id": 7, "full_name": "Bo", "zeta": 1, "alpha": 2}
    assert documents["v3"] == {"_id": 7, "display": "Bo", "zeta": 1, "alpha": 2}
    assert list(documents["v2"]) == ["_id", "full_name", "alpha", "zeta"]
