"""Shared fixtures: a MongoDB to talk to (development server or MONGODB_URI), clients, names."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# The project root first, so the `tests/devserver` directory never shadows the `devserver`
# package when tests run through the plain `pytest` entry point.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import pytest  # noqa: E402
from pymongo import MongoClient  # noqa: E402

from devserver import DevServer, ServerThread  # noqa: E402

ServerFactory = Callable[..., ServerThread]


@pytest.fixture(scope="session")
def mongo_uri(request: pytest.FixtureRequest) -> str:
    """MONGODB_URI when set (a real MongoDB replica set), else an in-process development server.

    Parametrized indirectly with "7.0" (`BOTH_VERSIONS` in tests/worker/engine_helpers.py) or
    "6.0", a development server speaking that release instead (skipped when MONGODB_URI is
    set)."""
    release = getattr(request, "param", "current")
    if release in ("6.0", "7.0"):
        return str(request.getfixturevalue(f"mongo_uri_{release.replace('.', '_')}"))
    return str(request.getfixturevalue("server_uri"))


@pytest.fixture(scope="session")
def server_uri() -> Iterator[str]:
    """The server under test: MONGODB_URI, or an in-process development server."""
    external = os.environ.get("MONGODB_URI")
    if external:
        yield external
        return
    handle = DevServer(host="127.0.0.1", port=0).start_in_thread()
    try:
        yield handle.uri
    finally:
        handle.stop()


def _release_server(version: str) -> Iterator[str]:
    """A development server presenting MongoDB `version`; skips when MONGODB_URI is set."""
    if os.environ.get("MONGODB_URI"):
        pytest.skip("needs its own development server (MONGODB_URI is set)")
    handle = DevServer(host="127.0.0.1", port=0, mongodb_version=version).start_in_thread()
    try:
        yield handle.uri
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def mongo_uri_7_0() -> Iterator[str]:
    """A development server speaking MongoDB 7.0 (no cross-collection bulkWrite), for the code
    paths kept for servers before 8.0."""
    yield from _release_server("7.0")


@pytest.fixture(scope="session")
def mongo_uri_6_0() -> Iterator[str]:
    """A development server speaking MongoDB 6.0.0 (no bulkWrite, no
    $changeStreamSplitLargeEvent, no `disambiguatedPaths`), the oldest release the worker
    supports."""
    yield from _release_server("6.0")


@pytest.fixture
def devserver_factory() -> Iterator[ServerFactory]:
    """Start extra development servers with given options; all are stopped at teardown.

    Handles have `.uri`, `.port`, `.stop()` and `.restart()` (same port and dbpath). Tests that
    need their own server cannot run against an external MongoDB, so they skip when
    MONGODB_URI is set.
    """
    if os.environ.get("MONGODB_URI"):
        pytest.skip("needs its own development server (MONGODB_URI is set)")
    started: list[ServerThread] = []

    def start(**options: Any) -> ServerThread:
        options.setdefault("host", "127.0.0.1")
        handle = DevServer(**options).start_in_thread()
        started.append(handle)
        return handle

    try:
        yield start
    finally:
        for handle in started:
            handle.stop()


@pytest.fixture
def client(mongo_uri: str) -> Iterator[MongoClient[dict[str, Any]]]:
    """A synchronous PyMongo client on `mongo_uri`, closed at teardown."""
    mongo: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, serverSelectionTimeoutMS=10_000)
    try:
        yield mongo
    finally:
        mongo.close()


@pytest.fixture
def db_name() -> str:
    """A database name no other test uses."""
    return f"t_{uuid.uuid4().hex[:12]}"
