"""The batch look-ahead: newer client writes to a batch's targets, from the reader's unread
events first and from the server only after them."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from bson import Timestamp
from pymongo import AsyncMongoClient

from transforms import load_registry
from worker.engine._applier import Applier
from worker.engine._lease import Lease
from worker.metrics import Metrics
from worker.state import StateStore, id_key

from .engine_helpers import PEOPLE_MODULE, write_module


async def _events(stream: Any, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for _ in range(200):
        event = await stream.try_next()
        if event is not None:
            events.append(event)
        if len(events) == count:
            return events
    raise AssertionError(f"saw {len(events)} of {count} change events")


async def test_unread_events_come_first_and_the_server_is_read_only_after_them(
    mongo_uri: str, tmp_path: Path
) -> None:
    """A batch's look-ahead takes newer writes from the reader's unread events, then asks the
    server only for what follows the newest of them, and stops at the snapshot's time."""
    name = f"ahead_{uuid.uuid4().hex[:8]}"
    registry = load_registry(
        [write_module(tmp_path, name, PEOPLE_MODULE, db=name)], entry_points=False
    )
    pair = registry.pairs[0]
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        db = client[name]
        store = StateStore(client[f"{name}_state"])
        await store.ensure_collections()
        lease = Lease(store, "look-ahead-test", 30.0)
        assert await lease.try_acquire()
        applier = Applier(client, store, registry, lease=lease, metrics=Metrics())
        await db.people.insert_many([{"_id": i, "name": f"n{i}"} for i in (1, 2)])
        await db.people_v2.insert_many([{"_id": i, "full_name": f"n{i}"} for i in (1, 2)])
        async with await db.watch(max_await_time_ms=50) as stream:
            await db.people.update_one({"_id": 1}, {"$set": {"name": "batch"}})
            await db.people_v2.update_one({"_id": 1}, {"$set": {"full_name": "newer"}})
            await db.people_v2.update_one({"_id": 2}, {"$set": {"full_name": "not a target"}})
            await db.people_v2.update_one({"_id": 1}, {"$set": {"loyalty": 5}})
            batch_event, newer, other, tail = await _events(stream, 4)
        work = [(pair, "original", batch_event, 0)]
        checkpoint = (batch_event["_id"], batch_event["clusterTime"])
        target = (pair.partner, id_key(1))
        # The reader holds `newer` (reported here with a path the server's event does not
        # have, to tell which copy was read) and `other`; the server holds `tail` after them.
        held = {**newer, "updateDescription": {"updatedFields": {"marker": 1}, "removedFields": []}}
        applier.unread = lambda: ([held, other], other["_id"])
        async with applier.opened():
            assert applier.session is not None
            await client.admin.command("ping", session=applier.session)  # the snapshot's time
            read_ahead = await applier._peek_ahead(work, checkpoint, read_ahead=True)
            from_server = await applier._peek_ahead(work, checkpoint, read_ahead=False)
            # An unread event past the snapshot ends the look-ahead: nothing newer is asked for.
            horizon = applier.session.operation_time
            assert horizon is not None
            late = {**held, "clusterTime": Timestamp(horizon.time + 60, 1)}
            applier.unread = lambda: ([late, other], other["_id"])
            past_snapshot = await applier._peek_ahead(work, checkpoint, read_ahead=True)
        assert read_ahead == {target: frozenset({"marker", "loyalty"})}
        assert from_server == {target: frozenset({"full_name", "loyalty"})}
        assert past_snapshot == {}
        assert tail["documentKey"] == {"_id": 1}
    finally:
        await client.drop_database(name)
        await client.drop_database(f"{name}_state")
        await client.close()
