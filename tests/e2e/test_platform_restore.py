"""A whole platform restored onto a new machine (issue 14, "Restore"): the real identity, apps,
backup and gateway services and the relay, on dockerd and moto's S3.

Users (an administrator and an invited user) and two apps holding data -> an S3 target and a
key set through the API -> "back up now" -> everything stopped, the apps' containers, volumes
and networks removed, the data directory wiped -> `homeport restore --from s3://... --key` into
it -> the data directory's own Postgres and the services started again -> each app serves its
old data, both users sign in with their old passwords, the old session cookies are refused,
`homeport audit verify` passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from cli.main import main as homeport
from deploy.embedded import PostgresServer
from deploy.planning import DATABASE
from libs.events.sealing import keyring_file
from tests.apps.appskit import STATIC, Apps, running_apps, static_catalog
from tests.apps.appskit import apps_env as make_apps_env
from tests.gateway.apikit import Answer, Client, backup_env, running_backup, running_gateway
from tests.identity.kit import Identity, running_identity
from tests.support.bus import relaying
from tests.support.moto import MotoServer, run_moto
from tests.support.waits import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

IP = "198.51.100.7"
ADMIN = {"username": "admin", "email": "admin@example.test", "password": "admin's long passphrase"}
CAROL = {"username": "carol", "email": "carol@example.test", "password": "carol's own passphrase"}
EVERYONE = {"all_users": True}


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    yield from run_moto()


@dataclass
class Running:
    client: Client
    apps: Apps
    identity: Identity


@asynccontextmanager
async def platform(
    monkeypatch: pytest.MonkeyPatch,
    *,
    dsn: str,
    nats_url: str,
    uniq: str,
    data: Path,
    docker_host: str,
    catalog: Path,
    prefix: str,
) -> AsyncIterator[Running]:
    """Identity, apps, backup, gateway and the relay on `dsn`, their files in `data` (the
    layout of a stack's data directory: keyring/<service>/keyring.json, apps/, certs/, backup/)."""
    keyring = data / "keyring"
    apps_env = make_apps_env(
        dsn=dsn,
        nats_url=nats_url,
        tmp_path=data,
        docker_host=docker_host,
        prefix=prefix,
        catalog=catalog,
        extra={"HP_READY_TIMEOUT": "30", "HP_KEYRING": str(keyring_file(keyring, "apps"))},
    )
    async with contextlib.AsyncExitStack() as stack:
        ident = await stack.enter_async_context(
            running_identity(
                monkeypatch,
                dsn=dsn,
                nats_url=nats_url,
                tmp_path=data,
                env={"HP_KEYRING": str(keyring_file(keyring, "identity"))},
            )
        )
        apps = await stack.enter_async_context(running_apps(monkeypatch, apps_env))
        env = backup_env(
            dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=data,
            extra={"HP_KEYRING": str(keyring_file(keyring, "backup"))},
        )  # fmt: skip
        await stack.enter_async_context(running_backup(monkeypatch, env))
        gateway = await stack.enter_async_context(
            running_gateway(monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=data)
        )
        await stack.enter_async_context(relaying(dsn, nats_url, uniq))
        yield Running(gateway.client, apps, ident)


async def call(c: Client, method: str, path: str, **kw: Any) -> Answer:
    return await c.call(method, "/api/v1" + path, headers={"X-Real-IP": IP}, **kw)


def cookie(a: Answer) -> str:
    return str(a.headers["Set-Cookie"]).split(";", 1)[0].split("=", 1)[1]


async def sign_in(c: Client, who: dict[str, str]) -> Answer:
    body = {"username": who["username"], "password": who["password"]}
    return await call(c, "POST", "/session", body=body)


def write_page(apps: Apps, app_id: str, text: str) -> None:
    c = apps.container(app_id)
    r = c.exec_run(["sh", "-c", f"echo '{text}' > /app/data/www/index.html"], user="1000:1000")
    assert r.exit_code == 0, r.output


async def install(apps: Apps, location: str) -> str:
    payload = {"manifest_id": STATIC, "version": "1.0.0", "location": location, "access": EVERYONE}
    reply = await apps.cmd("install", payload)
    end = await apps.wait_task(reply["task_id"], 240)
    assert end["type"] == "TaskSucceeded", end
    return str(reply["app_id"])


def _cli(argv: list[str]) -> int:
    return homeport(argv)


async def test_the_platform_comes_back_from_s3_onto_a_wiped_data_dir(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
    tmp_root: Path,
    docker_host: str,
    moto: MotoServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_root / f"restore-e2e-{uniq}"  # the postgres user can reach it (as the stack's)
    data.mkdir(mode=0o700)
    catalog = static_catalog(tmp_path / "catalog")
    prefix = f"r{uniq[:8]}"
    bucket = f"hp-{uuid.uuid4().hex[:12]}"
    moto.client("s3").create_bucket(Bucket=bucket)
    pages = {"notes": "alpha notes kept", "blog": "beta blog kept"}

    # -- the old machine ----------------------------------------------------------------------
    async with platform(
        monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, data=data,
        docker_host=docker_host, catalog=catalog, prefix=prefix,
    ) as p:  # fmt: skip
        c = p.client
        a = await call(c, "POST", "/setup", body=p.identity.setup_body(ADMIN))
        assert a.status == 201, a.body
        admin_old = cookie(await sign_in(c, ADMIN))
        a = await call(c, "POST", "/invitations", session=admin_old, body={"email": CAROL["email"]})
        assert a.status == 201, a.body
        a = await call(c, "POST", "/invitations/accept", body={"token": a.body["token"], **CAROL})
        assert a.status == 201, a.body
        a = await sign_in(c, CAROL)
        assert a.status == 200, a.body
        carol_old = cookie(a)
        assert (await call(c, "GET", "/profile", session=carol_old)).status == 200

        app_ids = {}
        for location, text in pages.items():
            app_ids[location] = await install(p.apps, location)
            write_page(p.apps, app_ids[location], text)
            assert text in (await p.apps.page(app_ids[location]))[1]

        target = {
            "kind": "s3",
            "bucket": bucket,
            "prefix": "homeport/",
            "endpoint_url": moto.url,
            "region": "us-east-1",
            "access_key_id": moto.access_key_id,
            "secret_access_key": moto.secret_access_key,
        }
        a = await call(c, "PUT", "/backups/target", session=admin_old, body=target)
        assert a.status == 200, a.body
        a = await call(c, "POST", "/backups/key", session=admin_old, body={})
        assert a.status in (200, 201), a.body
        identity = a.body["identity"]
        a = await call(c, "POST", "/backups", session=admin_old, body={})
        assert a.status == 202, a.body
        end = await p.apps.wait_task(a.body["task_id"], 300)
        assert end["type"] == "TaskSucceeded", end
        listed = (await call(c, "GET", "/backups", session=admin_old)).body["items"]
        kinds = sorted(b["kind"] for b in listed)
        assert kinds == ["app", "app", "platform"], listed
    # the services stopped; the apps' containers, volumes and networks went with them
    client = docker.DockerClient(base_url=docker_host)
    try:
        for app_id in app_ids.values():
            assert not client.containers.list(all=True, filters={"name": f"{prefix}-app-{app_id}"})
            assert not client.volumes.list(filters={"name": f"{prefix}-data-{app_id}"})
    finally:
        client.close()
    shutil.rmtree(data)  # the disk is gone

    # -- the new machine ----------------------------------------------------------------------
    key_file = tmp_path / "homeport-backup-key.txt"
    key_file.write_text(identity + "\n")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto.secret_access_key)
    argv = [
        "restore", "--from", f"s3://{bucket}/homeport", "--endpoint-url", moto.url,
        "--key", str(key_file), "--data-dir", str(data),
    ]  # fmt: skip
    capsys.readouterr()
    code = await asyncio.to_thread(_cli, argv)
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    assert "Now run `make run`" in out.out
    assert identity not in out.out + out.err and moto.secret_access_key not in out.out + out.err

    pg = PostgresServer(
        data / "postgres", password=(data / "database-password").read_text().strip()
    )
    await asyncio.to_thread(pg.start)
    try:
        new_dsn = pg.dsn_for(DATABASE)
        uniq2 = uuid.uuid4().hex[:10]  # a new NATS too: its streams start empty
        async with platform(
            monkeypatch, dsn=new_dsn, nats_url=nats_url, uniq=uniq2, data=data,
            docker_host=docker_host, catalog=catalog, prefix=prefix,
        ) as p:  # fmt: skip
            c = p.client
            for location, text in pages.items():
                app_id = app_ids[location]

                async def rebuilt(app_id: str = app_id) -> bool:
                    info = await p.apps.app(app_id)
                    return info.get("state") == "installed" and bool(
                        (info.get("container") or {}).get("port")
                    )

                await wait_until(rebuilt, 240, f"app {location} rebuilt")
                status, body = await p.apps.page(app_id)
                assert status == 200 and text in body, body
            assert not (data / "apps" / "restore-pending.json").exists()

            # old cookies are refused; the old passwords sign in
            for old in (admin_old, carol_old):
                a = await call(c, "GET", "/profile", session=old)
                assert a.status == 401, a.body
            for who in (ADMIN, CAROL):
                a = await sign_in(c, who)
                assert a.status == 200, a.body
                me = await call(c, "GET", "/profile", session=cookie(a))
                assert me.body["username"] == who["username"]

        capsys.readouterr()
        code = await asyncio.to_thread(_cli, ["audit", "verify", "--dsn", new_dsn])
        out = capsys.readouterr()
        assert code == 0 and "event chain intact" in out.out, out.out + out.err
    finally:
        await asyncio.to_thread(pg.stop)
        shutil.rmtree(data, ignore_errors=True)
