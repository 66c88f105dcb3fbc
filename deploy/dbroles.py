"""The services' Postgres roles on a local stack (libs/events/roles.py): their passwords in the
data dir, their connection strings, and the roles made before any service connects.

    <data>/database-roles/<service>   `<service>:<password>` (0600, made once; folder 0700)
    <data>/database-roles/.prepared.json  what the last full preparation left in the catalog

The stack itself, the CLI (`homeport replay`, `homeport audit`) and restores keep the superuser
(`<data>/database-password`); each service gets only its own role's connection string.

Preparing the roles (dozens of statements, each a commit) is skipped when nothing changed since
the last time, which one query proves: the record names the inputs (the code that prepares, the
event store's migrations, the passwords, as a digest) and a digest of everything the preparation
sets in the catalog (the roles with their password verifiers, the rights on the database, the
schemas and the event store's tables, the owners of the objects in the schemas handed over, the
history table's policy, the event store's applied migrations), read again at each start. The
record alone is never trusted: any change in the catalog (a role dropped or its password set,
a right revoked, a schema made by the superuser, a migration) or in the inputs prepares again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import asyncpg

from libs.events import migrations as _migrations
from libs.events import roles as _roles
from libs.events.migrations import load_migrations
from libs.events.nats_access import RELAY, ensure_credentials
from libs.events.roles import MIGRATOR, SERVICE_ROLES, dsn_as, prepare_roles, role_of
from libs.events.store import MIGRATIONS

__all__ = ["PREPARED_FILE", "ROLES_DIR", "prepare_database", "role_passwords", "service_dsn"]

ROLES_DIR = "database-roles"
PREPARED_FILE = ".prepared.json"  # in ROLES_DIR (no service is named so)
_RECORD_FORMAT = 1

log = logging.getLogger("homeport.stack")

# Everything prepare_roles sets, as one JSON document ($1: the roles; $2, $3: each schema handed
# over and its owner). Objects owned by their role and the services' own migration rows do not
# show, so what the services make as they run changes nothing here.
_CATALOG = """
WITH handed(schema, owner) AS (SELECT * FROM unnest($2::text[], $3::text[])),
foreign_owned AS (
  SELECT h.schema, 'schema' AS kind, n.nspname::text AS name
    FROM handed h JOIN pg_namespace n ON n.nspname = h.schema
   WHERE pg_get_userbyid(n.nspowner) <> h.owner
  UNION ALL
  SELECT h.schema, c.relkind::text, c.relname::text
    FROM handed h JOIN pg_namespace n ON n.nspname = h.schema
    JOIN pg_class c ON c.relnamespace = n.oid
   WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND pg_get_userbyid(c.relowner) <> h.owner
  UNION ALL
  SELECT h.schema, 'routine', p.oid::regprocedure::text
    FROM handed h JOIN pg_namespace n ON n.nspname = h.schema
    JOIN pg_proc p ON p.pronamespace = n.oid
   WHERE pg_get_userbyid(p.proowner) <> h.owner
  UNION ALL
  SELECT h.schema, 'type', t.typname::text
    FROM handed h JOIN pg_namespace n ON n.nspname = h.schema
    JOIN pg_type t ON t.typnamespace = n.oid
   WHERE t.typtype IN ('e', 'd') AND pg_get_userbyid(t.typowner) <> h.owner
)
SELECT json_build_object(
  'database', (SELECT json_build_object('name', datname, 'acl', datacl::text[])
                 FROM pg_database WHERE datname = current_database()),
  'roles', (SELECT json_agg(json_build_object(
                     'name', rolname, 'super', rolsuper, 'inherit', rolinherit,
                     'createrole', rolcreaterole, 'createdb', rolcreatedb, 'login', rolcanlogin,
                     'replication', rolreplication, 'bypassrls', rolbypassrls,
                     'connlimit', rolconnlimit, 'validuntil', rolvaliduntil,
                     'password', rolpassword) ORDER BY rolname)
              FROM pg_authid WHERE rolname = ANY($1::text[])),
  'schemas', (SELECT json_agg(json_build_object(
                       'name', nspname, 'owner', pg_get_userbyid(nspowner), 'acl', nspacl::text[])
                       ORDER BY nspname)
                FROM pg_namespace WHERE nspname IN ('public', 'events')),
  'tables', (SELECT json_agg(json_build_object(
                      'name', n.nspname || '.' || c.relname, 'owner', pg_get_userbyid(c.relowner),
                      'acl', c.relacl::text[], 'rls', c.relrowsecurity,
                      'force_rls', c.relforcerowsecurity) ORDER BY n.nspname, c.relname)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE (n.nspname = 'events' AND c.relkind IN ('r', 'p'))
                 OR (n.nspname = 'public' AND c.relname = 'hp_migrations')),
  'policies', (SELECT json_agg(json_build_object(
                        'name', polname, 'cmd', polcmd, 'permissive', polpermissive,
                        'roles', polroles::regrole[]::text[],
                        'using', pg_get_expr(polqual, polrelid),
                        'check', pg_get_expr(polwithcheck, polrelid)) ORDER BY polname)
                 FROM pg_policy WHERE polrelid = to_regclass('public.hp_migrations')),
  'migrations', (SELECT json_agg(json_build_object('version', version, 'checksum', checksum)
                                 ORDER BY version)
                   FROM public.hp_migrations WHERE component = 'events'),
  'foreign_owned', (SELECT json_agg(f ORDER BY f.schema, f.kind, f.name) FROM foreign_owned f)
)::text
"""


def role_passwords(data_dir: Path) -> dict[str, str]:
    """Every service role's password (made now if missing)."""
    return ensure_credentials(data_dir / ROLES_DIR, SERVICE_ROLES)


def service_dsn(database_url: str, data_dir: Path, service: str) -> str | None:
    """The connection string of `service`'s own role; None for a service without one."""
    if service not in SERVICE_ROLES:
        return None
    return dsn_as(database_url, role_of(service), role_passwords(data_dir)[service])


def _inputs(passwords: Mapping[str, str]) -> str:
    """A digest of what prepare_roles makes the catalog from, but the catalog itself."""
    h = hashlib.sha256(f"{_RECORD_FORMAT}\0{MIGRATOR}\0{SERVICE_ROLES}\0".encode())
    for module in (_roles, _migrations):
        h.update(Path(module.__file__ or "").read_bytes())
    for m in load_migrations(MIGRATIONS):
        h.update(f"\0{m.version}\0{m.checksum}".encode())
    for service in sorted(passwords):
        h.update(f"\0{service}\0{passwords[service]}".encode())
    return h.hexdigest()


async def _catalog(conn: asyncpg.Connection, passwords: Mapping[str, str]) -> str | None:
    """A digest of what prepare_roles sets in the catalog; None before it ever ran."""
    if not await conn.fetchval("SELECT to_regclass('public.hp_migrations') IS NOT NULL"):
        return None
    roles = [MIGRATOR, *(role_of(s) for s in passwords)]
    handed = [("events", MIGRATOR)]
    handed += [(s, role_of(s)) for s in passwords if s != RELAY]
    doc = await conn.fetchval(
        _CATALOG, roles, [s for s, _ in handed], [owner for _, owner in handed]
    )
    return hashlib.sha256(str(doc).encode()).hexdigest()


def _read_record(path: Path) -> dict[str, object] | None:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _write_record(path: Path, inputs: str, catalog: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps({"format": _RECORD_FORMAT, "inputs": inputs, "catalog": catalog}))
    os.replace(tmp, path)


async def prepare_database(database_url: str, data_dir: Path) -> bool:
    """The roles and their rights in the platform database (as the superuser of
    `database_url`), the event store migrated as its owner; skipped when the catalog is still
    as the last preparation left it for the same inputs. True when it prepared."""
    passwords = role_passwords(data_dir)
    record_path = data_dir / ROLES_DIR / PREPARED_FILE
    inputs = _inputs(passwords)
    conn = await asyncpg.connect(database_url)
    try:
        record = _read_record(record_path)
        if record is not None and record.get("inputs") == inputs:
            catalog = await _catalog(conn, passwords)
            if catalog is not None and record.get("catalog") == catalog:
                log.info("database roles and migrations are current: nothing to prepare")
                return False
        record_path.unlink(missing_ok=True)  # a preparation cut short leaves no record
        await prepare_roles(conn, passwords)
        _write_record(record_path, inputs, await _catalog(conn, passwords) or "")
    finally:
        await conn.close()
    log.info("prepared the database roles and migrations")
    return True
