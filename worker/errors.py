"""Errors of the partner-sync worker.

PartnerSyncError                 root of everything the worker raises on purpose
├── ConfigError                  bad configuration: exit code 2
├── StateRefused                 refused because of recorded state: exit code 3
│   ├── VersionMismatch          transforms differ from the version the state was synced with
│   ├── ResyncRequired           the pair lost its change history and needs a backfill --restart
│   └── LeaseHeld                another worker holds the lease
├── LeaseLost                    this worker's lease expired or was taken over while applying
├── HistoryLost                  the resume point has fallen off the server's change history
└── ServerUnavailable            the MongoDB server could not be reached
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "HistoryLost",
    "LeaseHeld",
    "LeaseLost",
    "PartnerSyncError",
    "ResyncRequired",
    "ServerUnavailable",
    "StateRefused",
    "VersionMismatch",
]


class PartnerSyncError(Exception):
    """Root of the errors the worker raises on purpose."""

    exit_code = 1


class ConfigError(PartnerSyncError):
    """The configuration is invalid; the message names the key and where it came from."""

    exit_code = 2


class StateRefused(PartnerSyncError):
    """The command was refused because of state recorded in the state database."""

    exit_code = 3


class VersionMismatch(StateRefused):
    """The transforms differ from the version the pair was synced with."""


class ResyncRequired(StateRefused):
    """The pair lost its change history; `backfill --restart` then `run` repairs it."""


class LeaseHeld(StateRefused):
    """Another worker holds the lease for these pairs."""


class LeaseLost(PartnerSyncError):
    """This worker's lease expired or was taken over; it must stop applying at once."""


class HistoryLost(PartnerSyncError):
    """The resume point is no longer in the server's change history."""


class ServerUnavailable(PartnerSyncError):
    """The MongoDB server could not be reached."""

    exit_code = 2
