"""The apps read model's migrations on real Postgres: rows written before a hold table existed
get their holds when the migration that backfills them runs (0006), since an append now takes
and releases only the holds it changes (services/apps/projections.py)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import asyncpg

from libs.events.migrations import migrate
from libs.events.store import PostgresEventStore
from services.apps.projections import AppsProjection

MIGRATIONS = AppsProjection.migrations
assert MIGRATIONS is not None

_ROW = (
    "INSERT INTO apps.apps (app_id, manifest_id, version, location, domain, access,"
    " memory_bytes, state, running, health, stream_version, created_at, updated_at,"
    " tcp_ports, udp_ports) VALUES ($1, 'org.example.git', '1.0.0', $2, 'example.org', '{}',"
    " 1, $3, true, 'healthy', 3, now(), now(), $4::jsonb, '{}')"
)


async def _migrate_until(conn: asyncpg.Connection, tmp: Path, last: int) -> None:
    part = tmp / f"until-{last}"
    part.mkdir()
    for f in sorted(MIGRATIONS.glob("*.sql")):
        if int(f.name.split("_", 1)[0]) <= last:
            shutil.copy(f, part / f.name)
    await migrate(conn, "apps.apps", part)


async def test_ports_of_apps_recorded_before_the_ports_table_are_held_after_0006(
    store: PostgresEventStore, tmp_path: Path
) -> None:
    kept, gone, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with store.pool.acquire() as conn:
        await conn.execute("CREATE SCHEMA IF NOT EXISTS apps")
        await _migrate_until(conn, tmp_path, 5)
        await conn.execute(_ROW, kept, "git", "installed", '{"SSH": 2222, "WEB": 8022}')
        await conn.execute(_ROW, gone, "old", "uninstalled", '{"SSH": 2223}')
        # another app already holds a port the first one's row names: left to it, no failure
        await conn.execute(_ROW, other, "wiki", "installed", "{}")
        await conn.execute("INSERT INTO apps.ports VALUES ('tcp', 8022, $1)", other)
        assert await conn.fetchval("SELECT count(*) FROM apps.ports") == 1

        await migrate(conn, "apps.apps", MIGRATIONS)

        held = await conn.fetch("SELECT * FROM apps.ports ORDER BY host_port")
        assert [(r["protocol"], r["host_port"], r["app_id"]) for r in held] == [
            ("tcp", 2222, kept),
            ("tcp", 8022, other),
        ]
        places = await conn.fetch("SELECT location, app_id FROM apps.locations ORDER BY 1")
        assert [(r["location"], r["app_id"]) for r in places] == [("git", kept), ("wiki", other)]
