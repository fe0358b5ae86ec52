"""The benchmark's bare OP_MSG load client (bench/_wire.py) against the development server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from bson import Timestamp
from pymongo import MongoClient

from tests.loading import module_from_file

_WIRE = Path(__file__).resolve().parents[2] / "bench" / "_wire.py"


@pytest.fixture(scope="module")
def wire() -> ModuleType:
    # Loaded from its file: bench/ is not a package, and on the import path its devserver.py
    # would stand in for the devserver package.
    return module_from_file("bench_wire", _WIRE, register=True)


@pytest.fixture
def uri(server_uri: str) -> Iterator[str]:
    if os.environ.get("MONGODB_URI"):
        pytest.skip("bare commands do not authenticate; the benchmark uses the driver there")
    client: MongoClient[dict[str, Any]] = MongoClient(server_uri)
    client.wireload.people.delete_many({})
    client.wireload.people.insert_many([{"_id": 1, "name": "a"}, {"_id": 2, "name": "b"}])
    client.close()
    yield server_uri


async def test_an_update_is_written_and_returns_its_cluster_time(
    wire: ModuleType, uri: str
) -> None:
    connection = await wire.WireConnection.open(uri)
    try:
        first = await connection.update_one("wireload", "people", {"_id": 1}, {"$set": {"n": 1}})
        second = await connection.update_one("wireload", "people", {"_id": 2}, {"$set": {"n": 2}})
    finally:
        await connection.close()
    assert isinstance(first, Timestamp) and second > first
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        names = {d["_id"]: d.get("n") for d in client.wireload.people.find()}
    finally:
        client.close()
    assert names == {1: 1, 2: 2}


async def test_a_refused_command_and_a_missed_update_raise(wire: ModuleType, uri: str) -> None:
    connection = await wire.WireConnection.open(uri)
    try:
        with pytest.raises(wire.CommandError, match="matched 0"):
            await connection.update_one("wireload", "people", {"_id": 99}, {"$set": {"n": 1}})
        with pytest.raises(wire.CommandError, match=r"write error \d+: Unknown modifier"):
            await connection.update_one("wireload", "people", {"_id": 1}, {"$bogus": {"n": 1}})
        with pytest.raises(wire.CommandError, match="CommandNotFound"):
            await connection.command("wireload", {"noSuchCommand": 1})
        # The connection is still in step after the errors.
        await connection.update_one("wireload", "people", {"_id": 1}, {"$set": {"n": 5}})
    finally:
        await connection.close()
