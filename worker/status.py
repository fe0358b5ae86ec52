"""The status object of INTERFACE.md, read from the state database alone.

It needs no running worker and no transform modules, so `partner-sync status` works from any
machine that reaches the server.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pymongo import AsyncMongoClient

from worker import __version__
from worker.config import Config
from worker.state import StateStore, state_taken_up

__all__ = ["collect_status", "status_from_state"]


async def collect_status(config: Config) -> dict[str, Any]:
    """Read the lease and every pair's record and shape them as the status object."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        config.uri, tz_aware=True, appname="partner-sync-status", serverSelectionTimeoutMS=5000
    )
    try:
        return await status_from_state(StateStore(client[config.state_db]))
    finally:
        await client.close()


async def status_from_state(store: StateStore) -> dict[str, Any]:
    """The status object for one state database."""
    lease = await store.leases.find_one({"_id": store.stream}) or {}
    pairs = []
    for original, doc in sorted((await store.pair_docs()).items()):
        counters = doc.get("counters") or {}
        backfill = doc.get("backfill") or {}
        last_write = doc.get("last_client_write") or {}
        dead_letters = await store.dead_letter_count(original)
        # Changes held for the pair while paused, and not replayed yet.
        held = await store.held_events.count_documents({"pair": original})
        pairs.append(
            {
                "original": original,
                "partner": doc.get("partner"),
                "state": doc.get("state", "NOT_STARTED"),
                "transform_version": doc.get("transform_version"),
                "lag_seconds": doc.get("lag_seconds"),
                "applied": {
                    "forward": int(counters.get("applied_forward", 0)),
                    "backward": int(counters.get("applied_backward", 0)),
                },
                "echoes_skipped": int(counters.get("echoes_skipped", 0)),
                "conflicts": int(counters.get("conflicts", 0)),
                "dead_letters": dead_letters,
                "last_client_write": {
                    "original": _iso(last_write.get("original")),
                    "partner": _iso(last_write.get("partner")),
                },
                "backfill": {
                    "done": bool(backfill.get("done", False)),
                    "docs": int(backfill.get("docs", 0)),
                },
                "resync_reason": doc.get("resync_reason"),
                "state_seen": state_taken_up(doc),
                "held": held,
            }
        )
    holder = lease.get("holder")
    return {
        "worker": {
            "version": __version__,
            "lease_holder": holder,
            "lease_expires": _iso(lease.get("expires_at")) if holder else None,
        },
        "pairs": pairs,
    }


def _iso(moment: Any) -> str | None:
    if not isinstance(moment, dt.datetime):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return str(moment.isoformat()).replace("+00:00", "Z")
