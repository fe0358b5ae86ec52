"""The worker's HTTP endpoint: `/healthz`, `/readyz` and `/metrics`, nothing else.

HTTP parsing is h11's (a sans-I/O HTTP/1.1 implementation); this module only moves bytes
between it and an anyio listener, so the server lives in the worker's task group like every
other task. Requests are small and bounded: headers over `MAX_REQUEST_BYTES`, bodies over
`MAX_BODY_BYTES` or a client idle for `IDLE_TIMEOUT_S` close the connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
import h11
from anyio.abc import SocketAttribute, SocketStream, TaskStatus

from worker.config import parse_listen
from worker.logs import get_logger
from worker.metrics import CONTENT_TYPE, Metrics

__all__ = [
    "IDLE_TIMEOUT_S",
    "MAX_BODY_BYTES",
    "MAX_CONNECTIONS",
    "MAX_REQUEST_BYTES",
    "Health",
    "serve_http",
]

log = get_logger(__name__)

MAX_REQUEST_BYTES = 8 * 1024
MAX_BODY_BYTES = 64 * 1024
IDLE_TIMEOUT_S = 10.0
# Probes and a scraper need a handful; the cap keeps a misbehaving client from exhausting
# file descriptors the worker needs for MongoDB connections.
MAX_CONNECTIONS = 32
_RECEIVE_CHUNK = 4096
_ALLOWED_METHODS = (b"GET", b"HEAD")


@dataclass
class Health:
    """Readiness as the engine sees it; `/readyz` answers 200 only while `ready` is true."""

    ready: bool = False
    reason: str = "starting"

    def set_ready(self, reason: str = "ok") -> None:
        """Mark the worker ready (lease held and stream open, or a healthy standby)."""
        self.ready = True
        self.reason = reason

    def set_not_ready(self, reason: str) -> None:
        """Mark the worker not ready, with a one-line reason shown by `/readyz`."""
        self.ready = False
        self.reason = reason


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes
    content_type: bytes = b"text/plain; charset=utf-8"
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()


async def _route(method: bytes, target: bytes, metrics: Metrics, health: Health) -> _Response:
    path = target.split(b"?", 1)[0]
    if path not in (b"/healthz", b"/readyz", b"/metrics"):
        return _Response(404, b"not found\n")
    if method not in _ALLOWED_METHODS:
        return _Response(405, b"method not allowed\n", extra_headers=((b"allow", b"GET, HEAD"),))
    if path == b"/healthz":
        # Answering at all proves the event loop is responsive, which is what liveness means.
        return _Response(200, b"ok\n")
    if path == b"/readyz":
        reason = health.reason.encode("utf-8", "replace") + b"\n"
        return _Response(200 if health.ready else 503, reason)
    # Rendering grows with the number of series; a worker thread keeps it off the event loop
    # that applies changes (the client library's collectors are thread-safe).
    body = await anyio.to_thread.run_sync(metrics.render)
    return _Response(200, body, content_type=CONTENT_TYPE.encode())


async def _send(stream: SocketStream, conn: h11.Connection, event: Any) -> None:
    data = conn.send(event)
    if data:
        await stream.send(data)


async def _respond(
    stream: SocketStream, conn: h11.Connection, response: _Response, *, head: bool
) -> None:
    headers = [
        (b"content-type", response.content_type),
        (b"content-length", str(len(response.body)).encode()),
        (b"cache-control", b"no-store"),
        *response.extra_headers,
    ]
    await _send(stream, conn, h11.Response(status_code=response.status, headers=headers))
    if not head:
        await _send(stream, conn, h11.Data(data=response.body))
    await _send(stream, conn, h11.EndOfMessage())


async def _next_event(stream: SocketStream, conn: h11.Connection) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        try:
            data = await stream.receive(_RECEIVE_CHUNK)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            data = b""
        conn.receive_data(data)


async def _serve_one(
    stream: SocketStream, conn: h11.Connection, metrics: Metrics, health: Health
) -> bool:
    """Serve one request on `conn`; return whether the connection may carry another."""
    event = await _next_event(stream, conn)
    if not isinstance(event, h11.Request):
        return False  # the client closed the connection (ConnectionClosed) between requests
    body_bytes = 0
    while not isinstance(body := await _next_event(stream, conn), h11.EndOfMessage):
        if isinstance(body, h11.ConnectionClosed):
            return False
        body_bytes += len(body.data) if isinstance(body, h11.Data) else 0
        if body_bytes > MAX_BODY_BYTES:
            await _respond(stream, conn, _Response(413, b"request body too large\n"), head=False)
            return False
    try:
        response = await _route(event.method, event.target, metrics, health)
    except Exception:
        log.exception("http_request_failed", path=event.target.decode("latin-1"))
        response = _Response(500, b"internal error\n")
    await _respond(stream, conn, response, head=event.method == b"HEAD")
    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
        return False
    conn.start_next_cycle()
    return True


async def _converse(stream: SocketStream, metrics: Metrics, health: Health) -> None:
    """Serve requests on one connection until the client or the idle timeout ends it."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    try:
        while True:
            with anyio.move_on_after(IDLE_TIMEOUT_S) as scope:
                keep_alive = await _serve_one(stream, conn, metrics, health)
            if scope.cancelled_caught or not keep_alive:
                return
    except h11.RemoteProtocolError as exc:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            status = exc.error_status_hint
            await _respond(stream, conn, _Response(status, b"bad request\n"), head=False)


async def _handle_connection(
    stream: SocketStream, metrics: Metrics, health: Health, limiter: anyio.CapacityLimiter
) -> None:
    async with stream:
        if limiter.available_tokens == 0:
            return  # over the connection cap: close at once rather than queue
        async with limiter:
            try:
                await _converse(stream, metrics, health)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass  # the client went away; nothing to tell it
            except Exception:
                # The probes are auxiliary: a failure serving one request must never end the
                # task group that applies changes, so it is logged and the connection dropped.
                log.exception("http_request_failed")


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve_http(
    listen: str,
    *,
    metrics: Metrics,
    health: Health,
    task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the probes and metrics on `listen` ("host:port") until cancelled.

    Calls `task_status.started("host:port")` with the bound address once listening (port 0
    picks a free port). An empty `listen` means disabled: it reports "" and returns at once.
    """
    if not listen:
        task_status.started("")
        return
    host, port = parse_listen(listen)
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    limiter = anyio.CapacityLimiter(MAX_CONNECTIONS)
    async with listener:
        # A tuple (host, port[, flowinfo, scope_id]) for IP sockets, which is all we create.
        address: Any = listener.extra(SocketAttribute.local_address)
        task_status.started(_format_address(str(address[0]), int(address[1])))

        async def handle(stream: SocketStream) -> None:
            await _handle_connection(stream, metrics, health, limiter)

        await listener.serve(handle)
