"""Fixtures the development server's tests share."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient


@pytest.fixture
def fail_point(client: MongoClient[dict[str, Any]]) -> Iterator[Any]:
    """Configure failCommand; always switched off afterwards."""

    def configure(mode: Any, **data: Any) -> dict[str, Any]:
        return client.admin.command("configureFailPoint", "failCommand", mode=mode, data=data)

    try:
        yield configure
    finally:
        client.admin.command("configureFailPoint", "failCommand", mode="off")
