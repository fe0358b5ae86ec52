"""The worker's configuration: one keyword-only value object, built once at the edge.

Only the command line builds a `Config` (from file, environment and flags); nothing below it
reads the environment.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from worker.errors import ConfigError

__all__ = [
    "BatchConfig",
    "Config",
    "HttpConfig",
    "LeaseConfig",
    "LogConfig",
    "load_config",
    "parse_listen",
]


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
class Config:
    """Everything the worker and the one-shot commands need to know."""

    uri: str = "mongodb://127.0.0.1:27017/?replicaSet=rs0"
    transforms: tuple[str, ...] = ()
    state_db: str = "partner_sync"
    origin_tag: str = "session"
    tag_field: str = "_psync"
    quiet_period_s: float = 3600.0
    batch: BatchConfig = field(default_factory=BatchConfig)
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    log: LogConfig = field(default_factory=LogConfig)


def load_config(
    path: str | None,
    *,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build a `Config` from a TOML file, `PARTNER_SYNC_*` variables and flags (flags win).

    `path` falls back to `PARTNER_SYNC_CONFIG`; flags whose value is None are ignored.
    """
    environ = environ or {}
    values: dict[str, Any] = {}
    path = path or environ.get("PARTNER_SYNC_CONFIG")
    if path:
        try:
            with open(path, "rb") as handle:
                values = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    for name, raw in environ.items():
        if not name.startswith("PARTNER_SYNC_") or name == "PARTNER_SYNC_CONFIG":
            continue
        keys = name.removeprefix("PARTNER_SYNC_").lower().split("__")
        target = values
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = raw
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = value
    return _build(values)


def _build(values: Mapping[str, Any]) -> Config:
    sections = {"batch": BatchConfig, "lease": LeaseConfig, "http": HttpConfig, "log": LogConfig}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key in sections:
            kwargs[key] = sections[key](
                **{k: _coerce(sections[key], k, v) for k, v in value.items()}
            )
        elif key == "uri_file":
            with open(value, encoding="utf-8") as handle:
                kwargs["uri"] = handle.read().strip()
        elif key == "transforms":
            kwargs[key] = tuple(value.split(",")) if isinstance(value, str) else tuple(value)
        else:
            kwargs[key] = _coerce(Config, key, value)
    try:
        return Config(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"unknown configuration key: {exc}") from exc


def _coerce(cls: type, key: str, value: Any) -> Any:
    default = getattr(cls(), key, None)
    if isinstance(value, str) and isinstance(default, bool):
        return value.lower() in ("1", "true", "yes")
    if isinstance(value, str) and isinstance(default, int | float):
        return type(default)(value)
    return value


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
