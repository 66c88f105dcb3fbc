"""`expected_version` on the single-stream append (`events.append` on the caller's connection),
the path `append_inline` and the Repository take: a stale or raced version writes nothing, not
in the log and not in the read model applied in the same transaction."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest

from libs.events.envelope import NewEvent, RecordedEvent
from libs.events.errors import ConcurrencyError
from libs.events.inline import append_inline, inline_lock_key
from libs.events.projection import Projection
from libs.events.store import PostgresEventStore
from tests.support.waits import wait_until


class Rows(Projection):
    """One row per applied event."""

    name = "inline_rows"
    schema = "t"

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        await conn.executemany(
            "INSERT INTO t.rows (stream, version, n) VALUES ($1, $2, $3)",
            [(e.stream, e.version, e.data["n"]) for e in events],
        )

    async def reset(self, conn: asyncpg.Connection) -> None:
        await conn.execute("TRUNCATE t.rows")


def ev(n: int) -> NewEvent:
    return NewEvent("ThingHappened", {"n": n})


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[PostgresEventStore]:
    s = await PostgresEventStore.open(dsn, max_size=12)
    await s.pool.execute(
        "CREATE SCHEMA t; CREATE TABLE t.rows (stream text, version integer, n integer)"
    )
    yield s
    await s.close()


async def _append(
    store: PostgresEventStore, stream: str, n: int, expected: int | None
) -> list[RecordedEvent]:
    async with store.pool.acquire() as conn, conn.transaction():
        return await append_inline(store, conn, Rows(), stream, [ev(n)], expected)


async def _rows(store: PostgresEventStore) -> list[tuple[str, int, int]]:
    rows = await store.pool.fetch("SELECT stream, version, n FROM t.rows ORDER BY stream, version")
    return [(r["stream"], r["version"], r["n"]) for r in rows]


async def test_a_stale_expected_version_writes_nothing(store: PostgresEventStore) -> None:
    assert [e.version for e in await _append(store, "thing-1", 1, 0)] == [1]
    await _append(store, "thing-2", 2, None)
    head = await store.head()

    for stream, expected, actual in [("thing-1", 0, 1), ("thing-1", 3, 1), ("thing-9", 1, 0)]:
        with pytest.raises(ConcurrencyError) as e:
            await _append(store, stream, 99, expected)
        assert (e.value.stream, e.value.expected, e.value.actual) == (stream, expected, actual)

    assert await store.head() == head, "no event of a refused append"
    assert await store.stream_version("thing-1") == 1
    assert await store.stream_version("thing-9") == 0
    assert await _rows(store) == [("thing-1", 1, 1), ("thing-2", 1, 2)], "read model untouched"
    # The version the stream is at is accepted, with the next position.
    recorded = await _append(store, "thing-1", 3, 1)
    assert [(e.version, e.position) for e in recorded] == [(2, head + 1)]


async def test_two_transactions_at_one_version_only_the_first_commits(
    store: PostgresEventStore,
) -> None:
    await _append(store, "race-1", 1, 0)
    async with store.pool.acquire() as a, store.pool.acquire() as b:
        tx_a = a.transaction()
        await tx_a.start()
        await append_inline(store, a, Rows(), "race-1", [ev(2)], 1)
        pid_b = b.get_server_pid()

        async def b_appends() -> None:
            async with b.transaction():
                await append_inline(store, b, Rows(), "race-1", [ev(3)], 1)

        second = asyncio.create_task(b_appends())
        try:

            async def b_waits() -> bool:
                return bool(
                    await store.pool.fetchval(
                        "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1",
                        pid_b,
                    )
                )

            await wait_until(b_waits, 10, "the second append to wait for the first")
            assert not second.done()
            await tx_a.commit()
            with pytest.raises(ConcurrencyError) as e:
                await asyncio.wait_for(second, 10)
            assert (e.value.expected, e.value.actual) == (1, 2)
        finally:
            if not second.done():
                second.cancel()
            await asyncio.gather(second, return_exceptions=True)
    assert await store.stream_version("race-1") == 2
    assert [e.data["n"] for e in await store.read_stream("race-1")] == [1, 2]
    assert await _rows(store) == [("race-1", 1, 1), ("race-1", 2, 2)]


async def test_concurrent_inline_appends_at_one_version_exactly_one_wins(
    store: PostgresEventStore,
) -> None:
    await _append(store, "race-2", 1, 0)
    results = await asyncio.gather(
        *(_append(store, "race-2", n, 1) for n in range(10, 18)), return_exceptions=True
    )
    wins = [r for r in results if not isinstance(r, BaseException)]
    losses = [r for r in results if isinstance(r, ConcurrencyError)]
    assert len(wins) == 1 and len(losses) == 7, results
    assert await store.stream_version("race-2") == 2
    won = wins[0][0].data["n"]  # type: ignore[index]
    assert await _rows(store) == [("race-2", 1, 1), ("race-2", 2, won)]
    assert await store.head() == 2


async def test_the_events_an_append_returns_are_the_ones_stored(store: PostgresEventStore) -> None:
    """The append answers with the events as committed (no read-back): position, version,
    time, chain hash and the data as Postgres keeps it, equal to what a reader gets."""
    new = [
        NewEvent("ThingHappened", {"n": 1, "z": "é\u2028", "a": [1, 2.5, None]}),
        NewEvent("ThingHappened", {"n": 2, "big": 10**30}),
    ]
    async with store.pool.acquire() as conn, conn.transaction():
        returned = await append_inline(store, conn, Rows(), "same-1", new, 0)
    assert returned == await store.read_stream("same-1")
    assert [e.hash for e in returned] == [
        r["hash"]
        for r in await store.pool.fetch(
            "SELECT hash FROM events.events WHERE stream = 'same-1' ORDER BY position"
        )
    ]
    report = await store.verify_chain()
    assert report.ok, report


async def test_an_inline_append_waits_for_a_rebuild_of_its_projection(
    store: PostgresEventStore,
) -> None:
    """A rebuild holds the projection's lock exclusively: an inline append (which takes it
    shared in its append call) neither writes the log nor the read model until it ends."""
    async with store.pool.acquire() as rebuild:
        await rebuild.execute("SELECT pg_advisory_lock($1)", inline_lock_key(Rows))
        writer = asyncio.create_task(_append(store, "wait-1", 1, 0))
        try:

            async def writer_waits() -> bool:
                return bool(
                    await store.pool.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory'"
                    )
                )

            await wait_until(writer_waits, 10, "the inline append to wait for the rebuild")
            assert not writer.done()
            assert await store.stream_version("wait-1") == 0
            assert ("wait-1", 1, 1) not in await _rows(store)
        finally:
            await rebuild.execute("SELECT pg_advisory_unlock($1)", inline_lock_key(Rows))
        recorded = await asyncio.wait_for(writer, 10)
    assert [e.version for e in recorded] == [1]
    assert ("wait-1", 1, 1) in await _rows(store)
