"""What API handlers reach: the bus and the gateway's own Postgres pool, once they are open."""

from __future__ import annotations

from typing import Protocol

import asyncpg
from nats.aio.client import Client as NATS

from libs.events.bus import BusClient, Unavailable
from libs.events.wiring import EventServiceKit

__all__ = ["Backend", "KitBackend"]


class Backend(Protocol):
    """The connections of the gateway; each raises Unavailable while it is not open."""

    def bus(self) -> BusClient: ...

    def pool(self) -> asyncpg.Pool: ...


class KitBackend:
    """The Backend of the running gateway: the connections its EventServiceKit opens."""

    def __init__(self, kit: EventServiceKit) -> None:
        self._kit = kit
        self._client: tuple[NATS, BusClient] | None = None

    def bus(self) -> BusClient:
        if not self._kit.connected:
            raise Unavailable("the gateway is not connected to NATS; retry shortly")
        nc = self._kit.nc
        if self._client is None or self._client[0] is not nc:
            self._client = (nc, BusClient(nc))
        return self._client[1]

    def pool(self) -> asyncpg.Pool:
        try:
            return self._kit.store.pool
        except RuntimeError:
            raise Unavailable("the gateway is starting; retry shortly") from None
