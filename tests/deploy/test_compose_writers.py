"""The compose stack's client simulators write what the example transforms expect."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from tests.loading import module_from_file

WRITER = Path(__file__).resolve().parents[2] / "deploy" / "compose" / "writer.py"
DEADLINE_S = 60


def _writer(mongo_uri: str, db_name: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WRITER), *args, "--db", db_name, "--seed", "7"],
        env={**os.environ, "MONGODB_URI": mongo_uri},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _writer_module() -> Any:
    return module_from_file("compose_writer", WRITER)


def test_seed_inserts_old_schema_documents_once(
    mongo_uri: str, db_name: str, client: MongoClient[dict[str, Any]]
) -> None:
    """`seed` fills an empty original with old-schema customers and leaves a filled one alone."""
    process = _writer(mongo_uri, db_name, "seed", "--count", "120")
    output, _ = process.communicate(timeout=DEADLINE_S)
    assert process.returncode == 0, output
    customers = client[db_name]["customers"]
    assert customers.count_documents({}) == 120
    sample = customers.find_one({"_id": 1})
    assert sample is not None and {"name", "first", "last", "zip", "age", "price"} <= set(sample)
    assert isinstance(sample["age"], str)
    _writer_module().seed(customers, 10, random.Random(1))
    assert customers.count_documents({}) == 120


def test_partner_writer_writes_new_schema_until_sigterm(
    mongo_uri: str, db_name: str, client: MongoClient[dict[str, Any]]
) -> None:
    """The new-client writer writes the partner in the new schema and exits 0 on SIGTERM."""
    partner = client[db_name]["customers_v2"]
    partner.insert_many(
        [{"_id": n, "full_name": "A B", "age": 30, "loyalty": 0} for n in range(1, 11)]
    )
    process = _writer(mongo_uri, db_name, "partner", "--rate", "200", "--count", "10")
    try:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline and process.poll() is None:
            changed = partner.count_documents(
                {
                    "$or": [
                        {"loyalty": {"$gt": 0}},
                        {"address.zip": {"$exists": True}},
                        {"display_name": {"$exists": True}},
                        {"_id": {"$gt": 10}},
                    ]
                }
            )
            if changed >= 3:
                break
            time.sleep(0.05)  # polling the database for the condition, not synchronising on time
        assert process.poll() is None, process.communicate()[0]
        assert changed >= 3
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=DEADLINE_S)
    assert process.returncode == 0, output
    assert "partner update" in output or "partner insert" in output
    assert partner.count_documents({"name": {"$exists": True}}) == 0  # never the old field names
