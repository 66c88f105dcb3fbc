"""Shared pieces for relay and projection tests: a counting projection and a writer."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import nats
from nats.aio.client import Client as NATS

from libs.events.envelope import NewEvent, RecordedEvent
from libs.events.projection import Projection
from libs.events.relay import Relay
from libs.events.store import PostgresEventStore


class Applied(Projection):
    """Records every event it applies, without a unique key: a double apply shows as a duplicate."""

    name = "applied"
    schema = "t"

    def __init__(self, migrations: Path) -> None:
        migrations.mkdir(parents=True, exist_ok=True)
        (migrations / "0001_applied.sql").write_text(
            "CREATE TABLE t.applied (position bigint NOT NULL, id uuid NOT NULL,"
            " type text NOT NULL);"
        )
        self.migrations = migrations  # type: ignore[misc]

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        await conn.executemany(
            "INSERT INTO t.applied (position, id, type) VALUES ($1, $2, $3)",
            [(e.position, e.id, e.type) for e in events],
        )

    async def reset(self, conn: asyncpg.Connection) -> None:
        await conn.execute("TRUNCATE t.applied")


async def write_events(
    store: PostgresEventStore, total: int, *, writers: int = 4, pause: float = 0.0
) -> None:
    """`total` events from `writers` concurrent writers into several streams."""

    async def one(w: int, count: int) -> None:
        for i in range(count):
            await store.append(f"thing-w{w}s{i % 7}", [NewEvent("ThingHappened", {"w": w, "i": i})])
            if pause:
                await asyncio.sleep(random.uniform(0, pause))

    per = total // writers
    await asyncio.gather(
        *(one(w, per + (total % writers if w == 0 else 0)) for w in range(writers))
    )


async def wait_until(predicate, deadline: float, what: str, step: float = 0.1) -> None:  # type: ignore[no-untyped-def]
    """Poll an async predicate until true; fail naming `what` after `deadline` seconds."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if await predicate():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"timed out after {deadline:.0f}s waiting for {what}")


async def applied_report(dsn: str) -> tuple[int, int, list[int]]:
    """(rows, distinct positions, sorted positions) of the Applied projection."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT position FROM t.applied ORDER BY position")
    finally:
        await conn.close()
    positions = [r["position"] for r in rows]
    return len(positions), len(set(positions)), positions


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
