"""Hash chain tamper detection and schema migrations, on a real Postgres."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from libs.events.envelope import NewEvent
from libs.events.errors import MigrationError
from libs.events.migrations import migrate
from libs.events.store import PostgresEventStore


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
