"""Field names an update path cannot address: a `.` inside, or a leading `$` (MongoDB 5.0 and
later store both). Below the top level such a sub-document is written whole; such a top-level
field is written by name (`$setField`), never as a path to some other field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.worker.engine_helpers import (
    PEOPLE_MODULE,
    eventually,
    make_config,
    next_events,
    running_worker,
    write_module,
)

# Each test runs on the server under test and on MongoDB 6.0, whose update events have no
# `disambiguatedPaths` (6.1): there the worker works a path's components out from the merge base.
pytestmark = pytest.mark.parametrize("mongo_uri", ["current", "6.0"], indirect=True)


def _without(document: dict[str, Any] | None, *names: str) -> dict[str, Any] | None:
    if document is None:
        return None
    return {k: v for k, v in document.items() if k not in names}


@pytest.mark.parametrize("origin_tag", ["session", "field"])
async def test_sub_documents_with_dotted_and_dollar_names_sync_whole(
    mongo_uri: str, aclient: Any, db_name: str, tmp_path: Path, origin_tag: str
) -> None:
    """A sub-document keyed by names such as "v1.2" or "$ref" reaches the other side exactly,
    both ways: `$set: {"prices.v1.2": ...}` would have written field `2` of `prices.v1`."""
    module = write_module(tmp_path, f"people_names_{origin_tag}", PEOPLE_MODULE, db=db_name)
    config = make_config(mongo_uri, db_name, module, origin_tag=origin_tag)
    original = aclient[db_name]["people"]
    partner = aclient[db_name]["people_v2"]
    tag = config.tag_field

    async def partner_prices(expected: dict[str, Any]) -> bool:
        found = await partner.find_one({"_id": 1})
        return found is not None and found.get("prices") == expected

    async def original_prices(expected: dict[str, Any]) -> bool:
        found = await original.find_one({"_id": 1})
        return found is not None and found.get("prices") == expected

    async with running_worker(config) as worker:
        await original.insert_one(
            {"_id": 1, "name": "Ann", "prices": {"v1.2": 3, "$ref": "x", "k": 1}}
        )
        await eventually(
            lambda: partner_prices({"v1.2": 3, "$ref": "x", "k": 1}), what="insert forward"
        )
        await original.replace_one(
            {"_id": 1}, {"name": "Ann", "prices": {"v1.2": 4, "$ref": "x", "k": 1}}
        )
        await eventually(
            lambda: partner_prices({"v1.2": 4, "$ref": "x", "k": 1}), what="replace forward"
        )
        await original.update_one({"_id": 1}, {"$set": {"prices.k": 2}})
        await eventually(
            lambda: partner_prices({"v1.2": 4, "$ref": "x", "k": 2}),
            what="a plain field of the sub-document updated forward",
        )
        await partner.update_one({"_id": 1}, {"$set": {"prices": {"v1.2": 5, "$ref": "y", "k": 2}}})
        await eventually(
            lambda: original_prices({"v1.2": 5, "$ref": "y", "k": 2}), what="update backward"
        )
        await partner.update_one({"_id": 1}, {"$set": {"prices.$ref": "z"}})
        await eventually(
            lambda: original_prices({"v1.2": 5, "$ref": "z", "k": 2}),
            what="a $-prefixed field of the sub-document updated backward",
        )
        before = _without(await original.find_one({"_id": 1}), tag)
        assert before is not None and "v1" not in before["prices"]
        assert [d async for d in worker.store.dead_letters.find({})] == []


@pytest.mark.parametrize("origin_tag", ["session", "field"])
@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(1, 2, id="a-value"),
        # A sub-document under such a name was once diffed into it: `$set: {"a.b.c": 2}`
        # created field `c` of `b` of a new field `a`, silently.
        pytest.param({"c": 1, "d": 1}, {"c": 2, "d": 1}, id="a-sub-document"),
    ],
)
async def test_top_level_fields_with_such_names_are_written_by_name(
    mongo_uri: str,
    aclient: Any,
    db_name: str,
    tmp_path: Path,
    origin_tag: str,
    first: Any,
    second: Any,
) -> None:
    """Top-level fields named "a.b" and "$price" are copied when their document is created,
    and a later change, removal or addition of one is written by name (`$setField` in a
    pipeline update), in both directions; no nested `a` or `price` ever appears."""
    module = write_module(tmp_path, f"people_top_{origin_tag}", PEOPLE_MODULE, db=db_name)
    config = make_config(mongo_uri, db_name, module, origin_tag=origin_tag)
    original = aclient[db_name]["people"]
    partner = aclient[db_name]["people_v2"]
    tag = config.tag_field

    async def fields_of(collection: Any) -> dict[str, Any] | None:
        found = await collection.find_one({"_id": 1})
        return _without(found, "_id", tag, "name", "full_name", "tier", "loyalty")

    def holds(collection: Any, expected: dict[str, Any]) -> Any:
        async def check() -> bool:
            return await fields_of(collection) == expected

        return check

    async with running_worker(config) as worker:
        await original.insert_one({"_id": 1, "name": "Ann", "a.b": first, "$price": 5})
        await eventually(holds(partner, {"a.b": first, "$price": 5}), what="the insert copied")
        # A replacement may not hold a `$` name: a client replaces such a document this way.
        await original.update_one(
            {"_id": 1},
            [{"$replaceWith": {"$literal": {"_id": 1, "name": "Ann", "a.b": second, "$price": 5}}}],
        )
        await eventually(holds(partner, {"a.b": second, "$price": 5}), what="a change forward")
        await partner.update_one(
            {"_id": 1},
            [
                {
                    "$replaceWith": {
                        "$setField": {
                            "field": {"$literal": "$price"},
                            "input": "$$ROOT",
                            "value": {"$literal": "$6"},
                        }
                    }
                }
            ],
        )
        await eventually(holds(original, {"a.b": second, "$price": "$6"}), what="backward")
        await original.update_one(
            {"_id": 1},
            [{"$replaceWith": {"$literal": {"_id": 1, "name": "Ann", "$price": "$6", "x.y": [1]}}}],
        )
        await eventually(
            holds(partner, {"$price": "$6", "x.y": [1]}), what="one removed, one added"
        )
        assert [d async for d in worker.store.dead_letters.find({})] == []
        for side in (original, partner):
            stored = await side.find_one({"_id": 1})
            assert stored is not None and not {"a", "x", "price"} & set(stored)


async def test_a_name_that_could_be_a_path_through_another_field_is_a_dead_letter(
    mongo_uri: str, aclient: Any, db_name: str, tmp_path: Path
) -> None:
    """A document with both a field `a` and a field `a.b`: a change to `a.b` cannot be told
    from a change to field `b` of `a`, so its event is a dead letter that names the field, the
    target keeps its value, and the stream goes on."""
    module = write_module(tmp_path, "people_top_names", PEOPLE_MODULE, db=db_name)
    config = make_config(mongo_uri, db_name, module)
    original = aclient[db_name]["people"]
    partner = aclient[db_name]["people_v2"]
    async with running_worker(config) as worker:
        await original.insert_one({"_id": 1, "name": "Ann", "a": {"b": 0}, "a.b": 1})

        async def copied() -> Any:
            return await partner.find_one({"_id": 1})

        created = await eventually(copied, what="the insert copied whole")
        assert created["a.b"] == 1 and created["a"] == {"b": 0}
        await original.replace_one({"_id": 1}, {"name": "Ann", "a": {"b": 0}, "a.b": 2})
        await original.insert_one({"_id": 2, "name": "Bo"})

        async def bo_copied() -> bool:
            return await partner.find_one({"_id": 2}) is not None

        await eventually(bo_copied, what="the stream to go on")
        letters = [d async for d in worker.store.dead_letters.find({})]
        assert [(d["document_id"], d["field"]) for d in letters] == [(1, "a.b")]
        assert "also has a top-level field 'a'" in letters[0]["error"]
        kept = await partner.find_one({"_id": 1})
        assert kept is not None and kept["a.b"] == 1 and kept["a"] == {"b": 0}


async def test_such_a_sub_document_follows_its_last_writer_whole(
    mongo_uri: str, aclient: Any, db_name: str, tmp_path: Path
) -> None:
    """Written whole, a sub-document with a dotted name is last-writer-wins as a whole: an
    older change to `prices.v1.2` on one side loses to a newer write of `prices.k` on the
    other, and both sides converge on the newer sub-document."""
    module = write_module(tmp_path, "people_lww_names", PEOPLE_MODULE, db=db_name)
    config = make_config(mongo_uri, db_name, module)
    original = aclient[db_name]["people"]
    partner = aclient[db_name]["people_v2"]
    async with running_worker(config):
        await original.insert_one({"_id": 1, "name": "Ann", "prices": {"v1.2": 3, "k": 1}})

        async def copied() -> bool:
            return await partner.find_one({"_id": 1}) is not None

        await eventually(copied, what="the insert copied")
    # Both writes wait for the next worker, in this order.
    await original.update_one({"_id": 1}, {"$set": {"prices": {"v1.2": 4, "k": 1}}})
    await partner.update_one({"_id": 1}, {"$set": {"prices.k": 2}})
    newer = {"v1.2": 3, "k": 2}

    async def converged() -> bool:
        left = await original.find_one({"_id": 1})
        right = await partner.find_one({"_id": 1})
        return (
            left is not None
            and right is not None
            and left["prices"] == newer
            and right["prices"] == newer
        )

    async with running_worker(config) as worker:
        await eventually(converged, what="both sides on the newer sub-document")
        status = await worker.store.pair_doc(f"{db_name}.people")
        assert status is not None and status["counters"]["conflicts"] >= 1


@pytest.mark.parametrize("origin_tag", ["session", "field"])
async def test_an_update_event_naming_a_dotted_field_is_placed_by_its_components(
    mongo_uri: str, aclient: Any, db_name: str, tmp_path: Path, origin_tag: str
) -> None:
    """A pipeline update of one field of such a sub-document reports the path
    `prices.v1.2`; its `disambiguatedPaths` (expanded events) says it names field "v1.2" of
    `prices`, and the worker applies it to its merge base by those components; a split at each
    `.` would have named field `2` of `prices.v1`."""
    module = write_module(tmp_path, f"people_dotted_{origin_tag}", PEOPLE_MODULE, db=db_name)
    config = make_config(mongo_uri, db_name, module, origin_tag=origin_tag)
    original = aclient[db_name]["people"]
    partner = aclient[db_name]["people_v2"]
    pad = "*" * 256  # large enough that the server logs a field-level diff of `prices`

    def pipeline(value: int) -> list[dict[str, Any]]:
        return [{"$set": {"prices": {"$literal": {"v1.2": value, "pad": pad}}}}]

    async def prices_are(collection: Any, value: int) -> bool:
        found = await collection.find_one({"_id": 1})
        return found is not None and found.get("prices") == {"v1.2": value, "pad": pad}

    async with running_worker(config) as worker:
        await original.insert_one({"_id": 1, "name": "Ann", "prices": {"v1.2": 3, "pad": pad}})
        await eventually(lambda: prices_are(partner, 3), what="insert forward")
        async with await original.watch(show_expanded_events=True) as stream:
            await original.update_one({"_id": 1}, pipeline(4))
            [event] = await next_events(stream, 1)
        assert event["updateDescription"]["updatedFields"] == {"prices.v1.2": 4}
        await eventually(lambda: prices_are(partner, 4), what="pipeline update forward")
        await partner.update_one({"_id": 1}, pipeline(5))
        await eventually(lambda: prices_are(original, 5), what="pipeline update backward")
        assert [d async for d in worker.store.dead_letters.find({})] == []
