"""The postgresql addon against a real addon Postgres, checked from real app containers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import docker
import pytest

from deploy.embedded import PostgresServer
from services.apps.addons import AddonError, AddonPostgres, PostgresCredentials
from services.apps.container import NetworkInfo
from tests.apps.addonkit import AddonServer, PsqlResult, run_psql

pytestmark = pytest.mark.xdist_group("addon_postgresql")


@pytest.fixture
async def apps(addon_postgres: AddonPostgres) -> AsyncIterator[Callable[[], str]]:
    """New app ids; every app is deprovisioned after the test."""
    made: list[str] = []

    def new() -> str:
        made.append(str(uuid.uuid4()))
        return made[-1]

    yield new
    for app_id in made:
        await addon_postgres.deprovision(app_id)


async def _admin_fetch(server: AddonServer, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(server.admin_dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def _hba_lines(server: AddonServer) -> list[str]:
    return [ln for ln in server.hba_file.read_text().splitlines() if ln.startswith("host ")]


async def test_provision_lets_each_app_into_its_own_database_from_its_own_network_only(
    addon_server: AddonServer,
    addon_postgres: AddonPostgres,
    addon_docker: docker.DockerClient,
    psql_image: str,
    app_network: Callable[[], NetworkInfo],
    apps: Callable[[], str],
    pg_server: PostgresServer,
) -> None:
    net_a, net_b = app_network(), app_network()
    app_a, app_b = apps(), apps()
    a = await addon_postgres.provision(app_a, net_a.subnet)
    b = await addon_postgres.provision(app_b, net_b.subnet)

    assert (a.host, a.port) == (addon_server.host, addon_server.port)
    assert a.database == a.username == "app_" + uuid.UUID(app_a).hex
    assert len(a.password) >= 32 and a.password != b.password  # token_urlsafe(24): 192 bits
    assert a.password not in repr(a)
    assert a.env()["HOMEPORT_POSTGRESQL_URL"] == a.url()
    assert a.url() == f"postgresql://{a.username}:{a.password}@{a.host}:{a.port}/{a.database}"
    assert set(a.env()) == {
        f"HOMEPORT_POSTGRESQL_{k}"
        for k in ("HOST", "PORT", "DATABASE", "USERNAME", "PASSWORD", "URL")
    }
    assert f"host    {a.database}  {a.username}  {net_a.subnet}  scram-sha-256" in _hba_lines(
        addon_server
    )

    async def psql(
        net: NetworkInfo, cred: PostgresCredentials, database: str, sql: str = "SELECT 1"
    ) -> PsqlResult:
        return await run_psql(
            addon_docker,
            psql_image,
            net,
            host=cred.host,
            port=cred.port,
            user=cred.username,
            database=database,
            password=cred.password,
            sql=sql,
        )

    platform = PostgresCredentials(net_a.gateway, pg_server.port, "postgres", "postgres", "x")
    own, b_from_a, a_into_b, a_from_b, plat_gw, plat_svc, plat_lo = await asyncio.gather(
        psql(
            net_a,
            a,
            a.database,
            "CREATE TABLE notes (x int); INSERT INTO notes VALUES (7); SELECT sum(x) FROM notes",
        ),
        psql(net_a, b, b.database),
        psql(net_a, a, b.database),
        psql(net_b, a, a.database),
        psql(net_a, platform, "postgres"),
        psql(
            net_a,
            PostgresCredentials(addon_server.host, pg_server.port, "p", "postgres", "x"),
            "postgres",
        ),
        psql(
            net_a,
            PostgresCredentials("127.0.0.1", pg_server.port, "p", "postgres", "x"),
            "postgres",
        ),
    )
    assert own.code == 0 and own.output.strip().splitlines()[-1] == "7", own.output
    for refused in (b_from_a, a_into_b, a_from_b):
        assert refused.code != 0 and "no pg_hba.conf entry" in refused.output, refused.output
    # The platform's own Postgres listens on the host's loopback only.
    for unreachable in (plat_gw, plat_svc, plat_lo):
        assert unreachable.code != 0 and "Connection refused" in unreachable.output, (
            unreachable.output
        )

    # From the host's loopback the app's role has no way in either.
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
        await asyncpg.connect(
            host="127.0.0.1", port=a.port, user=a.username, password=a.password, database=a.database
        )
    (role,) = await _admin_fetch(
        addon_server,
        "SELECT r.rolcanlogin, r.rolsuper, r.rolcreatedb, r.rolcreaterole,"
        " pg_get_userbyid(d.datdba) AS owner,"
        " has_database_privilege($1, $2, 'CONNECT') AS into_other"
        " FROM pg_roles r, pg_database d WHERE r.rolname = $1 AND d.datname = $1",
        a.username,
        b.database,
    )
    assert tuple(role) == (True, False, False, False, a.username, False)


async def test_deprovision_removes_database_role_and_hba_line(
    addon_server: AddonServer,
    addon_postgres: AddonPostgres,
    addon_docker: docker.DockerClient,
    psql_image: str,
    app_network: Callable[[], NetworkInfo],
    apps: Callable[[], str],
) -> None:
    net = app_network()
    app_id = apps()
    cred = await addon_postgres.provision(app_id, net.subnet)
    assert await addon_postgres.exists(app_id)
    assert any(cred.database in ln for ln in _hba_lines(addon_server))

    await addon_postgres.deprovision(app_id)
    await addon_postgres.deprovision(app_id)  # again: nothing left to do, no error

    assert not await addon_postgres.exists(app_id)
    assert not any(cred.database in ln for ln in _hba_lines(addon_server))
    left = await _admin_fetch(
        addon_server,
        "SELECT 'db' FROM pg_database WHERE datname = $1"
        " UNION ALL SELECT 'role' FROM pg_roles WHERE rolname = $1",
        cred.database,
    )
    assert left == []
    r = await run_psql(
        addon_docker,
        psql_image,
        net,
        host=cred.host,
        port=cred.port,
        user=cred.username,
        database=cred.database,
        password=cred.password,
    )
    assert r.code != 0 and "no pg_hba.conf entry" in r.output, r.output


async def test_restore_brings_back_the_dump_and_drops_later_rows(
    addon_server: AddonServer,
    addon_postgres: AddonPostgres,
    addon_docker: docker.DockerClient,
    psql_image: str,
    app_network: Callable[[], NetworkInfo],
    apps: Callable[[], str],
    tmp_path: Path,
) -> None:
    net = app_network()
    app_id = apps()
    cred = await addon_postgres.provision(app_id, net.subnet)
    app_db = addon_server.server.dsn_for(cred.database)

    async def as_app(sql: str) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(app_db)
        try:
            await conn.execute(f'SET ROLE "{cred.username}"')
            if ";" in sql:  # several statements, no result
                await conn.execute(sql)
                return []
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    await as_app("CREATE TABLE notes (body text); INSERT INTO notes VALUES ('before')")
    dump = tmp_path / "app.dump"
    await addon_postgres.dump(app_id, dump)
    assert dump.read_bytes()[:5] == b"PGDMP" and (dump.stat().st_mode & 0o777) == 0o600
    await as_app("INSERT INTO notes VALUES ('after'); CREATE TABLE extra (x int)")

    await addon_postgres.restore(app_id, dump)

    rows = await as_app("SELECT body FROM notes")
    assert [r[0] for r in rows] == ["before"]
    assert await as_app("SELECT 1 FROM pg_tables WHERE tablename = 'extra'") == []
    (owner,) = await as_app("SELECT tableowner FROM pg_tables WHERE tablename = 'notes'")
    assert owner[0] == cred.username
    # The app itself, from its network, still gets in and may write its restored table.
    r = await run_psql(
        addon_docker,
        psql_image,
        net,
        host=cred.host,
        port=cred.port,
        user=cred.username,
        database=cred.database,
        password=cred.password,
        sql="INSERT INTO notes VALUES ('app'); SELECT count(*) FROM notes",
    )
    assert r.code == 0 and r.output.strip().splitlines()[-1] == "2", r.output

    junk = tmp_path / "junk.dump"
    junk.write_bytes(b"not a dump")
    with pytest.raises(AddonError, match=f"pg_restore failed for app {app_id}"):
        await addon_postgres.restore(app_id, junk)
    assert len(await as_app("SELECT body FROM notes")) == 2


async def test_provision_is_idempotent_and_a_new_manager_writes_the_same_hba(
    addon_server: AddonServer,
    addon_postgres: AddonPostgres,
    addon_docker: docker.DockerClient,
    psql_image: str,
    app_network: Callable[[], NetworkInfo],
    apps: Callable[[], str],
) -> None:
    net = app_network()
    app_id = apps()
    first = await addon_postgres.provision(app_id, net.subnet)
    again = await addon_postgres.provision(app_id, net.subnet, password="p" * 30)
    assert (again.database, again.username) == (first.database, first.username)
    assert again.password == "p" * 30
    rows = await _admin_fetch(
        addon_server, "SELECT count(*) FROM pg_database WHERE datname = $1", first.database
    )
    assert rows[0][0] == 1
    assert sum(first.database in ln for ln in _hba_lines(addon_server)) == 1

    old_pw, new_pw = await asyncio.gather(
        *(
            run_psql(
                addon_docker,
                psql_image,
                net,
                host=c.host,
                port=c.port,
                user=c.username,
                database=c.database,
                password=c.password,
            )
            for c in (first, again)
        )
    )
    assert old_pw.code != 0 and "password authentication failed" in old_pw.output, old_pw.output
    assert new_pw.code == 0, new_pw.output

    before = addon_server.hba_file.read_text()
    await addon_server.manager().sync_hba()
    assert addon_server.hba_file.read_text() == before
    addon_server.hba_file.unlink()  # a lost file is rebuilt the same from the apps table
    await addon_server.manager().sync_hba()
    assert addon_server.hba_file.read_text() == before


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "x",
        "app",
        "0B6C4C41-8F8E-4B53-9D0A-0D6D8B3C7E11",
        "{0b6c4c41-8f8e-4b53-9d0a-0d6d8b3c7e11}",
        "0b6c4c418f8e4b539d0a0d6d8b3c7e11",
        '0b6c4c41-8f8e-4b53-9d0a-0d6d8b3c7e1"; DROP ROLE postgres; --',
        "0b6c4c41-8f8e-4b53-9d0a-0d6d8b3c7e11\n",
    ],
)
async def test_bad_app_ids_are_refused_before_any_sql(bad: str, tmp_path: Path) -> None:
    # Nothing listens on port 1: any attempt to reach a server would fail differently.
    mgr = AddonPostgres(
        "postgresql://postgres:pw@127.0.0.1:1/postgres", "10.0.0.1", 1, tmp_path / "hba"
    )
    calls = [
        mgr.provision(bad, "10.1.2.0/24"),
        mgr.deprovision(bad),
        mgr.exists(bad),
        mgr.dump(bad, tmp_path / "d"),
        mgr.restore(bad, tmp_path / "d"),
    ]
    for call in calls:
        with pytest.raises(AddonError, match="is not a lowercase UUID"):
            await call
    assert not (tmp_path / "hba").exists()


@pytest.mark.parametrize(
    ("subnet", "password", "match"),
    [
        ("10.1.2.3/24", None, "not a network address"),
        ("everyone", None, "not a network address"),
        ("0.0.0.0/0", None, "too wide"),
        ("10.1.2.0/24", "short", "22-256 printable ASCII"),
        ("10.1.2.0/24", "p" * 30 + "' x", "22-256 printable ASCII"),
    ],
)
async def test_bad_subnets_and_passwords_are_refused(
    subnet: str, password: str | None, match: str, tmp_path: Path
) -> None:
    mgr = AddonPostgres(
        "postgresql://postgres:pw@127.0.0.1:1/postgres", "10.0.0.1", 1, tmp_path / "hba"
    )
    with pytest.raises(AddonError, match=match):
        await mgr.provision(str(uuid.uuid4()), subnet, password)
