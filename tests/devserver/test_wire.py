"""The wire protocol over a raw socket: framing, checksums, sequences, legacy handshake, errors."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import bson
import pytest
from pymongo import AsyncMongoClient, MongoClient
from pymongo.write_concern import WriteConcern

from devserver._wire import ProtocolError, crc32c, decode_message
from tests.waiting import wait_until

Client = MongoClient[dict[str, Any]]
OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013


class RawConnection:
    """A bare TCP connection speaking OP_MSG / OP_QUERY by hand."""

    def __init__(self, uri: str) -> None:
        parsed = urlparse(uri)
        host = parsed.hostname or "127.0.0.1"
        port = parsed.port or 27017
        self.sock = socket.create_connection((host, port), timeout=10)
        self.request_id = 0

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def op_msg(
        self,
        body: dict[str, Any],
        *,
        sequences: dict[str, list[dict[str, Any]]] | None = None,
        flags: int = 0,
        checksum: bool = False,
    ) -> bytes:
        sections = b"\x00" + bson.encode(body)
        for name, docs in (sequences or {}).items():
            payload = name.encode() + b"\x00" + b"".join(bson.encode(d) for d in docs)
            sections += b"\x01" + struct.pack("<i", len(payload) + 4) + payload
        if checksum:
            flags |= 1
        self.request_id += 1
        length = 16 + 4 + len(sections) + (4 if checksum else 0)
        message = struct.pack("<iiiiI", length, self.request_id, 0, OP_MSG, flags) + sections
        if checksum:
            message += struct.pack("<I", crc32c(message))
        return message

    def command(self, body: dict[str, Any], **options: Any) -> dict[str, Any]:
        self.send_raw(self.op_msg(body, **options))
        return self.read_reply()

    def read_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed by the server")
            data += chunk
        return data

    def read_reply(self) -> dict[str, Any]:
        header = self.read_exactly(16)
        length, _, _, op_code = struct.unpack("<iiii", header)
        payload = self.read_exactly(length - 16)
        if op_code == OP_REPLY:
            return bson.decode(payload[20:])
        assert op_code == OP_MSG
        flags = struct.unpack_from("<I", payload)[0]
        end = len(payload) - (4 if flags & 1 else 0)
        if flags & 1:
            assert struct.unpack_from("<I", payload, end)[0] == crc32c(header + payload[:end])
        assert payload[4] == 0
        return bson.decode(payload[5:end])

    def is_closed(self, timeout: float = 5.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionError:
            return True


@pytest.fixture
def raw(mongo_uri: str) -> Iterator[RawConnection]:
    connection = RawConnection(mongo_uri)
    try:
        yield connection
    finally:
        connection.close()


def test_checksummed_op_msg_gets_a_checksummed_reply(raw: RawConnection) -> None:
    """An OP_MSG with a CRC-32C is accepted, and the reply carries a valid one."""
    reply = raw.command({"ping": 1, "$db": "admin"}, checksum=True)
    assert reply["ok"] == 1.0


def test_bad_checksum_closes_only_that_connection(raw: RawConnection, client: Client) -> None:
    """A corrupted checksum closes the connection that sent it; other clients carry on."""
    message = bytearray(raw.op_msg({"ping": 1, "$db": "admin"}, checksum=True))
    message[-1] ^= 0xFF
    raw.send_raw(bytes(message))
    assert raw.is_closed()
    assert client.admin.command("ping")["ok"] == 1.0


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(struct.pack("<iiii", 8, 1, 0, OP_MSG), id="length-too-small"),
        pytest.param(struct.pack("<iiii", 30, 1, 0, 9999) + b"\x00" * 14, id="unknown-opcode"),
        pytest.param(
            struct.pack("<iiiiI", 26, 1, 0, OP_MSG, 0) + b"\x00\x05\x00\x00\x00\x01",
            id="invalid-bson",
        ),
        pytest.param(
            struct.pack("<iiiiI", 25, 1, 0, OP_MSG, 1 << 5) + b"\x00\x05\x00\x00\x00\x00"[:5],
            id="unknown-required-flag",
        ),
    ],
)
def test_malformed_message_closes_only_that_connection(
    raw: RawConnection, client: Client, garbage: bytes
) -> None:
    """Garbage on one connection closes it; the server keeps serving others."""
    raw.send_raw(garbage)
    assert raw.is_closed()
    assert client.admin.command("ping")["ok"] == 1.0


def test_document_sequence_carries_insert_documents(raw: RawConnection, db_name: str) -> None:
    """Kind-1 sections (document sequences) supply a command's array argument."""
    reply = raw.command(
        {"insert": "c", "$db": db_name},
        sequences={"documents": [{"_id": 1}, {"_id": 2}]},
    )
    assert reply["n"] == 2
    found = raw.command({"find": "c", "$db": db_name})
    assert [d["_id"] for d in found["cursor"]["firstBatch"]] == [1, 2]


def test_more_to_come_write_gets_no_reply(raw: RawConnection, db_name: str) -> None:
    """A moreToCome (unacknowledged) message is applied and not answered."""
    raw.send_raw(raw.op_msg({"insert": "c", "documents": [{"_id": 1}], "$db": db_name}, flags=2))
    reply = raw.command({"count": "c", "$db": db_name})
    assert reply["n"] == 1


def test_unacknowledged_driver_write(client: Client, db_name: str) -> None:
    """w=0 writes from the driver are applied."""
    coll = client[db_name].get_collection("c", write_concern=WriteConcern(w=0))
    coll.insert_one({"_id": 1})
    wait_until(lambda: client[db_name].c.count_documents({}) == 1, what="the w=0 insert")


def test_legacy_op_query_handshake(raw: RawConnection) -> None:
    """isMaster over OP_QUERY on admin.$cmd is answered with an OP_REPLY."""
    query = bson.encode({"isMaster": 1, "helloOk": True})
    payload = struct.pack("<i", 0) + b"admin.$cmd\x00" + struct.pack("<ii", 0, -1) + query
    raw.send_raw(struct.pack("<iiii", 16 + len(payload), 7, 0, OP_QUERY) + payload)
    reply = raw.read_reply()
    assert reply["ismaster"] is True
    assert reply["helloOk"] is True
    assert reply["setName"]


def test_op_query_other_commands_are_refused(raw: RawConnection) -> None:
    """OP_QUERY for anything but the handshake gets error 352 (as MongoDB 6.0+)."""
    query = bson.encode({"ping": 1})
    payload = struct.pack("<i", 0) + b"admin.$cmd\x00" + struct.pack("<ii", 0, -1) + query
    raw.send_raw(struct.pack("<iiii", 16 + len(payload), 8, 0, OP_QUERY) + payload)
    reply = raw.read_reply()
    assert reply["ok"] == 0 and reply["code"] == 352


def test_awaitable_hello_waits_for_max_await_time(raw: RawConnection) -> None:
    """A hello with our topologyVersion waits maxAwaitTimeMS; a stale one is answered at once."""
    first = raw.command({"hello": 1, "$db": "admin"})
    version = first["topologyVersion"]
    started = time.monotonic()
    raw.command({"hello": 1, "topologyVersion": version, "maxAwaitTimeMS": 300, "$db": "admin"})
    assert time.monotonic() - started >= 0.25
    stale = {"processId": bson.ObjectId(), "counter": version["counter"]}
    started = time.monotonic()
    raw.command({"hello": 1, "topologyVersion": stale, "maxAwaitTimeMS": 5000, "$db": "admin"})
    assert time.monotonic() - started < 2


def test_every_reply_carries_cluster_time(raw: RawConnection) -> None:
    """$clusterTime (with a zero signature) and operationTime are on replies and errors."""
    for body in ({"ping": 1, "$db": "admin"}, {"noSuchCommand": 1, "$db": "admin"}):
        reply = raw.command(body)
        assert isinstance(reply["operationTime"], bson.Timestamp)
        assert reply["$clusterTime"]["signature"]["hash"] == b"\x00" * 20
        assert reply["$clusterTime"]["clusterTime"] >= reply["operationTime"]


def test_document_over_16_mib_is_rejected(raw: RawConnection, db_name: str) -> None:
    """A document larger than 16 MiB is refused with BSONObjectTooLarge (10334)."""
    big = {"_id": 1, "blob": b"x" * (16 * 1024 * 1024)}
    reply = raw.command({"insert": "c", "$db": db_name}, sequences={"documents": [big]})
    errors = reply.get("writeErrors") or [reply]
    assert errors[0]["code"] == 10334


async def test_async_client_works(mongo_uri: str, db_name: str) -> None:
    """PyMongo's AsyncMongoClient talks to the server too."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    try:
        coll = client[db_name].c
        await coll.insert_many([{"_id": i} for i in range(150)])
        assert len(await coll.find().to_list()) == 150
        async with client.start_session() as session:
            async with await session.start_transaction():
                await coll.insert_one({"_id": "t"}, session=session)
        assert await coll.count_documents({}) == 151
    finally:
        await client.close()


def _op_msg_payload(body: dict[str, Any], name: str, sequence: bytes) -> bytes:
    section = name.encode() + b"\x00" + sequence
    return (
        struct.pack("<I", 0)
        + b"\x00"
        + bson.encode(body)
        + b"\x01"
        + struct.pack("<i", 4 + len(section))
        + section
    )


def test_document_sequence_is_decoded_with_each_documents_size() -> None:
    """A document sequence decodes to its documents in order, with the byte size of each."""
    docs: list[dict[str, Any]] = [
        {"_id": 1},
        {"_id": "two", "pad": "x" * 300},
        {"n": [1, 2, {"a": None}]},
    ]
    encoded = [bson.encode(d) for d in docs]
    payload = _op_msg_payload({"insert": "c", "$db": "d"}, "documents", b"".join(encoded))
    request = decode_message(7, OP_MSG, payload, b"\x00" * 16 + payload)
    assert request.body["documents"] == docs
    assert request.sequence_sizes == {"documents": [len(e) for e in encoded]}


@pytest.mark.parametrize(
    "sequence",
    [
        pytest.param(bson.encode({"a": 1})[:-1], id="document-runs-past-the-section"),
        pytest.param(bson.encode({"a": 1}) + b"\x03\x00", id="trailing-bytes"),
        pytest.param(b"\x0c\x00\x00\x00\x10a\x00\x01\x00\x00\x00\x01", id="bad-terminator"),
        pytest.param(b"\x0d\x00\x00\x00\x7fa\x00\x01\x00\x00\x00\x00\x00", id="unknown-type"),
    ],
)
def test_malformed_document_sequence_is_a_protocol_error(sequence: bytes) -> None:
    """A sequence whose documents do not parse exactly to its end is refused."""
    payload = _op_msg_payload({"insert": "c", "$db": "d"}, "documents", sequence)
    with pytest.raises(ProtocolError):
        decode_message(7, OP_MSG, payload, b"\x00" * 16 + payload)


def test_round_trip_delay_is_added_to_every_reply(
    devserver_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`round_trip_ms` (`--round-trip-ms`) makes the server wait that long before each reply,
    as a network would; the commands still work."""
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded(delay: float, result: Any = None) -> Any:
        waits.append(delay)
        return await real_sleep(delay, result)

    monkeypatch.setattr(asyncio, "sleep", recorded)
    handle = devserver_factory(port=0, round_trip_ms=40)
    with MongoClient(handle.uri, serverSelectionTimeoutMS=10_000) as slow:
        slow.admin.command("ping")  # connection set up
        collection = slow.get_database("trip").get_collection("c")
        before = waits.count(0.04)
        collection.insert_one({"_id": 1})
        found = collection.find_one({"_id": 1})
        replies = waits.count(0.04) - before
    assert found == {"_id": 1}
    # At least the two replies (the driver's monitor may get one of its own meanwhile).
    assert replies >= 2, waits
