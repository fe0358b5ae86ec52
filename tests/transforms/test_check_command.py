"""`partner-sync check`: listing, property-testing and exit codes, through click's runner."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from pymongo import MongoClient

from worker.cli import main


def _module(tmp_path: Path, body: str, namespace: str = "db") -> str:
    path = tmp_path / "mod.py"
    head = f'from transforms import Pair\np = Pair("{namespace}.old", "{namespace}.new")\n'
    path.write_text(head + textwrap.dedent(body))
    return str(path)


def _check(*args: str) -> Result:
    return CliRunner().invoke(main, ["check", *args], catch_exceptions=False)


def test_lossless_mappings_pass(tmp_path: Path) -> None:
    """Mappings that round-trip give exit 0 and are listed with their pair and version."""
    path = _module(
        tmp_path,
        """
        p.rename("a", "b")
        p.convert("n", forward=str, backward=int)
        p.examples("n", 0, 7, -3)
        p.original_only("legacy")
        """,
    )
    result = _check("--transforms", path, "--sample", "0")
    assert result.exit_code == 0, result.output
    assert "pair db.old -> db.new" in result.output and "version" in result.output
    assert "rename(a -> b): a <-> b" in result.output
    assert "convert(n): n <-> n  ... ok" in result.output
    assert "original_only legacy" in result.output
    assert "0 failed" in result.output


def test_failing_mapping_prints_counter_example_and_location(tmp_path: Path) -> None:
    """A convert that loses information exits 1 with the smallest failing example and line."""
    path = _module(
        tmp_path,
        """
        p.convert("age", forward=int, backward=str)
        p.examples("age", "36", "007")
        """,
    )
    result = _check("--transforms", path, "--sample", "0")
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output
    assert "smallest counter-example: age='007'" in result.output
    assert "age: '007' -> {age: 7} -> '7'" in result.output
    assert "mod.py:4" in result.output


def test_generated_values_find_a_counter_example(tmp_path: Path) -> None:
    """Hypothesis values of the example's type find what the examples missed."""
    path = _module(
        tmp_path,
        """
        p.convert("s", forward=lambda v: v.strip(), backward=lambda v: v)
        p.examples("s", "abc")
        """,
    )
    result = _check("--transforms", path, "--sample", "0")
    assert result.exit_code == 1, result.output
    assert "smallest counter-example: s=" in result.output


def test_lossy_mapping_is_reported_not_failed(tmp_path: Path) -> None:
    """`lossy=True` turns a failing round trip into a report and exit 0."""
    path = _module(
        tmp_path,
        """
        p.convert("price", to="cents", forward=lambda v: round(v * 100), backward=lambda c: c / 100,
                  lossy=True)
        p.examples("price", 1.25, 0.001)
        """,
    )
    result = _check("--transforms", path, "--sample", "0")
    assert result.exit_code == 0, result.output
    assert "lossy (declared lossy=True)" in result.output
    assert "price=0.001" in result.output


def test_derive_round_trip_failure(tmp_path: Path) -> None:
    """A split/merge pair is tested as a whole: a name with two spaces does not come back."""
    path = _module(
        tmp_path,
        """
        @p.derive(original=("first", "last"), partner=("name",))
        def merge(first, last):
            return {"name": f"{first} {last}"}

        @merge.inverse
        def split(name):
            first, _, last = name.partition(" ")
            return {"first": first, "last": last}

        p.examples("merge", ("Ada", "Lovelace"), {"first": "Mary Ann", "last": "Evans"})
        """,
    )
    result = _check("--transforms", path, "--sample", "0")
    assert result.exit_code == 1, result.output
    assert "merge: first, last <-> name  ... FAILED" in result.output


def test_load_error_exits_2(tmp_path: Path) -> None:
    """A module breaking a load rule exits 2 with the message on stderr."""
    path = _module(tmp_path, 'p.rename("a", "b")\np.rename("c", "b")\n')
    result = _check("--transforms", path, "--sample", "0")
    assert result.exit_code == 2
    assert "already named" in result.stderr and "mod.py:4" in result.stderr


def test_import_error_exits_2_with_traceback(tmp_path: Path) -> None:
    """A module that raises on import exits 2 and shows the traceback."""
    path = _module(tmp_path, "raise KeyError('region')\n")
    result = _check("--transforms", path, "--sample", "0")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "KeyError: 'region'" in result.stderr


def test_no_pairs_exits_2(tmp_path: Path) -> None:
    """Without any pair from flags, configuration or entry points, check is a usage error."""
    config = tmp_path / "c.toml"
    config.write_text("")
    result = _check("--config", str(config), "--sample", "0")
    assert result.exit_code == 2
    assert "no pairs registered" in result.stderr


def test_runs_as_a_subprocess() -> None:
    """`python -m worker check` works the way a user runs it, exit code included."""
    module = "transforms.examples.rename_field"
    command = [sys.executable, "-m", "worker", "check", "--transforms", module, "--sample", "0"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert completed.returncode == 0, completed.stderr
    assert "pair crm.customers -> crm.customers_v2" in completed.stdout


def test_config_file_names_the_modules(tmp_path: Path) -> None:
    """`transforms` in the configuration file is used when no --transforms is given."""
    path = _module(tmp_path, 'p.rename("a", "b")\n', namespace="cfg")
    config = tmp_path / "c.toml"
    config.write_text(f"transforms = [{path!r}]\n".replace("'", '"'))
    result = _check("--config", str(config), "--sample", "0")
    assert result.exit_code == 0, result.output
    assert "pair cfg.old -> cfg.new" in result.output


def test_live_samples_find_counter_examples(
    tmp_path: Path, mongo_uri: str, client: MongoClient[dict[str, Any]], db_name: str
) -> None:
    """Values sampled from the live collection are round-tripped, and a document the
    transform cannot convert is a failure naming its `_id`."""
    client[db_name]["old"].insert_many([{"_id": 1, "age": "36"}, {"_id": 2, "age": "007"}])
    path = _module(tmp_path, 'p.convert("age", forward=int, backward=str)\n', namespace=db_name)
    result = _check("--transforms", path, "--uri", mongo_uri, "--sample", "10")
    assert result.exit_code == 1, result.output
    assert f"sampled 2 documents from {db_name}.old" in result.output
    assert "smallest counter-example: age='007'" in result.output
    assert "FAILED sampled document" not in result.output
    client[db_name]["old"].insert_one({"_id": 3, "age": "x"})
    result = _check("--transforms", path, "--uri", mongo_uri, "--sample", "10")
    assert result.exit_code == 1, result.output
    assert "FAILED sampled document" in result.output and "_id 3" in result.output
