"""A Postgres role per service (libs/events/roles.py), against a real Postgres: what each role
may do to the event store and to the other services' schemas."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

from libs.events.envelope import NewEvent
from libs.events.roles import MIGRATOR, SERVICE_ROLES, dsn_as, prepare_roles, role_of
from libs.events.store import PostgresEventStore

Denied = asyncpg.InsufficientPrivilegeError


@pytest.fixture
async def passwords(dsn: str) -> AsyncIterator[dict[str, str]]:
    pw = {s: secrets.token_urlsafe(24) for s in SERVICE_ROLES}
    conn = await asyncpg.connect(dsn)
    try:
        await prepare_roles(conn, pw)
    finally:
        await conn.close()
    yield pw


async def _as(dsn: str, service: str, passwords: dict[str, str]) -> asyncpg.Connection:
    return await asyncpg.connect(dsn_as(dsn, role_of(service), passwords[service]))


async def test_a_service_appends_and_reads_but_never_rewrites_the_log(
    dsn: str, passwords: dict[str, str]
) -> None:
    store = await PostgresEventStore.open(
        dsn_as(dsn, role_of("gateway"), passwords["gateway"]), max_size=2
    )
    try:
        result = await store.append("probe-1", [NewEvent("Probed", {"n": 1})])
        assert result.positions == (1,)
        assert [e.type for e in await store.read_all()] == ["Probed"]
    finally:
        await store.close()
    conn = await _as(dsn, "gateway", passwords)
    try:
        for sql in (
            "UPDATE events.events SET data = '{}'",
            "DELETE FROM events.events",
            "UPDATE events.head SET position = 0",
            "INSERT INTO events.streams (stream, version) VALUES ('x', 1)",
            "TRUNCATE events.events",
            "INSERT INTO events.relay_checkpoint (name, position) VALUES ('x', 1)",
            "DROP SCHEMA events CASCADE",
            "ALTER FUNCTION events.append(text, integer, uuid[], text[], integer[], jsonb[],"
            " jsonb[], bigint) SECURITY INVOKER",
        ):
            with pytest.raises(Denied):
                await conn.execute(sql)
    finally:
        await conn.close()
    owner = await (conn := await asyncpg.connect(dsn)).fetchval(
        "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'events'"
    )
    await conn.close()
    assert owner == MIGRATOR


async def test_a_service_owns_its_schema_and_cannot_touch_another(
    dsn: str, passwords: dict[str, str]
) -> None:
    identity = await _as(dsn, "identity", passwords)
    try:
        await identity.execute(
            "CREATE SCHEMA IF NOT EXISTS identity;"
            "CREATE TABLE identity.users (user_id serial PRIMARY KEY, password_hash text)"
        )
        await identity.execute("INSERT INTO identity.users (password_hash) VALUES ('h')")
    finally:
        await identity.close()
    for other in ("gateway", "apps"):
        conn = await _as(dsn, other, passwords)
        try:
            for sql in (
                "SELECT * FROM identity.users",
                "UPDATE identity.users SET password_hash = 'mine'",
                "ALTER TABLE identity.users ADD COLUMN x int",
                "DROP TABLE identity.users",
                "DROP SCHEMA identity CASCADE",
                "CREATE TABLE identity.extra (x int)",
            ):
                with pytest.raises(Denied):
                    await conn.execute(sql)
        finally:
            await conn.close()
    # the migration history: identity reads the event store's rows and its own, adds only its own
    identity = await _as(dsn, "identity", passwords)
    apps = await _as(dsn, "apps", passwords)
    try:
        add = (
            "INSERT INTO public.hp_migrations (component, version, name, checksum)"
            " VALUES ($1, 1, 'x', 'y')"
        )
        await identity.execute(add, "identity.probe")
        for foreign in ("apps.apps", "events"):
            with pytest.raises(Denied):  # marking another's migration applied
                await identity.execute(add, foreign)
        seen = {r[0] for r in await apps.fetch("SELECT component FROM public.hp_migrations")}
        assert "events" in seen and "identity.probe" not in seen, seen
    finally:
        await identity.close()
        await apps.close()
    # the relay keeps its own checkpoint and nothing else
    relay = await _as(dsn, "relay", passwords)
    try:
        await relay.execute("INSERT INTO events.relay_checkpoint (name, position) VALUES ('r', 1)")
        with pytest.raises(Denied):
            await relay.execute("SELECT * FROM identity.users")
    finally:
        await relay.close()


async def test_a_schema_made_by_the_superuser_is_handed_to_its_service(
    dsn: str, passwords: dict[str, str]
) -> None:
    """`homeport replay` runs as the superuser: what it makes is the service's at the next
    start, tables, sequences, functions and types alike, and the service can change it."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE SCHEMA apps; CREATE TABLE apps.t (id serial PRIMARY KEY, s text);"
            "CREATE SEQUENCE apps.free; CREATE TYPE apps.mood AS ENUM ('ok');"
            "CREATE FUNCTION apps.f() RETURNS int LANGUAGE sql AS 'SELECT 1';"
            "CREATE VIEW apps.v AS SELECT 1 AS one"
        )
        await prepare_roles(conn, passwords)
        await prepare_roles(conn, passwords)  # idempotent
        owners = await conn.fetch(
            "SELECT c.relname, pg_get_userbyid(c.relowner) AS owner FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'apps'"
            " AND c.relkind IN ('r', 'S', 'v')"
        )
        assert {r["owner"] for r in owners} == {"hp_apps"}, owners
        assert await conn.fetchval("SELECT pg_get_userbyid(proowner) FROM pg_proc "
                                   "WHERE proname = 'f'") == "hp_apps"  # fmt: skip
    finally:
        await conn.close()
    apps = await _as(dsn, "apps", passwords)
    try:
        await apps.execute(
            "ALTER TABLE apps.t ADD COLUMN x int; INSERT INTO apps.t (s) VALUES ('a')"
        )
        assert await apps.fetchval("SELECT apps.f()") == 1
    finally:
        await apps.close()


def test_dsn_as_keeps_the_address_and_quotes_the_password() -> None:
    got = dsn_as("postgresql://postgres:x@127.0.0.1:5433/homeport?sslmode=disable", "hp_a", "p@:/")
    assert got == "postgresql://hp_a:p%40%3A%2F@127.0.0.1:5433/homeport?sslmode=disable"
    with pytest.raises(ValueError):
        role_of("nobody")
