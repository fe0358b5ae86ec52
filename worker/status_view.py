"""How `partner-sync status` shows a status object, and when it counts as healthy.

The status object is exactly INTERFACE.md's "Status" JSON. Health rules (`status_is_healthy`),
each a reason a probe should fail:

- a pair is in RESYNC_REQUIRED (its change history was lost; it needs a reconcile backfill);
- a pair has dead letters (changes a transform could not convert are waiting for a fix);
- a RUNNING pair lags the server by more than `max_lag_s` (default 60 s, `[status] max_lag_s`);
- a pair is RUNNING or BACKFILLING but no worker holds the lease, or the lease has expired
  (nobody is applying its changes);
- a pair reports a state that is not one of the seven known states.

NOT_STARTED, PAUSED, COMPLETED and ROLLED_BACK are healthy: they are an operator's choices.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from worker.state import STATES

__all__ = ["DEFAULT_MAX_LAG_S", "render_status", "status_is_healthy"]

DEFAULT_MAX_LAG_S = 60.0
_LEASED_STATES = ("RUNNING", "BACKFILLING")
_STATE_STYLES = {
    "RUNNING": "bold green",
    "BACKFILLING": "yellow",
    "PAUSED": "yellow",
    "RESYNC_REQUIRED": "bold red",
    "NOT_STARTED": "dim",
    "COMPLETED": "cyan",
    "ROLLED_BACK": "dim",
}


def _parse_time(value: Any) -> dt.datetime | None:
    """A status time (RFC 3339 string or datetime) as an aware UTC datetime, or None."""
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, str) and value:
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _ago(seconds: float) -> str:
    if seconds < 0:
        return f"in {_ago(-seconds).removesuffix(' ago')}"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _show_time(value: Any, now: dt.datetime) -> str:
    moment = _parse_time(value)
    if moment is None:
        return "-" if value in (None, "") else str(value)
    shown = moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{shown} ({_ago((now - moment).total_seconds())})"


def _show_lag(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def _show_count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def _show_backfill(backfill: Any) -> str:
    if not isinstance(backfill, Mapping):
        return "-"
    docs = _show_count(backfill.get("docs"))
    total = backfill.get("total")
    if backfill.get("done"):
        return f"done, {docs} docs"
    if isinstance(total, int) and total > 0 and isinstance(backfill.get("docs"), int):
        return f"{docs} / {total:,} docs ({100 * backfill['docs'] / total:.0f}%)"
    return f"{docs} docs so far" if backfill.get("docs") else "not done"


# (title, justification) of the status table's columns, in order.
_COLUMNS: tuple[tuple[str, str], ...] = (
    ("Pair", "left"),
    ("State", "left"),
    ("Lag", "right"),
    ("Applied →", "right"),
    ("Applied ←", "right"),
    ("Echoes", "right"),
    ("Conflicts", "right"),
    ("Dead letters", "right"),
    ("Last write original", "left"),
    ("Last write partner", "left"),
    ("Backfill", "left"),
)
# Below this many columns the wide table wraps into illegibility; pairs are shown one by one.
_WIDE_TABLE_MIN_WIDTH = 150


def _cells(pair: Mapping[str, Any], now: dt.datetime) -> list[str | Text]:
    """One pair's table cells, in `_COLUMNS` order."""
    state = str(pair.get("state", "?"))
    applied = pair.get("applied") or {}
    last = pair.get("last_client_write") or {}
    dead = pair.get("dead_letters")
    held = pair.get("held")
    shown = Text(state, style=_STATE_STYLES.get(state, "bold red"))
    if isinstance(held, int) and held:
        # Held while paused; after a resume, until they are replayed.
        shown.append(f"\n{held:,} held")
    return [
        f"{pair.get('original', '?')}\n→ {pair.get('partner', '?')}",
        shown,
        _show_lag(pair.get("lag_seconds")),
        _show_count(applied.get("forward")),
        _show_count(applied.get("backward")),
        _show_count(pair.get("echoes_skipped")),
        _show_count(pair.get("conflicts")),
        Text(_show_count(dead), style="bold red" if isinstance(dead, int) and dead else ""),
        _show_time(last.get("original"), now),
        _show_time(last.get("partner"), now),
        _show_backfill(pair.get("backfill")),
    ]


def render_status(
    status: Mapping[str, Any], *, console: Console, now: dt.datetime | None = None
) -> None:
    """Print the worker's lease line and the pairs to `console`: one table row per pair on a
    wide console, one key/value block per pair on a narrow one."""
    now = now or dt.datetime.now(dt.UTC)
    worker = status.get("worker") or {}
    holder = worker.get("lease_holder")
    lease = (
        f"lease held by {holder}, expires {_show_time(worker.get('lease_expires'), now)}"
        if holder
        else "no worker holds the lease"
    )
    console.print(f"partner-sync {worker.get('version') or '?'} · {lease}")
    pairs = status.get("pairs") or []
    if not pairs:
        console.print("No pairs registered yet.")
        return
    rows = [_cells(pair, now) for pair in pairs]
    if console.width >= _WIDE_TABLE_MIN_WIDTH:
        table = Table(header_style="bold")
        for title, justify in _COLUMNS:
            table.add_column(title, justify=justify)  # type: ignore[arg-type]
        for row in rows:
            table.add_row(*row)
        console.print(table)
    else:
        # Too narrow for eleven columns: one small key/value block per pair.
        for pair, row in zip(pairs, rows, strict=True):
            block = Table(
                show_header=False, title=str(pair.get("original", "?")), title_justify="left"
            )
            block.add_column(style="bold")
            block.add_column()
            block.add_row("Partner", str(pair.get("partner", "?")))
            for (title, _), cell in zip(_COLUMNS[1:], row[1:], strict=True):
                block.add_row(title, cell)
            console.print(block)
    for pair in pairs:
        if holder and pair.get("state_seen") is False:
            console.print(
                f"{pair.get('original')}: the worker has not taken up the change to"
                f" {pair.get('state')} yet (it does at its next read of the pair states)"
            )
        if pair.get("resync_reason") and pair.get("state") == "RESYNC_REQUIRED":
            console.print(
                f"{pair.get('original')}: resync required: {pair['resync_reason']}; "
                "run `partner-sync backfill --restart --pair "
                f"{pair.get('original')}`, then keep the worker running."
            )


def status_is_healthy(
    status: Mapping[str, Any],
    *,
    max_lag_s: float = DEFAULT_MAX_LAG_S,
    now: dt.datetime | None = None,
) -> tuple[bool, list[str]]:
    """Apply the module's health rules; return (healthy, one reason per problem found)."""
    now = now or dt.datetime.now(dt.UTC)
    reasons: list[str] = []
    pairs = status.get("pairs") or []
    for pair in pairs:
        name = pair.get("original", "?")
        state = pair.get("state")
        if state not in STATES:
            reasons.append(f"{name}: unknown state {state!r}")
        if state == "RESYNC_REQUIRED":
            why = pair.get("resync_reason") or "change history lost"
            reasons.append(
                f"{name}: RESYNC_REQUIRED ({why}); "
                "run `partner-sync backfill --restart` for this pair"
            )
        dead = pair.get("dead_letters") or 0
        if dead > 0:
            reasons.append(
                f"{name}: {dead} dead letter(s); fix the transform, then `partner-sync dlq retry`"
            )
        lag = pair.get("lag_seconds")
        if state == "RUNNING" and isinstance(lag, int | float) and lag > max_lag_s:
            reasons.append(f"{name}: lag {lag:.1f} s is above {max_lag_s:g} s")
    if any(pair.get("state") in _LEASED_STATES for pair in pairs):
        worker = status.get("worker") or {}
        expires = _parse_time(worker.get("lease_expires"))
        if not worker.get("lease_holder"):
            reasons.append("no worker holds the lease, so no changes are being applied")
        elif expires is not None and expires < now:
            reasons.append(
                f"the lease of {worker['lease_holder']} expired "
                f"{_ago((now - expires).total_seconds())} and nobody renewed it"
            )
    return not reasons, reasons
