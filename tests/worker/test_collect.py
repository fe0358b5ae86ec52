"""How the applier gathers a batch off the reader's buffer: `batch.max_delay_ms` is the longest
a change waits for its batch to fill, counted from when the reader read it."""

from __future__ import annotations

import time
from typing import Any

import anyio
from anyio import wait_all_tasks_blocked

from worker.engine._runner import _collect
from worker.engine._stream import StreamReader


def _event(number: int) -> dict[str, Any]:
    return {"_id": {"_data": f"{number:04d}"}, "operationType": "insert"}


async def _collect_with_a_late_change(
    buffered: int, *, max_docs: int, read_at: float | None
) -> list[dict[str, Any]]:
    """`_collect` (5 s delay) with `buffered` changes waiting, and one more sent once the
    collector waits for more (at once when it does not wait)."""
    send, receive = anyio.create_memory_object_stream[dict[str, Any]](max_buffer_size=10)
    for number in range(buffered):
        send.send_nowait(_event(number))

    async def later() -> None:
        await wait_all_tasks_blocked()
        send.send_nowait(_event(buffered))

    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(later)
                return await _collect(
                    receive,
                    max_docs=max_docs,
                    max_delay_s=5.0,
                    idle_s=5.0,
                    stopping=anyio.Event(),
                    arrived_at=lambda: read_at,
                )
    finally:
        send.close()
        receive.close()


async def test_changes_that_queued_during_the_previous_batch_do_not_wait_again() -> None:
    """Read long ago (they waited while the previous batch was applied): the batch takes
    what is buffered and goes, instead of waiting the whole delay for the late change."""
    batch = await _collect_with_a_late_change(3, max_docs=100, read_at=time.monotonic() - 6.0)
    assert [event["_id"]["_data"] for event in batch] == ["0000", "0001", "0002"]


async def test_a_fresh_change_waits_for_its_batch_to_fill() -> None:
    """Just read: more changes arriving within the delay join its batch."""
    batch = await _collect_with_a_late_change(1, max_docs=2, read_at=time.monotonic())
    assert len(batch) == 2


async def test_without_arrival_times_the_delay_counts_from_the_first_change() -> None:
    """No arrival time known: the batch waits the delay from its first change."""
    batch = await _collect_with_a_late_change(1, max_docs=2, read_at=None)
    assert len(batch) == 2


def test_the_reader_forgets_arrival_times_of_taken_events() -> None:
    reader = StreamReader(None, ["db.c"], batch_size=10)  # type: ignore[arg-type]
    assert reader.oldest_arrival() is None
    reader.arrivals.extend([1.0, 2.0, 3.0])
    reader.taken(2)
    assert reader.oldest_arrival() == 3.0
    reader.taken(5)
    assert reader.oldest_arrival() is None
