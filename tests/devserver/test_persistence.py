"""--dbpath: data, indexes, options and change history survive restarts, including kill -9."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bson import Int64, Timestamp
from pymongo import MongoClient
from pymongo.errors import DuplicateKeyError, PyMongoError

from devserver._persistence import DbpathInUse

Client = MongoClient[dict[str, Any]]

pytestmark = pytest.mark.usefixtures("devserver_factory")


def test_clean_restart_keeps_everything(devserver_factory: Any, tmp_path: Path) -> None:
    """Documents, unique indexes, collection and index options and history survive a
    restart."""
    server = devserver_factory(dbpath=str(tmp_path))
    with MongoClient(server.uri) as mongo:
        db = mongo.shop
        db.create_collection("items", changeStreamPreAndPostImages={"enabled": True})
        db.items.create_index("sku", unique=True)
        db.items.create_index("seen", expireAfterSeconds=60)
        db.command("collMod", "items", index={"name": "seen_1", "expireAfterSeconds": 90})
        db.items.insert_many([{"_id": i, "sku": f"s{i}"} for i in range(20)])
        db.items.update_one({"_id": 3}, {"$set": {"price": 5}})
        db.items.delete_one({"_id": 4})
        db.old.insert_one({"_id": "x"})
        db.old.rename("renamed")
        first_time = mongo.admin.command("ping")["operationTime"]
    server.restart()
    with MongoClient(server.uri) as mongo:
        db = mongo.shop
        assert db.items.count_documents({}) == 19
        assert db.items.find_one({"_id": 3}) == {"_id": 3, "sku": "s3", "price": 5}
        assert sorted(db.list_collection_names()) == ["items", "renamed"]
        options = db.command("listCollections", filter={"name": "items"})["cursor"]
        assert options["firstBatch"][0]["options"]["changeStreamPreAndPostImages"] == {
            "enabled": True
        }
        with pytest.raises(DuplicateKeyError):
            db.items.insert_one({"sku": "s1"})
        listed = {i["name"]: i for i in db.items.list_indexes()}
        assert listed["seen_1"]["expireAfterSeconds"] == 90
        with db.items.watch(start_at_operation_time=Timestamp(first_time.time - 60, 0)) as stream:
            kinds = [stream.next()["operationType"] for _ in range(22)]
        assert kinds[:20] == ["insert"] * 20 and kinds[20:] == ["update", "delete"]
        new_time = (
            db.items.insert_one({"sku": "new"}) and mongo.admin.command("ping")["operationTime"]
        )
        assert new_time > first_time


@pytest.fixture
def dbpath(tmp_path: Path) -> Path:
    return tmp_path / "db"


def _start_subprocess(dbpath: Path, port: int = 0) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "devserver", "--port", str(port), "--dbpath", str(dbpath)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    uri = process.stdout.readline().strip()
    assert uri.startswith("mongodb://"), uri
    return process, uri


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.wait(10)
            if process.stdout is not None:
                process.stdout.close()


def test_kill_9_at_random_instants_loses_no_acknowledged_write(
    dbpath: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """kill -9 while writes are in flight: every acknowledged write is there after restart."""
    rng = random.Random(1234)
    acknowledged: set[int] = set()
    attempted: set[int] = set()
    next_id = 0
    for _ in range(4):
        process, uri = _start_subprocess(dbpath)
        processes.append(process)
        with MongoClient(uri, serverSelectionTimeoutMS=5000, retryWrites=False) as mongo:
            coll = mongo.app.docs
            present = {d["_id"] for d in coll.find({}, {"_id": 1})}
            assert acknowledged <= present, acknowledged - present
            assert present <= attempted
            coll.create_index("slot", unique=True)
            stop = threading.Event()
            # Kill after a random number of acknowledged writes (bounded), mid-stream.
            kill_after = rng.randrange(5, 120)

            def writer(start: int, coll: Any, stop: threading.Event) -> None:
                doc_id = start
                while not stop.is_set() and doc_id < start + 10_000:
                    attempted.add(doc_id)
                    try:
                        coll.insert_one({"_id": doc_id, "slot": doc_id, "pad": "x" * (doc_id % 50)})
                    except PyMongoError:
                        return
                    acknowledged.add(doc_id)
                    doc_id += 1

            thread = threading.Thread(target=writer, args=(next_id, coll, stop))
            thread.start()
            deadline_counter = 0
            while len(acknowledged) < next_id + kill_after and thread.is_alive():
                deadline_counter += 1
                assert deadline_counter < 1_000_000
                thread.join(0.001)
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
            stop.set()
            thread.join(10)
            next_id = max(attempted) + 1
    process, uri = _start_subprocess(dbpath)
    processes.append(process)
    with MongoClient(uri, serverSelectionTimeoutMS=5000) as mongo:
        present = {d["_id"] for d in mongo.app.docs.find({}, {"_id": 1})}
        assert acknowledged <= present
        assert present <= attempted
        # The history after the restarts still lists every surviving insert.
        with mongo.app.docs.watch(start_at_operation_time=Timestamp(1, 0)) as stream:
            seen = set()
            while len(seen) < len(present):
                event = stream.try_next()
                if event is None:
                    break
                seen.add(event["documentKey"]["_id"])
        assert seen == present


def test_sigterm_stops_cleanly_with_exit_0(
    dbpath: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """SIGTERM: the server snapshots, exits 0, and the data is there on the next start."""
    process, uri = _start_subprocess(dbpath)
    processes.append(process)
    with MongoClient(uri) as mongo:
        mongo.app.docs.insert_one({"_id": 1})
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0
    assert (dbpath / "snapshot").exists()
    process, uri = _start_subprocess(dbpath)
    processes.append(process)
    with MongoClient(uri) as mongo:
        assert mongo.app.docs.find_one() == {"_id": 1}


def test_torn_journal_tail_is_ignored_and_cut(
    dbpath: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """A half-written last record is ignored on start, and later writes still persist."""
    process, uri = _start_subprocess(dbpath)
    processes.append(process)
    with MongoClient(uri) as mongo:
        mongo.app.docs.insert_many([{"_id": i} for i in range(5)])
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    journals = list(dbpath.glob("journal-*.log"))
    assert len(journals) == 1
    with open(journals[0], "ab") as journal:
        journal.write(b"\x40\x00\x00\x00\x12\x34")  # a record header promising more bytes
    process, uri = _start_subprocess(dbpath)
    processes.append(process)
    with MongoClient(uri) as mongo:
        assert mongo.app.docs.count_documents({}) == 5
        mongo.app.docs.insert_one({"_id": "after"})
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    process, uri = _start_subprocess(dbpath)
    processes.append(process)
    with MongoClient(uri) as mongo:
        assert mongo.app.docs.count_documents({}) == 6


def test_retries_after_a_restart_are_not_applied_again(
    devserver_factory: Any, tmp_path: Path
) -> None:
    """A committed transaction and a retryable write survive a restart as outcomes.

    The same commitTransaction is answered ok, and the same retryable write returns its first
    reply without applying again (MongoDB persists both in its transaction table).
    """
    server = devserver_factory(dbpath=str(tmp_path))
    update = [{"q": {"_id": 1}, "u": {"$inc": {"n": 1}}, "upsert": True}]
    with MongoClient(server.uri, retryWrites=False) as mongo:
        db = mongo.app
        with mongo.start_session() as writes, mongo.start_session() as txn:
            first = db.command("update", "c", updates=update, txnNumber=Int64(3), session=writes)
            txn.start_transaction()
            db.c.insert_one({"_id": "t"}, session=txn)
            txn.commit_transaction()
            server.restart()
            again = db.command("update", "c", updates=update, txnNumber=Int64(3), session=writes)
            assert again["n"] == first["n"] == 1
            assert db.c.find_one({"_id": 1}) == {"_id": 1, "n": 1}
            txn.commit_transaction()  # the driver re-sends commitTransaction: still ok
        assert db.c.count_documents({}) == 2


def test_a_dbpath_serves_one_server_at_a_time(devserver_factory: Any, tmp_path: Path) -> None:
    """A second server on a dbpath in use is refused; after the first stops, it starts."""
    first = devserver_factory(dbpath=str(tmp_path))
    with pytest.raises(DbpathInUse):
        devserver_factory(dbpath=str(tmp_path))
    first.stop()
    second = devserver_factory(dbpath=str(tmp_path))
    with MongoClient(second.uri) as mongo:
        assert mongo.admin.command("ping")["ok"] == 1.0
