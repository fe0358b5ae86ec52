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
import uuid
from typing import Any

from bson import Timestamp
from bson.binary import Binary, UuidRepresentation
from pymongo import uri_parser

from devserver._wire import HEADER, OP_MSG, ProtocolError, decode_message, encode_op_msg

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
        # A request is framed as the server frames its replies: one OP_MSG body section.
        request_id = next(_request_ids)
        self.writer.write(encode_op_msg(request_id, 0, {**body, "$db": db, "lsid": self.lsid}))
        header = await self.reader.readexactly(HEADER.size)
        length, reply_id, response_to, op_code = HEADER.unpack(header)
        payload = await self.reader.readexactly(length - HEADER.size)
        if op_code != OP_MSG or response_to != request_id:
            raise CommandError(f"unexpected reply (opCode {op_code}, to {response_to})")
        try:
            reply = decode_message(reply_id, op_code, payload, header + payload).body
        except ProtocolError as exc:
            raise CommandError(f"unreadable reply: {exc}") from exc
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
