"""`partner-sync backfill`: the T0 hand-off, resumption, dead letters, dry runs and restarts."""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from bson import ObjectId

from tests.worker.oneshot_support import Scenario, WriteWhileStopped, scenario_fixture, wait_for
from worker import backfill as worker_backfill
from worker import lifecycle as worker_lifecycle
from worker.backfill import _Throttle, after_id, bson_sort_key
from worker.lifecycle import open_workspace
from worker.verify import verify_pair


@pytest.fixture
def scenario(mongo_uri: str, db_name: str, tmp_path: Path) -> Iterator[Scenario]:
    yield from scenario_fixture(mongo_uri, db_name, tmp_path)


def _people(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"_id": i, "name": f"person {i}", "age": str(20 + i % 60), "city": "Lyon"}
        for i in range(start, start + count)
    ]


def _converted(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "_id": doc["_id"],
        "full_name": doc["name"],
        "age": int(doc["age"]),
        "city": doc["city"],
        "loyalty": 0,
    }


def test_backfill_fills_the_partner_and_records_a_merge_base_per_document(
    scenario: Scenario,
) -> None:
    """Every original document is converted into the partner, with a merge base; then RUNNING."""
    scenario.original.insert_many(_people(53))
    result = scenario.cli("backfill", "--batch-size", "7")
    assert result.exit_code == 0, result.output
    assert "wrote 53" in result.stdout
    for doc in scenario.original.find():
        assert scenario.partner.find_one({"_id": doc["_id"]}) == _converted(doc)
    bases = list(scenario.state["merge_base"].find({"_id.pair": scenario.ns}))
    assert len(bases) == 53
    assert all(base["o"] is not None and base["p"] is not None for base in bases)
    record = scenario.pair_doc()
    assert record["state"] == "RUNNING"
    assert record["backfill"]["done"] is True
    assert record["backfill"]["docs"] == 53
    assert record["start_at"] == record["backfill"]["t0"]


def test_backfill_copies_fields_no_update_path_can_name(scenario: Scenario) -> None:
    """Top-level fields named "a.b" and "$p" reach the partner as they are, and verify finds
    no drift."""
    people = [{**doc, "a.b": {"c": i}, "$p": f"${i}"} for i, doc in enumerate(_people(5))]
    scenario.original.insert_many(people)
    result = scenario.cli("backfill", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    for doc in people:
        copied = scenario.partner.find_one({"_id": doc["_id"]})
        assert copied == {**_converted(doc), "a.b": doc["a.b"], "$p": doc["$p"]}
        assert "a" not in copied
    verified = scenario.cli("verify")
    assert verified.exit_code == 0, verified.output


def test_backfill_keeps_client_versions_and_adopts_equal_documents(scenario: Scenario) -> None:
    """A differing target document without merge base is kept; an equal one is adopted."""
    people = _people(3)
    scenario.original.insert_many(people)
    scenario.partner.insert_one({**_converted(people[0]), "full_name": "written by a client"})
    scenario.partner.insert_one(_converted(people[1]))
    result = scenario.cli("backfill")
    assert result.exit_code == 0, result.output
    assert "kept 1" in result.stdout and "adopted 1" in result.stdout
    assert scenario.partner.find_one({"_id": 0})["full_name"] == "written by a client"
    bases = {base["_id"]["id"] for base in scenario.state["merge_base"].find()}
    assert bases == {1, 2}


def test_backfill_dead_letters_unconvertible_documents_and_goes_on(scenario: Scenario) -> None:
    """A document the transform rejects becomes one dead letter; the rest is written."""
    scenario.original.insert_many([*_people(10), {"_id": 99, "name": "bad", "age": "x"}])
    result = scenario.cli("backfill", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    assert "1 dead letters" in result.stdout
    assert scenario.partner.count_documents({}) == 10
    letters = list(scenario.state["dead_letters"].find())
    assert len(letters) == 1
    letter = letters[0]
    assert letter["pair"] == scenario.ns
    assert letter["document_id"] == 99
    assert letter["side"] == "original" and letter["direction"] == "forward"
    assert letter["mapping"] == "convert(age)" and letter["field"] == "age"
    assert letter["event"] == {"operationType": "backfill", "documentKey": {"_id": 99}}
    assert letter["retries"] == 0
    assert scenario.pair_doc()["counters"]["dead_letters"] == 1
    again = scenario.cli("backfill", "--restart")
    assert again.exit_code == 0, again.output
    assert scenario.state["dead_letters"].count_documents({}) == 1


def test_dry_run_reports_every_failure_and_writes_nothing(scenario: Scenario) -> None:
    """--dry-run converts everything, names each would-be dead letter, changes nothing."""
    scenario.original.insert_many([*_people(5), {"_id": "bad", "name": "b", "age": "old"}])
    result = scenario.cli("backfill", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    failures = [line["would_dead_letter"] for line in lines if "would_dead_letter" in line]
    assert [failure["document_id"] for failure in failures] == ["bad"]
    summary = lines[-1]["summary"]
    assert summary["written"] == 5 and summary["dead_letters"] == 1 and summary["dry_run"]
    assert scenario.partner.count_documents({}) == 0
    assert scenario.state["merge_base"].count_documents({}) == 0
    assert scenario.state["dead_letters"].count_documents({}) == 0
    assert scenario.pair_doc()["state"] == "NOT_STARTED"


def test_backward_backfill_fills_the_original_from_the_partner(scenario: Scenario) -> None:
    """--direction backward converts partner documents into the original."""
    scenario.partner.insert_many([_converted(doc) for doc in _people(12)])
    result = scenario.cli("backfill", "--direction", "backward", "--batch-size", "5")
    assert result.exit_code == 0, result.output
    for doc in _people(12):
        assert scenario.original.find_one({"_id": doc["_id"]}) == doc
    assert scenario.pair_doc()["backfill"]["direction"] == "backward"


def test_changed_transforms_need_restart_which_reconciles_synced_documents(
    scenario: Scenario,
) -> None:
    """New transforms are refused (exit 3) until `--restart`, which re-converts synced docs."""
    scenario.original.insert_many(_people(9))
    assert scenario.cli("backfill").exit_code == 0
    scenario.write_module('people.rename("city", "town")', name="people_v2_mod.py")
    refused = scenario.cli("backfill")
    assert refused.exit_code == 3
    assert "--restart" in refused.stderr
    result = scenario.cli("backfill", "--restart", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    assert "reconciled 9" in result.stdout
    # The old partner field is not the new transforms' to remove: only owned paths are written.
    assert [doc["town"] for doc in scenario.partner.find()] == ["Lyon"] * 9


@pytest.mark.parametrize(
    ("state", "args", "code"),
    [
        pytest.param("RESYNC_REQUIRED", (), 3, id="resync-refused"),
        pytest.param("RESYNC_REQUIRED", ("--restart",), 0, id="resync-restart"),
        pytest.param("COMPLETED", ("--restart",), 3, id="completed-refused"),
        pytest.param("ROLLED_BACK", (), 3, id="rolled-back-refused"),
    ],
)
def test_backfill_respects_the_pair_state(
    scenario: Scenario, state: str, args: tuple[str, ...], code: int
) -> None:
    """RESYNC_REQUIRED needs --restart; a finished migration is never backfilled."""
    scenario.original.insert_many(_people(3))
    assert scenario.cli("backfill", "--dry-run").exit_code == 0  # registers the pair
    scenario.state["pairs"].update_one({"_id": scenario.ns}, {"$set": {"state": state}})
    result = scenario.cli("backfill", *args)
    assert result.exit_code == code, result.output
    if code == 0:
        assert (
            scenario.pair_doc()["state"] == "BACKFILLING"
            or scenario.pair_doc()["state"] == "RUNNING"
        )
        assert scenario.partner.count_documents({}) == 3


def test_unreachable_server_is_one_line_and_exit_2(scenario: Scenario) -> None:
    """A server that does not answer: one clear line on stderr, exit code 2."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    scenario.uri = f"mongodb://127.0.0.1:{port}/?replicaSet=rs0"
    scenario.write_config(connect_timeout_s=0.3)
    result = scenario.cli("backfill")
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot reach MongoDB" in result.stderr


def _run_and_kill(scenario: Scenario, at_docs: int) -> None:
    """Start a throttled backfill process and kill -9 it once `at_docs` are recorded."""
    process = subprocess.Popen(
        scenario.subprocess_args("backfill", "--batch-size", "10", "--max-rate", "300"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: process.poll() is not None or scenario.backfilled() >= at_docs,
            timeout=60,
            what=f"{at_docs} documents backfilled",
        )
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


@pytest.mark.parametrize("seed", [pytest.param(1, id="seed1"), pytest.param(7, id="seed7")])
def test_backfill_killed_at_random_batches_resumes_without_loss_or_double_count(
    scenario: Scenario, seed: int
) -> None:
    """kill -9 at random batches, then a resume: every document once, counts exact."""
    rng = random.Random(seed)
    scenario.original.insert_many(_people(240))
    for at_docs in sorted(rng.sample(range(20, 220, 10), 3)):
        _run_and_kill(scenario, at_docs)
    result = scenario.cli("backfill")
    assert result.exit_code == 0, result.output
    record = scenario.pair_doc()
    assert record["backfill"]["done"] is True
    assert record["backfill"]["docs"] == 240
    assert record["backfill"]["written"] == 240
    assert scenario.partner.count_documents({}) == 240
    assert scenario.state["merge_base"].count_documents({}) == 240
    for doc in scenario.original.find():
        assert scenario.partner.find_one({"_id": doc["_id"]}) == _converted(doc)


def _writer(
    collection: Any,
    ids: list[int],
    field: str,
    last: dict[int, str],
    stop: threading.Event,
    rng: random.Random,
    limit: int,
) -> None:
    for n in range(limit):
        if stop.is_set():
            return
        document_id = rng.choice(ids)
        value = f"{field}-{n}"
        if collection.update_one({"_id": document_id}, {"$set": {field: value}}).matched_count:
            last[document_id] = value


def test_backfill_beside_a_running_worker_and_writers_on_both_sides_converges(
    scenario: Scenario,
) -> None:
    """Writers on both sides during a killed-and-resumed backfill: afterwards no drift and the
    last write to each field survives on both sides."""
    scenario.original.insert_many(_people(200))
    # A rare failure here (drift that stays) is to be diagnosed from the worker's log.
    scenario.log_level = "info"
    scenario.write_config()
    scenario.start_worker()
    rng = random.Random(3)
    stop = threading.Event()
    names: dict[int, str] = {}
    notes: dict[int, str] = {}
    writers = [
        threading.Thread(
            target=_writer,
            args=(scenario.original, list(range(200)), "name", names, stop, rng, 150),
        ),
        threading.Thread(
            target=_writer,
            args=(scenario.partner, list(range(200)), "note", notes, stop, random.Random(4), 150),
        ),
    ]
    for thread in writers:
        thread.start()
    try:
        _run_and_kill(scenario, 60)
        result = scenario.cli("backfill", "--batch-size", "25")
        assert result.exit_code == 0, result.output
    finally:
        for thread in writers:
            thread.join(timeout=60)
        stop.set()
    scenario.original.insert_one({"_id": 1000, "name": "late", "age": "30", "city": "Nice"})

    last: list[dict[str, Any]] = []

    async def drift() -> int:
        async with open_workspace(scenario.config()) as workspace:
            report = await verify_pair(workspace, workspace.pair(scenario.ns))
            last[:] = [report.as_dict()]
            return report.drift

    try:
        wait_for(lambda: anyio.run(drift) == 0, timeout=60, what="no drift")
    except AssertionError as exc:
        drifted = [
            (
                sample,
                scenario.original.find_one({"_id": sample["document_id"]}),
                scenario.partner.find_one({"_id": sample["document_id"]}),
            )
            for samples in last[0]["samples"].values()
            for sample in samples
        ]
        raise AssertionError(f"{exc}: {last[0]['counts']}; {drifted}") from None
    for document_id, name in names.items():
        assert scenario.original.find_one({"_id": document_id})["name"] == name
        assert scenario.partner.find_one({"_id": document_id})["full_name"] == name
    for document_id, note in notes.items():
        assert scenario.partner.find_one({"_id": document_id})["note"] == note
        assert scenario.original.find_one({"_id": document_id})["note"] == note


def test_an_update_made_while_the_backfill_copies_its_document_reaches_the_partner(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client updates a document after the backfill read it and before its batch commits,
    while the running worker is stopped: the worker then meets the update first and the
    backfill's copy (older content, a newer cluster time) after it. The copy is the backfill's
    write, known to the worker by its session, not a newer client write the update loses to."""
    scenario.original.insert_many(_people(6))
    worker = scenario.start_worker()
    # The worker has acknowledged the backfill's session (the backfill waits for that): it is
    # stopped at the first batch, and reads the update only once the batch has committed.
    with WriteWhileStopped(
        monkeypatch,
        worker_backfill,
        "_run_batch",
        worker,
        lambda: scenario.original.update_one({"_id": 3}, {"$set": {"name": "renamed"}}),
    ) as racing:
        result = scenario.cli("backfill", "--batch-size", "10")
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    assert racing.done, "the backfill wrote no batch"
    scenario.original.insert_one({"_id": 1000, "name": "late", "age": "30", "city": "Nice"})
    wait_for(
        lambda: scenario.partner.find_one({"_id": 1000}),
        what="the worker to apply the changes after the backfill's",
    )
    assert scenario.partner.find_one({"_id": 3}) == _converted({**_people(6)[3], "name": "renamed"})
    assert scenario.cli("verify").exit_code == 0


def test_a_backfill_beside_a_running_worker_reaches_the_far_end_of_a_chain(
    scenario: Scenario,
) -> None:
    """The first pair of a chain backfilled while the worker runs the second: the backfill's
    writes to v2 are the worker's own for the first pair only, a change the second carries on
    to v3."""
    v1, v2, v3 = scenario.use_chain()
    result = scenario.cli("backfill", "--pair", f"{scenario.db_name}.v2")
    assert result.exit_code == 0 and "wrote 0" in result.output, result.output
    v1.insert_many([{"_id": i, "name": f"n{i}", "city": "Oslo"} for i in range(5)])
    scenario.start_worker()
    result = scenario.cli("backfill", "--pair", f"{scenario.db_name}.v1")
    assert result.exit_code == 0 and "wrote 5" in result.output, result.output
    assert "warning" not in result.output
    wait_for(lambda: v3.count_documents({}) == 5, what="the backfill's copies to reach v3")
    assert sorted(v3.find({}), key=lambda d: d["_id"]) == [
        {"_id": i, "display": f"n{i}", "city": "Oslo"} for i in range(5)
    ]
    assert v2.count_documents({}) == 5
    assert scenario.cli("verify").exit_code == 0


def test_a_backfill_the_running_worker_does_not_acknowledge_says_what_to_run_after(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that holds the lease but does not take the backfill's session up (stopped by
    the OS) cannot tell the backfill's writes from a client's: the backfill goes on after its
    wait and says to run verify --repair."""
    scenario.original.insert_many(_people(4))
    worker = scenario.start_worker()
    monkeypatch.setattr(worker_lifecycle, "_SESSION_ACK_S", 0.5)
    worker.send_signal(signal.SIGSTOP)
    try:
        result = scenario.cli("backfill")
    finally:
        worker.send_signal(signal.SIGCONT)
    assert result.exit_code == 0, result.output
    assert "wrote 4" in result.output
    assert "did not take this command's session up within 0.5s" in result.output
    assert f"partner-sync verify --repair --pair {scenario.ns}` after this" in result.output
    record = scenario.pair_doc()
    assert record["writer_sessions"][-1] == record["backfill"]["session"]["id"]


@pytest.mark.parametrize(
    ("values"),
    [
        pytest.param([3, 1, 2.5, -4], id="numbers"),
        pytest.param(["b", "a", "ab", "é"], id="strings"),
        pytest.param([ObjectId(), 5, "x", {"a": 1}, True], id="mixed-types"),
    ],
)
def test_bson_sort_key_orders_ids_as_mongodb_sorts_them(
    scenario: Scenario, values: list[Any]
) -> None:
    """The merge in verify relies on sorting `_id`s exactly as the server does."""
    scenario.original.insert_many([{"_id": value} for value in values])
    served = [doc["_id"] for doc in scenario.original.find().sort("_id", 1)]
    assert sorted(values, key=bson_sort_key) == served


def test_after_id_crosses_type_brackets(scenario: Scenario) -> None:
    """Resuming after a numeric `_id` still reaches the string and ObjectId ids."""
    oid = ObjectId()
    scenario.original.insert_many([{"_id": 1}, {"_id": 2}, {"_id": "a"}, {"_id": oid}])
    found = [
        doc["_id"] for query in after_id(1) for doc in scenario.original.find(query).sort("_id", 1)
    ]
    assert found == [2, "a", oid]


async def test_throttle_halves_the_batch_under_pressure_and_grows_back() -> None:
    """A transient error halves the batch size; calm batches grow it back to the limit."""
    throttle = _Throttle(100, None)
    throttle.transient(Exception())  # type: ignore[arg-type]
    await throttle.after_batch(100, 0.0)
    assert throttle.size == 50
    for _ in range(10):
        await throttle.after_batch(50, 0.0)
    assert throttle.size == 100
