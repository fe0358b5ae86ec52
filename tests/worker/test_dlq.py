"""`partner-sync dlq list|retry|purge`: dead letters shown, re-driven once fixed, purged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.worker.oneshot_support import Scenario, scenario_fixture

# A mapping that fails for negative scores, then the same pair with the function fixed. The
# operator declares the fix compatible with `version="1"`; otherwise the changed digest would
# call for a `backfill --restart` first (G8).
BROKEN = """
def _grade(score):
    if score < 0:
        raise ValueError("negative score")
    return score * 10

people.convert("score", forward=_grade, backward=lambda grade: grade // 10)
"""
FIXED = """
def _grade(score):
    return max(score, 0) * 10

people.convert("score", forward=_grade, backward=lambda grade: grade // 10)
"""


@pytest.fixture
def scenario(mongo_uri: str, db_name: str, tmp_path: Path) -> Iterator[Scenario]:
    yield from scenario_fixture(mongo_uri, db_name, tmp_path)


def _with_dead_letters(scenario: Scenario) -> None:
    scenario.write_module(BROKEN, version="1", name="broken.py")
    scenario.original.insert_many(
        [{"_id": i, "name": f"p{i}", "age": "30", "score": 5 - i} for i in range(8)]
    )
    result = scenario.cli("backfill")
    assert result.exit_code == 0, result.output
    assert scenario.state["dead_letters"].count_documents({}) == 2  # scores -1 and -2


def test_dlq_list_shows_pair_id_error_mapping_and_age(scenario: Scenario) -> None:
    """The table names pair, _id, error, mapping and age; --json gives one object each."""
    _with_dead_letters(scenario)
    table = scenario.cli("dlq", "list")
    assert table.exit_code == 0, table.output
    assert scenario.ns in table.stdout and "negative score" in table.stdout
    assert "convert(score)" in table.stdout
    rows = [
        orjson.loads(line) for line in scenario.cli("dlq", "list", "--json").stdout.splitlines()
    ]
    assert [row["document_id"] for row in rows] == [6, 7]
    assert all(row["pair"] == scenario.ns for row in rows)
    assert all(row["mapping"] == "convert(score)" and row["field"] == "score" for row in rows)
    assert all(0 <= row["age_s"] < 600 for row in rows)
    empty = scenario.cli("dlq", "list", "--pair", "other.pair")
    assert "no dead letters" in empty.stdout


def test_retry_with_the_broken_transform_keeps_letters_and_counts_retries(
    scenario: Scenario,
) -> None:
    """Still failing: exit 1, each dead letter kept with the new error and retries + 1."""
    _with_dead_letters(scenario)
    result = scenario.cli("dlq", "retry")
    assert result.exit_code == 1
    assert "still failing 2" in result.stdout
    letters = list(scenario.state["dead_letters"].find())
    assert [letter["retries"] for letter in letters] == [1, 1]
    assert all("negative score" in letter["error"] for letter in letters)


def test_retry_after_the_fix_writes_the_documents_and_clears_the_letters(
    scenario: Scenario,
) -> None:
    """With the fixed module the current documents are converted, written with a merge base,
    and the dead letters deleted; verify then finds no drift."""
    _with_dead_letters(scenario)
    scenario.original.update_one({"_id": 7}, {"$set": {"name": "changed since"}})
    scenario.write_module(FIXED, version="1", name="fixed.py")
    result = scenario.cli("dlq", "retry", "--pair", scenario.ns)
    assert result.exit_code == 0, result.output
    assert "fixed 2" in result.stdout
    assert scenario.state["dead_letters"].count_documents({}) == 0
    assert scenario.partner.find_one({"_id": 7})["full_name"] == "changed since"
    assert scenario.partner.find_one({"_id": 7})["score"] == 0
    assert scenario.state["merge_base"].count_documents({"_id.pair": scenario.ns}) == 8
    verify = scenario.cli("verify")
    assert verify.exit_code == 0, verify.output


def test_retry_drops_a_letter_whose_document_is_gone(scenario: Scenario) -> None:
    """A document deleted before it was ever synced leaves nothing to re-drive."""
    _with_dead_letters(scenario)
    scenario.original.delete_one({"_id": 6})
    scenario.write_module(FIXED, version="1", name="fixed.py")
    assert scenario.cli("dlq", "retry").exit_code == 0
    assert scenario.state["dead_letters"].count_documents({}) == 0
    assert scenario.partner.find_one({"_id": 6}) is None


@pytest.mark.parametrize(
    ("args", "answer", "left"),
    [
        pytest.param(("--yes",), None, 0, id="yes"),
        pytest.param((), "y\n", 0, id="confirmed"),
        pytest.param((), "n\n", 2, id="declined"),
        pytest.param(("--pair", "other.pair", "--yes"), None, 2, id="other-pair"),
    ],
)
def test_purge_asks_unless_yes_and_respects_pair(
    scenario: Scenario, args: tuple[str, ...], answer: str | None, left: int
) -> None:
    """purge deletes (one pair's) dead letters after a confirmation or with --yes."""
    _with_dead_letters(scenario)
    result = scenario.cli("dlq", "purge", *args, input=answer)
    assert result.exit_code == (1 if answer == "n\n" else 0), result.output
    assert scenario.state["dead_letters"].count_documents({}) == left
