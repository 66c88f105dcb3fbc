"""Bring the event store's schema up to date: `python -m deploy.migrate` (HP_DATABASE_URL).

Run by `homeport update` with the NEW release's interpreter in its directory, before it switches.
Each service applies its own projections' migrations as it starts (libs/events/projection.py).
"""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg

from libs.events.errors import MigrationError
from libs.events.migrations import migrate
from libs.events.pool import open_pool
from libs.events.roles import MIGRATOR
from libs.events.store import MIGRATIONS

__all__ = ["main", "migrate_store"]


async def migrate_store(dsn: str) -> list[int]:
    """Apply the event store's pending migrations; the versions applied now."""
    pool = await open_pool(dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            # as the event store's owner where the services have roles (libs/events/roles.py):
            # roles are the cluster's, rights the database's, so the owner's role existing is
            # not enough; it must hold the right its migrations need here (CREATE in public)
            owner = await conn.fetchval(
                "SELECT has_schema_privilege(rolname, 'public', 'CREATE') FROM pg_roles"
                " WHERE rolname = $1",
                MIGRATOR,
            )
            if owner:
                await conn.execute(f"SET ROLE {MIGRATOR}")
            try:
                return await migrate(conn, "events", MIGRATIONS)
            finally:
                if owner:
                    await conn.execute("RESET ROLE")
    finally:
        await pool.close()


def main() -> int:
    dsn = os.environ.get("HP_DATABASE_URL")
    if not dsn:
        print("deploy.migrate: HP_DATABASE_URL is not set (homeport.env)", file=sys.stderr)
        return 2
    try:
        applied = asyncio.run(migrate_store(dsn))
    except (OSError, MigrationError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        print(f"deploy.migrate: {e}", file=sys.stderr)
        return 1
    print(f"event store: {len(applied)} migration(s) applied {applied}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
