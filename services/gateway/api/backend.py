"""What API handlers reach: the bus and the gateway's own Postgres pool, once they are open."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

import asyncpg

from libs.events.bus import BusClient, Unavailable
from libs.events.nats_access import GATEWAY
from libs.events.wiring import Connections

__all__ = ["Backend", "ConnectionsBackend"]


class Backend(Protocol):
    """The connections of the gateway; each raises Unavailable while it is not open."""

    def bus(self) -> BusClient: ...

    def pool(self) -> asyncpg.Pool: ...


class ConnectionsBackend:
    """The Backend of the running gateway: its connections while `attached` to them.

    The API is mounted before the service starts (aiohttp freezes its routes then), so it is
    built with this backend, which answers Unavailable until the connections are open.
    """

    def __init__(self) -> None:
        self._conn: Connections | None = None
        self._client: BusClient | None = None

    @asynccontextmanager
    async def attached(self, conn: Connections) -> AsyncIterator[None]:
        """Serve the API over `conn` until exit."""
        self._conn, self._client = conn, BusClient(conn.nc, sender=GATEWAY)
        try:
            yield
        finally:
            self._conn = self._client = None

    def bus(self) -> BusClient:
        if self._client is None or self._conn is None or not self._conn.connected:
            raise Unavailable("the gateway is not connected to NATS; retry shortly")
        return self._client

    def pool(self) -> asyncpg.Pool:
        if self._conn is None:
            raise Unavailable("the gateway is starting; retry shortly")
        return self._conn.store.pool
