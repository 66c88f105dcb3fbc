"""The services' Postgres roles on a local stack (libs/events/roles.py): their passwords in the
data dir, their connection strings, and the roles made before any service connects.

    <data>/database-roles/<service>   `<service>:<password>` (0600, made once; folder 0700)

The stack itself, the CLI (`homeport replay`, `homeport audit`) and restores keep the superuser
(`<data>/database-password`); each service gets only its own role's connection string.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

from libs.events.nats_access import ensure_credentials
from libs.events.roles import SERVICE_ROLES, dsn_as, prepare_roles, role_of

__all__ = ["ROLES_DIR", "prepare_database", "role_passwords", "service_dsn"]

ROLES_DIR = "database-roles"


def role_passwords(data_dir: Path) -> dict[str, str]:
    """Every service role's password (made now if missing)."""
    return ensure_credentials(data_dir / ROLES_DIR, SERVICE_ROLES)


def service_dsn(database_url: str, data_dir: Path, service: str) -> str | None:
    """The connection string of `service`'s own role; None for a service without one."""
    if service not in SERVICE_ROLES:
        return None
    return dsn_as(database_url, role_of(service), role_passwords(data_dir)[service])


async def prepare_database(database_url: str, data_dir: Path) -> None:
    """The roles and their rights in the platform database (as the superuser of
    `database_url`), the event store migrated as its owner."""
    conn = await asyncpg.connect(database_url)
    try:
        await prepare_roles(conn, role_passwords(data_dir))
    finally:
        await conn.close()
