"""Without transactions (`origin_tag = "field"`) a batch's target writes, its merge base records
and its checkpoint are separate commands, and a worker killed between them leaves some landed
and some not. The batch writes its merge base records first, each with what the batch will
leave pending beside what it was (`worker.state.settled_base`); the next worker settles them
against the documents, so that the merge base says what the targets hold whichever writes
landed (G1, G2, G4)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from bson import Timestamp

from tests.worker.test_field_tag_races import (
    _after_reads,
    _drain,
    _synced,
    _tagged,
    _untagged,
)
from worker.engine._ahead import HeldAhead
from worker.engine._applier import Applier
from worker.state import merge_base_id, settle_record, settled_base

from .engine_helpers import PEOPLE_MODULE, another_applier, applier_in_process, events_of

TAG = "_psync"


class _Killed(BaseException):
    """The worker process dying (SIGKILL) at a chosen command: nothing after it is sent."""


def _kill_at(applier: Any, namespace_suffix: str) -> None:
    """Make `applier` die when it is about to send writes to a namespace ending with
    `namespace_suffix`, once."""
    send = applier._send
    armed = [True]

    async def send_or_die(writes: Any, *args: Any, **kwargs: Any) -> Any:
        if armed and any(q.namespace.endswith(namespace_suffix) for q in writes._queued):
            armed.clear()
            raise _Killed(namespace_suffix)
        return await send(writes, *args, **kwargs)

    applier._send = send_or_die


async def _restarted(applier: Applier) -> Applier:
    """A new worker on the same state: nothing of the killed one's memory (pending echoes)."""
    fresh = another_applier(applier, origin_tag="field")
    await fresh.refresh_pairs()
    return fresh


async def _record(applier: Applier, db: Any, document_id: Any) -> dict[str, Any] | None:
    found: dict[str, Any] | None = await applier.store.merge_base.find_one(
        {"_id": merge_base_id(f"{db.name}.people", document_id)}
    )
    return found


async def _apply_killed(
    applier: Applier, stream: Any, events: Sequence[Any], namespace_suffix: str
) -> list[dict[str, Any]]:
    """Apply `events` with the worker killed at `namespace_suffix`; the events a restarted
    worker reads again: these and whatever the killed one wrote after them."""
    _kill_at(applier, namespace_suffix)
    killed = False
    try:
        await applier.apply(list(events))
    except* _Killed:
        killed = True
    assert killed
    return list(events) + await _drain(stream)


async def test_killed_after_the_target_writes_the_merge_base_is_what_they_left(
    mongo_uri: str, tmp_path: Path
) -> None:
    """The partner's delete landed and the worker died before its merge base records: the
    record must not go on saying the document is there, or the client's insert of it again
    reads as older than a delete (the partner never gets it)."""
    async with applier_in_process(
        mongo_uri, tmp_path, PEOPLE_MODULE, prefix="cut", origin_tag="field"
    ) as (db, applier):
        async with applier.opened():
            await _synced(db, applier)
            async with await db.watch(max_await_time_ms=50) as stream:
                await db.people.delete_one({"_id": 1})
                deleted = await _drain(stream)
                replayed = await _apply_killed(applier, stream, deleted, ".checkpoints")
            assert await db.people_v2.find_one({"_id": 1}) is None  # the delete landed
            pending = await _record(applier, db, 1)
            assert pending is not None and pending["pending"]["p"] is None

        worker = await _restarted(applier)
        async with worker.opened():
            await worker.apply(replayed)
            # Kept (at most) for the changes it folded in: it stands for no merge base.
            assert settled_base(await _record(worker, db, 1), None, None, TAG) is None
            again = await events_of(
                db, 1, lambda: db.people.insert_one({"_id": 1, "name": "Ada", "email": "new@x"})
            )
            result = await worker.apply(again)
        partner = await _untagged(db.people_v2, 1)
    assert result.applied == 1
    assert partner is not None and partner["email"] == "new@x"


async def test_killed_after_an_insert_the_merge_base_knows_the_document(
    mongo_uri: str, tmp_path: Path
) -> None:
    """The partner's copy of a new document landed, the merge base records did not: the
    restarted worker takes the copy for its own (no conflict), and a later client change of
    either side goes over."""
    async with applier_in_process(
        mongo_uri, tmp_path, PEOPLE_MODULE, prefix="cut", origin_tag="field"
    ) as (db, applier):
        async with applier.opened():
            async with await db.watch(max_await_time_ms=50) as stream:
                await db.people.insert_one({"_id": 1, "name": "Ada", "email": "a@x"})
                inserted = await _drain(stream)
                replayed = await _apply_killed(applier, stream, inserted, ".checkpoints")
            assert await db.people_v2.find_one({"_id": 1}) is not None

        worker = await _restarted(applier)
        async with worker.opened():
            result = await worker.apply(replayed)
            record = await _record(worker, db, 1)
            assert record is not None and "pending" not in record
            assert record["p"] is not None and record["p"]["full_name"] == "Ada"
            changed = await events_of(
                db, 1, lambda: db.people_v2.update_one({"_id": 1}, {"$set": {"email": "b@x"}})
            )
            later = await worker.apply(changed)
        original = await _untagged(db.people, 1)
    assert result.conflicts == 0
    assert later.applied == 1
    assert original is not None and original["email"] == "b@x"


async def test_killed_before_the_target_writes_the_merge_base_is_as_it_was(
    mongo_uri: str, tmp_path: Path
) -> None:
    """The merge base records went out with the batch's writes pending and the worker died
    before its target writes: the records settle to what they were, and the change is applied
    when the restarted worker reads it again."""
    async with applier_in_process(
        mongo_uri, tmp_path, PEOPLE_MODULE, prefix="cut", origin_tag="field"
    ) as (db, applier):
        async with applier.opened():
            await _synced(db, applier)
            before = await _record(applier, db, 1)
            async with await db.watch(max_await_time_ms=50) as stream:
                await db.people.update_one({"_id": 1}, {"$set": {"name": "Ada L"}})
                renamed = await _drain(stream)
                replayed = await _apply_killed(applier, stream, renamed, ".people_v2")
            pending = await _record(applier, db, 1)
            assert pending is not None and pending["pending"]["p"]["full_name"] == "Ada L"
            assert before is not None and pending["p"] == before["p"]

        worker = await _restarted(applier)
        async with worker.opened():
            result = await worker.apply(replayed)
            record = await _record(worker, db, 1)
        partner = await _untagged(db.people_v2, 1)
    assert result.applied == 1
    assert partner is not None and partner["full_name"] == "Ada L"
    assert record is not None and "pending" not in record
    assert record["p"]["full_name"] == "Ada L"


async def test_killed_before_a_document_without_a_merge_base_loses_its_pending_record(
    mongo_uri: str, tmp_path: Path
) -> None:
    """A document on both sides before the sync (no merge base) is renamed on the original;
    the worker writes its pending record (no side known, the partner's tag token), the
    partner's patch, and dies before the record's removal and the checkpoint. The restarted
    worker reads the rename again: the token says the patch landed, so the change is folded
    in (counted once, nothing written again), and later changes of either side go over."""
    async with applier_in_process(
        mongo_uri, tmp_path, PEOPLE_MODULE, prefix="nobase", origin_tag="field"
    ) as (db, applier):
        await db.people.insert_one({"_id": 1, "name": "Ada", "email": "a@x"})
        await db.people_v2.insert_one({"_id": 1, "full_name": "Ada", "email": "a@x"})
        async with applier.opened():
            async with await db.watch(max_await_time_ms=50) as stream:
                await db.people.update_one({"_id": 1}, {"$set": {"name": "Ada L"}})
                renamed = await _drain(stream)
                replayed = await _apply_killed(applier, stream, renamed, ".checkpoints")
            pending = await _record(applier, db, 1)
            assert pending is not None and pending.get("unknown") is True
            assert pending["pending"]["tags"]["p"] is not None
            patched = await db.people_v2.find_one({"_id": 1})
            assert patched is not None and patched["full_name"] == "Ada L"

        worker = await _restarted(applier)
        async with worker.opened():
            async with await db.watch(max_await_time_ms=50) as stream:
                result = await worker.apply(replayed)
                rewritten = [event for event in await _drain(stream) if _tagged(event)]
            record = await _record(worker, db, 1)
            assert record is None or "pending" not in record
            from_partner = await events_of(
                db, 1, lambda: db.people_v2.update_one({"_id": 1}, {"$set": {"email": "b@x"}})
            )
            back = await worker.apply(from_partner)
            from_original = await events_of(
                db, 1, lambda: db.people.update_one({"_id": 1}, {"$set": {"name": "Ada M"}})
            )
            forth = await worker.apply(from_original)
        original = await db.people.find_one({"_id": 1})
        partner = await _untagged(db.people_v2, 1)
    assert result.applied == 1 and rewritten == []
    assert back.applied == 1 and forth.applied == 1
    assert original is not None and original["email"] == "b@x" and original["name"] == "Ada M"
    assert partner == {"_id": 1, "full_name": "Ada M", "email": "b@x"}


# -- settled_base, the rule itself ---------------------------------------------------------------

RECORD_ID = {"pair": "db.people", "id": 1}
AT, NEXT = Timestamp(10, 1), Timestamp(11, 1)
OLD_O, OLD_P = {"_id": 1, "name": "Ada"}, {"_id": 1, "full_name": "Ada"}
NEW_O, NEW_P = {"_id": 1, "name": "Ada L"}, {"_id": 1, "full_name": "Ada L"}


def _pending(
    tags: dict[str, str | None],
    *,
    new: tuple[Any, Any] = (NEW_O, NEW_P),
    prior: tuple[Any, Any] | None = (OLD_O, OLD_P),
) -> dict[str, Any]:
    was = {"o": prior[0], "p": prior[1], "at": AT} if prior else {"unknown": True}
    return {
        "_id": RECORD_ID,
        **was,
        "pending": {"o": new[0], "p": new[1], "at": NEXT, "tags": tags},
    }


def test_a_record_without_pending_writes_is_itself() -> None:
    record = {"_id": RECORD_ID, "o": OLD_O, "p": OLD_P, "at": AT}
    assert settled_base(record, None, None, TAG) == record
    assert settled_base(None, NEW_O, NEW_P, TAG) is None


@pytest.mark.parametrize(
    ("partner", "settles_to"),
    [
        # The write's own token: landed, even with a client's change on top of it.
        pytest.param({**NEW_P, TAG: "w#1"}, "new", id="token"),
        pytest.param({**NEW_P, "email": "x@y", TAG: "w#1"}, "new", id="token-then-client"),
        # The very document (a client made it so, or a tag field another write replaced).
        pytest.param({**NEW_P, TAG: "w#0"}, "new", id="same-document"),
        # As it was before the batch: the write never landed (or matched nothing).
        pytest.param({**OLD_P, TAG: "w#0"}, "old", id="not-written"),
        pytest.param(None, "old", id="deleted-since"),
    ],
)
def test_a_pending_update_settles_by_the_target(partner: Any, settles_to: str) -> None:
    settled = settled_base(_pending({"p": "w#1"}), NEW_O, partner, TAG)
    expected = (NEW_O, NEW_P, NEXT) if settles_to == "new" else (OLD_O, OLD_P, AT)
    assert settled is not None
    assert (settled["o"], settled["p"], settled["at"]) == expected
    assert "pending" not in settled and "unknown" not in settled


def test_a_pending_delete_settles_by_the_target() -> None:
    record = _pending({"p": None}, new=(None, None))
    assert settled_base(record, None, None, TAG) is None  # deleted: no record
    kept = settled_base(record, None, OLD_P, TAG)
    assert kept is not None and (kept["o"], kept["p"]) == (OLD_O, OLD_P)


def test_a_record_that_was_not_there_stays_away_unless_written() -> None:
    record = _pending({"p": "w#1"}, prior=None)
    assert settled_base(record, NEW_O, None, TAG) is None
    written = settled_base(record, NEW_O, {**NEW_P, TAG: "w#1"}, TAG)
    assert written is not None and written["p"] == NEW_P


def test_a_written_batch_folds_in_as_many_changes_at_its_time_as_it_applied() -> None:
    """A pending record that landed says up to which change its batch applied: its `at`, and
    how many of the document's changes carry that cluster time (`n`); one that did not land
    keeps what the record held before (an older version's record: every change at that
    time)."""
    record = _pending({"p": "w#1"})
    record["pending"]["n"] = 2
    written = settle_record(record, NEW_O, {**NEW_P, TAG: "w#1"}, TAG)
    assert (written.outcome, written.folded, written.folded_left) == ("written", NEXT, 2)
    record.update(folded=AT, folded_left=1)
    not_written = settle_record(record, NEW_O, {**OLD_P, TAG: "w#0"}, TAG)
    assert (not_written.outcome, not_written.folded, not_written.folded_left) == (
        "not written",
        AT,
        1,
    )
    older = settle_record({"_id": RECORD_ID, "o": OLD_O, "p": OLD_P, "folded": AT}, None, None, TAG)
    assert (older.folded, older.folded_left) == (AT, None)


def test_a_document_still_without_a_merge_base_folds_in_what_its_batch_wrote() -> None:
    """A document the batch left without a merge base has a pending record with neither side:
    its writes' tokens still tell that they landed, and its retry does not apply the changes
    the batch applied again."""
    record = _pending({"o": "w#1", "p": "w#2"}, new=(None, None), prior=None)
    record["pending"]["n"] = 1
    written = settle_record(record, {**NEW_O, TAG: "w#1"}, {**NEW_P, TAG: "w#2"}, TAG)
    assert (written.base, written.outcome, written.folded, written.folded_left) == (
        None,
        "written",
        NEXT,
        1,
    )
    # Neither landed (the documents hold older tokens): nothing is folded in.
    not_written = settle_record(record, {**NEW_O, TAG: "w#0"}, {**NEW_P, TAG: "w#0"}, TAG)
    assert (not_written.base, not_written.folded) == (None, None)


def test_a_batch_cut_between_the_two_sides_leaves_no_merge_base() -> None:
    record = _pending({"o": "w#1", "p": "w#2"})
    assert settled_base(record, {**NEW_O, TAG: "w#1"}, {**OLD_P, TAG: "w#0"}, TAG) is None
    both = settled_base(record, {**NEW_O, TAG: "w#1"}, {**NEW_P, TAG: "w#2"}, TAG)
    assert both is not None and (both["o"], both["p"]) == (NEW_O, NEW_P)


# -- the worker's own deletes, and documents a client creates meanwhile ----------------------------


async def _delete_applied_while(
    applier: Applier,
    stream: Any,
    delete: Callable[[], Awaitable[Any]],
    client_write: Callable[[], Awaitable[Any]],
) -> list[dict[str, Any]]:
    """A client's `delete`, applied by the worker while `client_write` lands between the
    batch's reads and its writes; the events after the delete."""
    await delete()
    deleted = await _drain(stream)
    _after_reads(applier, client_write)
    await applier.apply(deleted)
    return await _drain(stream)


async def test_a_restarted_worker_knows_its_own_delete(mongo_uri: str, tmp_path: Path) -> None:
    """A delete carries no tag field. The client deletes the partner document and creates it
    again while the worker deletes the original, so the worker's delete comes after the
    client's insert in the stream. A restarted worker (no memory of that delete) must take it
    for its own: neither a newer delete that beats the insert, nor a client's to carry over."""
    async with applier_in_process(
        mongo_uri, tmp_path, PEOPLE_MODULE, prefix="own", origin_tag="field"
    ) as (db, applier):
        async with applier.opened():
            await _synced(db, applier)
            async with await db.watch(max_await_time_ms=50) as stream:
                later = await _delete_applied_while(
                    applier,
                    stream,
                    lambda: db.people_v2.delete_one({"_id": 1}),
                    lambda: db.people_v2.insert_one(
                        {"_id": 1, "full_name": "Bea", "email": "b@x", "tier": "gold"}
                    ),
                )
            assert [(e["ns"]["coll"], e["operationType"]) for e in later] == [
                ("people_v2", "insert"),
                ("people", "delete"),
            ]

        worker = await _restarted(applier)
        async with worker.opened():
            result = await worker.apply(later)
        original = await _untagged(db.people, 1)
        partner = await _untagged(db.people_v2, 1)
    assert result.echoes == 1
    assert partner is not None and partner["full_name"] == "Bea"
    assert original is not None and original["name"] == "Bea"


async def test_each_of_the_workers_deletes_is_known_for_its_own(
    mongo_uri: str, tmp_path: Path
) -> None:
    """The client deletes and creates a document twice; the worker, behind, applies each change
    in a batch of its own, deleting the partner copy twice before either delete's event comes
    back. A restarted worker must take both for its own (neither is a client's delete of the
    partner document, to be carried over to the original)."""
    async with applier_in_process(
        mongo_uri, tmp_path, PEOPLE_MODULE, prefix="own", origin_tag="field"
    ) as (db, applier):
        async with applier.opened():
            await _synced(db, applier)
            clients = await db.people.watch(max_await_time_ms=50)
            workers = await db.people_v2.watch(max_await_time_ms=50)
            async with clients, workers:
                await db.people.delete_one({"_id": 1})
                await db.people.insert_one({"_id": 1, "name": "Bea"})
                await db.people.delete_one({"_id": 1})
                await db.people.insert_one({"_id": 1, "name": "Cy"})
                for event in await _drain(clients):  # a batch each, the worker behind
                    await applier.apply([event])
                echoes = await _drain(workers)

        worker = await _restarted(applier)
        async with worker.opened():
            result = await worker.apply(echoes)
        original = await _untagged(db.people, 1)
        partner = await _untagged(db.people_v2, 1)
    assert [e["operationType"] for e in echoes] == ["delete", "insert", "delete", "insert"]
    assert result.echoes == 4 and result.applied == 0
    assert original is not None and original["name"] == "Cy"
    assert partner is not None and partner["full_name"] == "Cy"


async def test_a_delete_mark_outlives_the_changes_before_its_event(
    mongo_uri: str, tmp_path: Path
) -> None:
    """The worker deletes the partner document while a client creates the original again, so
    the client's insert comes before the worker's delete in the stream. The batch of the
    insert writes the document's record; the mark of the worker's delete must stay in it (its
    event is still to come), or the delete is taken for a client's and carried over."""
    async with applier_in_process(
        mongo_uri, tmp_path, PEOPLE_MODULE, prefix="mark", origin_tag="field"
    ) as (db, applier):
        async with applier.opened():
            await _synced(db, applier)
            async with await db.watch(max_await_time_ms=50) as stream:
                later = await _delete_applied_while(
                    applier,
                    stream,
                    lambda: db.people.delete_one({"_id": 1}),
                    lambda: db.people.insert_one({"_id": 1, "name": "Bea", "email": "b@x"}),
                )
                assert [(e["ns"]["coll"], e["operationType"]) for e in later] == [
                    ("people", "insert"),
                    ("people_v2", "delete"),
                ]
                inserted = await applier.apply(later[:1])  # a batch of its own
                marks = ((await _record(applier, db, 1)) or {}).get("echo", {}).get("p")
                echoed = await applier.apply(later[1:])
                last = [e for e in await _drain(stream) if not _tagged(e)]
            await applier.apply(last)
            record = await _record(applier, db, 1)
        original = await _untagged(db.people, 1)
        partner = await _untagged(db.people_v2, 1)
    assert inserted.applied == 1
    assert marks is not None and len(marks) == 1
    assert echoed.echoes == 1 and echoed.applied == 0
    assert record is not None and not record.get("echo")
    assert original is not None and original["name"] == "Bea"
    assert partner is not None and partner["full_name"] == "Bea"


async def test_a_document_a_client_creates_before_the_worker_is_kept(
    mongo_uri: str, tmp_path: Path
) -> None:
    """The worker copies a new original document; a client creates the partner document
    between the batch's read and its write. The worker's insert must not replace the
    client's document: it leaves it, reads back, and plans again with it known."""
    async with applier_in_process(
        mongo_uri, tmp_path, PEOPLE_MODULE, prefix="own", origin_tag="field"
    ) as (db, applier):
        async with applier.opened():
            async with await db.watch(max_await_time_ms=50) as stream:
                await db.people.insert_one({"_id": 1, "name": "Ada", "email": "a@x"})
                inserted = await _drain(stream)
                _after_reads(
                    applier,
                    lambda: db.people_v2.insert_one(
                        {"_id": 1, "full_name": "Bea", "email": "b@x", "tier": "gold"}
                    ),
                )
                await applier.apply(inserted)
                later = [e for e in await _drain(stream) if not _tagged(e)]
            await applier.apply(later)
        original = await _untagged(db.people, 1)
        partner = await _untagged(db.people_v2, 1)
    assert partner is not None and partner["full_name"] == "Bea"
    assert original is not None and original["name"] == "Bea"


async def test_a_replayed_batch_does_not_undo_what_it_wrote(mongo_uri: str, tmp_path: Path) -> None:
    """A batch holds a client's delete of the partner document and a newer update of the
    original, which wins: the worker creates the partner document again. Killed before its
    merge base records, the batch is read again by the next worker; planned again against
    the record that says what it wrote, the overruled delete took the partner out of the
    merge base, and the next change of the original was never carried over."""
    async with applier_in_process(
        mongo_uri, tmp_path, PEOPLE_MODULE, prefix="fold", origin_tag="field"
    ) as (db, applier):
        async with applier.opened():
            await _synced(db, applier)
            async with await db.watch(max_await_time_ms=50) as stream:
                await db.people_v2.delete_one({"_id": 1})
                await db.people.update_one({"_id": 1}, {"$set": {"email": "new@x"}})
                both = await _drain(stream)
                replayed = await _apply_killed(applier, stream, both, ".checkpoints")
            recreated = await _untagged(db.people_v2, 1)
            assert recreated is not None and recreated["email"] == "new@x"

        worker = await _restarted(applier)
        async with worker.opened():
            await worker.apply(replayed)
            changed = await events_of(
                db, 1, lambda: db.people.update_one({"_id": 1}, {"$set": {"email": "last@x"}})
            )
            result = await worker.apply(changed)
        partner = await _untagged(db.people_v2, 1)
    assert result.applied == 1
    assert partner is not None and partner["email"] == "last@x"


def test_held_changes_name_a_delete_as_a_delete() -> None:
    """A replay's summary of the changes held after a transaction names a whole-document change
    by what it was: a delete is told from a replace, so that the worker's own (field tags,
    no tag in a delete) is known by the document's merge base record."""

    def held(operation: str, stamp: Timestamp) -> dict[str, Any]:
        key = {"ns": {"db": "d", "coll": "people"}, "documentKey": {"_id": 1}}
        return {"event": {**key, "operationType": operation, "clusterTime": stamp}, "paths": [""]}

    def later(ahead: HeldAhead, position: int) -> list[tuple[str, Timestamp]]:
        return [
            (e["operationType"], e["clusterTime"]) for e in ahead.after(position, ["d.people"], [1])
        ]

    ahead = HeldAhead()
    ahead.add(held("delete", AT), 0)
    assert later(ahead, -1) == [("delete", AT)]
    ahead.add(held("replace", NEXT), 1)  # the newest whole-document change is the one kept
    assert later(ahead, -1) == [("replace", NEXT)]
    assert later(ahead, 1) == []


@pytest.mark.parametrize(
    ("applied", "replays"),
    [
        pytest.param(1, [3], id="one-applied-replayed-at-once"),
        pytest.param(2, [1, 2], id="two-applied-replayed-in-two-batches"),
        pytest.param(2, [1, 1, 1], id="two-applied-replayed-one-by-one"),
    ],
)
async def test_a_client_transaction_split_between_batches_is_replayed_in_full(
    mongo_uri: str, tmp_path: Path, applied: int, replays: list[int]
) -> None:
    """A client transaction changes the original three times; its changes share one cluster
    time, and the worker, killed before its checkpoint, had applied only the first `applied`
    (its batch ended between them). The restarted worker, reading them again in batches of
    `replays` changes, skips what that batch applied (its record says how many), not the
    rest, whose cluster time is the same."""
    async with applier_in_process(
        mongo_uri, tmp_path, PEOPLE_MODULE, prefix="txn", origin_tag="field"
    ) as (db, applier):
        async with applier.opened():
            await _synced(db, applier)
            async with await db.people.watch(max_await_time_ms=50) as stream:
                async with db.client.start_session() as session:
                    async with await session.start_transaction():
                        for change in ({"email": "t1@x"}, {"name": "Bea"}, {"email": "t3@x"}):
                            await db.people.update_one(
                                {"_id": 1}, {"$set": change}, session=session
                            )
                changes = await _drain(stream)
                assert len({e["clusterTime"] for e in changes}) == 1 and len(changes) == 3
                await _apply_killed(applier, stream, changes[:applied], ".checkpoints")
        worker = await _restarted(applier)
        counted = 0
        async with worker.opened():
            start = 0
            for size in replays:
                result = await worker.apply(changes[start : start + size])
                counted += result.applied
                start += size
        partner = await _untagged(db.people_v2, 1)
    assert counted == 3
    assert partner is not None and partner["email"] == "t3@x" and partner["full_name"] == "Bea"
