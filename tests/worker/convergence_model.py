"""Concurrent writers for the convergence test, and the model of what they wrote.

Each writer owns one causally consistent session on one side of the `items` pair and makes
random inserts, field updates, replaces and deletes on a small shared pool of document ids. It
records every write that changed something, with the server's operationTime of that write and,
per logical field, the value the write left on its side (in one canonical form for both
sides). The checks then hold the final collections against that record:

- G1: every original document converted forward equals its partner on the fields the forward
  direction owns, and both sides hold the same ids.
- G2: a document exists on both sides iff its last effective write was not a delete; and for
  every logical field whose last change came from a field update after the document's last
  whole-document write (insert, replace, delete), the surviving value is the one of the update
  with the greatest operationTime on either side. Fields last written by an insert or replace
  are left to G1: a replace is translated into a field diff, so which of its fields "won" is
  not attributable from the record alone.
- G3: per document, the worker made no more writes than clients did.

Values are unique per write, so a surviving value names the write it came from.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bson import Timestamp
from pymongo import ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from transforms import Direction, Pair

__all__ = [
    "ABSENT",
    "ITEMS_MODULE",
    "LOGICAL_FIELDS",
    "Write",
    "Writer",
    "check_convergence",
    "check_last_writer_wins",
    "check_no_extra_writes",
    "history_of",
    "logical_values",
]

# The pair under test: every mapping kind the engine treats differently.
ITEMS_MODULE = """
from transforms import Pair

items = Pair(original="{db}.items", partner="{db}.items_v2", unmapped="keep")
items.rename("name", "title")
items.rename("zip", "address.zip")
items.convert("qty", forward=int, backward=str)
items.require("tier", default="basic")
items.original_only("legacy")
items.partner_only("score", default=0)


@items.derive(original=("first", "last"), partner=("display",))
def to_display(first, last):
    return {{"display": f"{{first}} {{last}}".strip()}}


@to_display.inverse
def from_display(display):
    first, _, last = (display or "").partition(" ")
    return {{"first": first, "last": last}}
"""


class _Absent:
    """The canonical value of a field a document does not have."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()

# Logical field -> which sides hold it. "person" is the derive (first + last <-> display).
LOGICAL_FIELDS: dict[str, tuple[str, ...]] = {
    "name": ("original", "partner"),
    "qty": ("original", "partner"),
    "zip": ("original", "partner"),
    "person": ("original", "partner"),
    "note": ("original", "partner"),
    "tier": ("original", "partner"),
    "legacy": ("original",),
    "score": ("partner",),
    # A top-level field named "d.x": an update path cannot name it, so clients change it with
    # $setField in a pipeline update, and the worker writes it by name.
    "dotted": ("original", "partner"),
    # A top-level field named "$p": a replacement may not hold it either, so clients replace
    # such a document with a pipeline, and the worker creates it with a pipeline upsert.
    "dollar": ("original", "partner"),
}
DOTTED = "d.x"
DOLLAR = "$p"
# Every whole document carries it (both sides, unmapped): a pipeline update's field diff then
# stays smaller than the document, so MongoDB logs it as an update, not as a replacement.
PAD = "p" * 200

_OPERATIONS = ("insert", "update", "replace", "delete")
_OPERATION_WEIGHTS = (2, 6, 1, 1)


def logical_values(side: str, document: Mapping[str, Any] | None) -> dict[str, Any]:
    """One side's document as logical field -> canonical value (partner terms)."""
    if document is None:
        return {}
    if side == "original":
        first, last = document.get("first"), document.get("last")
        tier = document.get("tier")
        qty = document.get("qty", ABSENT)
        return {
            "name": document.get("name", ABSENT),
            "qty": int(qty) if isinstance(qty, str) else qty,
            "zip": document.get("zip", ABSENT),
            "person": ABSENT if first is None and last is None else f"{first} {last}".strip(),
            "note": document.get("note", ABSENT),
            "tier": "basic" if tier is None else tier,
            "legacy": document.get("legacy", ABSENT),
            "dotted": document.get(DOTTED, ABSENT),
            "dollar": document.get(DOLLAR, ABSENT),
        }
    address = document.get("address")
    return {
        "name": document.get("title", ABSENT),
        "qty": document.get("qty", ABSENT),
        "zip": address.get("zip", ABSENT) if isinstance(address, Mapping) else ABSENT,
        "person": document.get("display", ABSENT),
        "note": document.get("note", ABSENT),
        "tier": document.get("tier", ABSENT),
        "score": document.get("score", ABSENT),
        "dotted": document.get(DOTTED, ABSENT),
        "dollar": document.get(DOLLAR, ABSENT),
    }


@dataclass(frozen=True)
class Write:
    """One client write that changed a document, as the writer saw it."""

    side: str
    writer: str
    op: str
    document_id: int
    at: Timestamp
    # Logical fields whose canonical value this write changed on its side -> the new value.
    changed: Mapping[str, Any]


@dataclass
class Writer:
    """One client making seeded random writes on one side through a causally consistent session."""

    name: str
    side: str
    collection: AsyncCollection[dict[str, Any]]
    session: AsyncClientSession
    rng: random.Random
    ids: Sequence[int]
    writes: list[Write] = field(default_factory=list)
    attempts: int = 0
    _serial: int = 0

    async def step(self, op: str | None = None, document_id: int | None = None) -> bool:
        """Make one random write (of kind `op` on `document_id` when given) and record it if it
        changed something; whether it did."""
        self.attempts += 1
        op = op or self.rng.choices(_OPERATIONS, _OPERATION_WEIGHTS)[0]
        document_id = self.rng.choice(self.ids) if document_id is None else document_id
        query = {"_id": document_id}
        before: dict[str, Any] | None
        after: dict[str, Any] | None
        session = self.session
        if op == "insert":
            after = {"_id": document_id, **self.whole_document()}
            try:
                await self.collection.insert_one(after, session=session)
            except DuplicateKeyError:
                return
            before = None
        elif op == "replace":
            replacement = self.whole_document()
            if DOLLAR in replacement:
                # A replacement may not hold a top-level `$` name: the pipeline's may.
                before = await self.collection.find_one_and_update(
                    query,
                    [{"$replaceWith": {"$literal": {"_id": document_id, **replacement}}}],
                    session=session,
                    return_document=ReturnDocument.BEFORE,
                )
            else:
                before = await self.collection.find_one_and_replace(
                    query, replacement, session=session, return_document=ReturnDocument.BEFORE
                )
            after = {"_id": document_id, **replacement}
        elif op == "delete":
            before = await self.collection.find_one_and_delete(query, session=session)
            after = None
        else:
            update, apply = self._field_update()
            before = await self.collection.find_one_and_update(
                query, update, session=session, return_document=ReturnDocument.BEFORE
            )
            after = apply(before) if before is not None else None
        if (before is None and op != "insert") or before == after:
            return False  # nothing changed: no change event, so not a write the engine can see
        at = session.operation_time
        assert at is not None, "a causally consistent session reports each write's time"
        old, new = logical_values(self.side, before), logical_values(self.side, after)
        changed = {
            name: new.get(name, ABSENT)
            for name in LOGICAL_FIELDS
            if self.side in LOGICAL_FIELDS[name] and old.get(name) != new.get(name)
        }
        self.writes.append(Write(self.side, self.name, op, document_id, at, changed))
        return True

    def _token(self) -> str:
        self._serial += 1
        return f"{self.name}.{self._serial}"

    def _number(self) -> int:
        self._serial += 1
        return int(self.name.rpartition("-")[2]) * 1_000_000 + self._serial

    def whole_document(self) -> dict[str, Any]:
        """A full document in this side's schema (derive parts and zip always present)."""
        token = self._token()
        maybe = self.rng.random
        if self.side == "original":
            document: dict[str, Any] = {
                "zip": f"z{token}",
                "first": f"F{token}",
                "last": "L",
                "pad": PAD,
            }
            if maybe() < 0.5:
                document[DOTTED] = f"d{token}"
            if maybe() < 0.3:
                document[DOLLAR] = f"$o{token}"
            if maybe() < 0.8:
                document["name"] = f"n{token}"
            if maybe() < 0.8:
                document["qty"] = str(self._number())
            if maybe() < 0.5:
                document["note"] = f"o{token}"
            if maybe() < 0.5:
                document["tier"] = f"t{token}"
            if maybe() < 0.5:
                document["legacy"] = f"l{token}"
            return document
        # The partner side never drops tier or display: going back and forth, "absent" there
        # cannot survive the round trip (require and derive fill them in), which is the
        # transforms' documented lossiness, not the engine's.
        document = {
            "address": {"zip": f"z{token}"},
            "display": f"F{token} L",
            "tier": f"t{token}",
            "pad": PAD,
        }
        if maybe() < 0.5:
            document[DOTTED] = f"d{token}"
        if maybe() < 0.3:
            document[DOLLAR] = f"$p{token}"
        if maybe() < 0.8:
            document["title"] = f"n{token}"
        if maybe() < 0.8:
            document["qty"] = self._number()
        if maybe() < 0.5:
            document["note"] = f"p{token}"
        if maybe() < 0.5:
            document["score"] = self._number()
        return document

    def _field_update(self) -> tuple[Any, Any]:
        """A $set/$unset of 1-3 logical fields (a pipeline update when one is "d.x"), and how
        it changes a document."""
        fields = [name for name, sides in LOGICAL_FIELDS.items() if self.side in sides]
        chosen = self.rng.sample(fields, self.rng.randint(1, 3))
        to_set: dict[str, Any] = {}
        to_unset: list[str] = []
        by_name: dict[str, Any] = {}  # DOTTED -> its new value, ABSENT to remove it
        original = self.side == "original"
        for name in chosen:
            token = self._token()
            unset = self.rng.random() < 0.25
            if name == "name":
                path = "name" if original else "title"
                (to_unset.append(path) if unset else to_set.__setitem__(path, f"n{token}"))
            elif name == "qty":
                number = self._number()
                value: Any = str(number) if original else number
                (to_unset.append("qty") if unset else to_set.__setitem__("qty", value))
            elif name == "zip":
                to_set["zip" if original else "address.zip"] = f"z{token}"
            elif name == "person":
                if original:
                    to_set.update(first=f"F{token}", last="L")
                else:
                    to_set["display"] = f"F{token} L"
            elif name == "note":
                (to_unset.append("note") if unset else to_set.__setitem__("note", f"n{token}"))
            elif name == "dotted":
                by_name[DOTTED] = ABSENT if unset else f"d{token}"
            elif name == "dollar":
                by_name[DOLLAR] = ABSENT if unset else f"${token}"
            elif name == "tier":
                if original and unset:
                    to_unset.append("tier")
                else:
                    to_set["tier"] = f"t{token}"
            else:  # legacy (original) or score (partner)
                value = f"l{token}" if original else self._number()
                (to_unset.append(name) if unset else to_set.__setitem__(name, value))
        update: Any = {}
        if to_set:
            update["$set"] = to_set
        if to_unset:
            update["$unset"] = dict.fromkeys(to_unset, "")
        if by_name:
            stages: list[dict[str, Any]] = []
            if to_set:
                stages.append({"$set": {p: {"$literal": v} for p, v in to_set.items()}})
            if to_unset:
                stages.append({"$unset": list(to_unset)})
            for field_name, value in by_name.items():
                named = {"field": {"$literal": field_name}, "input": "$$ROOT"}
                if value is ABSENT:
                    stages.append({"$replaceWith": {"$unsetField": named}})
                else:
                    literal = {"$literal": value}
                    stages.append({"$replaceWith": {"$setField": {**named, "value": literal}}})
            update = stages

        def apply(document: Mapping[str, Any]) -> dict[str, Any]:
            result = _deep_copy(document)
            for path, value in to_set.items():
                head, _, tail = path.partition(".")
                if tail:
                    result.setdefault(head, {})[tail] = value
                else:
                    result[head] = value
            for path in to_unset:
                result.pop(path, None)
            for field_name, value in by_name.items():
                if value is ABSENT:
                    result.pop(field_name, None)
                else:
                    result[field_name] = value
            return result

        return update, apply


def _deep_copy(document: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in document.items()}


def check_convergence(
    pair: Pair,
    originals: Mapping[int, Mapping[str, Any]],
    partners: Mapping[int, Mapping[str, Any]],
) -> list[str]:
    """G1: the same ids on both sides, and each original converted forward equals its partner."""
    problems: list[str] = []
    for only, side in ((set(originals) - set(partners), "original"),) + (
        (set(partners) - set(originals), "partner"),
    ):
        problems.extend(f"document {i} exists on the {side} side only" for i in sorted(only))
    partner_only = set(pair.partner_only_fields)
    for document_id in sorted(set(originals) & set(partners)):
        expected = pair.convert(originals[document_id], Direction.FORWARD)
        actual = dict(partners[document_id])
        for name in partner_only:
            expected.pop(name, None)
            actual.pop(name, None)
        if expected != actual:
            problems.append(
                f"document {document_id}: original converts to {expected!r},"
                f" partner holds {actual!r}"
            )
    return problems


def check_last_writer_wins(
    writes: Sequence[Write],
    originals: Mapping[int, Mapping[str, Any]],
    partners: Mapping[int, Mapping[str, Any]],
) -> tuple[list[str], int]:
    """G2: existence follows the last write; updated fields hold the latest update's value.

    Returns the problems found and how many (document, field) values were checked.
    """
    problems: list[str] = []
    checked = 0
    by_document: dict[int, list[Write]] = {}
    for write in writes:
        by_document.setdefault(write.document_id, []).append(write)
    for document_id, history in sorted(by_document.items()):
        history.sort(key=lambda w: w.at)
        last = history[-1]
        exists = last.op != "delete"
        for side, final in (("original", originals), ("partner", partners)):
            if (document_id in final) != exists:
                problems.append(
                    f"document {document_id}: last write {_describe(last)} but it is"
                    f" {'missing from' if exists else 'still in'} the {side} side"
                )
        if not exists:
            continue
        whole = [w.at for w in history if w.op != "update"]
        since = max(whole) if whole else None
        values = {
            "original": logical_values("original", originals.get(document_id)),
            "partner": logical_values("partner", partners.get(document_id)),
        }
        for name, sides in LOGICAL_FIELDS.items():
            updates = [
                w
                for w in history
                if w.op == "update" and name in w.changed and (since is None or w.at > since)
            ]
            if not updates:
                continue
            winner = updates[-1]
            checked += 1
            for side in sides:
                actual = values[side].get(name, ABSENT)
                if actual != winner.changed[name]:
                    problems.append(
                        f"document {document_id} field {name} on the {side} side is {actual!r};"
                        f" the last update {_describe(winner)} set {winner.changed[name]!r}"
                    )
    return problems, checked


def check_no_extra_writes(
    client_writes: Mapping[tuple[str, Any], int], worker_writes: Mapping[tuple[str, Any], int]
) -> list[str]:
    """G3: per document, the worker wrote no more often than clients did on either side."""
    problems: list[str] = []
    document_ids = {key[1] for key in client_writes} | {key[1] for key in worker_writes}
    for document_id in sorted(document_ids, key=repr):
        clients = sum(n for (_, i), n in client_writes.items() if i == document_id)
        workers = sum(n for (_, i), n in worker_writes.items() if i == document_id)
        if workers > clients:
            problems.append(
                f"document {document_id}: {workers} worker writes for {clients} client writes"
            )
    return problems


def history_of(writes: Sequence[Write], document_id: int) -> str:
    """The recorded writes of one document in operationTime order, one per line."""
    lines = [
        f"  {w.at.time}.{w.at.inc:<5} {w.side:8} {w.writer:5} {w.op:7} {dict(w.changed)!r}"
        for w in sorted(writes, key=lambda w: w.at)
        if w.document_id == document_id
    ]
    return f"history of document {document_id}:\n" + "\n".join(lines)


def _describe(write: Write) -> str:
    return f"({write.op} by {write.writer} on the {write.side} side at {write.at})"
