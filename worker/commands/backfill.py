"""`partner-sync backfill`: fill the target collection of each pair from its source.

Progress goes to stderr: a bar with rate and ETA on a terminal, plain lines (JSON lines with
`--json`) otherwise, at most one a second. The summary goes to stdout; a dry run also prints
every document that would go to dead letters.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import click
import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from worker.backfill import BackfillOptions, BackfillProgress, WouldDeadLetter, run_backfill
from worker.commands._common import config_option, load_cli_config
from worker.commands.lifecycle import pair_option, run_oneshot
from worker.lifecycle import Workspace

__all__ = ["command"]


class _Reporter:
    """Shows progress on stderr: a rich bar on a terminal, else a line at most once a second."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.bar: Progress | None = None
        self.task: Any = None
        self.last_line = 0.0
        if not as_json and sys.stderr.isatty():
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:.0f} docs/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )

    def __enter__(self) -> _Reporter:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def progress(self, progress: BackfillProgress) -> None:
        if self.bar is not None:
            if self.task is None:
                self.task = self.bar.add_task(progress.pair, total=progress.total or None, rate=0.0)
            total = max(progress.total, progress.scanned) or None
            self.bar.update(self.task, completed=progress.scanned, total=total, rate=progress.rate)
            return
        now = time.monotonic()
        if not progress.done and now - self.last_line < 1.0:
            return
        self.last_line = now
        if self.as_json:
            line = orjson.dumps({"progress": progress.as_dict()}).decode()
        else:
            line = (
                f"{progress.pair}: {progress.scanned}/{progress.total} scanned, "
                f"{progress.written} written, {progress.kept} kept, "
                f"{progress.dead_letters} dead letters, {progress.rate:.0f} docs/s"
            )
        click.echo(line, err=True)


def _summary(progress: BackfillProgress) -> str:
    if progress.already_done:
        return (
            f"{progress.pair}: backfill already complete ({progress.scanned} documents);"
            " --restart starts it over"
        )
    verb = "would write" if progress.dry_run else "wrote"
    text = (
        f"{progress.pair}: scanned {progress.scanned} documents in {progress.elapsed_s:.1f}s"
        f" ({progress.rate:.0f} docs/s); {verb} {progress.written},"
        f" adopted {progress.adopted} already equal, kept {progress.kept} client versions,"
        f" {progress.synced} already synced"
    )
    if progress.reconciled:
        text += f", reconciled {progress.reconciled}"
    text += f", {progress.dead_letters} " + (
        "would go to dead letters" if progress.dry_run else "dead letters"
    )
    if progress.kept:
        text += "; `partner-sync verify --repair` settles the kept documents"
    if progress.warning:
        text += f"; warning: {progress.warning}"
    return text


def _failure_printer(as_json: bool, dry_run: bool) -> Callable[[WouldDeadLetter], None]:
    def show(failure: WouldDeadLetter) -> None:
        if not dry_run:
            return
        if as_json:
            record = {"would_dead_letter": failure.__dict__}
            click.echo(orjson.dumps(record, default=str).decode())
        else:
            click.echo(
                f"would dead-letter {failure.pair} _id {failure.document_id!r}: {failure.error}"
            )

    return show


@click.command("backfill")
@config_option
@pair_option(required=False)
@click.option(
    "--direction",
    type=click.Choice(["forward", "backward"]),
    default="forward",
    show_default=True,
    help="forward fills the partner from the original; backward the original from the partner.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True)
@click.option(
    "--max-rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="DOCS_PER_S",
    help="Scan at most this many documents a second.",
)
@click.option("--dry-run", is_flag=True, help="Convert everything, write nothing, report.")
@click.option(
    "--restart",
    is_flag=True,
    help="Start over and reconcile synced documents (recovery from RESYNC_REQUIRED"
    " or a transforms version change).",
)
@click.option("--json", "as_json", is_flag=True, help="JSON progress lines and summary.")
def command(
    config_path: str | None,
    pair: str | None,
    direction: str,
    batch_size: int,
    max_rate: float | None,
    dry_run: bool,
    restart: bool,
    as_json: bool,
) -> None:
    """Fill the target collection from its source without overwriting newer client writes."""
    config = load_cli_config(config_path)
    options = BackfillOptions(
        source="original" if direction == "forward" else "partner",
        batch_size=batch_size,
        max_rate=max_rate,
        dry_run=dry_run,
        restart=restart,
    )
    reporter = _Reporter(as_json)
    show_failure = _failure_printer(as_json, dry_run)

    async def body(workspace: Workspace) -> list[BackfillProgress]:
        results = []
        with reporter:
            for each in workspace.pairs(pair):
                results.append(
                    await run_backfill(
                        workspace,
                        each,
                        options,
                        on_progress=reporter.progress,
                        on_failure=show_failure,
                    )
                )
        return results

    for result in run_oneshot(config, body, reconcile=restart):
        if as_json:
            click.echo(orjson.dumps({"summary": result.as_dict()}).decode())
        else:
            click.echo(_summary(result))
