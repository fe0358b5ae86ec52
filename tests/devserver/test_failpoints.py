"""configureFailPoint failCommand, with mongod's semantics (runs against MONGODB_URI too)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import AutoReconnect, OperationFailure, WriteConcernError

Client = MongoClient[dict[str, Any]]


def test_times_mode_fails_exactly_n_commands(client: Client, db_name: str, fail_point: Any) -> None:
    """{times: 2} fails the next two matching commands with the given code, then stops."""
    fail_point({"times": 2}, failCommands=["find"], errorCode=2)
    coll = client[db_name].c
    for _ in range(2):
        with pytest.raises(OperationFailure) as caught:
            coll.find_one({})
        assert caught.value.code == 2
    assert coll.find_one({}) is None


def test_always_on_until_off_and_only_listed_commands(
    client: Client, db_name: str, fail_point: Any
) -> None:
    """alwaysOn fails every listed command and no other until mode off."""
    fail_point("alwaysOn", failCommands=["count"], errorCode=8)
    db = client[db_name]
    for _ in range(3):
        with pytest.raises(OperationFailure) as caught:
            db.command("count", "c")
        assert caught.value.code == 8
    db.c.insert_one({"_id": 1})
    client.admin.command("configureFailPoint", "failCommand", mode="off")
    assert db.command("count", "c")["n"] == 1


def test_error_labels_are_returned(client: Client, db_name: str, fail_point: Any) -> None:
    """errorLabels given in data appear on the error reply."""
    fail_point({"times": 1}, failCommands=["find"], errorCode=112, errorLabels=["MyLabel"])
    with pytest.raises(OperationFailure) as caught:
        client[db_name].c.find_one({})
    assert caught.value.has_error_label("MyLabel")


def test_close_connection_without_retry_raises_network_error(
    mongo_uri: str, db_name: str, fail_point: Any
) -> None:
    """closeConnection drops the connection: a non-retried command sees a network error."""
    fail_point({"times": 1}, failCommands=["find"], closeConnection=True)
    with MongoClient(mongo_uri, retryReads=False) as mongo:
        with pytest.raises(AutoReconnect):
            mongo[db_name].c.find_one({})
        assert mongo[db_name].c.find_one({}) is None


def test_block_connection_delays_the_command(client: Client, db_name: str, fail_point: Any) -> None:
    """blockConnection + blockTimeMS holds the command at least that long, then runs it."""
    client[db_name].c.insert_one({"_id": 1})
    fail_point({"times": 1}, failCommands=["find"], blockConnection=True, blockTimeMS=300)
    started = time.monotonic()
    assert client[db_name].c.find_one({}) == {"_id": 1}
    assert time.monotonic() - started >= 0.28


def test_write_concern_error_after_applying(mongo_uri: str, db_name: str, fail_point: Any) -> None:
    """writeConcernError: the write is applied and the reply reports the error."""
    fail_point(
        {"times": 1},
        failCommands=["insert"],
        writeConcernError={"code": 100, "errmsg": "Not enough data-bearing nodes"},
    )
    with MongoClient(mongo_uri, retryWrites=False) as mongo:
        with pytest.raises(WriteConcernError) as caught:
            mongo[db_name].c.insert_one({"_id": 1})
        assert caught.value.code == 100
        assert mongo[db_name].c.count_documents({}) == 1


def test_app_name_limits_the_fail_point(
    mongo_uri: str, client: Client, db_name: str, fail_point: Any
) -> None:
    """With appName set, only clients with that application name are affected."""
    fail_point("alwaysOn", failCommands=["find"], errorCode=2, appName="victim")
    assert client[db_name].c.find_one({}) is None
    with MongoClient(mongo_uri, appname="victim") as victim:
        with pytest.raises(OperationFailure):
            victim[db_name].c.find_one({})


def test_retryable_error_code_is_retried_by_the_driver(
    client: Client, db_name: str, fail_point: Any
) -> None:
    """A retryable error code on a retryable write gets the RetryableWriteError label."""
    fail_point({"times": 1}, failCommands=["insert"], errorCode=91)
    client[db_name].c.insert_one({"_id": 1})
    assert client[db_name].c.count_documents({}) == 1


def test_configure_fail_point_reports_previous_count(client: Client, fail_point: Any) -> None:
    """configureFailPoint answers with how many times the fail point fired before."""
    fail_point("alwaysOn", failCommands=["ping"], errorCode=2)
    for _ in range(2):
        with pytest.raises(OperationFailure):
            client.admin.command("ping")
    reply = client.admin.command("configureFailPoint", "failCommand", mode="off")
    assert reply["count"] == 2
