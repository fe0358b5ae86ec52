"""Structured logging: one line per event, JSON (orjson) for machines or text for humans.

    log = get_logger(__name__)
    log.info("batch_applied", pair="shop.customers", docs=12)

writes `{"time": "...Z", "level": "info", "event": "batch_applied", "logger": "worker.apply",
"pair": "shop.customers", "docs": 12}`. Values JSON cannot hold (ObjectId, Timestamp, bytes,
exceptions) are written as strings, and any MongoDB URI in a field has its password redacted.

Rule for callers: never log document contents at info level or above, because documents may
hold personal data. Log a document's `_id` and field *names*; values belong at debug level only.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import traceback
from collections.abc import Mapping
from typing import Any, TextIO
from urllib.parse import parse_qsl, urlencode

import orjson

__all__ = [
    "LEVELS",
    "EventLogger",
    "configure_logging",
    "get_logger",
    "redact_uri",
]

LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

_FORMATS = ("json", "text")
_REDACTED = "***"
# userinfo of a mongodb:// or mongodb+srv:// URI: everything between "//" and the last "@"
# before the host list; a password may itself contain ":" (percent-encoding is not enforced).
_URI_CREDENTIALS = re.compile(r"(mongodb(?:\+srv)?://)([^/?#@]*?):([^/?#]*)@", re.IGNORECASE)
_URI_IN_TEXT = re.compile(r"mongodb(?:\+srv)?://[^\s\"'<>]+", re.IGNORECASE)
# URI options holding a secret: TLS key passwords, and authMechanismProperties carrying an
# AWS_SESSION_TOKEN; matched on "key=value" because the secret's name may be in the value.
_SECRET_OPTION = re.compile(r"password|secret|token", re.IGNORECASE)


def redact_uri(uri: str) -> str:
    """Return `uri` with its password and secret-bearing options replaced by `***`.

    Works on anything, not only valid URIs, so it is safe to call on user input before it has
    been validated; text that is not a MongoDB URI comes back unchanged.
    """
    redacted = _URI_CREDENTIALS.sub(lambda m: f"{m.group(1)}{m.group(2)}:{_REDACTED}@", uri)
    base, sep, query = redacted.partition("?")
    if not sep or not _SECRET_OPTION.search(query):
        return redacted
    options = [
        (key, _REDACTED if _SECRET_OPTION.search(f"{key}={value}") else value)
        for key, value in parse_qsl(query, keep_blank_values=True)
    ]
    return f"{base}?{urlencode(options, safe='*/:,')}"


def _redact_text(text: str) -> str:
    if "mongodb" not in text.lower():
        return text
    return _URI_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), text)


def _describe(value: Any) -> str:
    """String form of a value orjson cannot encode; exceptions keep their class name."""
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    return str(value)


def _plain(value: Any) -> Any:
    """A version of `value` that orjson can always encode (used only when encoding failed)."""
    if isinstance(value, str | bool | float | None):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(item) for item in value]
    return _describe(value)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return _redact_text(value)
    return value


_second_cache: tuple[int, str] = (-1, "")


def _timestamp(created: float) -> str:
    """RFC 3339 UTC with milliseconds; the formatted second is cached (many lines share it)."""
    global _second_cache
    second = int(created)
    if _second_cache[0] != second:
        _second_cache = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_second_cache[1]}.{int((created - second) * 1000):03d}Z"


def _record_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = getattr(record, "event_fields", None) or {}
    if record.exc_info and record.exc_info[0] is not None:
        fields = dict(fields)
        fields.setdefault("error", _describe(record.exc_info[1]))
        fields["traceback"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
    return {key: _clean(value) for key, value in fields.items()}


def _record_event(record: logging.LogRecord) -> str:
    # Records from other libraries (pymongo, anyio) have a message rather than an event name.
    event = getattr(record, "event_name", None)
    return event if event is not None else _redact_text(record.getMessage())


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, event, logger, then the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "event": _record_event(record),
            "logger": record.name,
        }
        for key, value in _record_fields(record).items():
            line.setdefault(key, value)
        options = orjson.OPT_NON_STR_KEYS
        try:
            return orjson.dumps(line, default=_describe, option=options).decode()
        except (TypeError, orjson.JSONEncodeError):
            return orjson.dumps(_plain(line), default=_describe, option=options).decode()


class TextFormatter(logging.Formatter):
    """A readable line: `time LEVEL event key=value ... [logger]`, traceback on following lines."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _record_fields(record)
        tb = fields.pop("traceback", None)
        parts = [_timestamp(record.created), f"{record.levelname:<7}", _record_event(record)]
        parts.extend(f"{key}={_text_value(value)}" for key, value in fields.items())
        parts.append(f"[{record.name}]")
        line = " ".join(parts)
        return f"{line}\n{tb}" if tb else line


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else _describe(value)
    if isinstance(value, Mapping | list | tuple):
        try:
            text = orjson.dumps(value, default=_describe, option=orjson.OPT_NON_STR_KEYS).decode()
        except (TypeError, orjson.JSONEncodeError):
            text = orjson.dumps(_plain(value), default=_describe).decode()
    if not text or any(ch.isspace() or ch in '"=' for ch in text):
        return orjson.dumps(text).decode()
    return text


class _EventHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler `configure_logging` installed, so a second call replaces it."""


def configure_logging(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Send every log record (ours and libraries') to `stream` as one line each.

    `level` is one of LEVELS, `fmt` "json" or "text"; `stream` defaults to stderr at call time.
    Calling again replaces the previous set-up rather than adding a second handler.
    """
    if level.lower() not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    if fmt not in _FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(_FORMATS)}")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _EventHandler):
            root.removeHandler(handler)
            handler.close()
    handler = _EventHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(LEVELS[level.lower()])


class EventLogger:
    """Logs named events with keyword fields; `bind` returns a logger that adds fixed fields."""

    __slots__ = ("_context", "_logger")

    def __init__(self, logger: logging.Logger, context: Mapping[str, Any] | None = None) -> None:
        self._logger = logger
        self._context: dict[str, Any] = dict(context or {})

    @property
    def name(self) -> str:
        """The underlying stdlib logger's name."""
        return self._logger.name

    def bind(self, **fields: Any) -> EventLogger:
        """A logger that adds `fields` (e.g. `pair=...`) to every event it logs."""
        return EventLogger(self._logger, {**self._context, **fields})

    def is_enabled_for(self, level: str) -> bool:
        """Whether an event at `level` would be written; guards costly debug fields."""
        return self._logger.isEnabledFor(LEVELS[level])

    def log(self, level: str, event: str, /, *, exc_info: bool = False, **fields: Any) -> None:
        """Log `event` at `level` ("debug", "info", ...) with `fields`."""
        number = LEVELS[level]
        if not self._logger.isEnabledFor(number):
            return
        # makeRecord + handle rather than Logger.log: the caller's file and line are never
        # shown, and looking them up is the costliest step of stdlib logging.
        record = self._logger.makeRecord(
            self._logger.name,
            number,
            "",
            0,
            event,
            (),
            sys.exc_info() if exc_info else None,
            extra={"event_name": event, "event_fields": {**self._context, **fields}},
        )
        self._logger.handle(record)

    def debug(self, event: str, /, **fields: Any) -> None:
        """Log a debug event; the only level at which document values may appear."""
        self.log("debug", event, **fields)

    def info(self, event: str, /, **fields: Any) -> None:
        """Log an info event."""
        self.log("info", event, **fields)

    def warning(self, event: str, /, **fields: Any) -> None:
        """Log a warning event."""
        self.log("warning", event, **fields)

    def error(self, event: str, /, **fields: Any) -> None:
        """Log an error event."""
        self.log("error", event, **fields)

    def exception(self, event: str, /, **fields: Any) -> None:
        """Log an error event with the exception being handled and its traceback."""
        self.log("error", event, exc_info=True, **fields)


def get_logger(name: str) -> EventLogger:
    """The event logger for module `name` (use `__name__`)."""
    return EventLogger(logging.getLogger(name))
