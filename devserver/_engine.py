"""Query and update semantics borrowed from mongomock, applied to documents we hand it.

A private scratch collection runs finds, aggregations and updates over an explicit list of
documents, so the same code serves committed data and a transaction's own view of it.
"""

from __future__ import annotations

import copy
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import datetime
from functools import partial
from typing import Any, TypeGuard, TypeVar

import mongomock
from bson import Int64, ObjectId, Timestamp
from bson.errors import InvalidDocument
from mongomock import aggregate as mm_aggregate
from mongomock.filtering import filter_applies, resolve_sort_key
from pymongo.errors import OperationFailure

from devserver._compare import install as install_compare
from devserver._errors import CommandError, bson_type_name
from devserver._fastproject import BAIL, inclusion_tree, project_document
from devserver._fastupdate import fast_update
from devserver._keys import store_key
from devserver._nan import has_nan, same_nan
from devserver._order import install as install_order
from devserver._pipeline import install, prepared
from devserver._update_order import with_update_order

install()  # $getField, $setField, $unsetField and $mergeObjects in every pipeline mongomock runs
install_order()  # Timestamps in filters' comparisons
install_compare()  # MongoDB's equality in filters, and its order in aggregation comparisons

__all__ = [
    "Engine",
    "check_update_operators",
    "engine_errors",
    "is_operator_update",
    "matches",
    "sort_documents",
]

T = TypeVar("T")

_ALL_POSITIONAL = re.compile(r"^\$\[(\w*)\]$")


def engine_errors(call: Callable[[], T]) -> T:
    """Run a mongomock call, turning its exceptions into MongoDB-shaped command errors."""
    try:
        return call()
    except CommandError:
        raise
    except OperationFailure as exc:
        code = exc.code or 2
        details = exc.details if isinstance(exc.details, dict) else {}
        raise CommandError(code, _code_name(code), str(details.get("errmsg", exc))) from exc
    except NotImplementedError as exc:
        raise CommandError(
            238, "NotImplemented", f"not supported by the development server: {exc}"
        ) from exc
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, InvalidDocument) as exc:
        raise CommandError(2, "BadValue", f"{type(exc).__name__}: {exc}") from exc


def _code_name(code: int) -> str:
    return {
        2: "BadValue",
        9: "FailedToParse",
        14: "TypeMismatch",
        40: "ConflictingUpdateOperators",
        66: "ImmutableField",
        11000: "DuplicateKey",
    }.get(code, "OperationFailed")


def matches(filter_doc: dict[str, Any], doc: dict[str, Any]) -> bool:
    """Whether `doc` matches a query filter."""
    if has_nan(filter_doc):
        # NaN equals NaN in MongoDB, not in Python (see devserver._nan).
        filter_doc, doc = same_nan(filter_doc), same_nan(doc)
    return engine_errors(lambda: bool(filter_applies(filter_doc, doc)))  # type: ignore[no-untyped-call]


_MISSING = object()


def _plain_sort_values(docs: list[dict[str, Any]], key: str) -> list[Any] | None:
    """The values at `key` when they compare natively, else None (mongomock's sort then).

    Numbers, or values of one type among strings, ObjectIds and dates, compare in Python
    exactly as MongoDB orders them, without mongomock's per-value wrapper. Timestamps (which
    mongomock cannot sort at all) too, with null and missing first as MongoDB puts them. A
    path through an array, or ending on one, is left to mongomock (arrays sort by an element).
    """
    parts = key.split(".")
    values = []
    for doc in docs:
        value: Any = doc
        for part in parts:
            if isinstance(value, dict):
                value = value.get(part, _MISSING)
            elif isinstance(value, list):
                return None
            else:
                value = _MISSING
                break
        values.append(value)
    kinds = {type(v) for v in values}
    if kinds <= {int, float, Int64} or (len(kinds) == 1 and kinds <= {str, ObjectId, datetime}):
        return values
    if Timestamp in kinds and kinds <= {Timestamp, type(None), type(_MISSING)}:
        return [(1, v) if type(v) is Timestamp else (0,) for v in values]
    return None


def sort_documents(docs: list[dict[str, Any]], sort: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """`docs` in MongoDB sort order (stable, one key at a time from the last)."""
    for key, direction in reversed(sort):
        if key == "$natural":
            if direction < 0:
                docs = docs[::-1]
            continue
        if key.startswith("$"):
            raise CommandError(238, "NotImplemented", f"sorting by {key} is not supported")
        values = _plain_sort_values(docs, key)
        if values is not None:
            order = sorted(range(len(docs)), key=values.__getitem__, reverse=direction < 0)
            docs = [docs[i] for i in order]
        else:
            docs = engine_errors(partial(_sorted_by, docs, key, direction < 0))
    return docs


def _sorted_by(docs: list[dict[str, Any]], key: str, reverse: bool) -> list[dict[str, Any]]:
    return sorted(
        docs,
        key=lambda d: resolve_sort_key(key, d),  # type: ignore[no-untyped-call]
        reverse=reverse,
    )


def is_operator_update(update: Any) -> TypeGuard[dict[str, Any]]:
    return isinstance(update, dict) and bool(update) and next(iter(update)).startswith("$")


# mongod's update modifiers (its modifier table).
UPDATE_OPERATORS = frozenset(
    {
        "$addToSet",
        "$bit",
        "$currentDate",
        "$inc",
        "$max",
        "$min",
        "$mul",
        "$pop",
        "$pull",
        "$pullAll",
        "$push",
        "$rename",
        "$set",
        "$setOnInsert",
        "$unset",
    }
)


def check_update_operators(update: dict[str, Any]) -> None:
    """Refuse an operator update that names an unknown modifier, or gives one a non-document
    operand, as mongod does when it parses the statement (before it matches any document)."""
    for name, operand in update.items():
        if name not in UPDATE_OPERATORS:
            raise CommandError(
                9,
                "FailedToParse",
                f"Unknown modifier: {name}. Expected a valid update modifier or pipeline-style"
                " update specified as an array",
            )
        if not isinstance(operand, dict):
            shown = f'"{operand}"' if isinstance(operand, str) else repr(operand)
            raise CommandError(
                9,
                "FailedToParse",
                f"Modifiers operate on fields but we found type {bson_type_name(operand)}"
                f" instead. For example: {{$mod: {{<field>: ...}}}} not {{{name}: {shown}}}",
            )
    _check_conflicts(update)


def _check_conflicts(update: dict[str, Any]) -> None:
    """Refuse two paths of one update where one is the other or lies under it (`$set` and
    `$inc` of `a`, `a` and `a.b`, a `$rename`'s target among them), as mongod does when it
    builds the update's tree: ConflictingUpdateOperators."""
    paths: list[tuple[str, ...]] = []
    for name, fields in update.items():
        for path, operand in fields.items():
            named = [path, operand] if name == "$rename" else [path]
            paths.extend(tuple(one.split(".")) for one in named if isinstance(one, str))
    # Sorted, a path comes right before the paths under it, and next to its own repeat.
    paths.sort()
    for shorter, longer in zip(paths, paths[1:], strict=False):
        if longer[: len(shorter)] == shorter:
            raise _conflict(".".join(longer), ".".join(shorter))


def _conflict(path: str, at: str) -> CommandError:
    return CommandError(
        40,
        "ConflictingUpdateOperators",
        f"Updating the path '{path}' would create a conflict at '{at}'",
    )


def check_modified_names(update: dict[str, Any]) -> None:
    """Refuse an operator update of an existing document that names a `$`-prefixed top-level
    field, as mongod does (an upsert that inserts may; a name further down the path may)."""
    for name, fields in update.items():
        if name == "$unset":
            continue
        for path in fields:
            top = path.split(".", 1)[0] if isinstance(path, str) else ""
            if top.startswith("$"):
                raise CommandError(
                    52,
                    "DollarPrefixedFieldName",
                    f"The dollar ($) prefixed field '{top}' in '{path}' is not allowed in the"
                    " context of an update's replacement document. Consider using an aggregation"
                    " pipeline with $replaceWith.",
                )


class Engine:
    """Runs mongomock's query, aggregation and update code over documents we choose."""

    def __init__(self) -> None:
        self._client: Any = mongomock.MongoClient()
        self._coll: Any = self._client["scratch"]["docs"]
        self._coll._store.create()

    def _load(self, docs: Iterable[dict[str, Any]]) -> None:
        self._coll._store._documents = OrderedDict((store_key(d["_id"]), d) for d in docs)

    def find(
        self,
        docs: Iterable[dict[str, Any]],
        filter_doc: dict[str, Any],
        *,
        projection: Any = None,
        sort: list[tuple[str, int]] | None = None,
        skip: int = 0,
        limit: int = 0,
    ) -> list[dict[str, Any]]:
        """Matching copies of `docs`, sorted, sliced and projected."""
        self._load(docs)
        try:
            return engine_errors(
                lambda: list(
                    self._coll.find(
                        filter_doc, projection or None, skip=skip, limit=limit, sort=sort or None
                    )
                )
            )
        finally:
            self._load(())

    def project(
        self, docs: list[dict[str, Any]], projection: Any, filter_doc: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Projected copies of `docs`; without a projection, the documents themselves.

        Replies are encoded straight away and stored documents are never changed in place
        (writes replace them), so unprojected results need no copy.
        """
        if not projection:
            return list(docs)
        tree = inclusion_tree(projection)
        if tree is not None:
            projected = [project_document(doc, tree) for doc in docs]
            if not any(doc is BAIL for doc in projected):
                return projected
        return self.find(docs, filter_doc, projection=projection)

    def distinct(
        self, docs: Iterable[dict[str, Any]], key: str, filter_doc: dict[str, Any]
    ) -> list[Any]:
        """Distinct values of `key` (arrays unwound) among matching `docs`."""
        self._load(docs)
        try:
            return engine_errors(lambda: list(self._coll.distinct(key, filter_doc)))
        finally:
            self._load(())

    def aggregate(
        self,
        docs: Iterable[dict[str, Any]],
        pipeline: list[dict[str, Any]],
        database: Any,
        *,
        update: bool = False,
    ) -> list[dict[str, Any]]:
        """Run an aggregation pipeline over `docs`; `$lookup` reads from `database`. With
        `update`, the pipeline is an update's (only the stages an update allows)."""
        stages = prepared(pipeline, update=update)
        materialised = [copy.deepcopy(d) for d in docs]
        return engine_errors(
            lambda: list(
                mm_aggregate.process_pipeline(  # type: ignore[no-untyped-call]
                    materialised, database, stages, None
                )
            )
        )

    def apply_update(
        self,
        doc: dict[str, Any],
        query: dict[str, Any],
        update: Any,
        array_filters: list[dict[str, Any]] | None,
    ) -> dict[str, Any]:
        """The document after applying an update (operators, pipeline or replacement)."""
        if isinstance(update, list):
            new = self._pipeline_result(doc, update)
        elif not array_filters and (fast := fast_update(doc, update)) is not None:
            new = fast  # plain $set/$unset/$inc: no copy of the whole document, no mongomock
        elif is_operator_update(update):
            working = copy.deepcopy(doc)
            spec = expand_array_filters(update, working, array_filters or [])
            self._load([working])
            try:
                engine_errors(lambda: self._coll.update_one(query, spec))
                new = with_update_order(
                    next(iter(self._coll._store._documents.values())), doc, spec
                )
            finally:
                self._load(())
        else:
            new = replacement(doc.get("_id"), update)
        if "_id" not in new or new["_id"] != doc["_id"]:
            raise CommandError(
                66,
                "ImmutableField",
                "Performing an update on the path '_id' would modify the immutable field '_id'",
            )
        return new

    def _pipeline_result(self, doc: dict[str, Any], pipeline: list[Any]) -> dict[str, Any]:
        """`doc` after an update's pipeline."""
        result = self.aggregate([doc], pipeline, self._client["scratch"], update=True)
        if len(result) != 1:
            raise CommandError(2, "BadValue", "update pipeline must produce one document")
        return result[0]

    def _upsert_seed(self, query: dict[str, Any]) -> dict[str, Any]:
        """The document an upsert starts from: the query's equality fields, `_id` first."""
        if len(query) == 1 and _is_plain_value(query.get("_id")):
            return {"_id": query["_id"]}
        self._load(())
        try:
            engine_errors(lambda: self._coll.update_one(query, {"$setOnInsert": {}}, upsert=True))
            seed = dict(next(iter(self._coll._store._documents.values())))
        finally:
            self._load(())
        return {"_id": seed.pop("_id"), **seed} if "_id" in seed else seed

    def upsert_document(
        self,
        query: dict[str, Any],
        update: Any,
        array_filters: list[dict[str, Any]] | None,
    ) -> dict[str, Any]:
        """The document an upsert inserts when nothing matched `query`."""
        if isinstance(update, list):
            # The query's equality fields (and an _id), then the pipeline over them.
            return self._pipeline_result(self._upsert_seed(query), update)
        if is_operator_update(update):
            seed = self._upsert_seed(query)
            if not array_filters and (on_insert := _as_inserted(update)) is not None:
                fast = fast_update(seed, on_insert)
                if fast is not None:
                    return fast
            self._load(())
            try:
                spec = expand_array_filters(update, {}, array_filters or [])
                engine_errors(lambda: self._coll.update_one(query, spec, upsert=True))
                new = next(iter(self._coll._store._documents.values()))
                return with_update_order(new, seed, spec)
            finally:
                self._load(())
        doc_id = query.get("_id") if _is_plain_value(query.get("_id")) else None
        if doc_id is None:
            doc_id = update.get("_id", ObjectId())
        return replacement(doc_id, update)


def _as_inserted(update: dict[str, Any]) -> dict[str, Any] | None:
    """An upsert's operator update as it applies to the document it inserts (`$setOnInsert`
    as `$set`), or None when both name one path (mongomock then raises MongoDB's error)."""
    sets = dict(update.get("$set") or {})
    for path, value in (update.get("$setOnInsert") or {}).items():
        if path in sets:
            return None
        sets[path] = value
    out = {op: fields for op, fields in update.items() if op not in ("$set", "$setOnInsert")}
    if sets:
        out["$set"] = sets
    return out


def _is_plain_value(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, dict):
        return not any(k.startswith("$") for k in value)
    return True


def replacement(doc_id: Any, update: dict[str, Any]) -> dict[str, Any]:
    """A replacement document keeping `doc_id` first, as MongoDB stores it."""
    for key in update:
        if key.startswith("$"):
            # mongod: at execution, once a document is to be replaced (not at parse time).
            raise CommandError(
                52,
                "DollarPrefixedFieldName",
                f"The dollar ($) prefixed field '{key}' in '{key}' is not allowed in the context"
                " of an update's replacement document. Consider using an aggregation pipeline"
                " with $replaceWith.",
            )
    if "_id" in update and update["_id"] != doc_id:
        raise CommandError(
            66,
            "ImmutableField",
            "After applying the update, the (immutable) field '_id' was found to have been altered",
        )
    new: dict[str, Any] = {"_id": doc_id}
    new.update((k, v) for k, v in update.items() if k != "_id")
    return new


def expand_array_filters(
    update: dict[str, Any], doc: dict[str, Any], array_filters: list[dict[str, Any]]
) -> dict[str, Any]:
    """Rewrite `$[]` and `$[name]` paths into the concrete array indexes they select in `doc`."""
    filters: dict[str, dict[str, Any]] = {}
    for array_filter in array_filters:
        names = {key.split(".", 1)[0] for key in array_filter}
        if len(names) != 1:
            raise CommandError(
                9, "FailedToParse", "Each array filter must use a single top-level field name"
            )
        filters[names.pop()] = array_filter
    used: set[str] = set()
    expanded: dict[str, Any] = {}
    for operator, fields in update.items():
        if not isinstance(fields, dict):
            expanded[operator] = fields
            continue
        new_fields: dict[str, Any] = {}
        for path, value in fields.items():
            if "$[" not in path:
                new_fields[path] = value
                continue
            for concrete in _expand_path(path.split("."), doc, filters, used):
                new_fields[concrete] = value
        expanded[operator] = new_fields
    unused = set(filters) - used
    if unused:
        raise CommandError(
            9,
            "FailedToParse",
            f"The array filter for identifier '{sorted(unused)[0]}' was not used in the update",
        )
    return expanded


def _expand_path(
    parts: list[str], current: Any, filters: dict[str, dict[str, Any]], used: set[str]
) -> list[str]:
    for position, part in enumerate(parts):
        found = _ALL_POSITIONAL.match(part)
        if found is None:
            if isinstance(current, dict):
                current = current.get(part)
            elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
                current = current[int(part)]
            else:
                current = None
            continue
        name = found.group(1)
        if name:
            if name not in filters:
                raise CommandError(
                    2,
                    "BadValue",
                    f"No array filter found for identifier '{name}' in path '{'.'.join(parts)}'",
                )
            used.add(name)
        if not isinstance(current, list):
            return []
        prefix = parts[:position]
        results: list[str] = []
        for index, element in enumerate(current):
            if name and not matches(filters[name], {name: element}):
                continue
            for rest in _expand_path(parts[position + 1 :], element, filters, used):
                results.append(".".join([*prefix, str(index), *([rest] if rest else [])]))
        return results
    return [".".join(parts)]
