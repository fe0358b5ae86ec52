"""The `failCommand` fail point, with mongod's semantics, for fault-injection tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from devserver._errors import CommandError

__all__ = ["FailCommand", "FailAction", "RETRYABLE_CODES"]

# Error codes MongoDB treats as retryable (labelled RetryableWriteError on retryable writes).
RETRYABLE_CODES = frozenset(
    {6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 63, 150, 134}
)


@dataclass(frozen=True)
class FailAction:
    """What to do to one command the fail point caught."""

    close_connection: bool
    block_ms: int
    error_code: int | None
    error_labels: list[str] | None
    write_concern_error: dict[str, Any] | None


class FailCommand:
    """State of `failCommand`: off, alwaysOn, or on for the next n matching commands."""

    def __init__(self) -> None:
        self._mode: str = "off"
        self._times_left = 0
        self._data: dict[str, Any] = {}
        self.count = 0

    def configure(self, mode: Any, data: Any) -> int:
        """Apply a configureFailPoint request; returns the times it fired (mongod's count)."""
        previous = self.count
        if mode == "off":
            self._mode = "off"
        elif mode == "alwaysOn":
            self._mode = "alwaysOn"
        elif isinstance(mode, dict) and "times" in mode:
            times = mode["times"]
            if not isinstance(times, int) or times < 0:
                raise CommandError(2, "BadValue", "'times' must be a non-negative integer")
            self._mode = "times" if times else "off"
            self._times_left = times
        elif isinstance(mode, dict) and ("skip" in mode or "activationProbability" in mode):
            raise CommandError(
                2,
                "BadValue",
                "fail point modes 'skip' and 'activationProbability' are not supported",
            )
        else:
            raise CommandError(2, "BadValue", f"invalid fail point mode {mode!r}")
        if mode != "off":
            if not isinstance(data, dict) or not isinstance(data.get("failCommands"), list):
                raise CommandError(
                    2, "BadValue", "failCommand requires data.failCommands, a list of command names"
                )
            self._data = dict(data)
        self.count = 0
        return previous

    def check(self, command: str, app_name: str | None) -> FailAction | None:
        """The action for this command, consuming one activation, or None when not caught."""
        if self._mode == "off" or command == "configureFailPoint":
            return None
        data = self._data
        if command not in data.get("failCommands", ()):
            return None
        wanted_app = data.get("appName")
        if wanted_app is not None and wanted_app != app_name:
            return None
        if self._mode == "times":
            self._times_left -= 1
            if self._times_left <= 0:
                self._mode = "off"
        self.count += 1
        labels = data.get("errorLabels")
        return FailAction(
            close_connection=bool(data.get("closeConnection", False)),
            block_ms=int(data.get("blockTimeMS", 0)) if data.get("blockConnection") else 0,
            error_code=data.get("errorCode"),
            error_labels=list(labels) if isinstance(labels, list) else None,
            write_concern_error=data.get("writeConcernError"),
        )
