"""Postgres roles: one per service, and the event store's owner that runs its migrations.

`prepare_roles()` runs as the superuser at every start of the platform (the local stack after its
Postgres is up; the installer on a server), before any service connects, and is idempotent:

- `homeport_migrator` (no login) owns the `events` schema, its tables and functions, and runs the
  event store's migrations (`SET ROLE`). The append functions run with its rights (SECURITY
  DEFINER, migration 0004): that is the only way into the events table.
- `hp_<service>` (login, its own password) for each service and the relay: it owns the schema of
  its name and everything in it (its read model, its migrations' history rows), may create that
  schema, reads `events.events`, `events.streams` and `events.head`, and appends only through
  `events.append`/`events.append_many`. It cannot update or delete an event, nor read or alter
  another service's schema. The relay alone writes `events.relay_checkpoint`.

A schema made by someone else (a `homeport replay` run as the superuser, or a data directory from
before the roles) is handed to its service's role here, with every object in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from libs.events.migrations import migrate
from libs.events.nats_access import RELAY, SERVICE_USERS
from libs.events.store import MIGRATIONS

__all__ = [
    "MIGRATOR",
    "SERVICE_ROLES",
    "dsn_as",
    "hand_over_schemas",
    "prepare_roles",
    "role_of",
]

MIGRATOR = "homeport_migrator"
# The services with a role (and a schema of their name, except the relay).
SERVICE_ROLES: tuple[str, ...] = SERVICE_USERS
_READ = ("events.events", "events.streams", "events.head")


def role_of(service: str) -> str:
    """`apps` -> `hp_apps`."""
    if service not in SERVICE_ROLES:
        raise ValueError(f"no database role is defined for {service!r}")
    return f"hp_{service}"


def dsn_as(dsn: str, role: str, password: str) -> str:
    """`dsn` with `role` and `password` as its user (the host, port and database kept)."""
    parts = urlsplit(dsn)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(role, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def _role(conn: asyncpg.Connection, role: str, password: str | None) -> None:
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
    if password is None:
        if not exists:
            await conn.execute(f'CREATE ROLE "{role}" NOLOGIN')
        return
    verb = "ALTER" if exists else "CREATE"
    # a password is no identifier: format() quotes it as a literal
    sql = await conn.fetchval(
        f"SELECT format('{verb} ROLE %I LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB "
        "NOREPLICATION NOBYPASSRLS PASSWORD %L', $1::text, $2::text)",
        role,
        password,
    )
    await conn.execute(sql)


_OWNED = """
SELECT format('ALTER %s %I.%I OWNER TO %I',
              CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                             WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE'
                             ELSE 'TABLE' END, n.nspname, c.relname, $2::text)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
   AND pg_get_userbyid(c.relowner) <> $2
   -- a sequence a column owns follows its table
   AND NOT (c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend d
        WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i')))
UNION ALL
SELECT format('ALTER ROUTINE %s OWNER TO %I', p.oid::regprocedure, $2::text)
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = $1 AND pg_get_userbyid(p.proowner) <> $2
UNION ALL
SELECT format('ALTER TYPE %I.%I OWNER TO %I', n.nspname, t.typname, $2::text)
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE n.nspname = $1 AND t.typtype IN ('e', 'd') AND pg_get_userbyid(t.typowner) <> $2
"""


async def _hand_over(conn: asyncpg.Connection, schema: str, role: str) -> None:
    """`schema` and everything in it owned by `role` (nothing to do when it is already)."""
    owner = await conn.fetchval(
        "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = $1", schema
    )
    if owner is None:
        return
    async with conn.transaction():
        if owner != role:
            alter = "SELECT format('ALTER SCHEMA %I OWNER TO %I', $1::text, $2::text)"
            await conn.execute(await conn.fetchval(alter, schema, role))
        for (sql,) in await conn.fetch(_OWNED, schema, role):
            await conn.execute(sql)


async def hand_over_schemas(conn: asyncpg.Connection) -> list[str]:
    """Give each service whose role exists its schema back (and the event store to its owner)
    after the superuser made or rebuilt them (a restore's read models, `homeport replay`);
    the schemas handed over."""
    done = []
    if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", MIGRATOR):
        await _hand_over(conn, "events", MIGRATOR)
        done.append("events")
    for service in SERVICE_ROLES:
        if service == RELAY:
            continue
        role = role_of(service)
        if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
            await _hand_over(conn, service, role)
            done.append(service)
    return done


async def prepare_roles(conn: asyncpg.Connection, passwords: Mapping[str, str]) -> None:
    """Make or update the roles and their rights in the database `conn` is connected to (as a
    superuser), migrating the event store as its owner first. `passwords`: service -> password
    for each service in SERVICE_ROLES (a missing one gets no role and so cannot connect)."""
    database = await conn.fetchval("SELECT current_database()")
    await _role(conn, MIGRATOR, None)
    await conn.execute(f'GRANT CREATE ON DATABASE "{database}" TO {MIGRATOR}')
    await conn.execute(f"GRANT CREATE, USAGE ON SCHEMA public TO {MIGRATOR}")
    await _hand_over(conn, "events", MIGRATOR)
    if await conn.fetchval("SELECT to_regclass('public.hp_migrations') IS NOT NULL"):
        await conn.execute(f"ALTER TABLE public.hp_migrations OWNER TO {MIGRATOR}")
    await conn.execute(f"SET ROLE {MIGRATOR}")
    try:
        await migrate(conn, "events", MIGRATIONS)
    finally:
        await conn.execute("RESET ROLE")
    for service in SERVICE_ROLES:
        password = passwords.get(service)
        if password is None:
            continue
        role = role_of(service)
        await _role(conn, role, password)
        await conn.execute(f'GRANT CONNECT, CREATE ON DATABASE "{database}" TO {role}')
        await conn.execute(f"GRANT USAGE ON SCHEMA events TO {role}")
        await conn.execute(f"GRANT SELECT ON {', '.join(_READ)} TO {role}")
        # its read models' migration history (public.hp_migrations: one table for all)
        await conn.execute(f"GRANT SELECT, INSERT ON public.hp_migrations TO {role}")
        if service == RELAY:
            await conn.execute(f"GRANT SELECT, INSERT, UPDATE ON events.relay_checkpoint TO {role}")
        else:
            await _hand_over(conn, service, role)
    # one history table for every component: a role reads the event store's rows and its own
    # (`<its schema>.<name>`), and may add only its own (the owner, migrator, is not limited)
    await conn.execute(
        "ALTER TABLE public.hp_migrations ENABLE ROW LEVEL SECURITY;"
        "DROP POLICY IF EXISTS own_rows ON public.hp_migrations;"
        "CREATE POLICY own_rows ON public.hp_migrations"
        " USING (component = 'events' OR split_part(component, '.', 1) = substr(current_user, 4))"
        " WITH CHECK (split_part(component, '.', 1) = substr(current_user, 4))"
    )
    # nobody else: the tables' rights are the owner's and the grants above
    await conn.execute(
        "REVOKE ALL ON events.events, events.streams, events.head, events.relay_checkpoint "
        "FROM PUBLIC"
    )
