"""Fixtures for every module here: those of apikit.py, a NATS connection and an event store."""

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS

from libs.events.store import PostgresEventStore
from tests.events.relaykit import connect
from tests.gateway.apikit import cast as cast
from tests.gateway.apikit import identity as identity
from tests.gateway.apikit import identity_env as identity_env
from tests.gateway.apikit import token_cast as token_cast


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    conn = await connect(nats_url)
    yield conn
    await conn.close()


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[PostgresEventStore]:
    s = await PostgresEventStore.open(dsn, max_size=4)
    yield s
    await s.close()
