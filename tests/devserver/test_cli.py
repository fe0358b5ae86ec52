"""The `devserver` command line: refusing remote binds, printing the URI."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from devserver._cli import command


@pytest.mark.parametrize(
    "host",
    [pytest.param("0.0.0.0", id="any-ipv4"), pytest.param("192.0.2.10", id="lan-address")],
)
def test_non_loopback_bind_is_refused_without_allow_remote(host: str) -> None:
    """A non-loopback --host without --allow-remote exits 2 and says why."""
    result = CliRunner().invoke(command, ["--host", host, "--port", "0"])
    assert result.exit_code == 2
    assert "no authentication" in result.output
    assert "--allow-remote" in result.output


def test_help_lists_every_option() -> None:
    """--help documents the options the interface promises."""
    result = CliRunner().invoke(command, ["--help"])
    assert result.exit_code == 0
    for option in (
        "--host",
        "--port",
        "--dbpath",
        "--replset",
        "--oplog-size-mb",
        "--allow-remote",
        "--round-trip-ms",
    ):
        assert option in result.output
