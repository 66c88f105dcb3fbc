"""A read model's change run within the append's own statement (libs/events/statements.py), and
a decision whose transaction begins only when it queries (repository.py, OnDemand), on the real
Postgres: what reaches the server, and that nothing is half-written whatever fails."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest

from libs.events.envelope import NewEvent, RecordedEvent
from libs.events.errors import EventStoreError
from libs.events.inline import append_alone, inline_lock_key
from libs.events.projection import Projection
from libs.events.repository import OnDemand, Repository
from libs.events.statements import Statement, compose
from libs.events.store import PostgresEventStore
from tests.support.waits import wait_until


class Taken(Exception):
    pass


class Raced(Exception):
    pass


class Things(Projection):
    """One row per thing, at its stream's version; `n` is unique across things."""

    name = "one_statement_things"
    schema = "t1"

    def statements_for(self, stream: str, events: Sequence[NewEvent]) -> Sequence[Statement] | None:
        if len(events) != 1:
            return None
        return [
            Statement(
                "INSERT INTO t1.things (stream, version, n) SELECT $1, a.out_version, $2"
                " FROM appended a ON CONFLICT (stream) DO UPDATE"
                " SET version = excluded.version, n = excluded.n",
                (stream, events[0].data["n"]),
            )
        ]

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        for e in events:
            await conn.execute(
                "INSERT INTO t1.things (stream, version, n) VALUES ($1, $2, $3)"
                " ON CONFLICT (stream) DO UPDATE SET version = excluded.version, n = excluded.n",
                e.stream,
                e.version,
                e.data["n"],
            )

    async def reset(self, conn: asyncpg.Connection) -> None:
        await conn.execute("TRUNCATE t1.things")


def ev(n: int) -> NewEvent:
    return NewEvent("ThingChanged", {"n": n})


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[PostgresEventStore]:
    s = await PostgresEventStore.open(dsn, max_size=6)
    await s.pool.execute(
        "CREATE SCHEMA t1; CREATE TABLE t1.things (stream text PRIMARY KEY, version integer,"
        " n integer CONSTRAINT things_n_key UNIQUE); CREATE TABLE t1.side (x integer)"
    )
    yield s
    await s.close()


def _repo(store: PostgresEventStore) -> Repository[int]:
    return Repository(
        store,
        lambda key: key,
        lambda key, events: events[-1].version if events else 0,
        Things(),
        conflict=Raced,
        unique={"things_n_key": Taken},
    )


_ASYNCPG_OWN = (
    "WITH RECURSIVE typeinfo_tree",
    "SELECT current_setting('jit')",
    "SELECT set_config",
)


class Sent:
    """What the decision's connection sent to Postgres (asyncpg's query logger), from the
    first query of a step to the end of `on_demand` (its COMMIT included). The logger stays on
    the pooled connection (a released one refuses its removal), silent once stopped."""

    def __init__(self) -> None:
        self.queries: list[str] = []
        self.active = True

    def __call__(self, record: Any) -> None:
        query = " ".join(record.query.split())
        # asyncpg asks the server about types it meets the first time: not ours
        if self.active and not query.startswith(_ASYNCPG_OWN):
            self.queries.append(query.split()[0])

    def watch(self, od: OnDemand) -> None:
        od.conn.add_query_logger(self)

    def stop(self) -> None:
        self.active = False


async def _change(
    repo: Repository[int], key: str, n: int, *, query: str | None = None, fail: bool = False
) -> tuple[list[RecordedEvent], list[str]]:
    """Read the thing's row, decide (running `query` on the decision's connection first, if
    given; raising after it with `fail`), and append `n` at the row's version."""
    sent = Sent()

    async def step(od: OnDemand) -> list[RecordedEvent]:
        sent.watch(od)
        row = await od.conn.fetchrow("SELECT version FROM t1.things WHERE stream = $1", key)
        if query is not None:
            await od.execute(query)
        if fail:
            raise RuntimeError("the decision failed")
        version = row["version"] if row is not None else 0
        return await repo.append_decided(od, key, [ev(n)], version)

    try:
        return await repo.on_demand(step), sent.queries
    finally:
        sent.stop()


async def _things(store: PostgresEventStore) -> list[tuple[str, int, int]]:
    rows = await store.pool.fetch("SELECT stream, version, n FROM t1.things ORDER BY stream")
    return [(r["stream"], r["version"], r["n"]) for r in rows]


async def test_a_lone_decision_appends_and_applies_in_one_statement_without_a_transaction(
    store: PostgresEventStore,
) -> None:
    repo = _repo(store)
    recorded, sent = await _change(repo, "thing-a", 1)
    assert sent == ["SELECT", "WITH"], "the row, then the append with its change"
    assert [(e.stream, e.version) for e in recorded] == [("thing-a", 1)]
    assert recorded == await store.read_stream("thing-a")
    assert await _things(store) == [("thing-a", 1, 1)]
    # the next change decides on the row at version 1 and applies at version 2
    recorded, _ = await _change(repo, "thing-a", 5)
    assert [e.version for e in recorded] == [2]
    assert await _things(store) == [("thing-a", 2, 5)]
    assert (await store.verify_chain()).ok


async def test_a_decision_that_queries_runs_in_one_transaction_and_a_failure_undoes_it(
    store: PostgresEventStore,
) -> None:
    repo = _repo(store)
    _, sent = await _change(repo, "thing-b", 1, query="INSERT INTO t1.side VALUES (1)")
    assert sent == ["SELECT", "BEGIN;", "INSERT", "WITH", "COMMIT;"]
    assert await _things(store) == [("thing-b", 1, 1)]
    assert await store.pool.fetchval("SELECT count(*) FROM t1.side") == 1

    head = await store.head()
    with pytest.raises(RuntimeError, match="the decision failed"):
        await _change(repo, "thing-b", 2, query="INSERT INTO t1.side VALUES (2)", fail=True)
    assert await store.pool.fetchval("SELECT count(*) FROM t1.side") == 1, "its write undone"
    assert await store.head() == head
    # the connection went back to the pool clean: the next change on it works
    await _change(repo, "thing-b", 3)
    assert await _things(store) == [("thing-b", 2, 3)]


async def test_a_raced_lone_append_writes_nothing(store: PostgresEventStore) -> None:
    repo = _repo(store)
    await _change(repo, "thing-c", 1)
    head = await store.head()
    async with store.pool.acquire() as conn:
        od = OnDemand(conn)
        with pytest.raises(Exception) as e:
            await repo.append_decided(od, "thing-c", [ev(2)], 0)  # decided on version 0
        assert not od.begun
    assert type(e.value).__name__ == "ConcurrencyError"
    with pytest.raises(Raced):
        await repo.on_demand(lambda od: repo.append_decided(od, "thing-c", [ev(2)], 0))
    assert await store.head() == head
    assert await _things(store) == [("thing-c", 1, 1)]


async def test_a_read_model_statement_that_fails_leaves_no_event(
    store: PostgresEventStore,
) -> None:
    repo = _repo(store)
    await _change(repo, "thing-d", 7)
    head = await store.head()
    with pytest.raises(Taken):  # n = 7 is thing-d's: the unique index refuses it
        await _change(repo, "thing-e", 7)
    assert await store.head() == head, "no event of a refused change"
    assert await store.stream_version("thing-e") == 0
    assert await _things(store) == [("thing-d", 1, 7)]
    assert (await store.verify_chain()).ok


async def test_a_lone_append_waits_for_a_rebuild_before_it_locks_a_row_of_the_read_model(
    store: PostgresEventStore,
) -> None:
    """The statements join `appended`: no row is touched before the append took the
    projection's lock, so a rebuild holding it exclusively never waits for a row the waiting
    append holds (the order a writer that applies after appending keeps)."""
    repo = _repo(store)
    await _change(repo, "thing-f", 1)
    async with store.pool.acquire() as rebuild, store.pool.acquire() as other:
        await rebuild.execute("SELECT pg_advisory_lock($1)", inline_lock_key(Things))
        writer = asyncio.create_task(_change(repo, "thing-f", 2))
        try:

            async def writer_waits() -> bool:
                return bool(
                    await store.pool.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory'"
                    )
                )

            await wait_until(writer_waits, 10, "the lone append to wait for the rebuild")
            # the row the append will update is not locked: another writer takes it at once
            async with other.transaction():
                await other.execute("SET LOCAL lock_timeout = '2s'")
                await other.execute("UPDATE t1.things SET n = 10 WHERE stream = 'thing-f'")
            assert not writer.done()
            assert await store.stream_version("thing-f") == 1
        finally:
            await rebuild.execute("SELECT pg_advisory_unlock($1)", inline_lock_key(Things))
        recorded, _ = await asyncio.wait_for(writer, 10)
    assert [e.version for e in recorded] == [2]
    assert await _things(store) == [("thing-f", 2, 2)]


async def test_two_events_or_no_statements_take_the_transaction(store: PostgresEventStore) -> None:
    """A change the projection cannot give as statements is never appended alone."""
    async with store.pool.acquire() as conn:
        assert await append_alone(store, conn, Things(), "thing-g", [ev(1), ev(2)], 0) is None
    assert await store.stream_version("thing-g") == 0
    repo = _repo(store)
    sent = Sent()

    async def two(od: OnDemand) -> list[RecordedEvent]:
        sent.watch(od)
        return await repo.append_decided(od, "thing-g", [ev(1), ev(2)], 0)

    try:
        recorded = await repo.on_demand(two)
    finally:
        sent.stop()
    assert [e.version for e in recorded] == [1, 2]
    assert sent.queries == ["BEGIN;", "SELECT", "INSERT", "INSERT", "COMMIT;"]
    assert await _things(store) == [("thing-g", 2, 2)]


async def test_an_append_of_nothing_is_refused_on_every_path(store: PostgresEventStore) -> None:
    head = await store.head()
    async with store.pool.acquire() as conn:
        for append in (
            store.append_recorded(conn, "thing-z", [], 0),
            append_alone(store, conn, Things(), "thing-z", [], 0),
        ):
            with pytest.raises(EventStoreError, match="at least one event"):
                await append
    assert await store.head() == head


def test_compose_renumbers_each_statement_after_the_head() -> None:
    sql, args = compose(
        "SELECT $1::int AS out_version",
        [5],
        [
            Statement(
                "UPDATE x SET v = a.out_version, y = $2 FROM appended a WHERE k = $1", ("k", 9)
            ),
            Statement("DELETE FROM z USING appended WHERE k = $1 AND $1 <> $10", ("q",)),
        ],
        "SELECT 1",
    )
    assert sql == (
        "WITH appended AS (SELECT $1::int AS out_version),"
        " s0 AS (UPDATE x SET v = a.out_version, y = $3 FROM appended a WHERE k = $2),"
        " s1 AS (DELETE FROM z USING appended WHERE k = $4 AND $4 <> $13) SELECT 1"
    )
    assert args == [5, "k", 9, "q"]


def test_compose_refuses_a_statement_that_does_not_wait_for_the_append() -> None:
    with pytest.raises(ValueError, match="must join `appended`"):
        compose("SELECT 1", [], [Statement("UPDATE x SET appended_at = now()")], "SELECT 1")
