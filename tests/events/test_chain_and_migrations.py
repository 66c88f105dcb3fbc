"""Hash chain tamper detection and schema migrations, on a real Postgres."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from libs.events.envelope import NewEvent
from libs.events.errors import MigrationError
from libs.events.migrations import migrate
from libs.events.store import MIGRATIONS, PostgresEventStore


async def test_verify_chain_names_edited_and_deleted_rows(dsn: str) -> None:
    async with await PostgresEventStore.open(dsn) as store:
        for i in range(20):
            await store.append(f"thing-{i % 3}", [NewEvent("ThingHappened", {"i": i})])
        clean = await store.verify_chain(page_size=7)
        assert clean.ok and clean.checked == 20 and clean.last_position == 20

        await store.pool.execute(
            "UPDATE events.events SET data = '{\"i\": 999}' WHERE position = 6"
        )
        await store.pool.execute("DELETE FROM events.events WHERE position = 14")
        report = await store.verify_chain(page_size=7)
        assert not report.ok
        assert {(p.position, p.kind) for p in report.problems} == {(6, "altered"), (14, "missing")}


async def test_verify_chain_sees_a_deleted_tail_and_an_edited_meta(dsn: str) -> None:
    async with await PostgresEventStore.open(dsn) as store:
        for i in range(5):
            await store.append("thing-1", [NewEvent("ThingHappened", {"i": i})])
        await store.pool.execute(
            'UPDATE events.events SET meta = meta || \'{"actor": "someone-else"}\' '
            "WHERE position = 2"
        )
        await store.pool.execute("DELETE FROM events.events WHERE position = 5")
        report = await store.verify_chain()
        assert {(p.position, p.kind) for p in report.problems} == {(2, "altered"), (5, "missing")}


def _write(d: Path, files: dict[str, str]) -> Path:
    d.mkdir(exist_ok=True)
    for name, sql in files.items():
        (d / name).write_text(sql)
    return d


async def test_migrations_apply_once_even_when_two_start_at_once(dsn: str, tmp_path: Path) -> None:
    d = _write(
        tmp_path / "m",
        {
            "0001_a.sql": "CREATE SCHEMA demo; CREATE TABLE demo.t (n int);",
            "0002_b.sql": "INSERT INTO demo.t VALUES (1); SELECT pg_sleep(0.2);",
        },
    )
    conns = [await asyncpg.connect(dsn) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(c, "demo", d) for c in conns))
        assert sorted(v for r in results for v in r) == [1, 2]  # each applied by one starter
        assert await conns[0].fetchval("SELECT count(*) FROM demo.t") == 1
        assert await migrate(conns[0], "demo", d) == []  # and never again
        _write(d, {"0003_c.sql": "INSERT INTO demo.t VALUES (3);"})
        assert await migrate(conns[1], "demo", d) == [3]
        rows = await conns[0].fetch(
            "SELECT version FROM public.hp_migrations WHERE component = 'demo' ORDER BY 1"
        )
        assert [r["version"] for r in rows] == [1, 2, 3]
    finally:
        for c in conns:
            await c.close()


async def test_failed_migration_leaves_nothing_half_done(dsn: str, tmp_path: Path) -> None:
    d = _write(
        tmp_path / "m",
        {
            "0001_ok.sql": "CREATE TABLE ok_t (n int);",
            "0002_bad.sql": "CREATE TABLE half_t (n int); SELECT no_such_function();",
        },
    )
    conn = await asyncpg.connect(dsn)
    try:
        with pytest.raises(MigrationError, match="0002_bad failed"):
            await migrate(conn, "demo", d)
        assert await conn.fetchval("SELECT to_regclass('half_t')") is None
        assert await conn.fetchval("SELECT to_regclass('ok_t')") is not None
        (d / "0002_bad.sql").write_text("CREATE TABLE half_t (n int);")
        assert await migrate(conn, "demo", d) == [2]
        # editing an applied migration is refused
        (d / "0001_ok.sql").write_text("CREATE TABLE ok_t (n bigint);")
        with pytest.raises(MigrationError, match="was changed after it was applied"):
            await migrate(conn, "demo", d)
    finally:
        await conn.close()


async def test_misnamed_migration_file_is_refused(dsn: str, tmp_path: Path) -> None:
    d = _write(tmp_path / "m", {"1_first.sql": "SELECT 1;"})
    conn = await asyncpg.connect(dsn)
    try:
        with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
            await migrate(conn, "demo", d)
    finally:
        await conn.close()


_CANONICAL_ARGS = (
    "1::bigint, '7f1c0000-0000-0000-0000-000000000000'::uuid, 'user-a'::text, 1, 'T'::text, 1,"
    " '{}'::jsonb, '{}'::jsonb"
)


async def _volatility(db: asyncpg.Connection | asyncpg.Pool) -> str:
    """events.canonical's volatility as pg_proc spells it: i, s or v."""
    return str(
        await db.fetchval(
            "SELECT provolatile::text FROM pg_proc WHERE oid = 'events.canonical'::regproc"
        )
    )


async def test_the_chains_canonical_text_is_inlined_where_it_is_called(dsn: str) -> None:
    """events.canonical is STABLE like its body (migration 0005), so Postgres inlines it
    instead of planning its body in every append's transaction (65 us of an append's ~440)."""
    async with await PostgresEventStore.open(dsn) as store:
        plan = "\n".join(
            r[0]
            for r in await store.pool.fetch(
                f"EXPLAIN (VERBOSE, COSTS OFF) SELECT events.canonical({_CANONICAL_ARGS})"
            )
        )
    assert "events.canonical" not in plan, plan
    assert "jsonb_build_object" in plan, plan


async def test_events_appended_before_the_canonical_became_stable_still_verify(
    dsn: str, tmp_path: Path
) -> None:
    """The chain of a store made before migration 0005 verifies after it, and appends after it
    continue that chain: the inlined expression hashes the very bytes the function did."""
    before = tmp_path / "before"
    before.mkdir()
    for f in sorted(MIGRATIONS.glob("*.sql")):
        if f.name < "0005":
            (before / f.name).write_bytes(f.read_bytes())
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn, "events", before)
        assert await _volatility(conn) == "i"  # IMMUTABLE
    finally:
        await conn.close()
    async with await PostgresEventStore.open(dsn, run_migrations=False) as store:
        for i in range(6):  # appends hashed by the IMMUTABLE function
            data = {"i": i, "text": 'é"\\\n\t', "nested": {"b": [1, 2.5, None, True], "a": -1}}
            await store.append(f"thing-{i % 2}", [NewEvent("ThingHappened", data)])
        old_hashes = [
            r["hash"]
            for r in await store.pool.fetch("SELECT hash FROM events.events ORDER BY position")
        ]
    async with await PostgresEventStore.open(dsn) as store:  # migrates: 0005 applied
        assert await _volatility(store.pool) == "s"  # STABLE
        # both appends: grouped (events.append_many) and in a caller's transaction (append)
        await asyncio.gather(
            *(store.append(f"thing-{i % 2}", [NewEvent("ThingHappened", {"i": i})]) for i in (6, 7))
        )
        async with store.pool.acquire() as c, c.transaction():
            await store.append("thing-0", [NewEvent("ThingHappened", {"i": 8})], conn=c)
        report = await store.verify_chain(page_size=4)
        assert report.ok, report.problems
        assert report.checked == await store.head()
        assert [
            r["hash"]
            for r in await store.pool.fetch(
                "SELECT hash FROM events.events WHERE position <= 6 ORDER BY position"
            )
        ] == old_hashes
