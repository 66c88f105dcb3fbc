"""The apps' database server runs on demand (issue 15, idle memory): nothing asks for it while
no app has a database; the first database writes its flag and waits for whoever supervises it
(here the test plays `homeport up`: it starts a real Postgres once the flag appears)."""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from deploy.embedded import EmbeddedError, PostgresServer, free_port
from services.apps.addons.postgresql import STARTING, AddonError, AddonPostgres, addon_postgres
from services.apps.addons.starting import keep_hba
from tests.support.servers import need_server

SUBNET = "10.213.77.0/24"  # only written into pg_hba.conf: no container connects here


@pytest.fixture
def stopped(tmp_root: Path) -> Iterator[PostgresServer]:
    """An addon Postgres that is not running (its hba file made, as the stack makes it)."""
    datadir = tmp_root / f"addon-on-demand-{secrets.token_hex(4)}"
    hba = datadir / "pg_hba.conf"
    server = PostgresServer(
        datadir, port=free_port(), password=secrets.token_urlsafe(24), hba_file=hba
    )
    owner = None
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        owner = (pw.pw_uid, pw.pw_gid)
    AddonPostgres(server.dsn, "127.0.0.1", server.port, hba).ensure_hba_file(owner)
    try:
        server.init()
    except (EmbeddedError, OSError) as e:
        need_server("addon postgres", e)
    try:
        yield server
    finally:
        server.stop()


def _manager(server: PostgresServer) -> AddonPostgres:
    assert server.hba_file is not None
    pg = addon_postgres(server.dsn, "127.0.0.1", server.port, server.hba_file)
    assert pg is not None
    return pg


async def _answers(server: PostgresServer) -> bool:
    try:
        conn = await asyncpg.connect(server.dsn, timeout=2)
    except (OSError, TimeoutError):
        return False
    await conn.close()
    return True


async def _supervise(server: PostgresServer, flag: Path) -> None:
    """What `homeport up` does: the server started once the flag exists (polled)."""
    for _ in range(600):
        if flag.exists():
            await asyncio.to_thread(server.start)
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{flag} did not appear within 60 s")


async def test_nothing_asks_for_the_server_while_no_app_has_a_database(
    stopped: PostgresServer,
) -> None:
    pg = _manager(stopped)
    assert pg.wanted is not None and not pg.wanted.exists()
    await asyncio.wait_for(keep_hba(pg), 1)  # what the apps service runs at start: returns
    app = str(uuid.uuid4())
    assert await pg.exists(app) is False  # an uninstall asks nothing of it
    assert not pg.wanted.exists()
    assert not await _answers(stopped)


async def test_the_first_database_starts_the_server_and_waits_for_it(
    stopped: PostgresServer,
) -> None:
    pg = _manager(stopped)
    assert pg.wanted is not None
    said: list[str] = []

    async def say(line: str) -> None:
        said.append(line)

    supervisor = asyncio.create_task(_supervise(stopped, pg.wanted))
    try:
        await asyncio.wait_for(pg.start(say), 90)
        app = str(uuid.uuid4())
        creds = await pg.provision(app, SUBNET)
    finally:
        await supervisor
    assert pg.wanted.is_file() and said == [STARTING]
    assert await pg.exists(app)
    conn = await asyncpg.connect(stopped.dsn)
    try:
        assert await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", creds.database)
    finally:
        await conn.close()
    assert f"{creds.username}  {SUBNET}" in stopped.hba_file.read_text()  # type: ignore[union-attr]


async def test_a_server_that_does_not_come_up_fails_the_install_naming_it(
    stopped: PostgresServer,
) -> None:
    assert stopped.hba_file is not None
    pg = AddonPostgres(
        stopped.dsn, "127.0.0.1", stopped.port, stopped.hba_file, on_demand=True,
        start_deadline_s=1.0,
    )  # fmt: skip
    with pytest.raises(AddonError, match=r"addon Postgres.*did not answer within 1 s"):
        await pg.provision(str(uuid.uuid4()), SUBNET)
    assert pg.wanted is not None and pg.wanted.is_file()  # asked for: a later start serves


async def test_restarted_with_the_flag_and_the_server_down_it_waits(
    stopped: PostgresServer,
) -> None:
    pg = _manager(stopped)
    assert pg.wanted is not None
    await pg.ask()
    at_start = asyncio.create_task(keep_hba(pg))  # the apps service's start-up task
    try:
        await asyncio.sleep(1.5)
        assert not at_start.done()  # waiting, no error
        await asyncio.to_thread(stopped.start)
        await asyncio.wait_for(at_start, 30)
    finally:
        at_start.cancel()
        await asyncio.gather(at_start, return_exceptions=True)
    app = str(uuid.uuid4())
    await pg.provision(app, SUBNET)
    assert await pg.exists(app)
