"""`partner-sync status`: each pair's state, lag and counters, read from the state database.

It needs no running worker, so it works from any machine that reaches the server. `--json`
prints INTERFACE.md's status object; `--check` turns the health rules of `worker.status_view`
into an exit code for probes (0 healthy, 1 unhealthy, 2 configuration or connection error).
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import click
import orjson
from pymongo.errors import PyMongoError
from rich.console import Console

from worker.commands._common import config_option, exit_on_error, load_cli_config
from worker.config import Config, check_reachable
from worker.errors import PartnerSyncError, ServerUnavailable
from worker.logs import redact_uri
from worker.status_view import render_status, status_is_healthy

__all__ = ["command"]

Collector = Callable[[Config], Awaitable[dict[str, Any]]]


def _collector() -> Collector:
    """The engine's `worker.status.collect_status`, imported when the command runs."""
    from worker.status import collect_status

    collect: Collector = collect_status
    return collect


async def _gather(config: Config) -> dict[str, Any]:
    await check_reachable(config.uri, config.connect_timeout_s, source=config.uri_source)
    return await _collector()(config)


def _json_default(value: Any) -> str:
    # ObjectId, Timestamp and the like, should the collector pass any through.
    return str(value)


@click.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the status object as JSON.")
@click.option(
    "--check",
    is_flag=True,
    help="Exit 1 when unhealthy (printing why), 0 when healthy; for probes.",
)
def command(config_path: str | None, as_json: bool, check: bool) -> None:
    """Show each pair's state, lag, counters, last client writes, backfill and the lease."""
    config = load_cli_config(config_path)
    try:
        status = anyio.run(_gather, config)
    except PartnerSyncError as exc:
        exit_on_error(exc)
        return
    except PyMongoError as exc:
        # The server answered the reachability check but then failed the reads (lost
        # connection, missing privilege on the state database): one line, not a traceback.
        reason = " ".join(str(exc).split())[:300]
        exit_on_error(ServerUnavailable(f"reading {config.state_db}: {redact_uri(reason)}"))
        return
    if as_json:
        click.echo(orjson.dumps(status, default=_json_default).decode())
    if check:
        healthy, reasons = status_is_healthy(status, max_lag_s=config.status.max_lag_s)
        if not as_json:
            click.echo("healthy" if healthy else "unhealthy:")
        for reason in reasons:
            click.echo(f"  {reason}", err=as_json)
        sys.exit(0 if healthy else 1)
    if not as_json:
        # Piped output (a log, `watch`, a CI job) gets a wide table instead of 80 columns.
        render_status(status, console=Console(width=None if sys.stdout.isatty() else 200))
