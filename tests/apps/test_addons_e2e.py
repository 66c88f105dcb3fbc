"""The postgresql and ldap addons for real, through the apps service: Notes installed from the
bundled catalog gets its own database in the addon Postgres and an LDAP account scoped to its
access list; a platform user signs in to it and writes a note; uninstalling drops the database
and the LDAP account, and the credentials in the events can no longer be read.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from libs.events.sealing import Keyring, SealingError
from services.apps.addons.postgresql import AddonPostgres
from services.apps.config import BUNDLED_CATALOG
from tests.apps.addonkit import AddonServer
from tests.apps.appskit import Apps, apps_env, running_apps
from tests.identity.kit import ADMIN, Identity, running_identity

pytestmark = [pytest.mark.timeout(900), pytest.mark.xdist_group("addon_postgresql")]

NOTES = "org.homeport.notes"
ALICE = {"username": "alice", "email": "alice@example.test", "password": "alice's long passphrase"}


@pytest.fixture
async def ident(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    addon_server: AddonServer,
) -> AsyncIterator[Identity]:
    env = {"HP_LDAP_HOST": addon_server.host, "HP_LDAP_PORT": "0"}
    async with running_identity(
        monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, env=env
    ) as identity:
        yield identity


@pytest.fixture
async def apps(
    monkeypatch: pytest.MonkeyPatch,
    ident: Identity,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    docker_host: str,
    uniq: str,
    addon_server: AddonServer,
) -> AsyncIterator[Apps]:
    services = addon_server.services_net
    env = apps_env(
        dsn=dsn,
        nats_url=nats_url,
        tmp_path=tmp_path,
        docker_host=docker_host,
        prefix=f"a{uniq[:8]}",
        catalog=BUNDLED_CATALOG,
        extra={
            "HP_SERVICES_NETWORK": services.name,
            "HP_SERVICES_SUBNET": services.subnet,
            "HP_ADDON_PG_DSN": addon_server.admin_dsn,
            "HP_ADDON_PG_HBA": str(addon_server.hba_file),
            "HP_ADDON_PG_PORT": str(addon_server.port),
        },
    )
    async with running_apps(monkeypatch, env) as running:
        yield running


def _field(html: str, name: str) -> str:
    m = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', html)
    assert m, f"no form field {name} in:\n{html[:2000]}"
    return m.group(1)


async def _sign_in(base: str, who: dict[str, str], password: str) -> tuple[int, str]:
    """Sign in and write a note. The app's cookies are Secure (its origin is https, behind the
    edge); over this plain-HTTP test connection the test carries them itself, as a browser
    would over HTTPS."""
    jar: dict[str, str] = {}

    def keep(r: aiohttp.ClientResponse) -> None:
        for raw in r.headers.getall("Set-Cookie", []):
            name, _, rest = raw.partition("=")
            jar[name] = rest.split(";", 1)[0]

    def cookie() -> dict[str, str]:
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in jar.items())}

    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.get(base + "/login") as r:
            keep(r)
            csrf = _field(await r.text(), "csrf")
        form = {"csrf": csrf, "username": who["username"], "password": password}
        async with http.post(
            base + "/login", data=form, headers=cookie(), allow_redirects=False
        ) as r:
            keep(r)
            status = r.status
        if status in (302, 303):
            note = {"csrf": csrf, "title": "from the test", "body": "stored in the addon db"}
            async with http.post(base + "/notes", data=note, headers=cookie()) as r:
                assert r.status == 200, await r.text()
                return 200, await r.text()
        return status, ""


async def test_notes_gets_its_database_and_ldap_account_and_loses_them_at_uninstall(
    apps: Apps,
    ident: Identity,
    addon_server: AddonServer,
    tmp_path: Path,
) -> None:
    admin_id = await ident.set_up()
    alice = await ident.cmd("create_user", dict(ALICE), actor=admin_id)
    reply = await apps.cmd(
        "install",
        {"manifest_id": NOTES, "location": "notes", "access": {"user_ids": [alice["user_id"]]}},
    )
    end = await apps.wait_task(reply["task_id"], 600)
    assert end["type"] == "TaskSucceeded", end
    app_id = reply["app_id"]

    # credentials reach the app as HOMEPORT_* variables, and are sealed in the events
    env = dict(e.split("=", 1) for e in apps.container(app_id).attrs["Config"]["Env"])
    for name in ("HOMEPORT_POSTGRESQL_PASSWORD", "HOMEPORT_LDAP_BIND_PASSWORD"):
        assert len(env[name]) >= 22, name  # >= 128 random bits
    assert env["HOMEPORT_POSTGRESQL_HOST"] == addon_server.host
    provisioned = [
        e for e in await apps.store.read_stream(f"app-{app_id}") if e.type == "AddonProvisioned"
    ]
    assert sorted(e.data["addon"] for e in provisioned) == ["ldap", "postgresql"]
    raw = json.dumps([e.data for e in provisioned])
    assert env["HOMEPORT_POSTGRESQL_PASSWORD"] not in raw
    assert env["HOMEPORT_LDAP_BIND_PASSWORD"] not in raw

    pg = AddonPostgres(
        addon_server.admin_dsn, addon_server.host, addon_server.port, addon_server.hba_file
    )
    assert await pg.exists(app_id)

    # alice (on the access list) signs in through the platform's LDAP; the admin (not on it)
    # cannot; alice's note is stored in the app's own database
    port = (await apps.app(app_id))["container"]["port"]
    base = f"http://127.0.0.1:{port}"
    status, text = await _sign_in(base, ALICE, ALICE["password"])
    assert status == 200 and "from the test" in text
    status, _ = await _sign_in(base, ADMIN, ADMIN["password"])
    assert status == 401
    status, _ = await _sign_in(base, ALICE, "wrong" + ALICE["password"])
    assert status == 401
    app_db = addon_server.admin_dsn.rsplit("/", 1)[0] + f"/app_{app_id.replace('-', '')}"

    async def titles() -> list[str]:
        conn = await asyncpg.connect(app_db)
        try:
            return [r["title"] for r in await conn.fetch("SELECT title FROM notes ORDER BY id")]
        finally:
            await conn.close()

    assert await titles() == ["from the test"]

    # a snapshot holds the app's database dump: restoring it takes later notes away
    reply = await apps.cmd("snapshot", {"app_id": app_id})
    assert (await apps.wait_task(reply["task_id"], 120))["type"] == "TaskSucceeded"
    snaps = (await apps.ask("snapshots", {"app_id": app_id}))["items"]
    assert [s["reason"] for s in snaps] == ["manual"]
    status, _ = await _sign_in(base, ALICE, ALICE["password"])  # writes a second note
    assert status == 200 and await titles() == ["from the test", "from the test"]
    reply = await apps.cmd("restore", {"app_id": app_id, "snapshot_id": snaps[0]["snapshot_id"]})
    assert (await apps.wait_task(reply["task_id"], 120))["type"] == "TaskSucceeded"
    assert await titles() == ["from the test"]
    port = (await apps.app(app_id))["container"]["port"]
    status, text = await _sign_in(f"http://127.0.0.1:{port}", ALICE, ALICE["password"])
    assert status == 200 and "from the test" in text  # the app works on the restored database

    reply = await apps.cmd("uninstall", {"app_id": app_id})
    assert (await apps.wait_task(reply["task_id"], 120))["type"] == "TaskSucceeded"
    assert not await pg.exists(app_id)
    accounts = await ident.ask("ldap_apps", {}, actor="system")
    assert app_id not in json.dumps(accounts)
    with Keyring.open(tmp_path / "keyring.json") as keyring:
        for e in provisioned:
            with pytest.raises(SealingError):
                keyring.unseal(e.data["credentials"])
