"""`partner-sync devserver` and `python -m devserver`: run the development server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from functools import partial

import click

from devserver._heap import HeapKeeper
from devserver._loop import new_event_loop
from devserver._server import DbpathInUse, DevServer, RemoteBindRefused
from devserver._versions import DEFAULT_MONGODB_VERSION, MONGODB_VERSIONS

__all__ = ["command", "main"]


async def _run(server: DevServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    heap = HeapKeeper(loop)
    heap.install()
    sweeper = asyncio.create_task(heap.maintain())
    try:
        async with server:
            # The URI is the first stdout line: scripts and tests read it to connect.
            click.echo(server.uri)
            sys.stdout.flush()
            await stop.wait()
    finally:
        sweeper.cancel()
        heap.uninstall()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(signum)


@click.command(name="devserver")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=27017,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port (0 picks a free one).",
)
@click.option(
    "--dbpath",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory to persist data in (default: memory only).",
)
@click.option("--replset", default="rs0", show_default=True, help="Replica set name.")
@click.option(
    "--oplog-size-mb",
    default=64.0,
    show_default=True,
    type=click.FloatRange(min=0.01),
    help="Size bound of the change history, in MiB.",
)
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Allow a non-loopback address (there is no authentication).",
)
@click.option(
    "--round-trip-ms",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0, max=10_000),
    help="Add this much to every round trip, as a network would (for benchmarks).",
)
@click.option(
    "--mongodb-version",
    default=DEFAULT_MONGODB_VERSION,
    show_default=True,
    type=click.Choice(sorted(MONGODB_VERSIONS)),
    help=(
        "The MongoDB release to present itself as (7.0 has no bulkWrite command; 6.0 neither,"
        " nor $changeStreamSplitLargeEvent or disambiguatedPaths)."
    ),
)
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def command(
    host: str,
    port: int,
    dbpath: str | None,
    replset: str,
    oplog_size_mb: float,
    allow_remote: bool,
    round_trip_ms: float,
    mongodb_version: str,
    log_level: str,
) -> None:
    """Start the MongoDB-compatible development server (NOT for production: no authentication)."""
    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        server = DevServer(
            host=host,
            port=port,
            dbpath=dbpath,
            replset=replset,
            oplog_size_mb=oplog_size_mb,
            allow_remote=allow_remote,
            round_trip_ms=round_trip_ms,
            mongodb_version=mongodb_version,
        )
    except RemoteBindRefused as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        # A modelled round trip is a timer per reply: a polling loop would spin through each
        # one, taking the CPU its clients need. Waking up costs little next to a round trip.
        factory = partial(new_event_loop, 0.0) if round_trip_ms else new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_run(server))
    except DbpathInUse as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from exc


def main() -> None:
    """Entry point of `python -m devserver`."""
    command(prog_name="python -m devserver")
