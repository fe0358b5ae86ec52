"""`partner-sync pause` and `resume`: hold a pair's changes, then let them through.

Only the pair's state changes; the running worker holds a paused pair's changes and replays them
in order on resume, so nothing is lost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import click

from worker.commands._common import config_option, load_cli_config
from worker.commands.lifecycle import pair_option, run_oneshot
from worker.lifecycle import LifecycleResult, Workspace, pause_pair, resume_pair
from worker.state import StateStore

__all__ = ["pause_command", "resume_command"]

Transition = Callable[[StateStore, str], Awaitable[LifecycleResult]]


def _transition(
    config_path: str | None, pair: str | None, transition: Transition, states: tuple[str, ...]
) -> None:
    config = load_cli_config(config_path)

    async def body(workspace: Workspace) -> list[str]:
        if pair is not None:
            names = [pair]
        else:
            cursor = workspace.store.pairs.find({"state": {"$in": list(states)}}, {"_id": 1})
            names = [doc["_id"] async for doc in cursor]
        return [(await transition(workspace.store, name)).message for name in names]

    lines = run_oneshot(config, body, transforms=False)
    for line in lines or ["no pair to change"]:
        click.echo(line)


@click.command("pause")
@config_option
@pair_option(required=False)
def pause_command(config_path: str | None, pair: str | None) -> None:
    """Pause syncing a pair (every active pair without --pair); its changes are held."""
    _transition(config_path, pair, pause_pair, ("RUNNING", "BACKFILLING"))


@click.command("resume")
@config_option
@pair_option(required=False)
def resume_command(config_path: str | None, pair: str | None) -> None:
    """Resume syncing a paused pair (every paused pair without --pair)."""
    _transition(config_path, pair, resume_pair, ("PAUSED",))
