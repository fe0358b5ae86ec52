"""The stream options the reader asks for, and what it does when a server refuses one."""

from __future__ import annotations

from typing import Any

import anyio
from pymongo.errors import OperationFailure

from worker.engine._stream import StreamPosition, StreamReader


class _Stream:
    """An open stream with nothing to deliver."""

    resume_token = None

    async def __aenter__(self) -> _Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def try_next(self) -> None:
        await anyio.sleep(0.01)


class _ServerBefore60:
    """A client (and its database) whose server does not know showExpandedEvents."""

    def __init__(self) -> None:
        self.opened: list[dict[str, Any]] = []

    def __getitem__(self, name: str) -> _ServerBefore60:
        return self

    async def watch(self, pipeline: list[dict[str, Any]], **options: Any) -> _Stream:
        self.opened.append(options)
        if options.get("show_expanded_events"):
            raise OperationFailure(
                "BSON field '$changeStream.showExpandedEvents' is an unknown field.", code=40415
            )
        return _Stream()


async def test_the_reader_asks_for_expanded_events_and_drops_them_when_refused() -> None:
    """Expanded events carry `disambiguatedPaths`; a server before MongoDB 6.0 refuses the
    option, and the reader opens the stream again without it instead of failing."""
    server = _ServerBefore60()
    reader = StreamReader(server, ["db.c"], batch_size=10)  # type: ignore[arg-type]
    send, receive = anyio.create_memory_object_stream[dict[str, Any]](max_buffer_size=10)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            await group.start(reader.run, StreamPosition(), send)
            group.cancel_scope.cancel()
    receive.close()
    assert [options.get("show_expanded_events") for options in server.opened] == [True, None]
    assert reader.expanded_events is False
