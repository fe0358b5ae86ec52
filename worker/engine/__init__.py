"""The sync engine: change stream in, guarded field-level patches out, one transaction a batch."""

from __future__ import annotations

from worker.engine._applier import Applier, BatchResult
from worker.engine._lease import Lease, new_holder_id
from worker.engine._plan import (
    EventPlan,
    changed_paths,
    direction_of,
    other_side,
    plan_event,
    value_at,
)
from worker.engine._runner import Worker, cluster_time
from worker.engine._stream import StreamPosition, StreamReader, namespace_filter
from worker.engine._writes import (
    TargetWrite,
    plan_target_write,
    write_operation,
)

__all__ = [
    "Applier",
    "BatchResult",
    "EventPlan",
    "Lease",
    "StreamPosition",
    "StreamReader",
    "TargetWrite",
    "Worker",
    "changed_paths",
    "cluster_time",
    "direction_of",
    "namespace_filter",
    "new_holder_id",
    "other_side",
    "plan_event",
    "plan_target_write",
    "value_at",
    "write_operation",
]
