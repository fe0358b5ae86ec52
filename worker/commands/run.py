"""`partner-sync run`: the daemon that keeps every registered pair in step."""

from __future__ import annotations

import gc
from typing import Any

import anyio
import click
from pymongo import AsyncMongoClient

from transforms import TransformLoadError, load_registry
from worker.commands._common import config_option, exit_on_error, load_cli_config
from worker.config import Config, check_reachable
from worker.engine import Worker
from worker.errors import ConfigError, PartnerSyncError
from worker.logs import configure_logging, get_logger

__all__ = ["command", "run_daemon"]

log = get_logger(__name__)


async def run_daemon(config: Config) -> None:
    """Load the transforms, connect, and run the worker until it is told to stop."""
    try:
        registry = load_registry(list(config.transforms))
    except TransformLoadError as exc:
        raise ConfigError(str(exc)) from exc
    if not registry.pairs:
        raise ConfigError("no pairs registered: set `transforms` to your transform modules")
    await check_reachable(config.uri, config.connect_timeout_s)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        config.uri, tz_aware=True, appname="partner-sync"
    )
    try:
        await Worker(config, registry, client=client).run()
    finally:
        await client.close()


@click.command("run")
@config_option
def command(config_path: str | None) -> None:
    """Keep every registered pair in step, both ways, until SIGTERM or SIGINT."""
    config = load_cli_config(config_path)
    configure_logging(config.log.level, config.log.format)
    # What is loaded by now (the libraries, the configuration) lives as long as the process:
    # frozen, it is left out of every later collection, which otherwise walked it all each
    # time the collector took a full look (every few seconds under load).
    gc.collect()
    gc.freeze()
    try:
        anyio.run(run_daemon, config)
    except PartnerSyncError as exc:
        log.error("worker_refused", error=str(exc), exit_code=exc.exit_code)
        exit_on_error(exc)
