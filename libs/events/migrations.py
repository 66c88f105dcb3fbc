"""Numbered SQL migrations, applied at start-up under an advisory lock, each exactly once.

A component (the event store, a service's read models) keeps files named `NNNN_what.sql` in a
folder. `migrate()` takes a session advisory lock, so two processes starting at once apply a
file once between them; each file runs in one transaction with its row in `public.hp_migrations`,
so a crash never leaves a file half-applied and recorded, or applied and unrecorded.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from libs.events.errors import MigrationError
from libs.events.pool import keep_session_state

__all__ = ["Migration", "load_migrations", "migrate"]

_LOCK_KEY = 0x48504D4947  # "HPMIG": one lock for all components keeps the DDL serial
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path) -> list[Migration]:
    """The migrations in `directory`, in order; a misnamed or duplicate number is an error."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _FILE.match(path.name)
        if m is None:
            raise MigrationError(f"{path}: migration files must be named NNNN_name.sql")
        version = int(m.group(1))
        if version in found:
            raise MigrationError(f"{path}: migration number {version} is used twice")
        found[version] = Migration(version, m.group(2), path.read_text())
    return [found[v] for v in sorted(found)]


async def migrate(conn: asyncpg.Connection, component: str, directory: Path) -> list[int]:
    """Apply the pending migrations of `component`; returns the versions applied now."""
    migrations = load_migrations(directory)
    applied_now: list[int] = []
    keep_session_state(conn)
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        # Checked first: a service's own role may read and add its rows but not create tables
        # in public (libs/events/roles.py), and CREATE ... IF NOT EXISTS needs that right.
        if not await conn.fetchval("SELECT to_regclass('public.hp_migrations') IS NOT NULL"):
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS public.hp_migrations (
                   component text NOT NULL,
                   version integer NOT NULL,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now(),
                   PRIMARY KEY (component, version))"""
            )
        rows = await conn.fetch(
            "SELECT version, checksum FROM public.hp_migrations WHERE component = $1", component
        )
        done = {r["version"]: r["checksum"] for r in rows}
        for mig in migrations:
            if mig.version in done:
                if done[mig.version] != mig.checksum:
                    raise MigrationError(
                        f"{component} migration {mig.version:04d}_{mig.name} was changed after "
                        "it was applied: add a new migration instead of editing an old one"
                    )
                continue
            try:
                async with conn.transaction():
                    await conn.execute(mig.sql)
                    await conn.execute(
                        "INSERT INTO public.hp_migrations (component, version, name, checksum)"
                        " VALUES ($1, $2, $3, $4)",
                        component,
                        mig.version,
                        mig.name,
                        mig.checksum,
                    )
            except asyncpg.PostgresError as e:
                raise MigrationError(
                    f"{component} migration {mig.version:04d}_{mig.name} failed: {e}"
                ) from e
            applied_now.append(mig.version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now
