"""`partner-sync check`: load and validate the transforms, then property-test every mapping.

Exit 0 when every mapping round-trips (lossy ones are reported), 1 when one fails, 2 when the
modules do not load or the configuration is bad.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import click

from transforms import (
    MISSING,
    CheckStatus,
    Direction,
    MappingKind,
    MappingReport,
    Pair,
    TransformFailed,
    TransformLoadError,
    check_pair,
)
from transforms import load_registry as load_transforms
from worker.commands._common import config_option, load_cli_config
from worker.logs import redact_uri

__all__ = ["command"]

# How long a sampling connection may take: `check` must stay quick when no server is running.
SAMPLE_TIMEOUT_S = 2.0


async def _sample(uri: str, namespaces: Sequence[str], size: int) -> dict[str, list[Any]]:
    """Up to `size` random documents of each namespace (`$sample`, else the first ones)."""
    from pymongo import AsyncMongoClient
    from pymongo.errors import OperationFailure

    timeout_ms = int(SAMPLE_TIMEOUT_S * 1000)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        uri, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms, appname="check"
    )
    samples: dict[str, list[Any]] = {}
    try:
        for namespace in namespaces:
            database, _, name = namespace.partition(".")
            collection = client[database][name]
            try:
                cursor = await collection.aggregate([{"$sample": {"size": size}}])
                samples[namespace] = await cursor.to_list(size)
            except OperationFailure:
                samples[namespace] = await collection.find().limit(size).to_list(size)
    finally:
        await client.close()
    return samples


def _live_samples(uri: str, pairs: Sequence[Pair], size: int) -> dict[str, list[Any]]:
    from pymongo.errors import PyMongoError

    namespaces = sorted({ns for pair in pairs for ns in (pair.original, pair.partner)})
    try:
        samples = anyio.run(_sample, uri, namespaces, size)
    except PyMongoError as exc:
        first_line = str(exc).split(", Timeout:")[0]
        click.echo(
            f"no live samples: MongoDB at {redact_uri(uri)} did not answer "
            f"({redact_uri(first_line)[:200]}); checking examples only"
        )
        return {}
    for namespace in namespaces:
        click.echo(f"sampled {len(samples[namespace])} documents from {namespace}")
    return samples


def _print_pair(pair: Pair) -> None:
    click.echo(
        f"pair {pair.name}  version {pair.version}  unmapped={pair.unmapped}  ({pair.location})"
    )
    if not pair.mappings and not pair.original_only_fields and not pair.partner_only_fields:
        click.echo("  no field mappings: a collection rename")
    for field in pair.original_only_fields:
        click.echo(f"  original_only {field}")
    for field, default in pair.partner_only_fields.items():
        shown = "" if default is MISSING else f" (default {default!r})"
        click.echo(f"  partner_only {field}{shown}")


def _print_report(report: MappingReport) -> None:
    mapping = report.mapping
    label = {
        CheckStatus.OK: f"ok ({report.tried} values)",
        CheckStatus.FAILED: "FAILED",
        CheckStatus.LOSSY: "lossy (declared lossy=True)",
        CheckStatus.IDENTITY: "ok (copies values)",
        CheckStatus.ONE_WAY: f"one-way ({report.tried} values, forward only)",
        CheckStatus.UNTESTED: "untested",
    }[report.status]
    click.echo(f"  {mapping.describe()}  ... {label}")
    if report.status in (CheckStatus.FAILED, CheckStatus.LOSSY):
        example = dict(zip(mapping.original, report.counter_example, strict=False))
        shown = ", ".join(f"{path}={value!r}" for path, value in example.items())
        click.echo(f"      smallest counter-example: {shown}")
        click.echo(f"      {report.detail}")
        click.echo(f"      at {mapping.location}")
    elif report.status is CheckStatus.UNTESTED:
        click.echo(
            f"      no values to try: add pair.examples({mapping.original[0]!r}, ...) or sample "
            f"a reachable database with --uri ({mapping.location})"
        )


def _check_documents(pair: Pair, samples: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """Whole sampled documents through convert, each way: what fails would be a dead letter."""
    problems = []
    for namespace, direction in (
        (pair.original, Direction.FORWARD),
        (pair.partner, Direction.BACKWARD),
    ):
        for document in samples.get(namespace, ()):
            try:
                pair.convert(document, direction)
            except TransformFailed as exc:
                problems.append(f"{namespace} {direction}: {exc}")
    return problems


@click.command("check")
@config_option
@click.option(
    "--transforms",
    "modules",
    multiple=True,
    help="Transform module (dotted name or .py path); repeat for several. Overrides the config.",
)
@click.option(
    "--sample",
    "sample_size",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Documents sampled from each live collection (0: examples only).",
)
@click.option("--uri", default=None, help="MongoDB URI to sample from (overrides the config).")
def command(
    config_path: str | None, modules: tuple[str, ...], sample_size: int, uri: str | None
) -> None:
    """Load, validate and property-test the transforms; exit 1 when a mapping fails."""
    config = load_cli_config(config_path, {"transforms": modules or None, "uri": uri})
    try:
        registry = load_transforms(config.transforms)
    except TransformLoadError as exc:
        click.echo(f"partner-sync: cannot load transforms: {exc}", err=True)
        sys.exit(2)
    if not registry.pairs:
        click.echo(
            "partner-sync: no pairs registered: pass --transforms MODULE, set `transforms` in "
            "the configuration, or install a package with a `partner_sync.transforms` entry point",
            err=True,
        )
        sys.exit(2)
    samples = _live_samples(config.uri, registry.pairs, sample_size) if sample_size else {}
    failed = lossy = checked = 0
    for pair in registry.pairs:
        _print_pair(pair)
        for report in check_pair(pair, samples.get(pair.original, ()), progress=_print_report):
            checked += report.mapping.kind in (MappingKind.CONVERT, MappingKind.DERIVE)
            failed += report.status is CheckStatus.FAILED
            lossy += report.status is CheckStatus.LOSSY
        for problem in _check_documents(pair, samples):
            failed += 1
            click.echo(f"  FAILED sampled document: {problem}")
    click.echo(
        f"{len(registry.pairs)} pairs, {checked} convert/derive mappings tested: "
        f"{failed} failed, {lossy} lossy"
    )
    sys.exit(1 if failed else 0)
