"""`partner-sync complete` and `rollback`, and the runner every one-shot command shares.

`run_oneshot` is the edge of the one-shot commands: it runs their async body, turns a lost
server into one clear line (exit 2) and any refusal into its exit code (2 usage, 3 state).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import click

from worker.commands._common import config_option, exit_on_error, load_cli_config
from worker.config import Config
from worker.errors import PartnerSyncError
from worker.lifecycle import (
    Workspace,
    complete_pair,
    open_workspace,
    rollback_pair,
    translate_errors,
)

__all__ = ["complete_command", "rollback_command", "run_oneshot"]

T = TypeVar("T")


def run_oneshot(
    config: Config,
    body: Callable[[Workspace], Awaitable[T]],
    *,
    transforms: bool = True,
    reconcile: bool = False,
) -> T:
    """Open a workspace, run `body` in it and return its result; exit on a worker error."""

    async def main() -> T:
        async with translate_errors(config):
            async with open_workspace(config, transforms=transforms, reconcile=reconcile) as ws:
                return await body(ws)

    try:
        return anyio.run(main)
    except PartnerSyncError as exc:
        exit_on_error(exc)
        raise  # exit_on_error exits; this keeps the type checker informed


def pair_option(required: bool) -> Callable[[Any], Any]:
    """`--pair NS`: the pair's original namespace."""
    return click.option(
        "--pair",
        "pair",
        required=required,
        metavar="NS",
        help="The pair's original namespace (db.collection)"
        + ("." if required else "; every pair when omitted."),
    )


@click.command("complete")
@config_option
@pair_option(required=True)
@click.option(
    "--force", is_flag=True, help="Complete even within the quiet period or with held changes."
)
def complete_command(config_path: str | None, pair: str, force: bool) -> None:
    """Finish a pair's migration: stop syncing it and record COMPLETED.

    Refused (exit 3) while old clients wrote to the original within the quiet period
    (`quiet_period_s`), unless --force. Both collections are left as they are.
    """
    config = load_cli_config(config_path)

    async def body(workspace: Workspace) -> str:
        result = await complete_pair(
            workspace.store, pair, quiet_period_s=config.quiet_period_s, force=force
        )
        return result.message

    click.echo(run_oneshot(config, body, transforms=False))


@click.command("rollback")
@config_option
@pair_option(required=True)
@click.option(
    "--drop-partner", is_flag=True, help="Also drop the partner collection (printed first)."
)
def rollback_command(config_path: str | None, pair: str, drop_partner: bool) -> None:
    """Roll a pair's migration back: stop syncing it, record ROLLED_BACK, forget its merge base."""
    config = load_cli_config(config_path)

    async def body(workspace: Workspace) -> str:
        result = await rollback_pair(
            workspace.store,
            workspace.client,
            pair,
            drop_partner=drop_partner,
            announce=click.echo,
        )
        return result.message

    click.echo(run_oneshot(config, body, transforms=False))
