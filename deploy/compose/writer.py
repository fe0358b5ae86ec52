"""Simulated application clients for docker-compose: old clients write the original collection
in the old schema, new clients write the partner in the new schema, at the same time.

    python writer.py seed --count 2000   # once: old-schema documents, if the collection is empty
    python writer.py original --rate 5   # old client: updates, inserts and deletes, forever
    python writer.py partner --rate 5    # new client: the same on the partner collection

The schemas are those of `transforms.examples.customers`. The server is `MONGODB_URI`.
Runs until SIGTERM or SIGINT; every write is logged as one line.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import threading
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection

# Old-schema customers exactly as the demo makes them (the image has the worker installed).
from worker.demo import old_customer as old_document

log = logging.getLogger("writer")

FIRST = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken")
LAST = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson")


def new_document(number: int, rng: random.Random) -> dict[str, Any]:
    """A customer as new clients write it (shop.customers_v2)."""
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return {
        "_id": number,
        "full_name": f"{first} {last}",
        "display_name": f"{first} {last}",
        "address": {"zip": f"{rng.randrange(10000, 99999)}"},
        "age": rng.randrange(18, 90),
        "price_cents": rng.randrange(100, 50000),
        "tier": rng.choice(("basic", "silver", "gold")),
        "loyalty": 0,
    }


def old_update(rng: random.Random) -> dict[str, Any]:
    """An old client's update: old field names, old types."""
    choice = rng.randrange(3)
    if choice == 0:
        first, last = rng.choice(FIRST), rng.choice(LAST)
        return {"$set": {"name": f"{first} {last}", "first": first, "last": last}}
    if choice == 1:
        return {
            "$set": {"zip": f"{rng.randrange(10000, 99999)}", "age": str(rng.randrange(18, 90))}
        }
    return {"$set": {"price": round(rng.uniform(1, 500), 2)}}


def new_update(rng: random.Random) -> dict[str, Any]:
    """A new client's update: new field names, new types."""
    choice = rng.randrange(3)
    if choice == 0:
        return {"$inc": {"loyalty": rng.randrange(1, 10)}}
    if choice == 1:
        return {
            "$set": {"address.zip": f"{rng.randrange(10000, 99999)}", "age": rng.randrange(18, 90)}
        }
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return {"$set": {"display_name": f"{first} {last}", "price_cents": rng.randrange(100, 50000)}}


def seed(collection: Collection[dict[str, Any]], count: int, rng: random.Random) -> None:
    """Insert `count` old-schema documents unless the collection already has some."""
    if collection.estimated_document_count() > 0:
        log.info("seed skipped: %s already has documents", collection.full_name)
        return
    for start in range(1, count + 1, 500):
        batch = [old_document(n, rng) for n in range(start, min(start + 500, count + 1))]
        collection.insert_many(batch)
    log.info("seeded %d documents into %s", count, collection.full_name)


def write_forever(
    collection: Collection[dict[str, Any]],
    side: str,
    rate: float,
    id_range: int,
    stop: threading.Event,
    rng: random.Random,
) -> None:
    """Mostly updates, some inserts, a few deletes, `rate` writes per second until `stop`."""
    make_update = old_update if side == "original" else new_update
    make_document = old_document if side == "original" else new_document
    # Each side inserts in its own _id range so the two writers never insert the same _id.
    next_insert = id_range * (10 if side == "original" else 20)
    while not stop.wait(1 / rate):
        roll = rng.random()
        if roll < 0.85:
            target = rng.randrange(1, id_range + 1)
            result = collection.update_one({"_id": target}, make_update(rng))
            log.info("%s update _id=%s matched=%d", side, target, result.matched_count)
        elif roll < 0.97:
            next_insert += 1
            collection.insert_one(make_document(next_insert, rng))
            log.info("%s insert _id=%s", side, next_insert)
        else:
            target = rng.randrange(1, id_range + 1)
            result = collection.delete_one({"_id": target})
            log.info("%s delete _id=%s deleted=%d", side, target, result.deleted_count)


def build_parser() -> argparse.ArgumentParser:
    """The command line: a role, then options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=("seed", "original", "partner"))
    parser.add_argument("--count", type=int, default=2000, help="documents to seed")
    parser.add_argument("--rate", type=float, default=5.0, help="writes per second")
    parser.add_argument("--seed", type=int, default=None, help="random seed")
    parser.add_argument("--db", default="shop", help="database of the pair (transforms use shop)")
    return parser


def main() -> None:
    """Run one role until it is done (seed) or told to stop (writers)."""
    parser = build_parser()
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    rng = random.Random(args.seed)
    client: MongoClient[dict[str, Any]] = MongoClient(os.environ["MONGODB_URI"])
    try:
        database = client[args.db]
        if args.role == "seed":
            seed(database["customers"], args.count, rng)
            return
        name = "customers" if args.role == "original" else "customers_v2"
        write_forever(database[name], args.role, args.rate, args.count, stop, rng)
    finally:
        client.close()


if __name__ == "__main__":
    main()
