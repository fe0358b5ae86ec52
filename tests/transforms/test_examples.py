"""The example modules of docs/transforms.md: each loads, passes `check`, converts as shown."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from transforms import Direction, load_registry
from worker.cli import main

EXAMPLES = [
    "add_field",
    "remove_field",
    "rename_field",
    "change_type",
    "optional_to_required",
    "split_merge",
    "rename_collection",
    "unmapped",
    "customers",
    "chain",
]


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_passes_check(name: str) -> None:
    """`partner-sync check` exits 0 on every shipped example (lossy ones are declared)."""
    result = CliRunner().invoke(
        main, ["check", "--transforms", f"transforms.examples.{name}", "--sample", "0"]
    )
    assert result.exit_code == 0, result.output


CONVERSIONS = [
    pytest.param(
        "add_field",
        {"_id": 1, "email": "a@b"},
        {"_id": 1, "email": "a@b", "loyalty": 0},
        {"_id": 1, "email": "a@b"},
        id="add_field",
    ),
    pytest.param(
        "remove_field",
        {"_id": 1, "legacy_flag": True, "total": 3},
        {"_id": 1, "total": 3},
        {"_id": 1, "total": 3},
        id="remove_field",
    ),
    pytest.param(
        "rename_field",
        {"_id": 1, "name": "Ada", "zip": "N1", "geo": {"city": "London"}},
        {"_id": 1, "full_name": "Ada", "address": {"zip": "N1"}, "city": "London"},
        {"_id": 1, "name": "Ada", "zip": "N1", "geo": {"city": "London"}},
        id="rename_field",
    ),
    pytest.param(
        "change_type",
        {"_id": 1, "age": "36", "price": 19.99},
        {"_id": 1, "age": 36, "price_cents": 1999},
        {"_id": 1, "age": "36", "price": 19.99},
        id="change_type",
    ),
    pytest.param(
        "optional_to_required",
        {"_id": 1},
        {"_id": 1, "tier": "basic"},
        {"_id": 1, "tier": "basic"},
        id="optional_to_required",
    ),
    pytest.param(
        "split_merge",
        {"_id": 1, "name": "Ada Lovelace", "street": "Main St", "number": 1},
        {"_id": 1, "first": "Ada", "last": "Lovelace", "line1": {"street": "Main St", "number": 1}},
        {"_id": 1, "name": "Ada Lovelace", "street": "Main St", "number": 1},
        id="split_merge",
    ),
    pytest.param(
        "rename_collection",
        {"_id": 1, "a": [1, {"b": 2}]},
        {"_id": 1, "a": [1, {"b": 2}]},
        {"_id": 1, "a": [1, {"b": 2}]},
        id="rename_collection",
    ),
]


@pytest.mark.parametrize(("name", "original", "partner", "back"), CONVERSIONS)
def test_example_converts_as_documented(
    name: str, original: dict[str, Any], partner: dict[str, Any], back: dict[str, Any]
) -> None:
    """The documented document pairs of each example hold, forward and backward."""
    (pair,) = load_registry([f"transforms.examples.{name}"], entry_points=False).pairs
    assert pair.convert(original, Direction.FORWARD) == partner
    assert pair.convert(partner, Direction.BACKWARD) == back


def test_unmapped_keep_and_drop() -> None:
    """`keep` copies unmapped fields both ways; `drop` copies only mapped ones."""
    kept, projection = load_registry(["transforms.examples.unmapped"], entry_points=False).pairs
    page = {"_id": 1, "title": "Hi", "slug": "hi", "body": "..."}
    assert kept.convert(page, Direction.FORWARD) == {
        "_id": 1, "slug": "hi", "body": "...", "headline": "Hi"
    }  # fmt: skip
    assert projection.convert(page, Direction.FORWARD) == {"_id": 1, "headline": "Hi", "slug": "hi"}
    assert not projection.owns("views", Direction.FORWARD)
