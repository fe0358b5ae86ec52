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


# A transaction abandoned by a killed worker holds its documents until the server reaps it.
TRANSACTION_LIFETIME_S = 2


@pytest.fixture
async def short_transactions(aclient: AsyncMongoClient[dict[str, Any]]) -> AsyncIterator[None]:
    """Reap a killed worker's open transaction within seconds instead of a minute."""
    admin = aclient.admin
    previous = await admin.command({"getParameter": 1, "transactionLifetimeLimitSeconds": 1})
    await admin.command(
        {"setParameter": 1, "transactionLifetimeLimitSeconds": TRANSACTION_LIFETIME_S}
    )
    yield
    await admin.command(
        {
            "setParameter": 1,
            "transactionLifetimeLimitSeconds": previous["transactionLifetimeLimitSeconds"],
        }
    )
