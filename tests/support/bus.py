"""NATS for tests: a connection that rides out server restarts, and a relay of one test's events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
from nats.aio.client import Client as NATS

from libs.events.relay import Relay
from libs.events.store import PostgresEventStore

__all__ = ["connect", "relaying"]


async def connect(url: str) -> NATS:
    return await nats.connect(
        url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, connect_timeout=2
    )


@asynccontextmanager
async def relaying(dsn: str, nats_url: str, uniq: str) -> AsyncIterator[None]:
    """A relay publishing this test's committed events to its JetStream stream `EV_<uniq>`
    (subjects `t<uniq>.evt.>`), as the services under test are configured to read them."""
    store = await PostgresEventStore.open(dsn, max_size=2)
    nc = await connect(nats_url)
    relay = Relay(store, nc, stream=f"EV_{uniq}", prefix=f"t{uniq}.evt", poll_interval=0.1)
    task = asyncio.create_task(relay.run(), name="relay under test")
    try:
        yield
    finally:
        relay.stop()
        await asyncio.wait_for(task, 10)
        await nc.close()
        await store.close()
