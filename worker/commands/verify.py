"""`partner-sync verify`: compare both sides of each pair through the transforms.

Exit 0 when they agree, 1 on drift (after `--repair`: on drift it could not repair).
"""

from __future__ import annotations

import sys

import click
import orjson

from worker.commands._common import config_option, load_cli_config
from worker.commands.lifecycle import pair_option, run_oneshot
from worker.lifecycle import Workspace
from worker.verify import DRIFT_KINDS, VerifyReport, verify_pair

__all__ = ["command"]


def _describe(report: VerifyReport, repair: bool) -> list[str]:
    lines = [
        f"{report.pair} -> {report.partner}: {report.original_docs} original, "
        f"{report.partner_docs} partner documents; "
        + (f"{report.drift} drifted" if report.drift else "no drift")
        + (f" ({report.in_flight} changes were in flight)" if report.in_flight else "")
    ]
    for kind in DRIFT_KINDS:
        if not report.counts[kind]:
            continue
        lines.append(f"  {kind}: {report.counts[kind]}")
        for sample in report.samples.get(kind, []):
            detail = f" fields {', '.join(sample.fields)}" if sample.fields else ""
            if sample.error:
                detail += f": {sample.error}"
            lines.append(f"    _id {sample.document_id!r}{detail}")
    if repair and report.drift:
        lines.append(f"  repaired {report.repaired}, could not repair {report.unrepaired}")
    if report.warning:
        lines.append(f"  warning: {report.warning}")
    return lines


@click.command("verify")
@config_option
@pair_option(required=False)
@click.option("--repair", is_flag=True, help="Fix drift: the side that wrote last wins.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per pair.")
def command(config_path: str | None, pair: str | None, repair: bool, as_json: bool) -> None:
    """Compare both sides through the transforms; exit 1 on drift."""
    config = load_cli_config(config_path)

    async def body(workspace: Workspace) -> list[VerifyReport]:
        return [await verify_pair(workspace, each, repair=repair) for each in workspace.pairs(pair)]

    reports = run_oneshot(config, body)
    for report in reports:
        if as_json:
            click.echo(orjson.dumps(report.as_dict(), default=str).decode())
        else:
            for line in _describe(report, repair):
                click.echo(line)
    remaining = sum(report.remaining if repair else report.drift for report in reports)
    sys.exit(1 if remaining else 0)
