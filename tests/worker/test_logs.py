"""Structured log lines: JSON and text formats, field encoding, URI redaction."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import orjson
import pytest
from bson import Decimal128, ObjectId, Timestamp

from worker.logs import configure_logging, get_logger, redact_uri


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """A captured log stream; restores the root logger afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    yield out
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def _lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_json_line_has_time_level_event_logger_and_fields(stream: io.StringIO) -> None:
    """One event is one JSON line with RFC 3339 UTC time, level, event, logger and the fields."""
    configure_logging("info", "json", stream=stream)
    get_logger("worker.apply").info("batch_applied", pair="shop.customers", docs=12)
    (line,) = _lines(stream)
    record = orjson.loads(line)
    assert list(record)[:4] == ["time", "level", "event", "logger"]
    assert record | {"time": None} == {
        "time": None,
        "level": "info",
        "event": "batch_applied",
        "logger": "worker.apply",
        "pair": "shop.customers",
        "docs": 12,
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    moment = datetime.fromisoformat(record["time"])
    assert abs((datetime.now(UTC) - moment).total_seconds()) < 60


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(
            ObjectId("65a1b2c3d4e5f60718293a4b"), "65a1b2c3d4e5f60718293a4b", id="objectid"
        ),
        pytest.param(Timestamp(1700000000, 3), "Timestamp(1700000000, 3)", id="timestamp"),
        pytest.param(Decimal128("1.50"), "1.50", id="decimal128"),
        pytest.param(b"\x00\x01", "b'\\x00\\x01'", id="bytes"),
        pytest.param(2**70, str(2**70), id="int-over-64-bits"),
        pytest.param(ValueError("bad age"), "ValueError: bad age", id="exception"),
        pytest.param({1: "a"}, {"1": "a"}, id="non-string-key"),
        pytest.param(
            {"_id": ObjectId("65a1b2c3d4e5f60718293a4b")},
            {"_id": "65a1b2c3d4e5f60718293a4b"},
            id="nested",
        ),
        pytest.param([1, 2**70], [1, str(2**70)], id="list-with-big-int"),
        pytest.param(
            datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "2026-01-02T03:04:05+00:00", id="datetime"
        ),
    ],
)
def test_values_json_cannot_hold_are_stringified(
    stream: io.StringIO, value: object, expected: object
) -> None:
    """BSON types, exceptions and other odd values are written as strings, never an error."""
    configure_logging("info", "json", stream=stream)
    get_logger("t").info("event", value=value)
    assert orjson.loads(_lines(stream)[0])["value"] == expected


@pytest.mark.parametrize(
    ("level", "logged"),
    [
        pytest.param("debug", ["d", "i", "w", "e"], id="debug"),
        pytest.param("info", ["i", "w", "e"], id="info"),
        pytest.param("warning", ["w", "e"], id="warning"),
        pytest.param("error", ["e"], id="error"),
    ],
)
def test_level_filters_events(stream: io.StringIO, level: str, logged: list[str]) -> None:
    """Events below the configured level are not written."""
    configure_logging(level, "json", stream=stream)
    log = get_logger("t")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [orjson.loads(line)["event"] for line in _lines(stream)] == logged


def test_text_format_is_one_readable_line(stream: io.StringIO) -> None:
    """fmt="text" writes time, level, event, key=value pairs (quoted when needed) and the logger."""
    configure_logging("info", "text", stream=stream)
    get_logger("worker.apply").warning("lease_lost", pair="shop.c", reason="taken over", ids=[1, 2])
    (line,) = _lines(stream)
    assert re.fullmatch(
        r'\S+Z WARNING lease_lost pair=shop\.c reason="taken over" ids=\[1,2\] \[worker\.apply\]',
        line,
    )


def test_exception_adds_error_and_traceback(stream: io.StringIO) -> None:
    """log.exception records the exception and its traceback in the same single line."""
    configure_logging("info", "json", stream=stream)
    try:
        raise RuntimeError("apply failed")
    except RuntimeError:
        get_logger("t").exception("batch_failed", pair="a.b")
    (line,) = _lines(stream)
    record = orjson.loads(line)
    assert record["level"] == "error"
    assert record["error"] == "RuntimeError: apply failed"
    assert "Traceback" in record["traceback"]


def test_bind_adds_fixed_fields(stream: io.StringIO) -> None:
    """A bound logger adds its fields to every event; per-call fields win over bound ones."""
    configure_logging("info", "json", stream=stream)
    log = get_logger("t").bind(pair="a.b", side="original")
    log.info("x", side="partner")
    record = orjson.loads(_lines(stream)[0])
    assert (record["pair"], record["side"]) == ("a.b", "partner")


def test_configure_twice_replaces_the_handler(stream: io.StringIO) -> None:
    """A second configure_logging call replaces the first: each event is written once."""
    other = io.StringIO()
    configure_logging("info", "json", stream=other)
    configure_logging("info", "json", stream=stream)
    get_logger("t").info("once")
    assert (len(_lines(stream)), other.getvalue()) == (1, "")


def test_library_records_become_events(stream: io.StringIO) -> None:
    """Records from other libraries use the same line format, their message as the event."""
    configure_logging("info", "json", stream=stream)
    logging.getLogger("pymongo.test").warning("server %s gone", "h1")
    record = orjson.loads(_lines(stream)[0])
    assert (record["event"], record["logger"]) == ("server h1 gone", "pymongo.test")


@pytest.mark.parametrize(
    ("level", "fmt"),
    [pytest.param("loud", "json", id="level"), pytest.param("info", "xml", id="format")],
)
def test_bad_settings_are_refused(level: str, fmt: str) -> None:
    """An unknown level or format raises rather than silently logging nothing."""
    with pytest.raises(ValueError, match="unknown log"):
        configure_logging(level, fmt, stream=io.StringIO())


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        pytest.param(
            "mongodb://u:secret@h:27017/?replicaSet=rs0",
            "mongodb://u:***@h:27017/?replicaSet=rs0",
            id="password",
        ),
        pytest.param(
            "mongodb+srv://u:p%40ss@cluster.example/db",
            "mongodb+srv://u:***@cluster.example/db",
            id="srv",
        ),
        pytest.param("mongodb://u:pa:ss@h1,h2/", "mongodb://u:***@h1,h2/", id="colon-in-password"),
        pytest.param(
            "mongodb://u@h/?authMechanism=MONGODB-X509",
            "mongodb://u@h/?authMechanism=MONGODB-X509",
            id="user-only",
        ),
        pytest.param(
            "mongodb://h/?tlsCertificateKeyFilePassword=k&tls=true",
            "mongodb://h/?tlsCertificateKeyFilePassword=***&tls=true",
            id="tls-key-password",
        ),
        pytest.param(
            "mongodb://h/?authMechanismProperties=AWS_SESSION_TOKEN:t",
            "mongodb://h/?authMechanismProperties=***",
            id="session-token-in-value",
        ),
        pytest.param("not a uri", "not a uri", id="not-a-uri"),
    ],
)
def test_redact_uri(uri: str, expected: str) -> None:
    """Passwords and secret-named options are replaced by ***; everything else is kept."""
    assert redact_uri(uri) == expected


def test_uris_in_fields_and_messages_are_redacted(stream: io.StringIO) -> None:
    """A URI with a password logged by mistake, in a field or a library message, is redacted."""
    configure_logging("info", "json", stream=stream)
    get_logger("t").info("connecting", uri="mongodb://admin:hunter2@db:27017/")
    logging.getLogger("lib").info("dial mongodb://admin:hunter2@db:27017/ now")
    assert "hunter2" not in stream.getvalue()
    assert stream.getvalue().count("admin:***@db") == 2
