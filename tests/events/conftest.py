"""Fixtures of the event store, relay and projection tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from libs.events.store import PostgresEventStore


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[PostgresEventStore]:
    """An event store on this test's database, with room for concurrent writers."""
    s = await PostgresEventStore.open(dsn, max_size=12)
    yield s
    await s.close()
