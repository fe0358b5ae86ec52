"""Loading transform modules, validating them at load, and the pairs' version digests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from transforms import Direction, TransformLoadError, load_registry
from transforms.examples import customers as customers_example

# INTERFACE.md's module, kept line for line in the example (formatting switched off there).
INTERFACE_MODULE = Path(customers_example.__file__).read_text()


def _write(directory: Path, name: str, source: str) -> str:
    path = directory / name
    path.write_text(textwrap.dedent(source))
    return str(path)


def test_interface_module_loads_and_converts(tmp_path: Path) -> None:
    """The module of INTERFACE.md loads from a .py path and converts as documented."""
    registry = load_registry([_write(tmp_path, "shop_v2.py", INTERFACE_MODULE)], entry_points=False)
    (pair,) = registry.pairs
    assert registry.namespaces == {"shop.customers", "shop.customers_v2"}
    assert registry.by_namespace("shop.customers_v2") == [(pair, "partner")]
    document = {"_id": 1, "name": "Ada", "zip": "1", "age": "36", "price": 1.5,
                "legacy_flag": True, "first": "Ada", "last": "L", "x": 1}  # fmt: skip
    assert pair.convert(document, Direction.FORWARD) == {
        "_id": 1, "x": 1, "full_name": "Ada", "address": {"zip": "1"}, "age": 36,
        "price_cents": 150, "tier": "basic", "display_name": "Ada L", "loyalty": 0,
    }  # fmt: skip


def test_dotted_module_name_and_chains() -> None:
    """A dotted module name loads; a collection in two pairs is found in both."""
    registry = load_registry(
        ["transforms.examples.customers", "transforms.examples.chain"], entry_points=False
    )
    sides = {(pair.original, side) for pair, side in registry.by_namespace("shop.customers_v2")}
    assert ("shop.customers", "partner") in sides and ("shop.customers_v2", "original") in sides


def test_entry_point_modules_are_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Modules named by the `partner_sync.transforms` entry point group load without naming."""
    _write(tmp_path, "ep_transforms_mod.py", 'from transforms import Pair\nPair("ep.a", "ep.b")\n')
    dist = tmp_path / "ep_transforms-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-transforms\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[partner_sync.transforms]\nshop = ep_transforms_mod\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = load_registry([])
    assert "ep.a" in registry.namespaces
    assert "ep.a" not in load_registry([], entry_points=False).namespaces


BAD_MODULES = [
    pytest.param(
        """
        from transforms import Pair
        p = Pair("a.b", "a.c")
        p.rename("x", "y")
        p.rename("z", "y")
        """,
        ["'y'", "already named", "bad.py:5", "a.b -> a.c"],
        id="same-target-twice",
    ),
    pytest.param(
        """
        from transforms import Pair
        p = Pair("a.b", "a.c")
        p.rename("x", "address.zip")
        p.rename("z", "address")
        """,
        ["'address'", "overlaps"],
        id="prefix-of-mapped",
    ),
    pytest.param(
        """
        from transforms import Pair
        p = Pair("a.b", "a.c")
        @p.derive(original=("a", "b"), partner=("c",))
        def f(a, b):
            return {"c": a}
        """,
        ["no inverse", "one_way=True", "bad.py:4"],
        id="derive-without-inverse",
    ),
    pytest.param(
        """
        from transforms import Pair
        p = Pair("a.b", "a.c")
        @p.derive(original=("a",), partner=("c",), one_way=True)
        def f(a):
            return {"d": a}
        """,
        ["returned keys ['d']", "partner=['c']"],
        id="derive-wrong-keys",
    ),
    pytest.param(
        """
        from transforms import Pair
        p = Pair("a.b", "a.c")
        @p.derive(original=("a", "b"), partner=("c",), one_way=True)
        def f(a):
            return {"c": a}
        """,
        ["cannot take 2 positional"],
        id="derive-arity",
    ),
    pytest.param(
        'from transforms import Pair\nPair("a.b", "a.c").convert("x", forward=1, backward=str)\n',
        ["not callable", "'x'"],
        id="not-callable",
    ),
    pytest.param(
        'from transforms import Pair\nPair("a.b", "a.b")\n', ["same collection"], id="same-ns"
    ),
    pytest.param(
        'from transforms import Pair\nPair("nodot", "a.b")\n', ["'database.collection'"], id="ns"
    ),
    pytest.param(
        'from transforms import Pair\nPair("a.b", "a.system.x")\n', ["system"], id="system-ns"
    ),
    pytest.param(
        'from transforms import Pair\nPair("a.b", "a.c").rename("_id", "id")\n',
        ["_id is always carried"],
        id="maps-id",
    ),
    pytest.param(
        'from transforms import Pair\nPair("a.b", "a.c").rename("a..b", "c")\n',
        ["empty part"],
        id="bad-path",
    ),
    pytest.param(
        'from transforms import Pair\nPair("a.b", "a.c", unmapped="copy")\n',
        ["neither 'keep' nor 'drop'"],
        id="unmapped-value",
    ),
    pytest.param(
        'from transforms import Pair\nPair("a.b", "a.c")\nPair("a.c", "a.b")\n',
        ["registered twice"],
        id="pair-twice",
    ),
    pytest.param(
        'from transforms import Pair\nPair("a.b", "a.c").require("t", default={1, 2})\n',
        ["default"],
        id="default-not-bson",
    ),
]


@pytest.mark.parametrize(("source", "expected"), BAD_MODULES)
def test_load_errors_say_where_and_how_to_fix(
    tmp_path: Path, source: str, expected: list[str]
) -> None:
    """Each broken rule is a TransformLoadError naming module, pair, field, line and a fix."""
    path = _write(tmp_path, "bad.py", source)
    with pytest.raises(TransformLoadError) as caught:
        load_registry([path], entry_points=False)
    message = str(caught.value)
    assert "bad.py" in message and "Fix:" in message
    for part in expected:
        assert part in message


def test_module_raising_on_import_is_reported_with_traceback(tmp_path: Path) -> None:
    """A module that raises while importing gives its traceback in the load error."""
    path = _write(tmp_path, "boom.py", "import transforms\n\nraise RuntimeError('no db name')\n")
    with pytest.raises(TransformLoadError) as caught:
        load_registry([path], entry_points=False)
    message = str(caught.value)
    assert "RuntimeError: no db name" in message and "Traceback" in message
    assert 'boom.py", line 3' in message


def test_missing_module_is_a_load_error() -> None:
    """An unknown module name or file is a load error, not an ImportError."""
    with pytest.raises(TransformLoadError, match="no module named 'no_such_transforms'"):
        load_registry(["no_such_transforms"], entry_points=False)
    with pytest.raises(TransformLoadError, match="does not exist"):
        load_registry(["/nonexistent/t.py"], entry_points=False)


VERSION_SCRIPT = """
import sys
from transforms import load_registry
print(load_registry([sys.argv[1]], entry_points=False).pairs[0].version)
"""


def _version_in_new_process(path: str, seed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    result = subprocess.run(
        [sys.executable, "-c", VERSION_SCRIPT, path],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


def test_version_digest_is_stable_and_tracks_mappings(tmp_path: Path) -> None:
    """The digest is equal across processes, and changes when a mapping changes, only then."""
    path = _write(tmp_path, "v.py", INTERFACE_MODULE)
    first = _version_in_new_process(path, "1")
    assert first == _version_in_new_process(path, "2")
    # Moving code down a line changes no mapping, so no new version.
    _write(tmp_path, "v.py", "\n\n" + INTERFACE_MODULE)
    assert _version_in_new_process(path, "3") == first
    _write(tmp_path, "v.py", INTERFACE_MODULE.replace("round(p * 100)", "int(p * 100)"))
    assert _version_in_new_process(path, "4") != first
    _write(tmp_path, "v.py", INTERFACE_MODULE.replace('default="basic"', 'default="free"'))
    assert _version_in_new_process(path, "5") != first


def test_given_version_wins(tmp_path: Path) -> None:
    """`Pair(..., version="2")` is the version as given."""
    path = _write(
        tmp_path, "given.py", 'from transforms import Pair\nPair("g.a", "g.b", version="2")\n'
    )
    assert load_registry([path], entry_points=False).pairs[0].version == "2"
