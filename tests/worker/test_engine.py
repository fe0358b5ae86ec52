"""The sync engine end to end through the wire: a worker in process, clients on both sides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.worker.engine_helpers import (
    PEOPLE_MODULE,
    eventually,
    make_config,
    running_worker,
    write_module,
)


async def _find(collection: Any, document_id: Any) -> dict[str, Any] | None:
    found: dict[str, Any] | None = await collection.find_one({"_id": document_id})
    return found


@pytest.mark.parametrize("origin_tag", ["session", "field"])
async def test_every_event_kind_both_ways(
    mongo_uri: str, aclient: Any, db_name: str, tmp_path: Path, origin_tag: str
) -> None:
    """Inserts, updates, replaces and deletes on either side reach the other side converted."""
    module = write_module(tmp_path, f"people_{origin_tag}", PEOPLE_MODULE, db=db_name)
    config = make_config(mongo_uri, db_name, module, origin_tag=origin_tag)
    original = aclient[db_name]["people"]
    partner = aclient[db_name]["people_v2"]
    async with running_worker(config) as worker:
        await original.insert_one(
            {
                "_id": 1,
                "name": "Ann",
                "zip": "0150",
                "age": "41",
                "first": "Ann",
                "last": "Lee",
                "legacy": True,
                "city": "Oslo",
            }
        )
        expected = {
            "_id": 1,
            "full_name": "Ann",
            "address": {"zip": "0150"},
            "age": 41,
            "tier": "basic",
            "loyalty": 0,
            "display_name": "Ann Lee",
            "city": "Oslo",
        }

        async def partner_is(doc: dict[str, Any]) -> bool:
            current = await _find(partner, 1)
            return (
                current is not None
                and {k: v for k, v in current.items() if k != config.tag_field} == doc
            )

        await eventually(lambda: partner_is(expected), what="insert copied forward")

        await original.update_one({"_id": 1}, {"$set": {"age": "42", "last": "Ray"}})
        expected.update(age=42, display_name="Ann Ray")
        await eventually(lambda: partner_is(expected), what="update copied forward")

        await partner.update_one({"_id": 1}, {"$set": {"full_name": "Anna", "loyalty": 7}})

        async def original_has(**fields: Any) -> bool:
            current = await _find(original, 1)
            return current is not None and all(current.get(k) == v for k, v in fields.items())

        await eventually(lambda: original_has(name="Anna", legacy=True), what="update backward")
        current = await _find(original, 1)
        assert current is not None and "loyalty" not in current

        await partner.update_one({"_id": 1}, {"$set": {"display_name": "Bo Berg"}})
        await eventually(lambda: original_has(first="Bo", last="Berg"), what="derive backward")

        await original.replace_one(
            {"_id": 1}, {"name": "Cy", "age": "7", "first": "Cy", "last": "Do", "legacy": False}
        )
        await eventually(
            lambda: partner_is(
                {
                    "_id": 1,
                    "full_name": "Cy",
                    "age": 7,
                    "tier": "basic",
                    "loyalty": 7,
                    "display_name": "Cy Do",
                }
            ),
            what="replace copied as field patches, partner-only field kept",
        )

        await partner.delete_one({"_id": 1})

        async def original_gone() -> bool:
            return await _find(original, 1) is None

        await eventually(original_gone, what="delete copied backward")
        status = await worker.store.pair_doc(f"{db_name}.people")
        assert status is not None
        counters = status["counters"]
        assert counters["applied_forward"] >= 3 and counters["applied_backward"] >= 3


@pytest.mark.parametrize("origin_tag", ["session", "field"])
async def test_pipeline_updates_both_ways(
    mongo_uri: str, aclient: Any, db_name: str, tmp_path: Path, origin_tag: str
) -> None:
    """Clients that update with pipelines (`$set` from other fields, `$unset`, `$replaceWith`
    of a merged document) are synced like operator updates, in both directions."""
    module = write_module(tmp_path, f"people_pipe_{origin_tag}", PEOPLE_MODULE, db=db_name)
    config = make_config(mongo_uri, db_name, module, origin_tag=origin_tag)
    original = aclient[db_name]["people"]
    partner = aclient[db_name]["people_v2"]
    pad = "p" * 300  # large enough that MongoDB logs a pipeline update as a delta

    async def has(collection: Any, **fields: Any) -> bool:
        current = await _find(collection, 1)
        return current is not None and all(
            (k not in current) if v is None else current.get(k) == v for k, v in fields.items()
        )

    async with running_worker(config):
        await original.insert_one({"_id": 1, "name": "Ann", "zip": "0150", "pad": pad})
        await eventually(lambda: has(partner, full_name="Ann"), what="insert forward")
        await original.update_one(
            {"_id": 1},
            [{"$set": {"name": {"$concat": ["$name", " Lee"]}}}, {"$unset": "zip"}],
        )
        await eventually(
            lambda: has(partner, full_name="Ann Lee", address=None), what="pipeline forward"
        )
        await partner.update_one(
            {"_id": 1},
            [{"$replaceWith": {"$mergeObjects": ["$$ROOT", {"full_name": "Bo", "city": "Oslo"}]}}],
        )
        await eventually(
            lambda: has(original, name="Bo", city="Oslo", zip=None), what="pipeline backward"
        )
        assert await has(partner, full_name="Bo", city="Oslo", pad=pad)


async def test_each_client_write_causes_one_worker_write(
    mongo_uri: str, aclient: Any, db_name: str, tmp_path: Path
) -> None:
    """N client writes produce exactly N worker writes, and every echo is recognised."""
    module = write_module(tmp_path, "people_echo", PEOPLE_MODULE, db=db_name)
    config = make_config(mongo_uri, db_name, module)
    original = aclient[db_name]["people"]
    partner = aclient[db_name]["people_v2"]
    async with await aclient[db_name].watch() as stream, running_worker(config) as worker:
        for i in range(10):
            await original.insert_one({"_id": i, "name": f"n{i}", "age": "1"})

        async def copied() -> bool:
            return bool(await partner.count_documents({}) == 10)

        await eventually(copied, what="10 inserts copied")
        for i in range(10):
            result = await partner.update_one({"_id": i}, {"$set": {"full_name": f"m{i}"}})
            assert result.modified_count == 1

        last: dict[str, Any] = {}

        async def settled() -> bool:
            doc = await worker.store.pair_doc(f"{db_name}.people")
            counters = (doc or {}).get("counters", {})
            last["counters"] = counters
            return bool(
                counters.get("applied_forward") == 10
                and counters.get("applied_backward") == 10
                and counters.get("echoes_skipped") == 20
            )

        await eventually(settled, within=20, what=f"20 applied, 20 echoes: {last}")
        worker_writes = 0
        client_writes = 0
        for _ in range(400):
            event = await stream.try_next()
            if event is None:
                break
            if event["ns"]["coll"] not in ("people", "people_v2"):
                continue
            assert worker.applier is not None
            if event.get("lsid") and event["lsid"]["id"] in worker.applier.own_sessions:
                worker_writes += 1
            else:
                client_writes += 1
        assert (client_writes, worker_writes) == (20, 20)


async def test_idle_worker_moves_its_checkpoint_past_unrelated_writes(
    mongo_uri: str, aclient: Any, db_name: str, tmp_path: Path
) -> None:
    """While its pairs are quiet, the worker's checkpoint follows the stream's high-water mark,
    so heavy writes to other collections cannot push its resume point off the oplog."""
    module = write_module(tmp_path, "people_idle", PEOPLE_MODULE, db=db_name)
    config = make_config(mongo_uri, db_name, module)
    async with running_worker(config) as worker:
        await aclient[db_name]["people"].insert_one({"_id": 1, "name": "a"})
        await eventually(
            lambda: aclient[db_name]["people_v2"].find_one({"_id": 1}), what="first copy"
        )

        async def echo_seen() -> bool:
            doc = await worker.store.pair_doc(f"{db_name}.people")
            return bool(doc and doc["counters"]["echoes_skipped"] == 1)

        await eventually(echo_seen, what="the copy's echo to be applied")
        first = await worker.store.checkpoint()
        assert first is not None

        async def moved() -> bool:
            await aclient[db_name]["unrelated"].insert_one({})
            now = await worker.store.checkpoint()
            return bool(now and now["resume_token"] != first["resume_token"])

        await eventually(moved, within=15, what="checkpoint to advance while idle")
        # With the cluster time the new resume point stands for: anything waiting for the
        # checkpoint to pass a time (verify, a benchmark) sees an idle worker caught up.
        now = await worker.store.checkpoint()
        assert now is not None and now["cluster_time"] is not None
        assert now["cluster_time"] > first["cluster_time"]


BLOB_MODULE = """
from transforms import Pair

blobs = Pair(original="{db}.blobs", partner="{db}.blobs_v2", unmapped="keep")
blobs.convert("blob", forward=lambda b: b * 2, backward=lambda b: b[: len(b) // 2])
"""


async def test_documents_too_large_for_the_target_are_dead_letters(
    mongo_uri: str, aclient: Any, db_name: str, tmp_path: Path
) -> None:
    """A document whose converted form exceeds 16 MiB becomes a dead letter, a document too
    large for a merge base record still syncs, and the stream goes on."""
    module = write_module(tmp_path, "blobs", BLOB_MODULE, db=db_name)
    config = make_config(mongo_uri, db_name, module)
    original = aclient[db_name]["blobs"]
    partner = aclient[db_name]["blobs_v2"]
    async with running_worker(config) as worker:
        await original.insert_one({"_id": "huge", "blob": "x" * (9 * 1024 * 1024)})
        await original.insert_one({"_id": "large", "blob": "y" * (6 * 1024 * 1024)})
        await original.insert_one({"_id": "small", "blob": "z"})

        async def small_copied() -> bool:
            return await partner.find_one({"_id": "small"}) is not None

        await eventually(small_copied, within=30, what="the stream to go on past the big ones")
        letters = [d async for d in worker.store.dead_letters.find({})]
        assert [d["document_id"] for d in letters] == ["huge"]
        assert "too large" in letters[0]["error"].lower() or letters[0]["code"] in (10334, 2)
        large = await partner.find_one({"_id": "large"}, {"_id": 1})
        assert large is not None
