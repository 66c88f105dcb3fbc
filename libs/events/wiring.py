"""Wiring shared by event-driven services: the store and NATS connection, and long workers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import nats
from nats.aio.client import Client as NATS

from libs.events.bus import Bus
from libs.events.store import PostgresEventStore
from libs.service.runner import Service

__all__ = ["EventServiceKit", "Worker", "connect_nats"]


async def connect_nats(url: str, name: str) -> NATS:
    """A NATS connection that keeps reconnecting for ever: services outlive NATS restarts."""
    return await nats.connect(
        url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=2
    )


class Worker(Protocol):
    """A long-running loop with a cooperative stop (the relay, a projection runner)."""

    async def run(self) -> None: ...

    def stop(self) -> None: ...


W = TypeVar("W", bound=Worker)


class EventServiceKit:
    """Opens the event store and NATS at start, closes them at cleanup, runs workers and a bus."""

    def __init__(self, svc: Service, *, pool_size: int = 5) -> None:
        self.svc = svc
        self.pool_size = pool_size
        self._store: PostgresEventStore | None = None
        self._nc: NATS | None = None
        svc.on_start(self._open)
        svc.on_cleanup(self._close)

    @property
    def store(self) -> PostgresEventStore:
        if self._store is None:
            raise RuntimeError("the event store is opened when the service starts")
        return self._store

    @property
    def nc(self) -> NATS:
        if self._nc is None:
            raise RuntimeError("NATS is connected when the service starts")
        return self._nc

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def _open(self) -> None:
        cfg = self.svc.config
        self._store = await PostgresEventStore.open(cfg.database_url, max_size=self.pool_size)
        self._nc = await connect_nats(cfg.nats_url, f"homeport-{self.svc.name}")

    async def _close(self) -> None:
        if self._nc is not None:
            await self._nc.close()
        if self._store is not None:
            await self._store.close()

    def add_worker(
        self,
        name: str,
        make: Callable[[], W],
        ready: Callable[[W], bool] | None = None,
        prepare: Callable[[W], Awaitable[None]] | None = None,
    ) -> None:
        """Start `make()` after the connections open; stop it (with the drain deadline) first.

        `prepare` runs before the worker is spawned (and before a bus added later starts).
        """
        holder: list[tuple[W, asyncio.Task[None]]] = []

        async def start() -> None:
            worker = make()
            if prepare is not None:
                await prepare(worker)
            holder.append((worker, self.svc.spawn(worker.run(), name)))

        async def stop() -> None:
            for worker, task in holder:
                worker.stop()
                await asyncio.wait({task}, timeout=self.svc.config.drain_seconds)

        async def is_ready() -> bool:
            if not holder or not self.connected:
                return False
            return ready is None or ready(holder[0][0])

        self.svc.on_start(start)
        self.svc.on_stop(stop)
        self.svc.add_readiness_check(name, is_ready)

    def bus(self, setup: Callable[[Bus], None]) -> None:
        """Serve a bus for this service; `setup` registers its handlers once NATS is up."""
        holder: list[Bus] = []

        async def start() -> None:
            bus = Bus(self.nc, self.svc.name, work=self.svc.work)
            setup(bus)
            await bus.start()
            holder.append(bus)

        async def stop() -> None:
            for bus in holder:
                await bus.stop()

        self.svc.on_start(start)
        self.svc.on_stop(stop)
