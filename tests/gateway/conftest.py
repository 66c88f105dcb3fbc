"""Fixtures for every module here: the real identity service and the people of the tests (from
apikit.py's pieces), a NATS connection and an event store."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from tests.gateway.apikit import Cast, make_cast
from tests.identity.kit import Identity, running_identity
from tests.support.bus import connect


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    conn = await connect(nats_url)
    yield conn
    await conn.close()


@pytest.fixture
def identity_env() -> dict[str, str]:
    """Extra environment of the identity service of a test (override it to change limits)."""
    return {}


@pytest.fixture
async def identity(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    identity_env: dict[str, str],
) -> AsyncIterator[Identity]:
    """The real identity service, before setup."""
    async with running_identity(
        monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, env=identity_env
    ) as ident:
        yield ident


@pytest.fixture
async def cast(identity: Identity) -> Cast:
    """The real identity service, set up, with root and alice (sessions and tokens)."""
    return await make_cast(identity)


@pytest.fixture
async def token_cast(identity: Identity) -> Cast:
    """Root and alice with their tokens, and no sessions the tests hold."""
    return await make_cast(identity, sessions=False)
