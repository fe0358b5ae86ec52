"""Persistence under `--dbpath`: an append-only journal of write units plus periodic snapshots.

Every record is framed as `<length:u32><crc32:u32><BSON>` and written with one `os.write` before
the reply, so a `kill -9` at any instant leaves at most a torn tail, which replay ignores (and
truncates). A snapshot is written to a temporary file, fsynced and renamed over the previous
one; it names the journal generation that follows it, so a crash between the rename and the
new journal leaves a consistent pair.

    dbpath/snapshot          the last complete snapshot (generation g)
    dbpath/journal-<g>.log   write units committed after snapshot g
    dbpath/devserver.lock    held (flock) by the running server
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bson
from bson import Timestamp

from devserver._state import ServerState
from devserver._wire import CODEC

__all__ = ["DbpathInUse", "FileJournal", "open_journal", "read_records"]

log = logging.getLogger("devserver")

_FRAME = struct.Struct("<II")
_SNAPSHOT = "snapshot"
# Start a new snapshot once the journal grows past this many bytes.
SNAPSHOT_AFTER_BYTES = 64 * 1024 * 1024
# Records in a snapshot carry at most this many operations each.
_SNAPSHOT_CHUNK = 1000


def _frame(doc: dict[str, Any]) -> bytes:
    payload = bson.encode(doc)
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def read_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The intact records of a file and the byte offset where intact data ends."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    records: list[dict[str, Any]] = []
    offset = 0
    while offset + _FRAME.size <= len(data):
        length, checksum = _FRAME.unpack_from(data, offset)
        start = offset + _FRAME.size
        end = start + length
        if end > len(data):
            break
        payload = data[start:end]
        if zlib.crc32(payload) != checksum:
            break
        try:
            records.append(bson.decode(payload, CODEC))
        except Exception:  # a checksum collision on garbage: treat as the torn tail
            break
        offset = end
    return records, offset


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileJournal:
    """Appends write units to the journal and rolls snapshots."""

    def __init__(
        self,
        state: ServerState,
        dbpath: Path,
        generation: int,
        *,
        intact_bytes: int,
        lock_fd: int,
    ) -> None:
        self._state = state
        self._lock_fd = lock_fd
        self._dbpath = dbpath
        self.generation = generation
        self._fd = -1
        self._size = 0
        # Cut a torn tail off, or new records would sit behind garbage that replay stops at.
        self._open_journal(truncate_to=intact_bytes)

    def _journal_path(self, generation: int) -> Path:
        return self._dbpath / f"journal-{generation}.log"

    def _open_journal(self, truncate_to: int | None) -> None:
        path = self._journal_path(self.generation)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if truncate_to is not None:
            os.ftruncate(self._fd, truncate_to)
        self._size = os.fstat(self._fd).st_size

    def write_unit(
        self,
        cluster_time: Timestamp,
        ops: list[dict[str, Any]],
        entries: list[dict[str, Any]],
        outcome: dict[str, Any] | None = None,
    ) -> None:
        """Append one committed write unit (one write call, so a crash tears at most this one)."""
        unit: dict[str, Any] = {"t": cluster_time, "ops": ops, "entries": entries}
        if outcome is not None:
            unit["outcome"] = outcome
        record = _frame(unit)
        written = os.write(self._fd, record)
        while written < len(record):  # a short write on a full disk or a signal
            written += os.write(self._fd, record[written:])
        self._size += len(record)
        if self._size >= SNAPSHOT_AFTER_BYTES:
            self.snapshot()

    def snapshot(self) -> None:
        """Write the whole state as a new snapshot and start an empty journal after it."""
        state = self._state
        next_generation = self.generation + 1
        temporary = self._dbpath / f"{_SNAPSHOT}.tmp"
        with open(temporary, "wb") as out:
            out.write(_frame({"generation": next_generation, "t": state.clock.now}))
            for chunk in _chunks(state.storage.snapshot_records()):
                out.write(_frame({"ops": chunk}))
            for chunk in _chunks(iter(state.history.retained)):
                out.write(_frame({"entries": chunk}))
            for chunk in _chunks(iter(state.session_outcomes())):
                out.write(_frame({"outcomes": chunk}))
            out.write(_frame({"end": True}))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self._dbpath / _SNAPSHOT)
        _fsync_dir(self._dbpath)
        old = self._journal_path(self.generation)
        os.close(self._fd)
        self.generation = next_generation
        self._open_journal(truncate_to=0)
        old.unlink(missing_ok=True)
        log.info("snapshot written, journal generation %d", self.generation)

    def close(self) -> None:
        """Snapshot (so the next start replays little) and close the journal."""
        if self._fd < 0:
            return
        try:
            self.snapshot()
        finally:
            os.close(self._fd)
            self._fd = -1
            os.close(self._lock_fd)  # releases the dbpath lock


def _chunks(records: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for record in records:
        chunk.append(record)
        if len(chunk) >= _SNAPSHOT_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def open_journal(state: ServerState, dbpath: str) -> FileJournal:
    """Load `dbpath` into `state` (snapshot, then journal) and open the journal for appending."""
    root = Path(dbpath)
    root.mkdir(parents=True, exist_ok=True)
    lock_fd = _lock(root)
    try:
        return _load(state, root, lock_fd)
    except BaseException:
        os.close(lock_fd)
        raise


class DbpathInUse(RuntimeError):
    """Another running server holds the dbpath (two writers would corrupt the journal)."""


def _lock(root: Path) -> int:
    """An exclusive lock on `root`, released when the server closes or its process dies."""
    fd = os.open(root / "devserver.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise DbpathInUse(
            f"{root} is in use by another running development server; stop it or choose "
            "another --dbpath"
        ) from None
    return fd


def _load(state: ServerState, root: Path, lock_fd: int) -> FileJournal:
    storage = state.storage
    storage.journaling = False
    entries: list[dict[str, Any]] = []
    generation = 0
    last_time: Timestamp | None = None
    snapshot, _ = read_records(root / _SNAPSHOT)
    if snapshot and snapshot[0].get("generation") is not None and snapshot[-1].get("end"):
        generation = int(snapshot[0]["generation"])
        last_time = snapshot[0].get("t")
        for record in snapshot[1:-1]:
            for op in record.get("ops", ()):
                storage.apply_op(op)
            entries.extend(record.get("entries", ()))
            for outcome in record.get("outcomes", ()):
                state.restore_outcome(outcome, outcome.get("t") or snapshot[0]["t"])
    journal_path = root / f"journal-{generation}.log"
    units, intact = read_records(journal_path)
    for unit in units:
        for op in unit["ops"]:
            storage.apply_op(op)
        entries.extend(unit.get("entries", ()))
        if "outcome" in unit:
            state.restore_outcome(unit["outcome"], unit["t"])
        last_time = unit["t"] if last_time is None else max(last_time, unit["t"])
    storage.journaling = True
    if entries:
        state.history.restore(entries)
    if last_time is not None:
        state.clock.advance_to(last_time)
    for stale in root.glob("journal-*.log"):
        if stale != journal_path:
            stale.unlink(missing_ok=True)
    (root / f"{_SNAPSHOT}.tmp").unlink(missing_ok=True)
    journal = FileJournal(state, root, generation, intact_bytes=intact, lock_fd=lock_fd)
    log.info("loaded %s: snapshot generation %d, %d journal records", root, generation, len(units))
    return journal
