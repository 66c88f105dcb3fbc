"""The real identity service, the real gateway and the relay, together in this process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest

from libs.events.relay import Relay
from libs.events.store import PostgresEventStore
from tests.gateway.apikit import Client, running_gateway
from tests.identity.kit import Identity, running_identity


@dataclass
class Platform:
    identity: Identity
    client: Client


@asynccontextmanager
async def relaying(dsn: str, nats_url: str, uniq: str) -> AsyncIterator[None]:
    """The relay publishing committed events to the gateway's JetStream stream of this test."""
    store = await PostgresEventStore.open(dsn, max_size=2)
    nc = await nats.connect(nats_url)
    relay = Relay(store, nc, stream=f"EV_{uniq}", prefix=f"t{uniq}.evt", poll_interval=0.1)
    task = asyncio.create_task(relay.run(), name="relay under test")
    try:
        yield
    finally:
        relay.stop()
        await asyncio.wait_for(task, 10)
        await nc.close()
        await store.close()


@asynccontextmanager
async def running_platform(
    monkeypatch: pytest.MonkeyPatch, *, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> AsyncIterator[Platform]:
    async with (
        running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path) as ident,
        running_gateway(
            monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path
        ) as gateway,
        relaying(dsn, nats_url, uniq),
    ):
        yield Platform(ident, gateway.client)
