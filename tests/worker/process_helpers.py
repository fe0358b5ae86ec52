"""Helpers for tests that run the worker as users do: `python -m worker run --config F`.

Each worker is a subprocess with a TOML configuration file and `PARTNER_SYNC_*` environment
settings; its log lines (JSON) go to a file the test reads, so a full pipe never blocks it.
One-shot commands (`status`, `dlq`, `backfill`, ...) run the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson

from tests.worker.engine_helpers import eventually

__all__ = [
    "CommandResult",
    "ProcessGroup",
    "WorkerProcess",
    "process_group",
    "write_config",
]

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
# Generous bounds for one subprocess: start-up imports take about a second on a loaded machine.
COMMAND_TIMEOUT_S = 60.0


def write_config(path: Path, *, uri: str, module: str, state_db: str, extra: str = "") -> Path:
    """Write a worker configuration file (TOML) naming the server, transforms and state db."""
    path.write_text(
        f"uri = {uri!r}\n"
        f"transforms = [{module!r}]\n"
        f"state_db = {state_db!r}\n"
        "[http]\n"
        'listen = ""\n'
        "[log]\n"
        'format = "json"\n'
        f"{extra}"
    )
    return path


def _environment(settings: Mapping[str, Any]) -> dict[str, str]:
    """The parent's environment without its PARTNER_SYNC_* keys, plus these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARTNER_SYNC_")}
    env.update({f"PARTNER_SYNC_{key.upper()}": str(value) for key, value in settings.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class CommandResult:
    """A finished one-shot command: exit code and output."""

    code: int
    stdout: str
    stderr: str

    def json_lines(self) -> list[dict[str, Any]]:
        """stdout parsed as one JSON object per line."""
        return [orjson.loads(line) for line in self.stdout.splitlines() if line.strip()]


class WorkerProcess:
    """One `python -m worker run` subprocess and its log file."""

    def __init__(self, config: Path, log_path: Path, env: Mapping[str, str]) -> None:
        self.config = config
        self.log_path = log_path
        self._log_file = log_path.open("ab")
        self.process = subprocess.Popen(
            [PYTHON, "-m", "worker", "run", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=ROOT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The worker's log lines so far (JSON objects; other lines as {"event": None})."""
        found: list[dict[str, Any]] = []
        for line in self.log_path.read_bytes().splitlines():
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                entry = {"event": None, "text": line.decode(errors="replace")}
            if not isinstance(entry, dict):
                entry = {"event": None, "text": repr(entry)}
            if name is None or entry.get("event") == name:
                found.append(entry)
        return found

    def log_text(self) -> str:
        """The whole log, for assertion messages."""
        return self.log_path.read_text(errors="replace")

    async def wait_for(
        self, name: str, *, within: float = 20.0, count: int = 1, **fields: Any
    ) -> dict[str, Any]:
        """Wait until the worker has logged `count` events `name` with these fields."""

        async def logged() -> dict[str, Any] | None:
            matching = [
                e for e in self.events(name) if all(e.get(k) == v for k, v in fields.items())
            ]
            if len(matching) >= count:
                return matching[count - 1]
            if self.returncode is not None:
                raise AssertionError(
                    f"worker exited with {self.returncode} before logging {name}:\n"
                    f"{self.log_text()[-3000:]}"
                )
            return None

        found: dict[str, Any] = await eventually(logged, within=within, what=f"log event {name}")
        return found

    def send(self, signum: int) -> None:
        """Send a signal to the worker (if it still runs)."""
        if self.returncode is None:
            os.kill(self.pid, signum)

    async def wait_exit(self, *, within: float = 10.0) -> int:
        """Wait for the worker to exit and return its exit code."""

        async def exited() -> bool:
            return self.returncode is not None

        await eventually(exited, within=within, what=f"worker {self.pid} to exit")
        code = self.returncode
        assert code is not None
        return code

    def kill(self) -> None:
        """SIGKILL the worker and reap it."""
        if self.returncode is None:
            # A stopped process dies on SIGKILL too; SIGCONT is not needed.
            os.kill(self.pid, signal.SIGKILL)
        self.process.wait(timeout=COMMAND_TIMEOUT_S)

    def close(self) -> None:
        """Make sure the process is gone and its log file closed."""
        with contextlib.suppress(ProcessLookupError):
            self.kill()
        self._log_file.close()


class ProcessGroup:
    """Starts workers and one-shot commands for one test; `close()` stops every worker."""

    def __init__(self, directory: Path, config: Path, settings: Mapping[str, Any]) -> None:
        self.directory = directory
        self.config = config
        self.settings = dict(settings)
        self.workers: list[WorkerProcess] = []

    def env(self, **settings: Any) -> dict[str, str]:
        """The environment of a subprocess: the group's settings updated with these."""
        return _environment({**self.settings, **settings})

    def start(self, **settings: Any) -> WorkerProcess:
        """Start `partner-sync run` with the group's config and these extra env settings."""
        log_path = self.directory / f"worker-{len(self.workers)}.log"
        worker = WorkerProcess(self.config, log_path, self.env(**settings))
        self.workers.append(worker)
        return worker

    async def command(self, *args: str, **settings: Any) -> CommandResult:
        """Run `partner-sync ARGS --config F` to its end."""
        argv = [PYTHON, "-m", "worker", *args, "--config", str(self.config)]
        with anyio.fail_after(COMMAND_TIMEOUT_S):
            done = await anyio.run_process(argv, check=False, env=self.env(**settings), cwd=ROOT)
        return CommandResult(done.returncode, done.stdout.decode(), done.stderr.decode())

    async def status(self) -> dict[str, Any]:
        """`partner-sync status --json`, parsed."""
        result = await self.command("status", "--json")
        assert result.code == 0, result
        status: dict[str, Any] = orjson.loads(result.stdout)
        return status

    def close(self) -> None:
        for worker in self.workers:
            worker.close()


@contextlib.contextmanager
def process_group(
    directory: Path,
    *,
    uri: str,
    module: str,
    state_db: str,
    extra: str = "",
    settings: Mapping[str, Any] | None = None,
) -> Iterator[ProcessGroup]:
    """A config file plus a group of worker processes, all stopped when the block ends."""
    config = write_config(
        directory / "partner-sync.toml", uri=uri, module=module, state_db=state_db, extra=extra
    )
    group = ProcessGroup(directory, config, settings or {})
    try:
        yield group
    finally:
        group.close()
