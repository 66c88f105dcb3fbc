"""The local stack prepares the services' roles (deploy/dbroles.py) at a start only when
something changed since the last time: a start with everything current leaves the catalog as it
was, and anything that drifted (a right revoked, a password set or a password file replaced, a
role's login taken, a schema the superuser made, the history table's policy) is prepared again;
the record of the last preparation is never trusted alone."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import asyncpg
import pytest

from deploy.dbroles import PREPARED_FILE, ROLES_DIR, prepare_database, role_passwords
from libs.events.errors import MigrationError
from libs.events.roles import SERVICE_ROLES, role_of


def _scram_matches(verifier: str, password: str) -> bool:
    """Whether a SCRAM-SHA-256 verifier of pg_authid was made from `password` (RFC 5802)."""
    method, _, rest = verifier.partition("$")
    iterations_salt, _, keys = rest.partition("$")
    iterations, _, salt = iterations_salt.partition(":")
    stored_key = keys.partition(":")[0]
    if method != "SCRAM-SHA-256":
        return False
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(salt), int(iterations)
    )
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return base64.b64encode(hashlib.sha256(client_key).digest()).decode() == stored_key


async def _verifiers(conn: asyncpg.Connection) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY($1::text[])",
        [role_of(s) for s in SERVICE_ROLES],
    )
    return {r["rolname"]: r["rolpassword"] for r in rows}


async def _all_current(conn: asyncpg.Connection, data: Path) -> None:
    """What the preparation promises: each role logs in with its file's password and has its
    rights, the event store is migrated, the history table's policy holds."""
    passwords = role_passwords(data)
    verifiers = await _verifiers(conn)
    for service in SERVICE_ROLES:
        role = role_of(service)
        assert _scram_matches(verifiers[role], passwords[service]), role
        assert await conn.fetchval(
            "SELECT rolcanlogin AND NOT rolsuper FROM pg_roles WHERE rolname = $1", role
        )
        assert await conn.fetchval(
            "SELECT has_table_privilege($1, 'events.events', 'SELECT')", role
        )
    versions = await conn.fetch(
        "SELECT version FROM public.hp_migrations WHERE component = 'events' ORDER BY version"
    )
    assert [r[0] for r in versions] == list(range(1, len(versions) + 1)) and len(versions) >= 4
    assert await conn.fetchval(
        "SELECT count(*) FROM pg_policy WHERE polrelid = 'public.hp_migrations'::regclass"
        " AND polname = 'own_rows'"
    )


DRIFTS = {
    "right_revoked": "REVOKE SELECT ON events.events FROM hp_gateway",
    "password_set": "ALTER ROLE hp_identity PASSWORD 'someone else chose this'",
    "login_taken": "ALTER ROLE hp_notify NOLOGIN",
    "made_superuser": "ALTER ROLE hp_dns SUPERUSER",
    "schema_by_superuser": "CREATE SCHEMA apps; CREATE TABLE apps.t (id serial PRIMARY KEY)",
    "event_table_by_superuser": "CREATE TABLE events.extra (x int)",
    "policy_dropped": "DROP POLICY own_rows ON public.hp_migrations",
    "public_granted": "GRANT SELECT ON events.events TO PUBLIC",
}


@pytest.mark.parametrize("drift", [*DRIFTS, "password_file_replaced", "record_garbled"])
async def test_a_start_prepares_only_what_drifted(dsn: str, tmp_path: Path, drift: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    conn = await asyncpg.connect(dsn)
    try:
        assert await prepare_database(dsn, data) is True  # the first start
        await _all_current(conn, data)
        before = await _verifiers(conn)
        assert await prepare_database(dsn, data) is False  # nothing changed: nothing done
        assert await _verifiers(conn) == before  # no password was even set again

        if drift == "password_file_replaced":
            (data / ROLES_DIR / "mail").unlink()  # made again, with a new password
        elif drift == "record_garbled":
            record = data / ROLES_DIR / PREPARED_FILE
            doc = json.loads(record.read_text())
            record.write_text(json.dumps({**doc, "catalog": "0" * 64}))
        else:
            await conn.execute(DRIFTS[drift])
        assert await prepare_database(dsn, data) is True
        await _all_current(conn, data)
        owner = "SELECT tableowner FROM pg_tables WHERE schemaname = $1 AND tablename = $2"
        if drift == "schema_by_superuser":
            assert await conn.fetchval(owner, "apps", "t") == "hp_apps"
        if drift == "event_table_by_superuser":
            assert await conn.fetchval(owner, "events", "extra") == "homeport_migrator"
        if drift == "public_granted":
            public = (
                "SELECT count(*) FROM pg_class c, aclexplode(c.relacl) a"
                " WHERE c.oid = 'events.events'::regclass AND a.grantee = 0"
            )
            assert await conn.fetchval(public) == 0
        assert await prepare_database(dsn, data) is False  # and current again
    finally:
        await conn.close()


async def test_the_record_is_written_only_after_a_whole_preparation(
    dsn: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    record = data / ROLES_DIR / PREPARED_FILE
    assert await prepare_database(dsn, data) is True
    assert record.stat().st_mode & 0o777 == 0o600
    assert set(json.loads(record.read_text())) == {"format", "inputs", "catalog"}
    # a migration that fails (an edited one) stops the preparation: no record of it is kept
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "UPDATE public.hp_migrations SET checksum = 'edited' WHERE component = 'events'"
            " AND version = 1"
        )
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await prepare_database(dsn, data)
        assert not record.exists()
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await prepare_database(dsn, data)  # still refused at the next start, not skipped
    finally:
        await conn.close()
