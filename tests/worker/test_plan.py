"""The engine's pure core: one event + merge base + current target -> plan (no I/O)."""

from __future__ import annotations

import copy
from typing import Any

import bson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import MongoClient

from tests.transforms.pairs import build_reference_pair, update_bases, update_descriptions
from transforms import Direction, Pair, apply_patch, apply_update_description
from worker.engine import (
    TargetWrite,
    changed_paths,
    plan_event,
    plan_target_write,
    write_operation,
)
from worker.engine._plan import direction_of, with_inferred_paths


def make_pair() -> Pair:
    pair = Pair(original="plan.people", partner="plan.people_v2", unmapped="keep")
    pair.rename("name", "full_name")
    pair.convert("age", forward=int, backward=str)
    pair.partner_only("loyalty", default=0)
    pair.original_only("legacy")
    return pair


PAIR = make_pair()


def update(fields: dict[str, Any], removed: list[str] | None = None) -> dict[str, Any]:
    return {
        "operationType": "update",
        "documentKey": {"_id": 1},
        "updateDescription": {
            "updatedFields": fields,
            "removedFields": removed or [],
            "truncatedArrays": [],
        },
    }


def insert(document: dict[str, Any]) -> dict[str, Any]:
    return {"operationType": "insert", "documentKey": {"_id": 1}, "fullDocument": document}


DELETE = {"operationType": "delete", "documentKey": {"_id": 1}}

ORIGINAL = {"_id": 1, "name": "Ann", "age": "41", "legacy": True, "city": "Oslo"}
PARTNER = {"_id": 1, "full_name": "Ann", "age": 41, "loyalty": 5, "city": "Oslo"}


def test_insert_creates_the_converted_target() -> None:
    """An insert on the original with no target and no merge base creates the partner document."""
    plan = plan_event(
        PAIR,
        "original",
        insert(ORIGINAL),
        base_source=None,
        base_target=None,
        current_source=ORIGINAL,
        current_target=None,
    )
    assert plan.applied
    assert plan.target_after == {
        "_id": 1,
        "full_name": "Ann",
        "age": 41,
        "loyalty": 0,
        "city": "Oslo",
    }
    assert plan.base_source == ORIGINAL
    assert plan.base_target == plan.target_after


def test_update_patches_only_the_changed_field() -> None:
    """A field update becomes a patch of the mapped target field; other target fields stay."""
    target_now = {**PARTNER, "loyalty": 9}  # a partner-only field the client changed: not ours
    base_target = {**PARTNER, "loyalty": 9}
    plan = plan_event(
        PAIR,
        "original",
        update({"name": "Bo"}),
        base_source=ORIGINAL,
        base_target=base_target,
        current_source=None,
        current_target=target_now,
    )
    assert plan.applied and not plan.conflict_paths
    assert plan.target_after == {**target_now, "full_name": "Bo"}
    assert plan.base_source == {**ORIGINAL, "name": "Bo"}


def test_newer_target_write_to_the_same_field_wins() -> None:
    """A target field changed after the merge base is left alone and counted as a conflict."""
    target_now = {**PARTNER, "full_name": "Newer", "city": "Oslo"}
    plan = plan_event(
        PAIR,
        "original",
        update({"name": "Bo", "city": "Rome"}),
        base_source=ORIGINAL,
        base_target=PARTNER,
        current_source=None,
        current_target=target_now,
    )
    assert plan.conflict_paths == ["full_name"]
    assert plan.target_after == {**target_now, "city": "Rome"}
    # The base keeps the old value of the conflicting field, so the newer write is seen later.
    assert plan.base_target == {**PARTNER, "city": "Rome"}


def test_own_write_coming_back_is_an_echo() -> None:
    """An event whose effect is already in the merge base is an echo: nothing to write."""
    plan = plan_event(
        PAIR,
        "partner",
        update({"full_name": "Ann"}),
        base_source=PARTNER,
        base_target=ORIGINAL,
        current_source=PARTNER,
        current_target=ORIGINAL,
    )
    assert plan.echo and not plan.applied


@pytest.mark.parametrize(
    ("target_now", "deleted"),
    [
        pytest.param(PARTNER, True, id="target-unchanged-is-deleted"),
        pytest.param({**PARTNER, "city": "Rome"}, False, id="target-changed-later-survives"),
    ],
)
def test_delete_follows_last_writer(target_now: dict[str, Any], deleted: bool) -> None:
    """A delete removes the target unless the target was written after it (that write wins)."""
    plan = plan_event(
        PAIR,
        "original",
        DELETE,
        base_source=ORIGINAL,
        base_target=PARTNER,
        current_source=None,
        current_target=target_now,
    )
    assert (plan.target_after is None) is deleted
    assert bool(plan.conflict_paths) is not deleted


def test_update_after_target_was_deleted_later_is_a_conflict() -> None:
    """An update whose target was deleted after it does not re-create the target."""
    plan = plan_event(
        PAIR,
        "original",
        update({"name": "Bo"}),
        base_source=ORIGINAL,
        base_target=PARTNER,
        current_source=None,
        current_target=None,
    )
    assert plan.target_after is None and plan.conflict_paths


# A partner document the worker has no merge base for (on both sides before the sync).
UNSEEN = {"_id": 1, "full_name": "Other", "age": 30, "loyalty": 3, "city": "Rome"}


def plan_without_base(
    event: dict[str, Any],
    current_source: dict[str, Any] | None,
    current_target: dict[str, Any] = UNSEEN,
    ahead: frozenset[str] = frozenset(),
) -> Any:
    return plan_event(
        PAIR,
        "original",
        event,
        base_source=None,
        base_target=None,
        current_source=current_source,
        current_target=current_target,
        ahead=ahead,
    )


def test_a_target_never_seen_is_older_than_an_insert() -> None:
    """A target document the worker has no merge base for, with no write of it ahead, is older
    than the insert: it takes the insert's owned fields (keeping its own `loyalty`), and from
    then on both sides are known."""
    plan = plan_without_base(insert(ORIGINAL), ORIGINAL)
    assert plan.applied and not plan.conflict_paths
    assert plan.target_after == {**PARTNER, "loyalty": 3}
    assert plan.base_source == ORIGINAL and plan.base_target == plan.target_after


@pytest.mark.parametrize(
    ("ahead", "applied"), [(frozenset({""}), False), (frozenset({"city"}), True)]
)
def test_a_target_never_seen_keeps_what_a_write_ahead_changes(
    ahead: frozenset[str], applied: bool
) -> None:
    """A target re-created after the insert wins whole; one whose `city` changed after it
    keeps that city and takes the rest. Its merge base stays unknown: the write ahead must
    still look new when its event comes."""
    plan = plan_without_base(insert(ORIGINAL), ORIGINAL, ahead=ahead)
    assert plan.applied is applied and plan.conflict_paths
    assert plan.target_after is not None and plan.target_after["city"] == "Rome"
    assert plan.base_source is None and plan.base_target is None
    if applied:
        assert plan.target_after == {**PARTNER, "loyalty": 3, "city": "Rome"}


def test_an_update_of_a_document_known_on_neither_side_carries_only_its_fields() -> None:
    """No merge base on either side: the update's own field goes over at the value the event
    gave it (the source as read has a later value), the target's other fields stay, and
    neither side becomes known."""
    plan = plan_without_base(update({"age": "42"}), {**ORIGINAL, "age": "43"})
    assert plan.applied and not plan.conflict_paths
    assert plan.target_after == {**UNSEEN, "age": 42}
    assert plan.base_source is None and plan.base_target is None


def test_a_target_known_absent_but_there_again_is_left_to_its_own_event() -> None:
    """The merge base says the target was deleted, yet it is there: a client re-created it, and
    that write (ahead in the stream, or about to be) decides; the update is not applied."""
    plan = plan_event(
        PAIR,
        "original",
        update({"city": "Bergen"}),
        base_source=ORIGINAL,
        base_target=None,
        current_source={**ORIGINAL, "city": "Bergen"},
        current_target=UNSEEN,
    )
    assert not plan.applied and plan.conflict_paths == ["<document>"]
    assert plan.base_source == {**ORIGINAL, "city": "Bergen"} and plan.base_target is None


def test_a_delete_goes_over_a_target_never_seen_unless_a_write_is_ahead() -> None:
    plan = plan_without_base(DELETE, None)
    assert plan.applied and plan.target_after is None
    kept = plan_without_base(DELETE, None, ahead=frozenset({"full_name"}))
    assert not kept.applied and kept.target_after == UNSEEN


def test_transform_failure_is_reported_not_raised() -> None:
    """A transform that raises gives a plan carrying the failure, for the dead-letter queue."""
    plan = plan_event(
        PAIR,
        "original",
        update({"age": "forty"}),
        base_source=ORIGINAL,
        base_target=PARTNER,
        current_source=None,
        current_target=PARTNER,
    )
    assert plan.failure is not None
    assert plan.base_source == {**ORIGINAL, "age": "forty"}
    assert plan.target_after == PARTNER


def test_update_without_base_uses_current_source() -> None:
    """An update of a document older than the sync converts the source as it is now."""
    plan = plan_event(
        PAIR,
        "original",
        update({"city": "Rome"}),
        base_source=None,
        base_target=None,
        current_source={**ORIGINAL, "city": "Rome"},
        current_target=None,
    )
    assert plan.applied and plan.target_after is not None
    assert plan.target_after["city"] == "Rome"


def test_tag_field_is_never_copied() -> None:
    """With field origin tags, the tag field is stripped before conversion."""
    plan = plan_event(
        PAIR,
        "original",
        insert({**ORIGINAL, "_psync": "w#1"}),
        base_source=None,
        base_target=None,
        current_source=None,
        current_target=None,
        tag_field="_psync",
    )
    assert plan.target_after is not None and "_psync" not in plan.target_after


def test_a_target_path_already_holding_the_new_value_is_recorded_not_counted_a_conflict() -> None:
    """The target already has the age this update gives it, though the merge base still knows
    the old one (the worker's own write landed and its merge base did not, outside a
    transaction): nothing is written, no conflict is counted, and the merge base learns it."""
    plan, other = (
        plan_event(
            PAIR,
            "original",
            update({"age": "42"}),
            base_source=ORIGINAL,
            base_target=PARTNER,
            current_source=None,
            current_target={**PARTNER, "age": age},
        )
        for age in (42, 50)
    )
    assert not plan.applied and not plan.conflict_paths
    assert plan.base_target == {**PARTNER, "age": 42}
    # A client's different value there is still a newer write.
    assert other.conflict_paths == ["age"] and other.base_target == PARTNER


def test_a_write_without_a_transaction_expects_the_document_as_read() -> None:
    """Given the document it was planned on, a write applies only to that document still as it
    was (the tag field left aside); a document created has nothing to expect."""
    write = plan_target_write(PARTNER, {**PARTNER, "age": 42}, lambda _: True, document_id=1)
    assert write is not None
    operation = write_operation(write, tag={"_t": 7}, expect=PARTNER, tag_field="_t")
    assert operation._filter == {
        "_id": 1,
        "$expr": {
            "$eq": [
                {"$unsetField": {"field": {"$literal": "_t"}, "input": "$$ROOT"}},
                {"$literal": PARTNER},
            ]
        },
    }
    delete = write_operation(TargetWrite("delete", 1), expect=PARTNER)
    assert delete._filter == {"_id": 1, "$expr": {"$eq": ["$$ROOT", {"$literal": PARTNER}]}}
    created = plan_target_write(None, PARTNER, lambda _: True, document_id=1)
    assert created is not None and created.kind == "insert"
    insert = write_operation(created)
    assert insert._filter == {"_id": 1} and insert._upsert


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({"_id": 1, "name": "Ada"}, id="plain"),
        pytest.param({"_id": 1, "a.b": 1, "$p": {"x": 2}}, id="names-no-path-can-name"),
    ],
)
def test_an_insert_planned_on_an_absent_document_leaves_a_clients_be(
    client: MongoClient[dict[str, Any]], db_name: str, document: dict[str, Any]
) -> None:
    """Without a transaction, a document the worker planned on as absent is created only if
    it is still absent: one a client created in the meantime is left as it is (and the
    worker's read-back then finds it), whatever names the worker's document holds."""
    collection = client[db_name]["absent"]
    insert = write_operation(
        TargetWrite("insert", 1, document=document), tag={"_t": "t1"}, absent=True
    )
    collection.bulk_write([insert])
    assert collection.find_one({"_id": 1}) == {**document, "_t": "t1"}
    collection.delete_one({"_id": 1})
    collection.insert_one({"_id": 1, "name": "Bea"})
    collection.bulk_write([insert])
    assert collection.find_one({"_id": 1}) == {"_id": 1, "name": "Bea"}


def test_target_write_is_never_a_noop() -> None:
    """Planning a write from a document to an equal document plans nothing."""
    assert plan_target_write(PARTNER, dict(PARTNER), lambda _: True, document_id=1) is None
    write = plan_target_write(PARTNER, {**PARTNER, "age": 42}, lambda _: True, document_id=1)
    assert write is not None and write.kind == "update"
    assert write.patch is not None and dict(write.patch.set) == {"age": 42}


def test_a_top_level_field_no_path_can_name_is_written_by_name() -> None:
    """A change to fields `a.b` and `$p` (and the removal of `$q`) is a pipeline update:
    the paths and the tag by `$set` / `$unset`, each such field by `$setField` /
    `$unsetField`, every name and value a `$literal`; a document holding a `$` name is
    created by a pipeline upsert."""
    current = {"_id": 1, "a.b": 1, "$p": {"x": 1}, "$q": 0, "n": {"m": 1}, "gone": 1}
    desired = {"_id": 1, "a.b": {"c": "$2"}, "$p": {"x": 2}, "n": {"m": 2}}
    write = plan_target_write(current, desired, lambda _: True, document_id=1)
    assert write is not None and write.fields == {"a.b", "$p", "$q"}
    assert write.result(current) == desired
    operation = write_operation(write, tag={"_t": 7})
    assert operation._doc == [
        {"$set": {"n.m": {"$literal": 2}, "_t": {"$literal": 7}}},
        {"$unset": ["gone"]},
        {
            "$replaceWith": {
                "$setField": {
                    "field": {"$literal": "$p"},
                    "input": "$$ROOT",
                    "value": {"$literal": {"x": 2}},
                }
            }
        },
        {"$replaceWith": {"$unsetField": {"field": {"$literal": "$q"}, "input": "$$ROOT"}}},
        {
            "$replaceWith": {
                "$setField": {
                    "field": {"$literal": "a.b"},
                    "input": "$$ROOT",
                    "value": {"$literal": {"c": "$2"}},
                }
            }
        },
    ]
    created = write_operation(TargetWrite("insert", 2, document={"_id": 2, "$p": 1}))
    assert created._doc == [{"$replaceWith": {"$literal": {"_id": 2, "$p": 1}}}]
    assert created._upsert is True


# -- a model of the whole loop: clients on both sides, one ordered stream, the worker ------------


class World:
    """Both collections (one logical document), the change stream, and a simulated worker."""

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.docs: dict[str, dict[str, Any] | None] = {"original": None, "partner": None}
        # (side, event, written by the worker: its session's lsid is on the event)
        self.stream: list[tuple[str, dict[str, Any], bool]] = []
        self.read = 0
        self.base: dict[str, dict[str, Any] | None] = {"original": None, "partner": None}
        self.worker_writes = 0
        self.client_writes = 0

    def client_set(self, side: str, field: str, value: str) -> None:
        doc = self.docs[side]
        if doc is None:
            doc = {"_id": 1}
            self.docs[side] = {**doc, field: value}
            self.stream.append((side, insert(self.docs[side] or {}), False))
        else:
            if doc.get(field) == value:
                return  # MongoDB logs no event for a no-op update
            self.docs[side] = {**doc, field: value}
            self.stream.append((side, update({field: value}), False))
        self.client_writes += 1

    def client_delete(self, side: str) -> None:
        if self.docs[side] is None:
            return
        self.docs[side] = None
        self.stream.append((side, dict(DELETE), False))
        self.client_writes += 1

    def worker_step(self, count: int) -> None:
        """Apply the next `count` events as one batch (atomic: a transaction)."""
        batch = self.stream[self.read : self.read + count]
        self.read += len(batch)
        initial = dict(self.docs)
        current = dict(self.docs)
        for index, (side, event, ours) in enumerate(batch):
            unread = batch[index + 1 :] + self.stream[self.read :]
            if ours:
                continue  # the worker's own write coming back: an echo
            target = "partner" if side == "original" else "original"
            # Client writes to the target still ahead in the stream (the applier peeks at them).
            ahead = frozenset().union(
                *[changed_paths(e) for s, e, o in unread if s == target and not o]
            )
            plan = plan_event(
                self.pair,
                side,
                event,
                base_source=self.base[side],
                base_target=self.base[target],
                current_source=current[side],
                current_target=current[target],
                ahead=ahead,
            )
            assert plan.failure is None
            if plan.applied:
                current[target] = plan.target_after
            self.base[side] = plan.base_source
            self.base[target] = plan.base_target
        for side in ("original", "partner"):
            write = plan_target_write(
                initial[side], current[side], lambda p: p != "_id", document_id=1
            )
            if write is None:
                continue
            self.worker_writes += 1
            before = self.docs[side]
            after = write.result(before)
            self.docs[side] = after
            if write.kind == "insert":
                self.stream.append((side, insert(dict(after or {})), True))
            elif write.kind == "delete":
                self.stream.append((side, dict(DELETE), True))
            else:
                assert write.patch is not None
                self.stream.append(
                    (side, update(dict(write.patch.set), list(write.patch.unset)), True)
                )

    def drain(self) -> None:
        for _ in range(1000):
            if self.read >= len(self.stream):
                return
            self.worker_step(3)
        raise AssertionError("the stream never went quiet: the worker is looping")


FIELDS = {"original": ("name", "city"), "partner": ("full_name", "city")}

actions = st.lists(
    st.one_of(
        st.tuples(
            st.just("set"),
            st.sampled_from(["original", "partner"]),
            st.integers(0, 1),
            st.sampled_from(["a", "b", "c"]),
        ),
        st.tuples(st.just("delete"), st.sampled_from(["original", "partner"])),
        st.tuples(st.just("worker"), st.integers(1, 4)),
    ),
    max_size=25,
)


def simple_pair() -> Pair:
    pair = Pair(original="sim.a", partner="sim.b", unmapped="keep")
    pair.rename("name", "full_name")
    return pair


SIMPLE = simple_pair()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions)
def test_random_interleavings_converge_without_loops(steps: list[tuple[Any, ...]]) -> None:
    """Any interleaving of client writes, deletes and worker batches ends with both sides
    agreeing through the transforms (G1), and the worker writes at most once per client
    write (G3)."""
    world = World(SIMPLE)
    for step in steps:
        if step[0] == "set":
            _, side, index, value = step
            world.client_set(side, FIELDS[side][index], value)
        elif step[0] == "delete":
            world.client_delete(step[1])
        else:
            world.worker_step(step[1])
    world.drain()
    original, partner = world.docs["original"], world.docs["partner"]
    if original is None or partner is None:
        assert original is None and partner is None, world.docs
    else:
        assert SIMPLE.convert(original, Direction.FORWARD) == partner
    assert world.worker_writes <= world.client_writes


updates_only = st.lists(
    st.one_of(
        st.tuples(
            st.just("set"),
            st.sampled_from(["original", "partner"]),
            st.integers(0, 1),
            st.sampled_from(["a", "b", "c", "d"]),
        ),
        st.tuples(st.just("worker"), st.integers(1, 4)),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(updates_only)
def test_last_writer_wins_per_field(steps: list[tuple[Any, ...]]) -> None:
    """With both sides existing, every logical field ends with the value of the last client
    write to it, whichever side it came from (G2)."""
    world = World(SIMPLE)
    world.docs = {
        "original": {"_id": 1, "name": "x", "city": "x"},
        "partner": {"_id": 1, "full_name": "x", "city": "x"},
    }
    world.base = {key: dict(value or {}) for key, value in world.docs.items()}
    last: dict[int, str] = {0: "x", 1: "x"}
    for step in steps:
        if step[0] == "set":
            _, side, index, value = step
            before = len(world.stream)
            world.client_set(side, FIELDS[side][index], value)
            if len(world.stream) > before:
                last[index] = value
        else:
            world.worker_step(step[1])
    world.drain()
    original, partner = world.docs["original"], world.docs["partner"]
    assert original is not None and partner is not None
    assert original["name"] == partner["full_name"] == last[0]
    assert original["city"] == partner["city"] == last[1]


def test_patch_application_matches_target_after() -> None:
    """The planned write, applied to the target, gives the plan's target document."""
    plan = plan_event(
        PAIR,
        "original",
        update({"name": "Bo"}, removed=["city"]),
        base_source=ORIGINAL,
        base_target=PARTNER,
        current_source=None,
        current_target=PARTNER,
    )
    write = plan_target_write(PARTNER, plan.target_after, lambda p: p != "_id", document_id=1)
    assert write is not None and write.patch is not None
    assert apply_patch(PARTNER, write.patch) == plan.target_after


def test_nested_field_the_target_keeps_survives_a_new_sub_document() -> None:
    """An update that creates the mapped sub-document on the source sets its fields one by one
    on the partner, so a partner-only field already inside it survives."""
    pair = Pair(original="plan.nested", partner="plan.nested_v2", unmapped="keep")
    pair.rename("zip", "address.zip")
    pair.partner_only("address.geo")
    target_now = {"_id": 1, "address": {"geo": [1, 2]}}
    plan = plan_event(
        pair,
        "original",
        update({"zip": "2"}),
        base_source={"_id": 1},
        base_target=target_now,
        current_source=None,
        current_target=target_now,
    )
    assert plan.target_after == {"_id": 1, "address": {"geo": [1, 2], "zip": "2"}}


REFERENCE_PAIRS = {unmapped: build_reference_pair(unmapped) for unmapped in ("keep", "drop")}


@pytest.mark.parametrize("unmapped", ["keep", "drop"])
@pytest.mark.parametrize("side", ["original", "partner"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fast_path_of_an_update_plans_what_whole_conversions_plan(
    side: str, unmapped: str, data: st.DataObject
) -> None:
    """An update of a document both sides know, planned from the touched mappings only, gives
    the target, merge base, conflicts and failures that converting whole documents gives, with
    newer target writes ahead or not and the target holding fields of its own."""
    pair = REFERENCE_PAIRS[unmapped]
    direction = direction_of(side)
    base = data.draw(update_bases(direction), label="base")
    updated, removed, truncated = data.draw(update_descriptions(direction), label="event")
    known = pair.convert(base, direction)
    current = data.draw(st.sampled_from([known, {**known, "own": 1}]), label="current")
    ahead = data.draw(st.sampled_from([frozenset(), frozenset({next(iter(known), "_id")})]))
    event = {
        "operationType": "update",
        "documentKey": {"_id": base["_id"]},
        "updateDescription": {
            "updatedFields": updated,
            "removedFields": removed,
            "truncatedArrays": truncated,
        },
    }
    plans = [
        plan_event(
            pair,
            side,
            event,
            base_source=base,
            base_target=known,
            current_source=None,
            current_target=current,
            ahead=ahead,
            fast_path=fast,
        )
        for fast in (True, False)
    ]
    fast, full = plans
    assert fast.target_after == full.target_after
    assert fast.base_target == full.base_target
    assert fast.base_source == full.base_source
    assert sorted(fast.conflict_paths) == sorted(full.conflict_paths)
    assert (fast.applied, fast.echo, fast.failure is None) == (
        full.applied,
        full.echo,
        full.failure is None,
    )


# -- paths through dotted field names on servers before MongoDB 6.1 -----------------------------

_NAMES = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3).map(".".join)


def _unambiguous(document: Any) -> bool:
    """No level holds two names one of which is a dotted prefix of the other ("a" and "a.b")."""
    if isinstance(document, list):
        return all(_unambiguous(item) for item in document)
    if not isinstance(document, dict):
        return True
    names = list(document)
    if any(m != n and m.startswith(n + ".") for n in names for m in names):
        return False
    return all(_unambiguous(value) for value in document.values())


_DOCUMENTS = st.recursive(
    st.integers(0, 9),
    lambda inner: (
        st.dictionaries(_NAMES, inner, min_size=1, max_size=4)
        | st.lists(inner, min_size=1, max_size=2)
    ),
    max_leaves=10,
).filter(lambda d: isinstance(d, dict) and _unambiguous(d))


def _locations(node: Any, at: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The components of every field and array element below `node`."""
    found: list[tuple[str, ...]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for name, value in items:
        here = (*at, str(name))
        found.append(here)
        if isinstance(value, dict | list):
            found.extend(_locations(value, here))
    return found


def _set_at(document: dict[str, Any], parts: tuple[str, ...], value: Any) -> dict[str, Any]:
    result: Any = copy.deepcopy(document)
    node = result
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value
    return dict(result)


def _update(updated: dict[str, Any], removed: list[str] | None = None) -> dict[str, Any]:
    return {
        "operationType": "update",
        "updateDescription": {"updatedFields": updated, "removedFields": removed or []},
    }


@settings(max_examples=300, deadline=None)
@given(document=_DOCUMENTS, data=st.data())
def test_paths_through_dotted_names_are_worked_out_from_the_document(
    document: dict[str, Any], data: st.DataObject
) -> None:
    """A 6.0 server's path `a.b.c` names the fields it walks in the document before the update
    (a field named "a.b" and its field c, say): applied by the worked-out components, the update
    gives the document written by those components, for a changed, a removed and a new field."""
    parts = data.draw(st.sampled_from(_locations(document)))
    path = ".".join(parts)
    changed = with_inferred_paths(_update({path: 99}), document)
    description = changed["updateDescription"]
    after = apply_update_description(
        document, {path: 99}, [], [], description.get("disambiguatedPaths")
    )
    assert after == _set_at(document, parts, 99)
    if all("." not in part for part in parts):
        assert changed is not None and "disambiguatedPaths" not in description
    removed = with_inferred_paths(_update({}, [path]), document)["updateDescription"]
    if removed.get("disambiguatedPaths"):
        assert removed["disambiguatedPaths"] == {path: list(parts)}
    # A name new at the top level that no existing name is a dotted prefix of (nor it of one).
    new = data.draw(_NAMES.filter(lambda n: _unambiguous({**document, n: 0}) and n not in document))
    added = with_inferred_paths(_update({new: 7}), document)["updateDescription"]
    placed = apply_update_description(document, {new: 7}, [], [], added.get("disambiguatedPaths"))
    assert placed == {**document, new: 7}


def test_inference_leaves_events_it_cannot_improve_as_they_are() -> None:
    """An event that lists its components already, a path the document reads two ways, a
    document without dotted names, and an event with no merge base are left untouched; an
    array element is walked by its index."""
    listed = {
        "operationType": "update",
        "updateDescription": {"updatedFields": {"a.b": 1}, "disambiguatedPaths": {}},
    }
    assert with_inferred_paths(listed, {"a.b": 0}) is listed
    both_ways = _update({"a.b": 1})
    assert with_inferred_paths(both_ways, {"a": {"b": 0}, "a.b": 0}) is both_ways
    plain = _update({"a.b": 1})
    assert with_inferred_paths(plain, {"a": {"b": 0}}) is plain
    assert with_inferred_paths(plain, None) is plain
    in_array = with_inferred_paths(_update({"l.0.v.1": 5}), {"l": [{"v.1": 4}]})
    assert in_array["updateDescription"]["disambiguatedPaths"] == {"l.0.v.1": ["l", "0", "v.1"]}


# Names whose update order is a total order (9 before 10 by number, both after `$p` and
# before letters); `$p`, a top-level name no update operator can address, takes pipelines.
_ORDER_NAMES = ["b", "a", "10", "9", "c", "$p"]
_order_values = st.recursive(
    st.integers(0, 3) | st.sampled_from(["x", "y"]),
    lambda inner: st.dictionaries(st.sampled_from(_ORDER_NAMES), inner, max_size=4),
    max_leaves=6,
)
_order_documents = st.dictionaries(st.sampled_from(_ORDER_NAMES), _order_values, max_size=5)


@given(
    current=st.none() | _order_documents,
    desired=st.none() | _order_documents,
    absent=st.booleans(),
)
@settings(
    max_examples=120,
    deadline=None,
    # One collection, emptied for each example.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
def test_a_writes_result_has_its_fields_in_the_servers_order(
    client: MongoClient[dict[str, Any]],
    db_name: str,
    current: dict[str, Any] | None,
    desired: dict[str, Any] | None,
    absent: bool,
) -> None:
    """`TargetWrite.result` is the document the server stores, field order included: a
    precondition compares whole documents in order (`$eq`), and a batch that writes one
    document twice expects the first write's result. New fields go where the server puts
    them, whatever order the patch lists them in (an update processes names sorted)."""
    collection = client[db_name]["docs"]
    collection.delete_many({})
    before = None if current is None else {"_id": 1, **current}
    after = None if desired is None else {"_id": 1, **desired}
    write = plan_target_write(before, after, lambda _: True, document_id=1)
    if write is None:
        return
    if before is not None:
        collection.insert_one(before)
    operation = write_operation(write, tag={"_t": "t1"}, absent=absent and before is None)
    collection.bulk_write([operation])
    stored = collection.find_one({"_id": 1})
    if stored is not None:
        stored.pop("_t", None)
    result = write.result(before, absent=absent and before is None)
    assert result == after
    assert bson.encode(stored) == bson.encode(result) if stored else result is None
