"""The sync engine: change stream in, guarded field-level patches out, one transaction a batch."""

from __future__ import annotations

from worker.engine._writes import TargetWrite, execute_target_write, plan_target_write

__all__ = ["TargetWrite", "execute_target_write", "plan_target_write"]
