"""The development server's public names and its in-process entry points."""

from __future__ import annotations

import threading
from typing import Any

from pymongo import MongoClient

import devserver


def test_public_names_are_pinned() -> None:
    """`devserver` exports exactly the documented API."""
    assert sorted(devserver.__all__) == ["DevServer", "RemoteBindRefused", "ServerThread", "serve"]
    for name in devserver.__all__:
        assert getattr(devserver, name) is not None


async def test_serve_yields_a_working_uri() -> None:
    """`serve()` runs a server for the block and yields its replica-set URI."""
    async with devserver.serve(port=0) as uri:
        assert uri.startswith("mongodb://127.0.0.1:") and uri.endswith("/?replicaSet=rs0")
        from pymongo import AsyncMongoClient

        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
        try:
            assert (await client.admin.command("ping"))["ok"] == 1.0
        finally:
            await client.close()


def test_many_clients_at_once(devserver_factory: Any) -> None:
    """Twenty clients writing and reading concurrently all succeed."""
    server = devserver_factory()
    failures: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            with MongoClient(server.uri) as mongo:
                coll = mongo.load.docs
                for i in range(25):
                    coll.insert_one({"_id": f"{worker}-{i}", "w": worker})
                assert coll.count_documents({"w": worker}) == 25
        except BaseException as exc:  # reported to the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures
    with MongoClient(server.uri) as mongo:
        assert mongo.load.docs.count_documents({}) == 500


def test_port_reuse_after_restart(devserver_factory: Any) -> None:
    """A restarted server comes back on the same port with the same URI."""
    server = devserver_factory()
    uri = server.uri
    server.restart()
    assert server.uri == uri
    with MongoClient(uri) as mongo:
        assert mongo.admin.command("ping")["ok"] == 1.0
