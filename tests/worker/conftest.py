"""Fixtures of the worker's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient


@pytest.fixture
async def aclient(mongo_uri: str) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    """An async client of the server under test, closed after the test."""
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    yield mongo
    await mongo.close()
