"""The worker's configuration: one keyword-only value object, built once at the edge.

Only the command line builds a `Config` (from file, environment and flags); nothing below it
reads the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "BatchConfig",
    "Config",
    "HttpConfig",
    "LeaseConfig",
    "LogConfig",
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
