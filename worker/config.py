"""The worker's configuration: one keyword-only value object, built once at the edge.

Only the command line builds a `Config` (from file, environment and flags); nothing below it
reads the environment. Every value is checked when the configuration loads, and a bad one is
reported as one line naming the key and where it came from (`worker.toml:12`,
`env PARTNER_SYNC_BATCH__MAX_DOCS`, `flag --uri`), so a daemon never starts half-configured.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from pymongo.errors import ConfigurationError, InvalidURI
from pymongo.uri_parser import parse_uri, parse_userinfo, split_hosts, split_options

from worker.errors import ConfigError
from worker.logs import LEVELS, redact_uri

__all__ = [
    "ENV_PREFIX",
    "BatchConfig",
    "Config",
    "HttpConfig",
    "LeaseConfig",
    "LogConfig",
    "StatusConfig",
    "check_reachable",
    "load_config",
    "parse_listen",
]

ENV_PREFIX = "PARTNER_SYNC_"
_CONFIG_PATH_VARIABLE = "PARTNER_SYNC_CONFIG"
ORIGIN_TAGS = ("session", "field")
LOG_FORMATS = ("json", "text")


@dataclass(frozen=True, kw_only=True)
class BatchConfig:
    """How many changes one applying transaction may hold, and how long a batch may wait."""

    max_docs: int = 500
    max_delay_ms: int = 50


@dataclass(frozen=True, kw_only=True)
class LeaseConfig:
    """The lease that makes one worker per pair set active."""

    ttl_s: float = 10.0


@dataclass(frozen=True, kw_only=True)
class HttpConfig:
    """Where /healthz, /readyz and /metrics are served; an empty `listen` disables them."""

    listen: str = "127.0.0.1:9464"


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    """Log level and line format ("json" or "text")."""

    level: str = "info"
    format: str = "json"


@dataclass(frozen=True, kw_only=True)
class StatusConfig:
    """Thresholds `status --check` applies; lag above `max_lag_s` counts as unhealthy."""

    max_lag_s: float = 60.0


@dataclass(frozen=True, kw_only=True)
class Config:
    """Everything the worker and the one-shot commands need to know.

    `repr()` and `str()` show the URI with its password redacted (`redacted_uri`).
    """

    uri: str = "mongodb://127.0.0.1:27017/?replicaSet=rs0"
    transforms: tuple[str, ...] = ()
    state_db: str = "partner_sync"
    origin_tag: str = "session"
    tag_field: str = "_psync"
    quiet_period_s: float = 3600.0
    connect_timeout_s: float = 10.0
    batch: BatchConfig = field(default_factory=BatchConfig)
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    log: LogConfig = field(default_factory=LogConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    # Where `uri` came from ("env PARTNER_SYNC_URI", "worker.toml:1", ...), for error messages.
    uri_source: str = field(default="default", compare=False)

    @property
    def redacted_uri(self) -> str:
        """The URI with its password (and secret-bearing options) replaced by `***`."""
        return redact_uri(self.uri)

    def __repr__(self) -> str:
        shown = {
            item.name: getattr(self, item.name)
            for item in dataclasses.fields(self)
            if item.name != "uri_source"
        }
        shown["uri"] = self.redacted_uri
        return f"Config({', '.join(f'{name}={value!r}' for name, value in shown.items())})"

    __str__ = __repr__


_SECTIONS: dict[str, type] = {
    "batch": BatchConfig,
    "lease": LeaseConfig,
    "http": HttpConfig,
    "log": LogConfig,
    "status": StatusConfig,
}


def _field_types() -> dict[str, Any]:
    """Dotted key -> expected type, for every leaf key of the configuration."""
    types: dict[str, Any] = {}
    for name, hint in get_type_hints(Config).items():
        if name in _SECTIONS:
            for sub, sub_hint in get_type_hints(_SECTIONS[name]).items():
                types[f"{name}.{sub}"] = sub_hint
        else:
            types[name] = hint
    types["uri_file"] = str
    return types


_TYPES = _field_types()


@dataclass(frozen=True)
class _Setting:
    """One configured value and the place it came from, for error messages."""

    value: Any
    source: str
    textual: bool = False  # from the environment or a flag: a string to parse, not a TOML value


def _fail(key: str, setting: _Setting, problem: str) -> ConfigError:
    return ConfigError(f"{setting.source}: {key}: {problem}")


# --- reading the three layers -----------------------------------------------------------------


def _toml_key_lines(text: str) -> dict[str, int]:
    """Map each dotted key of a TOML document to the line that sets it (best effort).

    tomllib reports no positions, so this scans for `[table]` headers and `key =` lines,
    skipping the inside of multi-line strings; a key it misses is reported by file name only.
    """
    lines: dict[str, int] = {}
    table = ""
    in_multiline: str | None = None
    header = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\s*(#.*)?$")
    assignment = re.compile(r"^\s*([A-Za-z0-9_\-.\"' ]+?)\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        if in_multiline is not None:
            if line.count(in_multiline) % 2 == 1:
                in_multiline = None
            continue
        if match := header.match(line):
            table = ".".join(part.strip().strip("\"'") for part in match.group(1).split("."))
            lines.setdefault(table, number)
            continue
        if match := assignment.match(line):
            key = ".".join(part.strip().strip("\"'") for part in match.group(1).split("."))
            lines.setdefault(f"{table}.{key}" if table else key, number)
            rest = line[match.end() :]
            for quotes in ('"""', "'''"):
                if rest.count(quotes) % 2 == 1:
                    in_multiline = quotes
    return lines


def _flatten(
    values: Mapping[str, Any], source_of: Any, prefix: str = "", *, textual: bool = False
) -> dict[str, _Setting]:
    """Nested tables -> dotted keys; `source_of(key)` names where each key came from."""
    flat: dict[str, _Setting] = {}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            if key not in _SECTIONS:
                # reported as an unknown key or a wrong type
                flat[key] = _Setting(value, source_of(key), textual)
            else:
                flat.update(_flatten(value, source_of, f"{key}.", textual=textual))
        else:
            flat[key] = _Setting(value, source_of(key), textual)
    return flat


def _file_layer(path: str) -> dict[str, _Setting]:
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
        values = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    key_lines = _toml_key_lines(text)

    def source_of(key: str) -> str:
        # A key inside an inline table (`batch = {max_docs = 0}`) is found by its parent's line.
        parts = key.split(".")
        for end in range(len(parts), 0, -1):
            line = key_lines.get(".".join(parts[:end]))
            if line:
                return f"{path}:{line}"
        return path

    return _flatten(values, source_of)


def _env_layer(environ: Mapping[str, str]) -> dict[str, _Setting]:
    layer: dict[str, _Setting] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == _CONFIG_PATH_VARIABLE:
            continue
        key = ".".join(name.removeprefix(ENV_PREFIX).lower().split("__"))
        layer[key] = _Setting(value, f"env {name}", textual=True)
    return layer


def _flag_layer(flags: Mapping[str, Any]) -> dict[str, _Setting]:
    def source_of(key: str) -> str:
        return "flag --" + key.replace(".", "-").replace("_", "-")

    present = {name: value for name, value in flags.items() if value is not None}
    nested: dict[str, Any] = {}
    for name, value in present.items():
        if "." in name:
            section, _, sub = name.partition(".")
            nested.setdefault(section, {})[sub] = value
        else:
            nested[name] = value
    return _flatten(nested, source_of, textual=True)


def _merge(layers: list[dict[str, _Setting]]) -> dict[str, _Setting]:
    """Later layers win; `uri` and `uri_file` replace each other across layers."""
    merged: dict[str, _Setting] = {}
    for layer in layers:
        if "uri" in layer and "uri_file" in layer:
            raise _fail(
                "uri", layer["uri"], f"give uri or uri_file, not both ({layer['uri_file'].source})"
            )
        for key in ("uri", "uri_file"):
            if key in layer:
                merged.pop("uri_file" if key == "uri" else "uri", None)
        merged.update(layer)
    return merged


# --- checking values ------------------------------------------------------------------------


def _coerce(key: str, setting: _Setting, expected: Any) -> Any:
    """Convert a setting to `expected`; strings (from env or flags) are parsed, others checked."""
    value = setting.value
    from_text = isinstance(value, str) and setting.textual
    if expected is int:
        if isinstance(value, str) and from_text:
            try:
                return int(value.strip())
            except ValueError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _fail(key, setting, f"must be an integer, got {value!r}")
    if expected is float:
        if isinstance(value, str) and from_text:
            try:
                return float(value.strip())
            except ValueError:
                pass
        elif isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _fail(key, setting, f"must be a number, got {value!r}")
    if expected is str:
        if isinstance(value, str):
            return value
        raise _fail(key, setting, f"must be a string, got {type(value).__name__}")
    # tuple[str, ...]: a list of strings, or a comma-separated string (environment, flags)
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
        return tuple(item for item in items if item)
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise _fail(key, setting, "must be a list of strings")


def _check_uri(uri: str) -> str | None:
    """Why `uri` is not a usable MongoDB URI, or None; never contacts a server or DNS."""
    try:
        if uri.startswith("mongodb+srv://"):
            # parse_uri would resolve the SRV record here; reachability is checked later.
            rest = uri.removeprefix("mongodb+srv://")
            hosts, _, query = rest.partition("?")
            hosts = hosts.split("/", 1)[0]
            if "@" in hosts:
                userinfo, _, hosts = hosts.rpartition("@")
                parse_userinfo(userinfo)
            nodes = split_hosts(hosts, default_port=None)
            if len(nodes) != 1 or nodes[0][1] is not None:
                return "a mongodb+srv:// URI needs exactly one host name and no port"
            if query:
                split_options(query)
        else:
            parse_uri(uri)
    except (InvalidURI, ConfigurationError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        password = re.search(r"//[^/@]*?:([^/@]*)@", uri)
        if password and password.group(1):
            message = message.replace(password.group(1), "***")
        return redact_uri(message)
    return None


_BAD_DB_CHARS = re.compile(r'[/\\. "$*<>:|?\x00]')
_BAD_TAG_FIELD = re.compile(r"^\$|[.\x00]")


def _check_value(key: str, value: Any) -> str | None:
    """Why `value` is not acceptable for `key`, or None."""
    if key == "uri":
        return _check_uri(value)
    if key == "transforms":
        return "entries must not be empty" if any(not item.strip() for item in value) else None
    if key == "state_db":
        if not value or _BAD_DB_CHARS.search(value) or len(value.encode()) > 63:
            return f"{value!r} is not a valid MongoDB database name"
        return None
    if key == "origin_tag" and value not in ORIGIN_TAGS:
        return f"must be one of {', '.join(ORIGIN_TAGS)}, got {value!r}"
    if key == "tag_field" and (not value or _BAD_TAG_FIELD.search(value) or value == "_id"):
        return f"{value!r} cannot be a top-level field name (no '$' prefix, no '.', not _id)"
    if key in ("batch.max_docs", "lease.ttl_s", "connect_timeout_s", "status.max_lag_s"):
        return None if value > 0 else f"must be positive, got {value}"
    if key in ("batch.max_delay_ms", "quiet_period_s"):
        return None if value >= 0 else f"must not be negative, got {value}"
    if key == "http.listen" and value:
        try:
            parse_listen(value)
        except ValueError as exc:
            return str(exc)
        return None
    if key == "log.level" and value.lower() not in LEVELS:
        return f"must be one of {', '.join(LEVELS)}, got {value!r}"
    if key == "log.format" and value not in LOG_FORMATS:
        return f"must be one of {', '.join(LOG_FORMATS)}, got {value!r}"
    return None


def _read_uri_file(setting: _Setting) -> str:
    try:
        with open(setting.value, encoding="utf-8") as handle:
            uri = handle.read().strip()
    except OSError as exc:
        raise _fail("uri_file", setting, f"cannot read {setting.value}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise _fail("uri_file", setting, f"{setting.value} is not UTF-8 text") from exc
    if not uri:
        raise _fail("uri_file", setting, f"{setting.value} is empty")
    return uri


def _unknown(key: str) -> str:
    section = key.partition(".")[0]
    if "." in key and section in _SECTIONS:
        known = ", ".join(k.partition(".")[2] for k in _TYPES if k.startswith(f"{section}."))
        return f"unknown key (known in [{section}]: {known})"
    if key in _SECTIONS:
        return "must be a table"
    return "unknown key"


def _build(settings: Mapping[str, _Setting]) -> Config:
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    for key, setting in settings.items():
        if key not in _TYPES:
            raise _fail(key, setting, _unknown(key))
        value = _coerce(key, setting, _TYPES[key])
        if key == "uri_file":
            key, value = "uri", _read_uri_file(setting)
            setting = _Setting(value, f"{setting.source} ({setting.value})", setting.textual)
        if key == "uri":
            top["uri_source"] = setting.source
        problem = _check_value(key, value)
        if problem is not None:
            raise _fail(key, setting, problem)
        section, _, sub = key.partition(".")
        if sub:
            sections[section][sub] = value
        else:
            top[key] = value
    return Config(**top, **{name: _SECTIONS[name](**values) for name, values in sections.items()})


def load_config(
    path: str | None,
    *,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build a `Config` from a TOML file, `PARTNER_SYNC_*` variables and flags (flags win).

    `path` falls back to `PARTNER_SYNC_CONFIG`; flags whose value is None are ignored, and a
    flag may name a nested key with a dot ("http.listen"). Raises ConfigError with one line
    naming the key and its source for an unknown key, a wrong type or an invalid value.
    """
    environ = environ or {}
    path = path or environ.get(_CONFIG_PATH_VARIABLE)
    layers = [_file_layer(path)] if path else []
    layers += [_env_layer(environ), _flag_layer(flags or {})]
    return _build(_merge(layers))


def parse_listen(listen: str) -> tuple[str, int]:
    """Split an `http.listen` address ("host:port", "[::1]:port") into host and port.

    Raises ValueError with a reason when the address is malformed; port 0 picks a free port.
    """
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 host must be in brackets, as in [::1]:9464, got {listen!r}")
    if not host or any(ch.isspace() or ch in "[]/@" for ch in host):
        raise ValueError(f"invalid host in {listen!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port_text!r}")
    return host, int(port_text)


async def check_reachable(uri: str, timeout_s: float, *, source: str = "") -> None:
    """Ping the server at `uri`; raise ConfigError with one clear line if it does not answer.

    Commands that connect call this first, so a wrong host, port, replica set name or
    credentials is reported before any work starts (exit code 2). `source` (a Config's
    `uri_source`) says where the URI was configured, as other configuration errors do.
    """
    prefix = f"{source}: uri" if source else "uri"
    from pymongo import AsyncMongoClient
    from pymongo.errors import OperationFailure, PyMongoError

    timeout_ms = max(1, int(timeout_s * 1000))
    target = redact_uri(uri)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        uri,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        appname="partner-sync-check",
    )
    try:
        await client.admin.command("ping")
    except OperationFailure as exc:
        reason = exc.details.get("errmsg", str(exc)) if exc.details else str(exc)
        raise ConfigError(f"{prefix}: server at {target} refused: {_one_line(reason)}") from exc
    except PyMongoError as exc:
        raise ConfigError(
            f"{prefix}: cannot reach MongoDB at {target} within {timeout_s:g}s: "
            f"{_one_line(str(exc))}"
        ) from exc
    finally:
        await client.close()


def _one_line(message: str, limit: int = 300) -> str:
    # Server-selection errors append a long topology description after ", Timeout:".
    text = " ".join(message.split()).split(", Timeout:")[0]
    return redact_uri(text if len(text) <= limit else text[: limit - 3] + "...")
