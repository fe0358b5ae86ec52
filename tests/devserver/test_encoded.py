"""The server keeps the BSON of documents it wrote by identity, and its replies stay right."""

from __future__ import annotations

import random
from typing import Any

import bson
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient, ReplaceOne, UpdateOne

from devserver._encoded import ENCODED, EncodedDocuments


def test_bytes_are_served_for_the_very_object_only() -> None:
    cache = EncodedDocuments()
    doc = {"_id": 1, "a": 1}
    cache.remember(doc, bson.encode(doc))
    assert cache.encode(doc) == bson.encode(doc)
    equal_but_other = {"_id": 1, "a": 1.0}  # equal in Python, other bytes in BSON
    assert cache.encode(equal_but_other) == bson.encode(equal_but_other)
    assert cache.encode(equal_but_other) != cache.encode(doc)


def test_the_oldest_are_evicted_past_either_bound() -> None:
    by_count = EncodedDocuments(max_entries=3)
    docs = [{"_id": i} for i in range(5)]
    for doc in docs:
        by_count.remember(doc, bson.encode(doc))
    assert [kept for kept, _ in by_count.entries()] == docs[2:]

    small = {"_id": 0, "s": "x" * 100}
    by_bytes = EncodedDocuments(max_bytes=3 * len(bson.encode(small)))
    docs = [{"_id": i, "s": "x" * 100} for i in range(6)]
    for doc in docs:
        by_bytes.remember(doc, bson.encode(doc))
    assert [kept for kept, _ in by_bytes.entries()] == docs[3:]
    assert by_bytes.size_bytes == sum(len(bson.encode(d)) for d in docs[3:])


def test_a_very_large_document_is_not_kept() -> None:
    cache = EncodedDocuments()
    big = {"_id": 1, "s": "x" * (2 * 1024 * 1024)}
    cache.remember(big, bson.encode(big))
    assert len(cache) == 0


def test_kept_bytes_match_the_documents_after_every_kind_of_write(
    client: MongoClient[dict[str, Any]], db_name: str
) -> None:
    """Stored documents are never changed in place, so what is kept is what they encode to;
    and every read after a mix of writes returns what the writes made."""
    coll = client[db_name]["encoded"]
    rng = random.Random(7)
    expected: dict[int, dict[str, Any]] = {}
    for i in range(20):
        doc = {"_id": i, "n": i, "sub": {"x": i, "y": [i]}}
        coll.insert_one(doc)
        expected[i] = {"_id": i, "n": i, "sub": {"x": i, "y": [i]}}
    for step in range(300):
        i = rng.randrange(20)
        kind = rng.choice(["set", "inc", "push", "replace", "same", "float", "bulk", "txn"])
        if kind == "set":
            coll.update_one({"_id": i}, {"$set": {"sub.x": step}})
            expected[i]["sub"]["x"] = step
        elif kind == "inc":
            coll.update_one({"_id": i}, {"$inc": {"n": 1}})
            expected[i]["n"] += 1
        elif kind == "push":  # an operator outside the native path
            coll.update_one({"_id": i}, {"$push": {"sub.y": step}})
            expected[i]["sub"]["y"].append(step)
        elif kind == "replace":
            expected[i] = {"_id": i, "n": step, "sub": {"x": -step, "y": []}}
            coll.replace_one({"_id": i}, expected[i])
        elif kind == "same":  # a no-op: nothing changes
            result = coll.update_one({"_id": i}, {"$set": {"n": expected[i]["n"]}})
            assert result.modified_count == 0
        elif kind == "float":  # equal in Python, a different BSON type: a change
            value = float(expected[i]["n"])
            result = coll.update_one({"_id": i}, {"$set": {"n": value}})
            assert result.modified_count == (0 if type(expected[i]["n"]) is float else 1)
            expected[i]["n"] = value
        elif kind == "bulk":
            other = (i + 1) % 20
            expected[other] = {"_id": other, "n": 0, "sub": {"x": 0, "y": [step]}}
            coll.bulk_write(
                [
                    UpdateOne({"_id": i}, {"$set": {"sub.x": step}}),
                    ReplaceOne({"_id": other}, expected[other]),
                ]
            )
            expected[i]["sub"]["x"] = step
        else:
            with client.start_session() as session, session.start_transaction():
                coll.update_one({"_id": i}, {"$set": {"n": step}}, session=session)
            expected[i]["n"] = step
        if step % 25 == 0:
            assert _raw_documents(coll) == {k: bson.encode(v) for k, v in expected.items()}
    assert _raw_documents(coll) == {k: bson.encode(v) for k, v in expected.items()}
    for kept, raw in ENCODED.entries():
        assert bson.encode(kept) == raw


def _raw_documents(coll: Any) -> dict[int, bytes]:
    raw = coll.with_options(codec_options=CodecOptions(document_class=RawBSONDocument))
    return {doc["_id"]: doc.raw for doc in raw.find({})}
