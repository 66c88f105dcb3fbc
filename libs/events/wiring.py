"""Parts shared by event-driven services, each an async context manager for `Service.use`.

A service's `__main__.py` nests them in one `parts` function, so the parts it declares are
entered in order and exited in reverse, and each is a typed local, not a holder:

    @asynccontextmanager
    async def parts(cfg: CertsConfig, svc: Service) -> AsyncIterator[None]:
        async with connections(svc) as conn, opened_keyring(cfg.keyring) as keys:
            engine = Engine(cfg, conn.store, keys, ...)
            async with serve(svc, conn.nc, CONTRACT, Commands(engine), Queries(conn.store)):
                yield

`serve` (the bus) and `worker`/`loop` take work, so they sit innermost: on a stop they stop
taking work and drain before the store and NATS they use are closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import nats
from nats.aio.client import Client as NATS

from libs.contracts import Contract
from libs.events.bus import Bus, BusClient
from libs.events.handlers import check_routes, routes_of
from libs.events.store import PostgresEventStore
from libs.service.runner import Service

if TYPE_CHECKING:  # projection.py imports the relay, whose build() uses these parts
    from libs.events.projection import Projection, ProjectionRunner
    from libs.events.sealing import Keyring

log = logging.getLogger("homeport.nats")

__all__ = [
    "Connections",
    "Worker",
    "connect_nats",
    "connections",
    "following",
    "loop",
    "opened_keyring",
    "serve",
    "worker",
]


async def connect_nats(url: str, name: str, credentials: Path | None = None) -> NATS:
    """A NATS connection that keeps reconnecting for ever: services outlive NATS restarts.

    With `credentials` (a `user:password` file) it signs in as that user, with the reply
    inbox only that user may read; a subject the server refuses it is logged (the request
    itself then times out)."""
    options: dict[str, Any] = {}
    if credentials is not None:
        from libs.events.nats_access import inbox_prefix, read_credentials

        user, password = await asyncio.to_thread(read_credentials, credentials)
        options.update(user=user, password=password, inbox_prefix=inbox_prefix(user))

    async def refused(e: Exception) -> None:
        if "violation" in str(e).lower():
            log.error("NATS refused %s: %s", name, e)
        else:
            log.warning("NATS connection of %s: %r", name, e)

    return await nats.connect(
        url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=2,
        error_cb=refused,
        **options,
    )


@dataclass(frozen=True)
class Connections:
    """The event store and the NATS connection of one service process."""

    store: PostgresEventStore
    nc: NATS
    sender: str  # this service's name: its NATS user and the sender of its requests

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    def client(self, *, default_timeout: float = 15.0) -> BusClient:
        """A bus client on this connection (commands and queries to other services)."""
        return BusClient(self.nc, sender=self.sender, default_timeout=default_timeout)


@asynccontextmanager
async def connections(svc: Service, *, pool_size: int = 5) -> AsyncIterator[Connections]:
    """Open the event store and connect to NATS; close both (NATS first) on exit."""
    cfg = svc.config
    # min_size 0: a quiet service keeps no Postgres backend (~3.5 MiB) open; pool.py closes a
    # connection QUICK_CLOSE_S after a lone use, IDLE_CONNECTION_S after one in a busy spell;
    # the next query opens one again (~7.5 ms)
    from libs.events.periods import PublicPeriods, public_path

    # every service seals the client address of what it records to its week's public key
    # (identity's file, libs/events/periods.py): it can seal, never read back
    addresses = PublicPeriods(public_path(cfg.ip_keys_path))
    store = await PostgresEventStore.open(
        cfg.database_url, min_size=0, max_size=pool_size, addresses=addresses
    )
    try:
        nc = await connect_nats(cfg.nats_url, f"homeport-{svc.name}", cfg.nats_credentials)
        try:
            yield Connections(store, nc, svc.name)
        finally:
            await nc.close()
    finally:
        await store.close()


@asynccontextmanager
async def opened_keyring(path: Path) -> AsyncIterator[Keyring]:
    """The sealing keyring at `path` (opened off the event loop), closed on exit."""
    from libs.events.sealing import Keyring  # cryptography: not for services without keys

    keys = await asyncio.to_thread(Keyring.open, path)
    try:
        yield keys
    finally:
        keys.close()


@asynccontextmanager
async def serve(
    svc: Service, nc: NATS, contract: Contract, *handlers: object, max_in_flight: int = 1000
) -> AsyncIterator[Bus]:
    """Serve the `@command`/`@query` methods of `handlers` as `contract` declares them.

    Every payload is validated against the contract before its handler runs. On exit the bus
    stops taking requests and lets the ones in flight finish within the drain deadline.
    """
    routes = routes_of(*handlers)
    check_routes(contract, routes)
    bus = Bus(nc, svc.name, work=svc.work, max_in_flight=max_in_flight, contract=contract)
    for route in routes:
        register = bus.command if route.kind == "cmd" else bus.query
        register(route.name)(route.handler)
    await bus.start()
    try:
        yield bus
    finally:
        await bus.stop(grace=svc.config.drain_seconds)


class Worker(Protocol):
    """A long-running loop with a cooperative stop (the relay, a projection runner)."""

    async def run(self) -> None: ...

    def stop(self) -> None: ...


W = TypeVar("W", bound=Worker)


@asynccontextmanager
async def worker(
    svc: Service, name: str, w: W, ready: Callable[[W], bool] | None = None
) -> AsyncIterator[W]:
    """Run `w` in a tracked task, ready while `ready(w)` (if given) says so; stop it on exit."""
    async with loop(svc, name, w.run(), w.stop):

        async def is_ready() -> bool:
            return ready is None or ready(w)

        svc.add_readiness_check(name, is_ready)
        yield w


@asynccontextmanager
async def loop(
    svc: Service,
    name: str,
    coro: Coroutine[Any, Any, Any],
    stop: Callable[[], None] | None = None,
    *,
    cancel: bool = False,
) -> AsyncIterator[asyncio.Task[Any]]:
    """Run `coro` in a task the service tracks; on exit call `stop` and wait for the task up to
    the drain deadline (or cancel it at once with `cancel`, for loops that wait on others)."""
    task = svc.spawn(coro, name)
    try:
        yield task
    finally:
        if stop is not None:
            stop()
        if cancel:
            task.cancel()
        await asyncio.wait({task}, timeout=svc.config.drain_seconds)


@asynccontextmanager
async def following(
    svc: Service, conn: Connections, projection: Projection, *, stream: str, prefix: str
) -> AsyncIterator[ProjectionRunner]:
    """Set up `projection`'s read model, then keep it up to date from the log (the worker
    `projection.<name>`, ready while NATS is connected and the projection has caught up)."""
    from libs.events.projection import ProjectionRunner  # here: see TYPE_CHECKING above

    runner = ProjectionRunner(projection, conn.store, conn.nc, stream=stream, prefix=prefix)
    await runner.setup()

    def live(r: ProjectionRunner) -> bool:
        return conn.connected and r.live.is_set()

    async with worker(svc, f"projection.{projection.name}", runner, ready=live):
        yield runner
