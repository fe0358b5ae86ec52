"""Collections and indexes: create, drop, rename, collMod, list, and index management."""

from __future__ import annotations

from typing import Any

from devserver._changes import ChangeRecord
from devserver._cmd_read import open_cursor
from devserver._command import Context, command, cursor_batch_size, namespace_arg
from devserver._engine import matches
from devserver._errors import CommandError
from devserver._storage import IndexSpec, creation_record, validate_namespace

__all__: list[str] = []

_CREATE_OPTIONS = {
    "validator",
    "validationLevel",
    "validationAction",
    "changeStreamPreAndPostImages",
    "comment",
    "writeConcern",
    "storageEngine",
    "indexOptionDefaults",
}


def _check_validator(validator: Any) -> None:
    if validator is None:
        return
    if not isinstance(validator, dict):
        raise CommandError(14, "TypeMismatch", "'validator' must be an object")
    if "$jsonSchema" in validator:
        raise CommandError(
            238,
            "NotImplemented",
            "$jsonSchema validators are not supported by the development server",
        )
    matches(validator, {})  # rejects unknown operators now rather than at the first write


def _check_images(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or not isinstance(value.get("enabled"), bool):
        raise CommandError(
            14, "TypeMismatch", "changeStreamPreAndPostImages must be {enabled: <bool>}"
        )


@command("create", in_transaction=True)
async def create(ctx: Context) -> dict[str, Any]:
    coll = namespace_arg(ctx)
    validate_namespace(ctx.db, coll)
    options = {}
    for key, value in ctx.body.items():
        if key in (
            "create",
            "lsid",
            "txnNumber",
            "autocommit",
            "startTransaction",
        ) or key.startswith("$"):
            continue
        if key in (
            "capped",
            "size",
            "max",
            "timeseries",
            "clusteredIndex",
            "viewOn",
            "pipeline",
            "collation",
            "expireAfterSeconds",
        ):
            if value:
                raise CommandError(
                    238,
                    "NotImplemented",
                    f"create option '{key}' is not supported by the development server",
                )
            continue
        if key not in _CREATE_OPTIONS:
            raise CommandError(
                40415, "Location40415", f"BSON field 'create.{key}' is an unknown field."
            )
        if key in ("comment", "writeConcern"):
            continue
        options[key] = value
    _check_validator(options.get("validator"))
    _check_images(options.get("changeStreamPreAndPostImages"))
    ctx.state.storage.create_collection(ctx.db, coll, options)
    # Creation inside a transaction takes effect at once here (it is never rolled back).
    ctx.wrote(ctx.state.commit([creation_record(ctx.db, coll, options)]))
    return {}


@command("drop")
async def drop(ctx: Context) -> dict[str, Any]:
    coll = namespace_arg(ctx)
    storage = ctx.state.storage
    meta = storage.meta(ctx.db, coll)
    if meta is None:
        # MongoDB (7.0 and later) reports success for a collection that does not exist.
        return {"ns": f"{ctx.db}.{coll}"}
    n_indexes = len(meta.indexes)
    storage.drop_collection(ctx.db, coll)
    record = ChangeRecord(op="drop", db=ctx.db, coll=coll, collection_uuid=meta.uuid)
    ctx.wrote(ctx.state.commit([record]))
    return {"ns": f"{ctx.db}.{coll}", "nIndexesWas": n_indexes}


@command("dropDatabase")
async def drop_database(ctx: Context) -> dict[str, Any]:
    storage = ctx.state.storage
    names = storage.collection_names(ctx.db)
    if not names:
        return {}
    # MongoDB drops each collection (one drop event each) and then the database.
    records = [
        ChangeRecord(
            op="drop", db=ctx.db, coll=name, collection_uuid=ctx.state.collection_uuid(ctx.db, name)
        )
        for name in names
    ]
    for record in records:
        storage.drop_collection(ctx.db, record.coll or "")
        ctx.wrote(ctx.state.commit([record]))
    storage.drop_database(ctx.db)
    ctx.wrote(ctx.state.commit([ChangeRecord(op="dropDatabase", db=ctx.db, coll=None)]))
    return {"dropped": ctx.db}


def _split_ns(value: Any, field: str) -> tuple[str, str]:
    if not isinstance(value, str) or "." not in value:
        raise CommandError(
            73, "InvalidNamespace", f"Invalid namespace specified '{value}' for {field}"
        )
    db, coll = value.split(".", 1)
    validate_namespace(db, coll)
    return db, coll


@command("renameCollection", admin_only=True)
async def rename_collection(ctx: Context) -> dict[str, Any]:
    source = _split_ns(ctx.body["renameCollection"], "renameCollection")
    target = _split_ns(ctx.body.get("to"), "to")
    storage = ctx.state.storage
    if storage.meta(*source) is None:
        raise CommandError(
            26, "NamespaceNotFound", f"Source collection {source[0]}.{source[1]} does not exist"
        )
    if source == target:
        raise CommandError(20, "IllegalOperation", "Can't rename a collection to itself")
    if storage.meta(*target) is not None:
        if not ctx.body.get("dropTarget"):
            raise CommandError(48, "NamespaceExists", "target namespace exists")
        dropped = ctx.state.collection_uuid(*target)
        storage.drop_collection(*target)
        record = ChangeRecord(op="drop", db=target[0], coll=target[1], collection_uuid=dropped)
        ctx.wrote(ctx.state.commit([record]))
    storage.rename_collection(*source, *target)
    record = ChangeRecord(op="rename", db=source[0], coll=source[1], to=target)
    ctx.wrote(ctx.state.commit([record]))
    return {}


@command("collMod")
async def coll_mod(ctx: Context) -> dict[str, Any]:
    coll = namespace_arg(ctx)
    storage = ctx.state.storage
    meta = storage.meta(ctx.db, coll)
    if meta is None:
        raise CommandError(26, "NamespaceNotFound", f"ns does not exist: {ctx.db}.{coll}")
    options = dict(meta.options)
    # What the command changes: the `modify` event's operationDescription, as mongod logs it.
    changes: dict[str, Any] = {}
    reply: dict[str, Any] = {}
    # collMod's `index`: (its name, the options it sets, their values before).
    index: tuple[str, dict[str, Any], dict[str, Any]] | None = None
    for key, value in ctx.body.items():
        if key in ("collMod", "lsid") or key.startswith("$"):
            continue
        if key == "index":
            name, sets, old, reply = _index_change(ctx, coll, meta, value)
            index = (name, sets, old)
            changes["index"] = {"name": name, **sets}
            continue
        if key == "validator":
            _check_validator(value)
        elif key == "changeStreamPreAndPostImages":
            _check_images(value)
        elif key in ("validationLevel", "validationAction"):
            pass
        elif key in ("comment", "writeConcern"):
            continue
        else:
            raise CommandError(
                238,
                "NotImplemented",
                f"collMod option '{key}' is not supported by the development server",
            )
        options[key] = changes[key] = value
    before: dict[str, Any] = {"collectionOptions": {"uuid": meta.uuid, **meta.options}}
    if index is not None:
        name, sets, before["indexOptions"] = index
        storage.set_index_options(ctx.db, coll, name, sets)
    storage.set_options(ctx.db, coll, options)
    record = ChangeRecord(op="modify", db=ctx.db, coll=coll, description=changes, before=before)
    ctx.wrote(ctx.state.commit([record]))
    return reply


def _index_change(
    ctx: Context, coll: str, meta: Any, spec: Any
) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """collMod's `index` (`name` or `keyPattern`, with `hidden` and/or `expireAfterSeconds`):
    (index name, the options it sets, their values before, the reply's `<option>_old` and
    `<option>_new` fields)."""
    if not isinstance(spec, dict):
        raise CommandError(14, "TypeMismatch", "collMod 'index' must be an object")
    if "name" in spec:
        name = spec["name"]
        found = meta.indexes.get(name) if isinstance(name, str) else None
    elif isinstance(spec.get("keyPattern"), dict):
        pattern = list(spec["keyPattern"].items())
        found = next((s for s in meta.indexes.values() if s.key == pattern), None)
    else:
        raise CommandError(
            72, "InvalidOptions", "must specify either index name or key pattern for collMod"
        )
    if found is None:
        raise CommandError(27, "IndexNotFound", f"cannot find index {spec} for ns {ctx.db}.{coll}")
    sets: dict[str, Any] = {}
    before: dict[str, Any] = {}
    reply: dict[str, Any] = {}
    for option, value in spec.items():
        if option in ("name", "keyPattern"):
            continue
        if option == "hidden":
            if not isinstance(value, bool):
                raise CommandError(14, "TypeMismatch", "collMod 'index.hidden' must be a boolean")
            if found.name == "_id_":
                raise CommandError(
                    72, "InvalidOptions", "cannot modify hidden field of an _id index"
                )
            old = bool(found.extra.get("hidden", False))
        elif option == "expireAfterSeconds":
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise CommandError(
                    2, "BadValue", "collMod 'index.expireAfterSeconds' must be a number >= 0"
                )
            if "expireAfterSeconds" not in found.extra:
                raise CommandError(72, "InvalidOptions", "no expireAfterSeconds field to update")
            old = found.extra["expireAfterSeconds"]
        else:
            raise CommandError(
                238,
                "NotImplemented",
                f"collMod index option '{option}' is not supported by the development server",
            )
        sets[option] = value
        before[option] = old
        reply[f"{option}_old"] = old
        reply[f"{option}_new"] = value
    if not sets:
        raise CommandError(72, "InvalidOptions", "no expireAfterSeconds or hidden field to update")
    return found.name, sets, before, reply


@command("listCollections", in_transaction=True)
async def list_collections(ctx: Context) -> dict[str, Any]:
    storage = ctx.state.storage
    filter_doc = ctx.body.get("filter") or {}
    name_only = bool(ctx.body.get("nameOnly"))
    entries = []
    for name in sorted(storage.collection_names(ctx.db)):
        meta = storage.meta(ctx.db, name)
        assert meta is not None
        entry: dict[str, Any] = {
            "name": name,
            "type": "collection",
            "options": dict(meta.options),
            "info": {"readOnly": False, "uuid": meta.uuid},
            "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"},
        }
        if filter_doc and not matches(filter_doc, entry):
            continue
        entries.append({"name": name, "type": "collection"} if name_only else entry)
    batch_size = cursor_batch_size(ctx)
    return open_cursor(ctx, f"{ctx.db}.$cmd.listCollections", entries, batch_size)


@command("createIndexes", in_transaction=True)
async def create_indexes(ctx: Context) -> dict[str, Any]:
    coll = namespace_arg(ctx)
    validate_namespace(ctx.db, coll)
    indexes = ctx.body.get("indexes")
    if not isinstance(indexes, list) or not indexes:
        raise CommandError(2, "BadValue", "Must specify at least one index to create")
    storage = ctx.state.storage
    created_collection = storage.meta(ctx.db, coll) is None
    before = 0 if created_collection else len(storage.meta(ctx.db, coll).indexes)  # type: ignore[union-attr]
    specs = [IndexSpec.from_doc(doc) for doc in indexes]
    for spec in specs:
        for _, direction in spec.key:
            if direction not in (1, -1) and not isinstance(direction, str):
                raise CommandError(
                    67,
                    "CannotCreateIndex",
                    f"Values in the index key pattern must be 1, -1 or a string, got {direction!r}",
                )
    created: list[dict[str, Any]] = []
    for spec in specs:
        if storage.create_index(ctx.db, coll, spec):
            created.append(spec.to_doc())
    records = []
    if created_collection:
        records.append(creation_record(ctx.db, coll))
    if created:
        built: dict[str, Any] = {"indexes": created}
        records.append(ChangeRecord(op="createIndexes", db=ctx.db, coll=coll, description=built))
    ctx.wrote(ctx.state.commit(records))
    meta = storage.meta(ctx.db, coll)
    assert meta is not None
    reply: dict[str, Any] = {
        "numIndexesBefore": before if not created_collection else 1,
        "numIndexesAfter": len(meta.indexes),
        "createdCollectionAutomatically": created_collection,
    }
    if not created:
        reply["note"] = "all indexes already exist"
    return reply


@command("listIndexes", in_transaction=True)
async def list_indexes(ctx: Context) -> dict[str, Any]:
    coll = namespace_arg(ctx)
    meta = ctx.state.storage.meta(ctx.db, coll)
    if meta is None:
        raise CommandError(26, "NamespaceNotFound", f"ns does not exist: {ctx.db}.{coll}")
    docs = [spec.to_doc() for spec in meta.indexes.values()]
    batch_size = cursor_batch_size(ctx)
    return open_cursor(ctx, f"{ctx.db}.{coll}", docs, batch_size)


@command("dropIndexes", "deleteIndexes")
async def drop_indexes(ctx: Context) -> dict[str, Any]:
    coll = namespace_arg(ctx)
    storage = ctx.state.storage
    meta = storage.meta(ctx.db, coll)
    if meta is None:
        raise CommandError(26, "NamespaceNotFound", f"ns not found {ctx.db}.{coll}")
    target = ctx.body.get("index")
    n_before = len(meta.indexes)
    names: list[str]
    if target == "*":
        names = [n for n in meta.indexes if n != "_id_"]
    elif isinstance(target, str):
        names = [target]
    elif isinstance(target, list) and all(isinstance(name, str) for name in target):
        names = list(target)
    elif isinstance(target, dict):
        names = [n for n, spec in meta.indexes.items() if dict(spec.key) == target]
        if not names:
            raise CommandError(27, "IndexNotFound", f"can't find index with key: {target}")
    else:
        raise CommandError(
            14, "TypeMismatch", "'index' must be a name, a list of names, a key pattern or '*'"
        )
    for name in names:
        if name == "_id_":
            raise CommandError(72, "InvalidOptions", "cannot drop _id index")
        if name not in meta.indexes:
            raise CommandError(27, "IndexNotFound", f"index not found with name [{name}]")
    dropped = [meta.indexes[name].to_doc() for name in names]
    for name in names:
        storage.drop_index(ctx.db, coll, name)
    described = {"indexes": dropped}
    ctx.wrote(
        ctx.state.commit(
            [ChangeRecord(op="dropIndexes", db=ctx.db, coll=coll, description=described)]
        )
    )
    return {"nIndexesWas": n_before}
