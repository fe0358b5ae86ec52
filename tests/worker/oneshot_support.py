"""Test support for the one-shot commands: a pair of collections, its transforms and config.

A `Scenario` owns one database (original `people`, partner `people_v2`), a state database, a
transform module and a TOML configuration in a temporary directory; it runs commands in-process
through click's runner and can start the sync daemon as a subprocess, stopping it on close.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from pymongo import MongoClient
from pymongo.collection import Collection

from tests.waiting import wait_until
from worker.cli import main
from worker.config import Config, load_config

__all__ = ["CHAIN", "PEOPLE", "Scenario", "WriteWhileStopped", "wait_for"]

# The pair the tests use; `{db}` and `{extra}` are filled in per test.
PEOPLE = """
from transforms import Pair

people = Pair(original="{db}.people", partner="{db}.people_v2", unmapped="keep"{version})
people.rename("name", "full_name")
people.convert("age", forward=int, backward=str)
people.partner_only("loyalty", default=0)
{extra}
"""

# A chain of two pairs (v1 <-> v2 <-> v3) for `Scenario.use_chain`.
CHAIN = """
from transforms import Pair

first = Pair(original="{db}.v1", partner="{db}.v2", unmapped="keep")
first.rename("name", "full_name")

second = Pair(original="{db}.v2", partner="{db}.v3", unmapped="keep")
second.rename("full_name", "display")
"""


def wait_for(condition: Callable[[], Any], *, timeout: float = 30.0, what: str = "") -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    return wait_until(condition, within=timeout, what=what or str(condition))


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


class Scenario:
    """One test's pair of collections, state database, transform module and configuration."""

    def __init__(self, uri: str, db_name: str, tmp_path: Path) -> None:
        self.uri = uri
        self.db_name = db_name
        self.tmp_path = tmp_path
        self.client: MongoClient[dict[str, Any]] = MongoClient(
            uri, serverSelectionTimeoutMS=10_000, tz_aware=True
        )
        self.db = self.client[db_name]
        self.original = self.db["people"]
        self.partner = self.db["people_v2"]
        self.state_db_name = f"{db_name}_state"
        self.state = self.client[self.state_db_name]
        self.ns = f"{db_name}.people"
        self.settings: dict[str, Any] = {}
        # The commands' and workers' log level ("info" keeps every conflict a worker resolves
        # in the test's captured output, shown when it fails).
        self.log_level = "warning"
        self.workers: list[subprocess.Popen[bytes]] = []
        self.module_path = self.write_module()

    # -- files -------------------------------------------------------------------------------

    def write_module(
        self, extra: str = "", *, version: str | None = None, name: str = "people_mod.py"
    ) -> Path:
        """Write the transform module (a new file name gives a fresh import) and use it."""
        given = f", version={version!r}" if version is not None else ""
        source = PEOPLE.format(db=self.db_name, version=given, extra=textwrap.dedent(extra))
        path = self.tmp_path / name
        path.write_text(source)
        self.module_path = path
        self.write_config()
        return path

    def write_config(self, **settings: Any) -> Path:
        """Write the TOML configuration (extra top-level settings are kept between calls)."""
        self.settings.update(settings)
        top: dict[str, Any] = {
            "uri": self.uri,
            "transforms": [str(self.module_path)],
            "state_db": self.state_db_name,
            "connect_timeout_s": 10,
            **self.settings,
        }
        lines = [f"{key} = {_toml(value)}" for key, value in top.items()]
        lines += ["[http]", 'listen = ""', "[log]", f"level = {_toml(self.log_level)}"]
        self.config_path = self.tmp_path / "partner-sync.toml"
        self.config_path.write_text("\n".join(lines) + "\n")
        return self.config_path

    def use_chain(self) -> tuple[Collection[dict[str, Any]], ...]:
        """Use the `CHAIN` transforms instead of `PEOPLE`; returns the collections v1, v2, v3."""
        module = self.tmp_path / "chain_mod.py"
        module.write_text(CHAIN.format(db=self.db_name))
        self.module_path = module
        self.write_config()
        return tuple(self.db[name] for name in ("v1", "v2", "v3"))

    def config(self) -> Config:
        """The configuration the commands see."""
        return load_config(str(self.config_path), environ={})

    # -- commands ----------------------------------------------------------------------------

    def cli(self, *args: str, input: str | None = None) -> Result:
        """Run `partner-sync ARGS --config <this scenario's file>` in-process."""
        argv = [*args, "--config", str(self.config_path)]
        return CliRunner().invoke(main, argv, input=input, catch_exceptions=False)

    def subprocess_args(self, *args: str) -> list[str]:
        """argv of `partner-sync ARGS --config FILE` as a separate process."""
        return [sys.executable, "-m", "worker", *args, "--config", str(self.config_path)]

    def start_worker(self) -> subprocess.Popen[bytes]:
        """Start `partner-sync run` and wait until it holds the lease."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARTNER_SYNC_")}
        process = subprocess.Popen(self.subprocess_args("run"), env=env, stdout=subprocess.DEVNULL)
        self.workers.append(process)
        wait_for(
            lambda: (
                process.poll() is not None
                or self.state["leases"].find_one({"holder": {"$ne": None}})
            ),
            timeout=30,
            what="the worker to take the lease",
        )
        assert process.poll() is None, "the worker exited at start"
        return process

    # -- state -------------------------------------------------------------------------------

    def pair_doc(self) -> dict[str, Any]:
        """The pair record in the state database."""
        doc = self.state["pairs"].find_one({"_id": self.ns})
        assert doc is not None
        return doc

    def backfilled(self) -> int:
        """Documents the backfill has recorded as scanned (0 before it started)."""
        doc = self.state["pairs"].find_one({"_id": self.ns}) or {}
        return int((doc.get("backfill") or {}).get("docs", 0))

    def close(self) -> None:
        """Stop the workers this scenario started and close its client."""
        for process in self.workers:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.client.close()


class WriteWhileStopped:
    """An async function of a command (`module.name`) replaced, for one test, by one that
    first stops `worker` (SIGSTOP) and makes a client write, once, then runs the original.

    The worker then meets the client write only after whatever the command does next (its
    commit), as a worker far behind would. Used as a context manager around the command, it
    lets the worker go on (SIGCONT) on the way out; `done` tells whether the command got that
    far."""

    def __init__(
        self,
        monkeypatch: Any,
        module: Any,
        name: str,
        worker: subprocess.Popen[bytes],
        write: Callable[[], Any],
    ) -> None:
        self.worker = worker
        self.done = False
        real = getattr(module, name)

        async def write_first(*args: Any, **kwargs: Any) -> Any:
            if not self.done:
                self.done = True
                worker.send_signal(signal.SIGSTOP)
                write()
            return await real(*args, **kwargs)

        monkeypatch.setattr(module, name, write_first)

    def __enter__(self) -> WriteWhileStopped:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.worker.send_signal(signal.SIGCONT)  # (harmless when it was never stopped)


def scenario_fixture(mongo_uri: str, db_name: str, tmp_path: Path) -> Iterator[Scenario]:
    """Body of the `scenario` fixture each test module declares."""
    scenario = Scenario(mongo_uri, db_name, tmp_path)
    try:
        yield scenario
    finally:
        scenario.close()
