"""Pieces of the relay and projection tests: a counting projection, a writer, a report."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from libs.events.envelope import NewEvent, RecordedEvent
from libs.events.projection import Projection
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


async def applied_report(dsn: str) -> tuple[int, int, list[int]]:
    """(rows, distinct positions, sorted positions) of the Applied projection."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT position FROM t.applied ORDER BY position")
    finally:
        await conn.close()
    positions = [r["position"] for r in rows]
    return len(positions), len(set(positions)), positions
