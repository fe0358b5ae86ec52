"""Committed data: collections, their options and indexes, and documents kept in mongomock.

Documents live in mongomock's store so its query, projection, sort and aggregation engine reads
them in place; unique indexes are enforced here with hash maps (mongomock scans the whole
collection per write). Every mutation is also recorded as a journal operation, which the
persistence layer writes once the write unit is complete.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import bson
import mongomock
from bson.binary import Binary, UuidRepresentation
from bson.errors import InvalidDocument
from mongomock.filtering import filter_applies

from devserver._change_history import ChangeRecord
from devserver._errors import CommandError
from devserver._keys import MISSING, canonical, dotted_get, format_key_value, id_key, store_key

__all__ = ["IndexSpec", "CollectionMeta", "Storage", "creation_record", "validate_namespace"]

_INDEX_OPTIONS = ("unique", "sparse", "partialFilterExpression", "expireAfterSeconds", "hidden")


@dataclass
class IndexSpec:
    """One index: its name, key pattern and the options that change what it enforces."""

    name: str
    key: list[tuple[str, Any]]
    unique: bool = False
    sparse: bool = False
    partial: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> IndexSpec:
        key = doc.get("key")
        if not isinstance(key, dict) or not key:
            raise CommandError(
                67, "CannotCreateIndex", "index key pattern must be a non-empty object"
            )
        name = doc.get("name")
        if not isinstance(name, str) or not name:
            raise CommandError(9, "FailedToParse", "index specification must have a 'name' string")
        extra = {
            k: v
            for k, v in doc.items()
            if k not in ("key", "name", "unique", "sparse", "partialFilterExpression", "v", "ns")
        }
        return cls(
            name=name,
            key=list(key.items()),
            unique=bool(doc.get("unique", False)),
            sparse=bool(doc.get("sparse", False)),
            partial=doc.get("partialFilterExpression"),
            extra=extra,
        )

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"v": 2, "key": dict(self.key), "name": self.name}
        if self.unique:
            doc["unique"] = True
        if self.sparse:
            doc["sparse"] = True
        if self.partial is not None:
            doc["partialFilterExpression"] = self.partial
        doc.update(self.extra)
        return doc

    def same_as(self, other: IndexSpec) -> bool:
        return self.to_doc() == other.to_doc()

    def entry(self, doc: dict[str, Any]) -> tuple[bytes, dict[str, Any]] | None:
        """The index key bytes and key value of `doc`, or None when the index skips it."""
        if self.partial is not None and not filter_applies(  # type: ignore[no-untyped-call]
            self.partial, doc
        ):
            return None
        values = {path: dotted_get(doc, path) for path, _ in self.key}
        if self.sparse and all(v is MISSING for v in values.values()):
            return None
        key_value = {p: (None if v is MISSING else v) for p, v in values.items()}
        return bson.encode({"k": canonical(list(key_value.values()))}), key_value


ID_INDEX = IndexSpec(name="_id_", key=[("_id", 1)], unique=True)
# The `_id` index as a create event's `operationDescription.idIndex` shows it.
ID_INDEX_DESCRIPTION = {"v": 2, "key": {"_id": 1}, "name": "_id_"}


def creation_record(db: str, coll: str, options: Mapping[str, Any] | None = None) -> ChangeRecord:
    """The change record of a collection's creation (its `create` event), with its options."""
    described = {"idIndex": dict(ID_INDEX_DESCRIPTION), **(options or {})}
    return ChangeRecord(op="create", db=db, coll=coll, description=described)


@dataclass
class CollectionMeta:
    """A collection's catalog entry: creation options, UUID and indexes."""

    options: dict[str, Any]
    uuid: Binary
    indexes: dict[str, IndexSpec]
    # Secondary unique index name -> index key bytes -> id key of the document holding it.
    # (`_id` uniqueness is the document store itself.)
    unique_maps: dict[str, dict[bytes, bytes]] = field(default_factory=dict)

    @property
    def images_enabled(self) -> bool:
        images = self.options.get("changeStreamPreAndPostImages")
        return bool(isinstance(images, dict) and images.get("enabled"))

    @property
    def validator(self) -> dict[str, Any] | None:
        validator = self.options.get("validator")
        return validator if isinstance(validator, dict) and validator else None


def validate_namespace(db: str, coll: str | None = None) -> None:
    """Reject names MongoDB rejects, with its error code."""
    if not db or any(c in db for c in '/\\. "$\x00'):
        raise CommandError(73, "InvalidNamespace", f"Invalid database name: '{db}'")
    if coll is not None and (not coll or "\x00" in coll or coll.startswith("$")):
        raise CommandError(73, "InvalidNamespace", f"Invalid collection name: '{coll}'")


class Storage:
    """All committed collections of one server, plus the journal operations not yet persisted."""

    def __init__(self) -> None:
        self.client: Any = mongomock.MongoClient()
        self._server_store = self.client._store
        self._meta: dict[tuple[str, str], CollectionMeta] = {}
        # mongomock's collection stores by namespace, saving its two lookups per document
        # write; emptied whenever the catalog changes.
        self._stores: dict[tuple[str, str], Any] = {}
        self.pending_ops: list[dict[str, Any]] = []
        self.journaling = True

    # ----- catalog -------------------------------------------------------------------------

    def _log(self, op: dict[str, Any]) -> None:
        if self.journaling:
            self.pending_ops.append(op)

    def take_ops(self) -> list[dict[str, Any]]:
        """The journal operations since the last call (one write unit)."""
        ops, self.pending_ops = self.pending_ops, []
        return ops

    def meta(self, db: str, coll: str) -> CollectionMeta | None:
        return self._meta.get((db, coll))

    def database_names(self) -> list[str]:
        return sorted({db for db, _ in self._meta})

    def collection_names(self, db: str) -> list[str]:
        return [c for d, c in self._meta if d == db]

    def namespaces(self) -> list[tuple[str, str]]:
        return list(self._meta)

    def _store(self, db: str, coll: str) -> Any:
        store = self._stores.get((db, coll))
        if store is None:
            store = self._stores[(db, coll)] = self._server_store[db][coll]
        return store

    def create_collection(
        self,
        db: str,
        coll: str,
        options: dict[str, Any] | None = None,
        *,
        collection_uuid: Binary | None = None,
    ) -> CollectionMeta:
        """Create a collection; it must not exist yet."""
        validate_namespace(db, coll)
        if (db, coll) in self._meta:
            raise CommandError(48, "NamespaceExists", f"Collection {db}.{coll} already exists.")
        meta = CollectionMeta(
            options=dict(options or {}),
            uuid=collection_uuid or Binary.from_uuid(uuid.uuid4(), UuidRepresentation.STANDARD),
            indexes={"_id_": ID_INDEX},
        )
        self._meta[(db, coll)] = meta
        self._stores.clear()
        self._store(db, coll).create()
        self._log({"o": "create", "d": db, "c": coll, "options": meta.options, "uuid": meta.uuid})
        return meta

    def ensure_collection(self, db: str, coll: str) -> CollectionMeta:
        """The collection, created implicitly (as an insert or upsert does) when missing."""
        meta = self._meta.get((db, coll))
        return meta if meta is not None else self.create_collection(db, coll)

    def drop_collection(self, db: str, coll: str) -> bool:
        if (db, coll) not in self._meta:
            return False
        del self._meta[(db, coll)]
        self._stores.clear()
        self._server_store[db]._collections.pop(coll, None)
        self._log({"o": "drop", "d": db, "c": coll})
        return True

    def drop_database(self, db: str) -> list[str]:
        names = self.collection_names(db)
        for coll in names:
            del self._meta[(db, coll)]
        self._stores.clear()
        self._server_store._databases.pop(db, None)
        self._log({"o": "dropDatabase", "d": db})
        return names

    def rename_collection(self, db: str, coll: str, to_db: str, to_coll: str) -> None:
        """Move a collection (documents, options, indexes) to a new namespace that is free."""
        validate_namespace(to_db, to_coll)
        meta = self._meta.pop((db, coll))
        self._stores.clear()
        source: Any = self._server_store[db]._collections.pop(coll)
        source.name = to_coll
        self._server_store[to_db]._collections[to_coll] = source
        self._meta[(to_db, to_coll)] = meta
        self._log({"o": "rename", "d": db, "c": coll, "td": to_db, "tc": to_coll})

    def set_options(self, db: str, coll: str, options: dict[str, Any]) -> None:
        """Replace a collection's options (collMod)."""
        self._meta[(db, coll)].options = dict(options)
        self._log({"o": "options", "d": db, "c": coll, "options": dict(options)})

    def create_index(self, db: str, coll: str, spec: IndexSpec) -> bool:
        """Add an index; False when an identical one exists. Existing data must satisfy it."""
        meta = self.ensure_collection(db, coll)
        existing = meta.indexes.get(spec.name)
        if existing is not None:
            if existing.same_as(spec):
                return False
            raise CommandError(
                86,
                "IndexKeySpecsConflict",
                f"An existing index has the same name as the requested index but different "
                f"options. Requested index: {spec.to_doc()}, existing index: {existing.to_doc()}",
            )
        for other in meta.indexes.values():
            if other.key == spec.key and other.partial == spec.partial:
                if other.unique == spec.unique and other.sparse == spec.sparse:
                    return False
                raise CommandError(
                    85,
                    "IndexOptionsConflict",
                    f"Index already exists with a different name: {other.name}",
                )
        if spec.unique and spec.name != "_id_":
            entries: dict[bytes, bytes] = {}
            for doc in self._store(db, coll)._documents.values():
                entry = spec.entry(doc)
                if entry is None:
                    continue
                if entry[0] in entries:
                    raise duplicate_key_error(db, coll, spec, entry[1])
                entries[entry[0]] = id_key(doc["_id"])
            meta.unique_maps[spec.name] = entries
        meta.indexes[spec.name] = spec
        self._log({"o": "index", "d": db, "c": coll, "spec": spec.to_doc()})
        return True

    def set_index_options(self, db: str, coll: str, name: str, options: dict[str, Any]) -> None:
        """Change options of an existing index that do not change its entries (collMod's
        `index`: `hidden`, `expireAfterSeconds`)."""
        spec = self._meta[(db, coll)].indexes[name]
        spec.extra.update(options)
        self._log({"o": "indexOptions", "d": db, "c": coll, "name": name, "options": options})

    def drop_index(self, db: str, coll: str, name: str) -> None:
        meta = self._meta[(db, coll)]
        del meta.indexes[name]
        meta.unique_maps.pop(name, None)
        self._log({"o": "dropIndex", "d": db, "c": coll, "name": name})

    # ----- documents -----------------------------------------------------------------------

    def get(self, db: str, coll: str, doc_id: Any) -> dict[str, Any] | None:
        """The stored document with this `_id` (do not mutate it), or None."""
        store = self._stores.get((db, coll))  # held only for collections that exist
        if store is None:
            if (db, coll) not in self._meta:
                return None
            store = self._store(db, coll)
        try:
            doc: dict[str, Any] | None = store._documents.get(store_key(doc_id))
        except (TypeError, InvalidDocument):  # an _id value BSON cannot hold (never stored)
            return None
        return doc

    def documents(self, db: str, coll: str) -> Iterator[dict[str, Any]]:
        """Every stored document in natural order (do not mutate them)."""
        if (db, coll) not in self._meta:
            return iter(())
        return iter(list(self._store(db, coll)._documents.values()))

    def count(self, db: str, coll: str) -> int:
        if (db, coll) not in self._meta:
            return 0
        return len(self._store(db, coll)._documents)

    def collection(self, db: str, coll: str) -> Any:
        """The mongomock collection, for read-only queries and aggregations."""
        return self.client[db][coll]

    def unique_conflict(
        self, db: str, coll: str, doc: dict[str, Any]
    ) -> tuple[IndexSpec, dict[str, Any], bytes] | None:
        """The first unique index another committed document already holds `doc`'s key in."""
        meta = self._meta.get((db, coll))
        if meta is None or not meta.unique_maps:
            return None
        own = id_key(doc["_id"])
        for name, entries in meta.unique_maps.items():
            spec = meta.indexes[name]
            entry = spec.entry(doc)
            if entry is None:
                continue
            holder = entries.get(entry[0])
            if holder is not None and holder != own:
                return spec, entry[1], holder
        return None

    def put(self, db: str, coll: str, doc: dict[str, Any]) -> None:
        """Insert or replace a document (uniqueness already checked by the caller)."""
        meta = self.ensure_collection(db, coll)
        store = self._store(db, coll)
        key = store_key(doc["_id"])
        if meta.unique_maps:
            self._reindex(meta, store._documents.get(key), doc)
        store._documents[key] = doc
        self._log({"o": "put", "d": db, "c": coll, "doc": doc})

    def _reindex(
        self, meta: CollectionMeta, old: dict[str, Any] | None, doc: dict[str, Any]
    ) -> None:
        own = id_key(doc["_id"])
        for name, entries in meta.unique_maps.items():
            spec = meta.indexes[name]
            if old is not None:
                old_entry = spec.entry(old)
                if old_entry is not None and entries.get(old_entry[0]) == own:
                    del entries[old_entry[0]]
            new_entry = spec.entry(doc)
            if new_entry is not None:
                entries[new_entry[0]] = own

    def remove(self, db: str, coll: str, doc_id: Any) -> dict[str, Any] | None:
        """Delete a document by `_id`; returns what was stored."""
        meta = self._meta.get((db, coll))
        if meta is None:
            return None
        store = self._store(db, coll)
        old: dict[str, Any] | None = store._documents.pop(store_key(doc_id), None)
        if old is None:
            return None
        own = id_key(doc_id) if meta.unique_maps else b""
        for name, entries in meta.unique_maps.items():
            entry = meta.indexes[name].entry(old)
            if entry is not None and entries.get(entry[0]) == own:
                del entries[entry[0]]
        self._log({"o": "del", "d": db, "c": coll, "id": doc_id})
        return old

    # ----- replay --------------------------------------------------------------------------

    def apply_op(self, op: dict[str, Any]) -> None:
        """Re-apply one journal operation (at start-up, with journaling off)."""
        kind: str = op["o"]
        db: str = op["d"]
        coll: str = op.get("c", "")
        if kind == "put":
            self.put(db, coll, op["doc"])
        elif kind == "del":
            self.remove(db, coll, op["id"])
        elif kind == "create":
            if (db, coll) not in self._meta:
                self.create_collection(db, coll, op.get("options"), collection_uuid=op.get("uuid"))
        elif kind == "drop":
            self.drop_collection(db, coll)
        elif kind == "dropDatabase":
            self.drop_database(db)
        elif kind == "rename":
            self.drop_collection(op["td"], op["tc"])
            self.rename_collection(db, coll, op["td"], op["tc"])
        elif kind == "options":
            self.set_options(db, coll, op["options"])
        elif kind == "index":
            self.create_index(db, coll, IndexSpec.from_doc(op["spec"]))
        elif kind == "dropIndex":
            self.drop_index(db, coll, op["name"])
        elif kind == "indexOptions":
            self.set_index_options(db, coll, op["name"], op["options"])
        else:
            raise ValueError(f"unknown journal operation {kind!r}")

    def snapshot_records(self) -> Iterator[dict[str, Any]]:
        """The whole state as journal operations, in chunks small enough for one BSON record."""
        for (db, coll), meta in list(self._meta.items()):
            yield {"o": "create", "d": db, "c": coll, "options": meta.options, "uuid": meta.uuid}
            for name, spec in meta.indexes.items():
                if name != "_id_":
                    yield {"o": "index", "d": db, "c": coll, "spec": spec.to_doc()}
            for doc in self.documents(db, coll):
                yield {"o": "put", "d": db, "c": coll, "doc": doc}


def duplicate_key_error(
    db: str, coll: str, spec: IndexSpec, key_value: dict[str, Any]
) -> CommandError:
    """MongoDB's E11000 error for a key `spec` already holds."""
    message = (
        f"E11000 duplicate key error collection: {db}.{coll} index: {spec.name} "
        f"dup key: {format_key_value(key_value)}"
    )
    return CommandError(
        11000,
        "DuplicateKey",
        message,
        extra={"keyPattern": dict(spec.key), "keyValue": key_value},
    )
