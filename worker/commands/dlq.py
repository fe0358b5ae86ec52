"""`partner-sync dlq list|retry|purge`: the documents the transforms could not convert."""

from __future__ import annotations

import sys
from typing import Any

import click
import orjson
from rich.console import Console
from rich.table import Table

from worker.commands._common import config_option, load_cli_config
from worker.commands.lifecycle import pair_option, run_oneshot
from worker.dead_letters import (
    RetryReport,
    describe_age,
    list_dead_letters,
    purge_dead_letters,
    retry_dead_letters,
)
from worker.lifecycle import Workspace
from worker.state import utcnow

__all__ = ["command"]


def _problem(error: str) -> str:
    """The failure itself, without the "pair ..., document _id ...:" prefix the table shows."""
    where = error.find(", document _id ")
    colon = error.find(": ", where) if where >= 0 else -1
    return error[colon + 2 :] if colon >= 0 else error


@click.group("dlq")
def command() -> None:
    """List, re-drive or purge dead letters."""


@command.command("list")
@config_option
@pair_option(required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per dead letter.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show at most N.")
def list_command(
    config_path: str | None, pair: str | None, as_json: bool, limit: int | None
) -> None:
    """List dead letters, oldest first: pair, document _id, error, mapping, age."""
    config = load_cli_config(config_path)

    async def body(workspace: Workspace) -> list[dict[str, Any]]:
        return [letter async for letter in list_dead_letters(workspace.store, pair, limit=limit)]

    letters = run_oneshot(config, body, transforms=False)
    now = utcnow()
    if as_json:
        for letter in letters:
            row = {
                "id": letter["_id"],
                "pair": letter.get("pair"),
                "document_id": letter.get("document_id"),
                "side": letter.get("side"),
                "direction": letter.get("direction"),
                "error": letter.get("error"),
                "mapping": letter.get("mapping"),
                "field": letter.get("field"),
                "at": letter.get("at"),
                "age_s": round((now - letter["at"]).total_seconds(), 3)
                if letter.get("at")
                else None,
                "retries": letter.get("retries", 0),
            }
            click.echo(orjson.dumps(row, default=str).decode())
        return
    if not letters:
        click.echo("no dead letters")
        return
    table = Table("pair", "document _id", "error", "mapping", "age", "retries")
    for letter in letters:
        error = _problem(" ".join(str(letter.get("error", "")).split()))
        table.add_row(
            str(letter.get("pair")),
            repr(letter.get("document_id")),
            error if len(error) <= 120 else error[:117] + "...",
            str(letter.get("mapping") or "-"),
            describe_age(letter.get("at"), now),
            str(letter.get("retries", 0)),
        )
    Console(width=None if sys.stdout.isatty() else 200).print(table)


@command.command("retry")
@config_option
@pair_option(required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def retry_command(config_path: str | None, pair: str | None, as_json: bool) -> None:
    """Re-drive dead letters with the current documents and transforms; exit 1 if some stay."""
    config = load_cli_config(config_path)

    async def body(workspace: Workspace) -> RetryReport:
        return await retry_dead_letters(workspace, pair)

    report = run_oneshot(config, body)
    if as_json:
        click.echo(orjson.dumps(report.as_dict(), default=str).decode())
    else:
        click.echo(f"fixed {report.fixed}, still failing {report.failed}, skipped {report.skipped}")
        for outcome in report.remaining:
            click.echo(
                f"  {outcome.pair} _id {outcome.document_id!r}: {outcome.status}: {outcome.detail}"
            )
    sys.exit(1 if report.failed or report.skipped else 0)


@command.command("purge")
@config_option
@pair_option(required=False)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge_command(config_path: str | None, pair: str | None, yes: bool) -> None:
    """Delete dead letters (of one pair with --pair); asks first unless --yes."""
    config = load_cli_config(config_path)
    if not yes:
        scope = f"of pair {pair}" if pair else "of every pair"
        click.confirm(f"Delete all dead letters {scope}?", abort=True)

    async def body(workspace: Workspace) -> int:
        return await purge_dead_letters(workspace.store, pair)

    click.echo(f"purged {run_oneshot(config, body, transforms=False)} dead letters")
