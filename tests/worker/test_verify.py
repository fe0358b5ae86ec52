"""`partner-sync verify`: every drift kind found, `--repair` clears it, in-flight is not drift."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.worker.oneshot_support import Scenario, WriteWhileStopped, scenario_fixture, wait_for
from transforms import Pair
from worker import verify as worker_verify
from worker.backfill import last_writer
from worker.verify import SAMPLES_PER_KIND, compare_documents


@pytest.fixture
def scenario(mongo_uri: str, db_name: str, tmp_path: Path) -> Iterator[Scenario]:
    yield from scenario_fixture(mongo_uri, db_name, tmp_path)


def _backfilled(scenario: Scenario, count: int) -> None:
    scenario.original.insert_many(
        [{"_id": i, "name": f"p{i}", "age": str(30 + i)} for i in range(count)]
    )
    result = scenario.cli("backfill")
    assert result.exit_code == 0, result.output


def _report(scenario: Scenario, *args: str) -> tuple[int, dict[str, Any]]:
    result = scenario.cli("verify", "--json", *args)
    return result.exit_code, orjson.loads(result.stdout.splitlines()[-1])


def test_verify_after_a_backfill_finds_no_drift(scenario: Scenario) -> None:
    """Freshly backfilled sides agree: exit 0 and a one-line summary."""
    _backfilled(scenario, 30)
    result = scenario.cli("verify")
    assert result.exit_code == 0, result.output
    assert "30 original, 30 partner documents; no drift" in result.stdout


def test_verify_finds_every_planted_drift_and_repair_clears_it(scenario: Scenario) -> None:
    """Missing on either side and field differences are found; --repair applies the side that
    wrote last (the only side that has a never-synced document), after which verify is clean."""
    _backfilled(scenario, 10)
    scenario.original.insert_one({"_id": 100, "name": "only original", "age": "1"})
    scenario.partner.insert_one({"_id": 200, "full_name": "only partner", "age": 2, "loyalty": 5})
    scenario.partner.update_one({"_id": 1}, {"$set": {"full_name": "partner wrote"}})
    scenario.original.update_one({"_id": 2}, {"$set": {"age": "77"}})
    scenario.partner.delete_one({"_id": 3})

    code, report = _report(scenario)
    assert code == 1
    assert report["counts"] == {
        "missing_partner": 2,
        "missing_original": 1,
        "differs": 2,
        "unconvertible": 0,
    }
    samples = report["samples"]
    assert {s["document_id"] for s in samples["missing_partner"]} == {3, 100}
    assert [s["document_id"] for s in samples["missing_original"]] == [200]
    assert {(s["document_id"], tuple(s["fields"])) for s in samples["differs"]} == {
        (1, ("full_name",)),
        (2, ("age",)),
    }

    code, repaired = _report(scenario, "--repair")
    assert code == 0
    assert repaired["repaired"] == 5 and repaired["unrepaired"] == 0
    assert _report(scenario)[0] == 0
    assert scenario.original.find_one({"_id": 1})["name"] == "partner wrote"
    assert scenario.partner.find_one({"_id": 2})["age"] == 77
    assert scenario.original.find_one({"_id": 3}) is None  # the partner's delete was last
    assert scenario.partner.find_one({"_id": 100})["full_name"] == "only original"
    assert scenario.original.find_one({"_id": 200}) == {
        "_id": 200,
        "name": "only partner",
        "age": "2",
    }
    assert scenario.partner.find_one({"_id": 200})["loyalty"] == 5
    base = scenario.state["merge_base"].find_one({"_id": {"pair": scenario.ns, "id": 200}})
    assert base is not None and base["o"]["name"] == "only partner"


def test_unconvertible_documents_are_drift_that_repair_cannot_fix(scenario: Scenario) -> None:
    """A document the transform rejects is reported with its error and stays drift."""
    _backfilled(scenario, 3)
    scenario.original.insert_one({"_id": 50, "name": "bad", "age": "old"})
    code, report = _report(scenario, "--repair")
    assert code == 1
    assert report["counts"]["unconvertible"] == 1
    sample = report["samples"]["unconvertible"][0]
    assert sample["document_id"] == 50 and sample["fields"] == ["age"]
    assert "invalid literal" in sample["error"]
    assert report["unrepaired"] == 1


def test_samples_are_capped_per_kind_while_counts_are_exact(scenario: Scenario) -> None:
    """Up to 20 samples per kind are shown; the count covers every drifted document."""
    scenario.original.insert_many([{"_id": i, "name": "n", "age": "1"} for i in range(27)])
    scenario.cli("backfill", "--dry-run")
    code, report = _report(scenario)
    assert code == 1
    assert report["counts"]["missing_partner"] == 27
    assert len(report["samples"]["missing_partner"]) == SAMPLES_PER_KIND


def _pair() -> Pair:
    pair = Pair(original="verify_t.a", partner="verify_t.b", unmapped="keep")
    pair.rename("name", "full_name")
    pair.partner_only("loyalty", default=0)
    return pair


@pytest.mark.parametrize(
    ("original", "partner", "kind", "fields"),
    [
        pytest.param({"_id": 1, "name": "a"}, {"_id": 1, "full_name": "a"}, None, (), id="equal"),
        pytest.param(
            {"_id": 1, "name": "a"},
            {"_id": 1, "full_name": "a", "loyalty": 9},
            None,
            (),
            id="partner-only-field-ignored",
        ),
        pytest.param(
            {"_id": 1, "name": "a"},
            {"_id": 1, "full_name": "b"},
            "differs",
            ("full_name",),
            id="mapped-field-differs",
        ),
        pytest.param(
            {"_id": 1, "name": "a", "x": 1},
            {"_id": 1, "full_name": "a"},
            "differs",
            ("x",),
            id="unmapped-field-missing",
        ),
        pytest.param({"_id": 1, "name": "a"}, None, "missing_partner", (), id="no-partner"),
        pytest.param(None, {"_id": 1, "full_name": "a"}, "missing_original", (), id="no-orig"),
    ],
)
def test_compare_documents_looks_only_at_paths_sync_writes(
    original: dict[str, Any] | None,
    partner: dict[str, Any] | None,
    kind: str | None,
    fields: tuple[str, ...],
) -> None:
    """Comparison goes through the transforms and ignores fields the partner keeps for itself."""
    drift = compare_documents(_pair(), original, partner)
    assert (drift.kind if drift else None) == kind
    if drift is not None:
        assert drift.fields == fields


BASE = {"o": {"_id": 1, "a": 1}, "p": {"_id": 1, "b": 1}}


@pytest.mark.parametrize(
    ("original", "partner", "base", "winner"),
    [
        pytest.param({"_id": 1, "a": 2}, {"_id": 1, "b": 1}, BASE, "original", id="orig-changed"),
        pytest.param({"_id": 1, "a": 1}, {"_id": 1, "b": 2}, BASE, "partner", id="partner-changed"),
        pytest.param({"_id": 1, "a": 2}, {"_id": 1, "b": 2}, BASE, "original", id="both-changed"),
        pytest.param({"_id": 1, "a": 1}, None, BASE, "partner", id="partner-deleted"),
        pytest.param({"_id": 1, "a": 1}, {"_id": 1, "b": 1}, BASE, "original", id="neither"),
        pytest.param(None, {"_id": 1, "b": 1}, None, "partner", id="only-partner-no-base"),
        pytest.param({"_id": 1, "a": 1}, None, None, "original", id="only-original-no-base"),
        pytest.param({"_id": 1, "a": 1}, {"_id": 1}, None, "original", id="both-no-base"),
        pytest.param(
            {"_id": 1, "a": True},
            {"_id": 1, "b": 1},
            {"o": {"_id": 1, "a": 1}, "p": BASE["p"]},
            "original",
            id="bool-is-not-int",
        ),
    ],
)
def test_last_writer_is_judged_from_the_merge_base(
    original: dict[str, Any] | None,
    partner: dict[str, Any] | None,
    base: dict[str, Any] | None,
    winner: str,
) -> None:
    """The side whose document moved away from its merge base wrote last; ties go original."""
    assert last_writer(original, partner, base) == winner


def test_no_false_drift_while_the_worker_streams_writes(scenario: Scenario) -> None:
    """Changes still in flight are re-checked after the lag, not reported as drift."""
    _backfilled(scenario, 150)
    scenario.start_worker()
    stop = threading.Event()
    rng = random.Random(11)

    def write() -> None:
        for n in range(400):
            if stop.is_set():
                return
            scenario.original.update_one({"_id": rng.randrange(150)}, {"$set": {"name": f"w{n}"}})

    writer = threading.Thread(target=write)
    writer.start()
    try:
        code, report = _report(scenario)
    finally:
        stop.set()
        writer.join(timeout=60)
    assert report["drift"] == 0, report
    assert code == 0


def test_a_change_made_while_a_repair_writes_its_document_reaches_the_other_side(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client renames a document after the repair read it and before it commits, while the
    running worker is stopped: the worker meets the rename first and the repair's write of the
    name it read (a newer cluster time) after it. That write is the repair's, known to the
    worker by its session (`writer_sessions`), not a newer client write the rename loses to."""
    scenario.original.insert_one({"_id": 1, "name": "first", "age": "30"})
    # A client's version the backfill keeps (no merge base): drift only a repair settles.
    scenario.partner.insert_one({"_id": 1, "full_name": "client kept", "age": 30, "loyalty": 0})
    backfilled = scenario.cli("backfill")
    assert backfilled.exit_code == 0 and "kept 1" in backfilled.output, backfilled.output
    worker = scenario.start_worker()
    with WriteWhileStopped(
        monkeypatch,
        worker_verify,
        "write_settled",
        worker,
        lambda: scenario.original.update_one({"_id": 1}, {"$set": {"name": "renamed"}}),
    ) as racing:
        code, report = _report(scenario, "--repair")
    assert racing.done, "the repair wrote nothing"
    assert code == 0 and report["repaired"] == 1, report
    assert "warning" not in report
    scenario.original.insert_one({"_id": 2, "name": "late", "age": "40"})
    wait_for(lambda: scenario.partner.find_one({"_id": 2}), what="the worker to catch up")
    assert scenario.partner.find_one({"_id": 1})["full_name"] == "renamed"
    assert _report(scenario)[0] == 0


def test_verify_and_repair_a_chain(scenario: Scenario) -> None:
    """A chain (v1 <-> v2 <-> v3) is verified pair by pair, in the registry's order. A repair
    of the first pair is seen by the second in the same run, so drift from v1 reaches v3 in one
    `verify --repair`; drift from v3 reaches v2 in that run and v1 in the next."""
    v1, v2, v3 = scenario.use_chain()
    v1.insert_many([{"_id": i, "name": f"n{i}", "city": "Oslo"} for i in range(5)])
    result = scenario.cli("backfill")
    assert result.exit_code == 0, result.output
    assert v3.count_documents({}) == 5
    result = scenario.cli("verify")
    assert result.exit_code == 0, result.output

    v1.update_one({"_id": 1}, {"$set": {"city": "Rome"}})  # travels forward
    v2.update_one({"_id": 3}, {"$set": {"full_name": "Bo"}})  # both ways from the middle
    v3.delete_one({"_id": 2})  # travels backward

    def reports(*args: str) -> tuple[int, dict[str, dict[str, Any]]]:
        result = scenario.cli("verify", "--json", *args)
        lines = [orjson.loads(line) for line in result.stdout.splitlines() if line]
        return result.exit_code, {line["pair"]: line for line in lines}

    first, second = f"{scenario.db_name}.v1", f"{scenario.db_name}.v2"
    code, found = reports()
    assert code == 1
    assert found[first]["counts"]["differs"] == 2
    assert found[second]["counts"] == {
        "missing_partner": 1,
        "missing_original": 0,
        "differs": 1,
        "unconvertible": 0,
    }

    code, repaired = reports("--repair")
    assert repaired[first]["repaired"] == 2
    # The second pair saw v1's city in v2 (repaired a moment before) besides its own drift.
    assert repaired[second]["repaired"] == 3
    assert v1.find_one({"_id": 2}) is not None  # v3's delete reached v2, not yet v1
    code, again = reports("--repair")
    assert again[first]["repaired"] == 1 and again[second]["repaired"] == 0
    code, last = reports()
    assert code == 0, last

    def plain(document: dict[str, Any]) -> dict[str, Any]:
        names = {"full_name": "name", "display": "name"}
        return {names.get(k, k): v for k, v in document.items()}

    expected = {
        0: {"_id": 0, "name": "n0", "city": "Oslo"},
        1: {"_id": 1, "name": "n1", "city": "Rome"},
        3: {"_id": 3, "name": "Bo", "city": "Oslo"},
        4: {"_id": 4, "name": "n4", "city": "Oslo"},
    }
    for collection in (v1, v2, v3):
        assert {d["_id"]: plain(d) for d in collection.find({})} == expected
