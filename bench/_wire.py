"""A bare OP_MSG client for the benchmark's load: one command per round trip, nothing else.

The load's writes stand for the applications writing to the database, which run on machines of
their own. Sent through the driver, 1,000 updates a second took about half a core of the two
this machine has, CPU that the server and the sync then lacked. Here an update is one encoded
message and one decoded reply on a socket of its own, a few tens of microseconds. It speaks only
to a server without authentication or TLS (the development server); with MONGODB_URI the load
goes through the driver.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import uuid
from typing import Any

import bson
from bson import Timestamp
from bson.binary import Binary, UuidRepresentation
from pymongo import uri_parser

OP_MSG = 2013
_HEADER = struct.Struct("<iiii")
_request_ids = itertools.count(1)


class CommandError(Exception):
    """The server answered a command with ok: 0 or a write error."""


class WireConnection:
    """One socket, one command at a time, with a logical session id of its own (as a driver
    sends with every write)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.lsid = {"id": Binary.from_uuid(uuid.uuid4(), UuidRepresentation.STANDARD)}

    @classmethod
    async def open(cls, uri: str) -> WireConnection:
        host, port = uri_parser.parse_uri(uri)["nodelist"][0]
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def command(self, db: str, body: dict[str, Any]) -> dict[str, Any]:
        payload = b"\x00\x00\x00\x00\x00" + bson.encode({**body, "$db": db, "lsid": self.lsid})
        request_id = next(_request_ids)
        self.writer.write(_HEADER.pack(16 + len(payload), request_id, 0, OP_MSG) + payload)
        header = await self.reader.readexactly(16)
        length, _, response_to, op_code = _HEADER.unpack(header)
        body_bytes = await self.reader.readexactly(length - 16)
        if op_code != OP_MSG or response_to != request_id or body_bytes[4] != 0:
            raise CommandError(f"unexpected reply (opCode {op_code}, to {response_to})")
        reply: dict[str, Any] = bson.decode(body_bytes[5:])
        if not reply.get("ok"):
            code, name = reply.get("code"), reply.get("codeName")
            raise CommandError(f"{name} ({code}): {reply.get('errmsg')}")
        if reply.get("writeErrors"):
            error = reply["writeErrors"][0]
            raise CommandError(f"write error {error.get('code')}: {error.get('errmsg')}")
        return reply

    async def update_one(
        self, db: str, collection: str, query: dict[str, Any], update: dict[str, Any]
    ) -> Timestamp:
        """Update one document; returns the write's cluster time (the reply's operationTime)."""
        reply = await self.command(
            db, {"update": collection, "updates": [{"q": query, "u": update}]}
        )
        if reply.get("n") != 1:
            raise CommandError(f"update of {query} in {db}.{collection} matched {reply.get('n')}")
        stamp: Timestamp = reply["operationTime"]
        return stamp

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()
