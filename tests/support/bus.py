"""NATS for tests: a connection that rides out server restarts, and a relay of one test's events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NATS

from libs.contracts import Kind
from libs.events import context
from libs.events.bus import SYSTEM, BusClient
from libs.events.context import Context
from libs.events.nats_access import GATEWAY, HARNESS
from libs.events.relay import Relay
from libs.events.store import PostgresEventStore

__all__ = ["ActorBus", "connect", "refused_connect", "relaying"]


async def refused_connect(url: str, **options: Any) -> str:
    """The error of a connection nats-server refuses (its socket closed after: nats-py leaves
    it open when `nats.connect` raises)."""
    nc = NATS()
    try:
        await nc.connect(url, allow_reconnect=False, connect_timeout=2, **options)
    except nats.errors.Error as e:
        return str(e)
    finally:
        await nc.close()
    raise AssertionError(f"nats-server let {options.get('user', 'an anonymous client')} in")


class ActorBus(BusClient):
    """A test's bus client that sends each request the way the bus accepts it for its actor:
    as the gateway for a user (or "anonymous"), as a service (the harness) for "system".
    Tests of the rule itself use BusClient with an explicit sender."""

    def __init__(self, nc: NATS, **options: Any) -> None:
        super().__init__(nc, sender=GATEWAY, **options)
        self._platform = BusClient(nc, sender=HARNESS, **options)

    async def _call(
        self,
        kind: Kind,
        service: str,
        name: str,
        payload: dict[str, Any],
        ctx: Context | None,
        timeout: float | None,
    ) -> Any:
        if (ctx or context.current()).actor == SYSTEM:
            self._platform.default_timeout = self.default_timeout
            return await self._platform._call(kind, service, name, payload, ctx, timeout)
        return await super()._call(kind, service, name, payload, ctx, timeout)


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
