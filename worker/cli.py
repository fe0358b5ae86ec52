"""The `partner-sync` command line: a thin group that loads each command only when it is used."""

from __future__ import annotations

import importlib
from typing import Any

import click

from worker import __version__

__all__ = ["main"]

# Command name -> "module:attribute" of its click command. Loading lazily keeps `--help` and
# the quick commands (`status`, `pause`) fast and keeps one command's import error from
# breaking the others.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "worker.commands.demo:command",
        "Show the whole job on the embedded development server.",
    ),
    "devserver": ("devserver._cli:command", "Start the MongoDB-compatible development server."),
    "check": ("worker.commands.check:command", "Load, validate and property-test transforms."),
    "backfill": (
        "worker.commands.backfill:command",
        "Fill the partner collection from the original.",
    ),
    "run": ("worker.commands.run:command", "Keep every registered pair in step (the daemon)."),
    "verify": ("worker.commands.verify:command", "Compare both sides through the transforms."),
    "status": ("worker.commands.status:command", "Show each pair's state, lag and counters."),
    "pause": ("worker.commands.pause:pause_command", "Pause syncing a pair."),
    "resume": ("worker.commands.pause:resume_command", "Resume syncing a paused pair."),
    "complete": ("worker.commands.lifecycle:complete_command", "Finish a pair's migration."),
    "rollback": ("worker.commands.lifecycle:rollback_command", "Roll a pair's migration back."),
    "dlq": ("worker.commands.dlq:command", "List, retry or purge dead letters."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        target = entry[0]
        module_name, _, attribute = target.partition(":")
        module = importlib.import_module(module_name)
        command: Any = getattr(module, attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, summary) for name, (_, summary) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="partner-sync")
def main() -> None:
    """Keep an original MongoDB collection and its new-schema partner in step, both ways."""
