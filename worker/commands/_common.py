"""Options and helpers shared by the commands: where the configuration comes from."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

from worker.config import Config, load_config
from worker.errors import PartnerSyncError

__all__ = ["config_option", "exit_on_error", "load_cli_config"]

F = TypeVar("F", bound=Callable[..., Any])


def config_option(function: F) -> F:
    """Add `--config FILE` (default: `PARTNER_SYNC_CONFIG`) to a command."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="TOML configuration file (default: $PARTNER_SYNC_CONFIG).",
    )(function)


def load_cli_config(config_path: str | None, flags: Mapping[str, Any] | None = None) -> Config:
    """Build the configuration from file, environment and flags; exit 2 with one line if bad."""
    try:
        return load_config(config_path, flags=dict(flags or {}), environ=os.environ)
    except PartnerSyncError as exc:
        click.echo(f"partner-sync: {exc}", err=True)
        sys.exit(exc.exit_code)


def exit_on_error(exc: PartnerSyncError) -> None:
    """Print a worker error as one line on stderr and exit with its code."""
    click.echo(f"partner-sync: {exc}", err=True)
    sys.exit(exc.exit_code)
