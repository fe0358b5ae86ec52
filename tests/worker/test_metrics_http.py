"""The metrics registry and the HTTP endpoint serving probes and metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import h11
import pytest
from prometheus_client.parser import text_string_to_metric_families

from worker.http import MAX_REQUEST_BYTES, Health, serve_http
from worker.metrics import PAIR_STATES, Metrics

DEADLINE_S = 10


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    families = text_string_to_metric_families(metrics.render().decode())
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }


def test_metric_names_match_the_interface() -> None:
    """Every metric INTERFACE.md names is exposed under that exact name, with its labels."""
    metrics = Metrics()
    metrics.events.labels(pair="shop.c", side="original", op="update").inc()
    metrics.applied.labels(pair="shop.c", direction="forward").inc(3)
    metrics.echoes_skipped.labels(pair="shop.c").inc()
    metrics.conflicts.labels(pair="shop.c").inc()
    metrics.dead_letters.labels(pair="shop.c").inc()
    metrics.lag_seconds.labels(pair="shop.c").set(0.25)
    metrics.batch_size.observe(12)
    metrics.apply_seconds.observe(0.004)
    metrics.lease_held.set(1)
    metrics.set_state("shop.c", "RUNNING")
    samples = _samples(metrics)
    assert (
        samples[
            (
                "partner_sync_events_total",
                (("op", "update"), ("pair", "shop.c"), ("side", "original")),
            )
        ]
        == 1
    )
    assert (
        samples[("partner_sync_applied_total", (("direction", "forward"), ("pair", "shop.c")))] == 3
    )
    for name in ("echoes_skipped", "conflicts", "dead_letters"):
        assert samples[(f"partner_sync_{name}_total", (("pair", "shop.c"),))] == 1
    assert samples[("partner_sync_lag_seconds", (("pair", "shop.c"),))] == 0.25
    assert samples[("partner_sync_batch_size_count", ())] == 1
    assert samples[("partner_sync_apply_seconds_sum", ())] == pytest.approx(0.004)
    assert samples[("partner_sync_lease_held", ())] == 1


def test_set_state_marks_one_state_of_seven() -> None:
    """set_state sets the current state to 1 and the six others to 0, replacing the previous one."""
    metrics = Metrics()
    metrics.set_state("shop.c", "BACKFILLING")
    metrics.set_state("shop.c", "RESYNC_REQUIRED")
    samples = _samples(metrics)
    values = {
        state: samples[("partner_sync_state", (("pair", "shop.c"), ("state", state)))]
        for state in PAIR_STATES
    }
    assert values == {state: (1.0 if state == "RESYNC_REQUIRED" else 0.0) for state in PAIR_STATES}
    with pytest.raises(ValueError, match="unknown pair state"):
        metrics.set_state("shop.c", "SLEEPING")


def test_registries_are_independent() -> None:
    """Two Metrics objects never share series, so two workers can live in one process."""
    first, second = Metrics(), Metrics()
    first.conflicts.labels(pair="a.b").inc()
    assert ("partner_sync_conflicts_total", (("pair", "a.b"),)) not in _samples(second)


@asynccontextmanager
async def _running(health: Health, metrics: Metrics) -> AsyncIterator[str]:
    async with anyio.create_task_group() as tg:
        address = await tg.start(
            lambda task_status: serve_http(
                "127.0.0.1:0", metrics=metrics, health=health, task_status=task_status
            )
        )
        try:
            yield address
        finally:
            tg.cancel_scope.cancel()


async def _request(address: str, raw: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """Send raw bytes, then read one response with h11 (the server's parser, client side)."""
    host, _, port = address.rpartition(":")
    conn = h11.Connection(h11.CLIENT)
    with anyio.fail_after(DEADLINE_S):
        async with await anyio.connect_tcp(host, int(port)) as stream:
            await stream.send(raw)
            # h11 needs to know which request the response answers (HEAD has no body).
            method = b"HEAD" if raw.startswith(b"HEAD ") else b"GET"
            conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
            conn.send(h11.EndOfMessage())
            status, headers, body = 0, {}, b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    try:
                        conn.receive_data(await stream.receive())
                    except anyio.EndOfStream:
                        conn.receive_data(b"")
                elif isinstance(event, h11.Response):
                    status, headers = event.status_code, dict(event.headers)
                elif isinstance(event, h11.Data):
                    body += event.data
                else:
                    return status, headers, body


def _get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()


@pytest.mark.parametrize(
    ("raw", "ready", "status", "body_start"),
    [
        pytest.param(_get("/healthz"), False, 200, b"ok", id="healthz-always"),
        pytest.param(_get("/readyz"), True, 200, b"holding lease", id="readyz-ready"),
        pytest.param(_get("/readyz"), False, 503, b"stream closed", id="readyz-not-ready"),
        pytest.param(_get("/metrics"), True, 200, b"# HELP", id="metrics"),
        pytest.param(_get("/metrics?x=1"), True, 200, b"# HELP", id="metrics-query"),
        pytest.param(_get("/"), True, 404, b"not found", id="root-404"),
        pytest.param(_get("/metrics/extra"), True, 404, b"not found", id="subpath-404"),
        pytest.param(_get("/healthz", "POST"), True, 405, b"method not allowed", id="post-405"),
        pytest.param(_get("/readyz", "DELETE"), True, 405, b"method not allowed", id="delete-405"),
        pytest.param(_get("/healthz", "HEAD"), True, 200, b"", id="head-no-body"),
        pytest.param(b"NONSENSE\r\n\r\n", True, 400, b"bad request", id="garbage-400"),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nX: " + b"a" * (MAX_REQUEST_BYTES + 10),
            True,
            431,
            b"bad request",
            id="oversized-headers",
        ),
    ],
)
async def test_endpoints(raw: bytes, ready: bool, status: int, body_start: bytes) -> None:
    """Only /healthz, /readyz and /metrics are served, to GET and HEAD; anything else is refused."""
    health = Health()
    if ready:
        health.set_ready("holding lease")
    else:
        health.set_not_ready("stream closed")
    metrics = Metrics()
    metrics.lease_held.set(1)
    async with _running(health, metrics) as address:
        got_status, headers, body = await _request(address, raw)
    assert (got_status, body[: len(body_start)]) == (status, body_start)
    if status == 405:
        assert headers[b"allow"] == b"GET, HEAD"


async def test_metrics_content_type_and_live_values() -> None:
    """/metrics serves the exposition content type and reflects the values at request time."""
    health, metrics = Health(), Metrics()
    async with _running(health, metrics) as address:
        metrics.lease_held.set(1)
        _, headers, body = await _request(address, _get("/metrics"))
        metrics.lease_held.set(0)
        _, _, later = await _request(address, _get("/metrics"))
    assert headers[b"content-type"].startswith(b"text/plain; version=")
    assert b"partner_sync_lease_held 1.0" in body
    assert b"partner_sync_lease_held 0.0" in later


async def test_readiness_follows_health_changes() -> None:
    """The engine flips Health and /readyz answers accordingly on the next request."""
    health, metrics = Health(), Metrics()
    async with _running(health, metrics) as address:
        first, _, reason = await _request(address, _get("/readyz"))
        health.set_ready()
        second, _, _ = await _request(address, _get("/readyz"))
    assert (first, reason, second) == (503, b"starting\n", 200)


async def test_keep_alive_serves_several_requests() -> None:
    """One connection carries several requests in turn, as Prometheus scrapers do."""
    health, metrics = Health(ready=True, reason="ok"), Metrics()
    async with _running(health, metrics) as address:
        host, _, port = address.rpartition(":")
        with anyio.fail_after(DEADLINE_S):
            async with await anyio.connect_tcp(host, int(port)) as stream:
                received = b""
                for _ in range(3):
                    await stream.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    while received.count(b"ok\n") < _ + 1:
                        received += await stream.receive()
    assert received.count(b"HTTP/1.1 200") == 3


async def test_idle_client_does_not_block_others() -> None:
    """A client that connects and says nothing does not stop another client being served."""
    health, metrics = Health(ready=True), Metrics()
    async with _running(health, metrics) as address:
        host, _, port = address.rpartition(":")
        async with await anyio.connect_tcp(host, int(port)):
            status, _, _ = await _request(address, _get("/healthz"))
    assert status == 200


async def test_empty_listen_disables_the_server() -> None:
    """An empty http.listen reports "" and returns without listening."""
    async with anyio.create_task_group() as tg:
        address = await tg.start(
            lambda task_status: serve_http(
                "", metrics=Metrics(), health=Health(), task_status=task_status
            )
        )
    assert address == ""


async def test_bad_listen_address_is_refused() -> None:
    """A malformed address fails before anything listens."""
    with pytest.raises(ValueError, match="HOST:PORT"):
        await serve_http("9464", metrics=Metrics(), health=Health())


async def test_a_failing_request_does_not_stop_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """An error while answering one request is a 500 (and a log line); the server goes on."""
    health, metrics = Health(ready=True), Metrics()
    calls = 0

    def broken_render() -> bytes:
        nonlocal calls
        calls += 1
        raise RuntimeError("collector failed")

    monkeypatch.setattr(metrics, "render", broken_render)
    async with _running(health, metrics) as address:
        status, _, _ = await _request(address, _get("/metrics"))
        after, _, _ = await _request(address, _get("/healthz"))
    assert (calls, status, after) == (1, 500, 200)
