"""`partner-sync demo`: the whole job on the embedded development server."""

from __future__ import annotations

import sys

import anyio
import click
from rich.console import Console

from worker.demo import DemoOptions, run_demo

__all__ = ["command"]


@click.command("demo")
@click.option("--docs", default=3000, show_default=True, help="Old-schema documents to start with.")
@click.option(
    "--seconds", default=20.0, show_default=True, help="How long the simulated clients write."
)
@click.option("--seed", default=7, show_default=True, help="Seed of the simulated clients.")
def command(docs: int, seconds: float, seed: int) -> None:
    """Show the whole job: backfill, two-way sync under concurrent writers, verify."""
    options = DemoOptions(docs=docs, seconds=seconds, seed=seed)
    sys.exit(anyio.run(run_demo, options, Console()))
