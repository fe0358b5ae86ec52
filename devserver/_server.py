"""The TCP server: connections, message framing, lifecycle, and a thread-hosted variant."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import threading
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

from devserver._command import Connection
from devserver._dispatch import CloseConnection, run_command
from devserver._errors import CommandError
from devserver._persistence import DbpathInUse, open_journal
from devserver._state import ServerConfig, ServerState
from devserver._versions import DEFAULT_MONGODB_VERSION, parse_mongodb_version
from devserver._wire import (
    HEADER,
    MAX_MESSAGE_BYTES,
    OP_MSG,
    OP_QUERY,
    ProtocolError,
    Request,
    decode_message,
    encode_op_msg,
    encode_op_reply,
)

__all__ = [
    "DbpathInUse",
    "DevServer",
    "RemoteBindRefused",
    "ServerThread",
    "serve",
    "is_loopback",
]

log = logging.getLogger("devserver")

_LEGACY_HANDSHAKE = ("hello", "isMaster", "ismaster")


class RemoteBindRefused(ValueError):
    """A non-loopback bind address without allow_remote: the server has no authentication."""


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DevServer:
    """A MongoDB-compatible development server: a one-node replica set over the wire protocol.

    Not for production: no authentication, data kept in memory (journaled with `dbpath`).
    `mongodb_version` is the release it presents itself as: "8.0" (default), "7.0" or "6.0".
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        dbpath: str | None = None,
        replset: str = "rs0",
        oplog_size_mb: float = 64,
        allow_remote: bool = False,
        round_trip_ms: float = 0.0,
        mongodb_version: str = DEFAULT_MONGODB_VERSION,
    ) -> None:
        if not allow_remote and not is_loopback(host):
            raise RemoteBindRefused(
                f"refusing to listen on {host}: the development server has no authentication, so "
                "anyone who can reach it can read and change every database. Bind to 127.0.0.1, "
                "or pass --allow-remote if you accept that."
            )
        parse_mongodb_version(mongodb_version)  # an unknown release fails here, not at start()
        self.config = ServerConfig(
            host=host,
            port=port,
            dbpath=dbpath,
            replset=replset,
            oplog_size_mb=oplog_size_mb,
            allow_remote=allow_remote,
            round_trip_s=round_trip_ms / 1000,
            mongodb_version=mongodb_version,
        )
        self.state: ServerState | None = None
        self._server: asyncio.Server | None = None
        # Every connection's task and stream writer, recorded the moment it is accepted.
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.port = port

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def uri(self) -> str:
        """The connection string clients use (replica-set mode)."""
        return f"mongodb://{_uri_host(self.host)}:{self.port}/?replicaSet={self.config.replset}"

    async def start(self) -> None:
        """Load persisted data (if any), bind, and start accepting connections."""
        state = ServerState(config=self.config)
        state.stopping = asyncio.Event()
        journal = None
        if self.config.dbpath is not None:
            journal = state.journal = open_journal(state, self.config.dbpath)
        try:
            self._server = await asyncio.start_server(
                self._accept, self.config.host, self.config.port, limit=2**20
            )
        except BaseException:
            if journal is not None:
                journal.close()
            raise
        self.state = state
        sockets = self._server.sockets
        self.port = sockets[0].getsockname()[1]
        state.address = f"{_advertised_host(self.host)}:{self.port}"
        self._tasks.append(asyncio.create_task(self._reap_transactions()))
        log.info("devserver listening on %s", self.uri)

    async def stop(self) -> None:
        """Stop accepting, close every connection, persist, and release the port."""
        state = self.state
        if state is None:
            return
        if state.stopping is not None:
            state.stopping.set()
        if self._server is not None:
            self._server.close()
        # Closing every transport ends idle connections and lets the listener's close finish
        # even for a connection whose task has not started yet.
        for writer in self._connections.values():
            writer.transport.abort()
        for task in [*self._connections, *self._tasks]:
            task.cancel()
        for task in [*self._connections, *self._tasks]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        state.cursors.close_all()
        journal = state.journal
        close = getattr(journal, "close", None)
        if close is not None:
            close()
        self.state = None

    async def __aenter__(self) -> DevServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def start_in_thread(self, *, timeout: float = 30) -> ServerThread:
        """Run this server on its own event loop in a daemon thread (for sync code and fixtures)."""
        return ServerThread(self, timeout=timeout)

    async def _reap_transactions(self) -> None:
        """Abort transactions past their lifetime; drop idle cursors and sessions."""
        assert self.state is not None
        ticks = 0
        while True:
            await asyncio.sleep(0.2)
            self.state.reap_transactions()
            ticks += 1
            if ticks % 50 == 0:  # every ten seconds
                self.state.reap_idle()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Called by asyncio for each new connection: record it and serve it in a task."""
        state = self.state
        if state is None or (state.stopping is not None and state.stopping.is_set()):
            writer.transport.abort()
            return
        task = asyncio.get_running_loop().create_task(self._connection(state, reader, writer))
        self._connections[task] = writer
        task.add_done_callback(self._forget_connection)

    def _forget_connection(self, task: asyncio.Task[None]) -> None:
        self._connections.pop(task, None)

    async def _connection(
        self, state: ServerState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        state.connections_created += 1
        state.connections_current += 1
        conn = Connection(id=state.connections_created, peer=_format_peer(peer))
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await self._serve_connection(state, conn, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except ProtocolError as exc:
            log.info("closing connection %s: %s", conn.id, exc)
        except CloseConnection:
            pass
        except asyncio.CancelledError:
            # Server shutdown: end the connection task normally (asyncio's stream callback
            # would otherwise log the cancellation as an error).
            pass
        finally:
            state.connections_current -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_connection(
        self,
        state: ServerState,
        conn: Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        reply_ids = 0
        # A modelled network's round trip, paid before each reply (the client waits for the
        # reply either way). One timer per trip: epoll sleeps whole milliseconds.
        round_trip = state.config.round_trip_s
        while True:
            header = await reader.readexactly(HEADER.size)
            length, request_id, _, op_code = HEADER.unpack(header)
            if length < HEADER.size + 5 or length > MAX_MESSAGE_BYTES:
                raise ProtocolError(f"invalid message length {length}")
            payload = await reader.readexactly(length - HEADER.size)
            request = decode_message(request_id, op_code, payload, header + payload)
            reply = await self._answer(state, conn, request)
            if request.more_to_come:
                continue
            if round_trip:
                await asyncio.sleep(round_trip)
            reply_ids += 1
            if request.op_code == OP_QUERY:
                data = encode_op_reply(reply_ids, request_id, reply)
            else:
                data = encode_op_msg(reply_ids, request_id, reply, checksum=request.checksum)
            writer.write(data)
            await writer.drain()

    async def _answer(
        self, state: ServerState, conn: Connection, request: Request
    ) -> dict[str, Any]:
        try:
            return await self._route(state, conn, request)
        except CloseConnection:
            raise
        except Exception as exc:  # a bug outside a handler must not kill the connection
            log.exception("request %s failed", request.request_id)
            return CommandError(1, "InternalError", f"{type(exc).__name__}: {exc}").to_reply()

    async def _route(
        self, state: ServerState, conn: Connection, request: Request
    ) -> dict[str, Any]:
        if request.op_code == OP_MSG:
            db = request.body.pop("$db", None)
            if not isinstance(db, str):
                return CommandError(
                    40571, "Location40571", "OP_MSG requests require a $db argument"
                ).to_reply()
            return await run_command(
                state,
                conn,
                request.body,
                db,
                message_bytes=request.size,
                sequence_sizes=request.sequence_sizes,
            )
        # Legacy OP_QUERY: only the handshake, as in MongoDB 6.0+.
        db, _, coll = request.namespace.partition(".")
        name = next(iter(request.body), "")
        if coll != "$cmd" or name not in _LEGACY_HANDSHAKE:
            return CommandError(
                352,
                "UnsupportedOpQueryCommand",
                f"Unsupported OP_QUERY command: {name}. The client driver may require an upgrade.",
            ).to_reply()
        return await run_command(state, conn, request.body, db)


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _advertised_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return _uri_host(host)


def _format_peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


class ServerThread:
    """A DevServer running on its own event loop in a daemon thread."""

    def __init__(self, server: DevServer, *, timeout: float = 30) -> None:
        self.server = server
        self._timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._start()

    def _start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            self._stop = asyncio.Event()
            try:
                await self.server.start()
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            try:
                await self._stop.wait()
            finally:
                await self.server.stop()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(main())
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="devserver", daemon=True)
        self._thread.start()
        if not ready.wait(self._timeout):
            raise TimeoutError("the development server did not start in time")
        if failure:
            self._thread.join(self._timeout)
            raise failure[0]

    @property
    def uri(self) -> str:
        return self.server.uri

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def state(self) -> ServerState | None:
        return self.server.state

    def stop(self) -> None:
        """Stop the server and wait for its thread to finish (idempotent)."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None or loop is None or stop is None:
            return
        self._thread = None
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(stop.set)
        thread.join(self._timeout)
        if thread.is_alive():
            log.warning("the development server thread did not stop within %ss", self._timeout)

    def restart(self) -> None:
        """Stop, then start again on the same port and dbpath (as after a clean restart)."""
        self.stop()
        config = self.server.config
        self.server = DevServer(
            host=config.host,
            port=self.server.port,
            dbpath=config.dbpath,
            replset=config.replset,
            oplog_size_mb=config.oplog_size_mb,
            allow_remote=config.allow_remote,
            mongodb_version=config.mongodb_version,
        )
        self._start()

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.asynccontextmanager
async def serve(**options: Any) -> AsyncIterator[str]:
    """Run a DevServer for the duration of the block, yielding its URI."""
    async with DevServer(**options) as server:
        yield server.uri
