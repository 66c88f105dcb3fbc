"""The apps service's side of backups (issue 14), on the real apps service and dockerd.

A snapshot asked for with a caller's id (twice: one snapshot), its app.json, forgetting it, a
folder the backup service wrote adopted (a hostile one refused with nothing recorded) and
restored, an install seeded from a backup's folder, and an app rebuilt from a restored snapshot
after its container, volume, network and database are gone (a platform restore).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import docker
import pytest

from libs.events.bus import Conflict, Invalid, NotFound
from tests.apps.addonkit import AddonServer
from tests.apps.appskit import (
    STATIC,
    Apps,
    AppsProcess,
    EnvFor,
    connected,
    running_apps,
    static_catalog,
)

pytestmark = pytest.mark.timeout(300)

EVERYONE = {"all_users": True}


@pytest.fixture
async def apps(
    monkeypatch: pytest.MonkeyPatch, apps_env_for: EnvFor, tmp_path: Path
) -> AsyncIterator[Apps]:
    # an update stops after its snapshot: its snapshot is then "in use" (a crash-test switch)
    extra = {"HP_READY_TIMEOUT": "8", "HP_APPS_PAUSE_AFTER": "update:snapshot"}
    env = apps_env_for(static_catalog(tmp_path / "catalog"), letter="k", extra=extra)
    async with running_apps(monkeypatch, env) as running:
        yield running


async def install(apps: Apps, location: str, **extra: Any) -> str:
    payload = {"manifest_id": STATIC, "version": "1.0.0", "location": location, "access": EVERYONE}
    reply = await apps.cmd("install", payload | extra)
    end = await apps.wait_task(reply["task_id"])
    assert end["type"] == "TaskSucceeded", end
    return str(reply["app_id"])


def write_page(apps: Apps, app_id: str, text: str) -> None:
    c = apps.container(app_id)
    r = c.exec_run(["sh", "-c", f"echo '{text}' > /app/data/www/index.html"], user="1000:1000")
    assert r.exit_code == 0, r.output


async def taken(apps: Apps, app_id: str) -> list[dict[str, Any]]:
    return [
        e.data
        for e in await apps.store.read_stream(f"app-{app_id}")
        if e.type == "AppSnapshotTaken"
    ]


async def test_backup_snapshot_app_json_adopt_restore_forget_and_install_from_it(
    apps: Apps, tmp_path: Path
) -> None:
    snaps = tmp_path / "apps" / "snapshots"
    app_id = await install(apps, "bk", env={"GREETING": "hello there"})
    write_page(apps, app_id, "backed up content")

    # the same caller's id twice at once (a retry racing the first try): one snapshot, the
    # same task
    sid = str(uuid.uuid4())
    ask = {"app_id": app_id, "reason": "backup", "snapshot_id": sid}
    first, second = await asyncio.gather(apps.cmd("snapshot", ask), apps.cmd("snapshot", ask))
    assert first == second and first["snapshot_id"] == sid
    assert (await apps.wait_task(first["task_id"]))["type"] == "TaskSucceeded"
    assert await apps.cmd("snapshot", ask) == first
    assert [(t["snapshot_id"], t["reason"]) for t in await taken(apps, app_id)] == [(sid, "backup")]
    # not offered for restore in the app's list
    assert (await apps.ask("snapshots", {"app_id": app_id}))["items"] == []

    folder = snaps / app_id / sid
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert sorted(p.name for p in folder.iterdir()) == ["app.json", "data.tar", "snapshot.json"]
    assert json.loads((folder / "app.json").read_text()) == {
        "app_id": app_id,
        "manifest_id": STATIC,
        "version": "1.0.0",
        "location": "bk",
        "domain": "localhost",
        "access": {"all_users": True, "groups": [], "user_ids": []},
        "memory_bytes": (await apps.app(app_id))["memory_bytes"],
        "env": {"GREETING": "hello there"},
    }

    # a reason the caller may not give
    with pytest.raises(Invalid) as bad:
        await apps.cmd("snapshot", {**ask, "reason": "clone"})
    assert bad.value.field == "reason"

    # hostile folders "restored by the backup service" are refused, nothing recorded
    before = await apps.events(app_id)

    def hostile(change: str) -> str:
        hid = str(uuid.uuid4())
        dest = snaps / app_id / hid
        shutil.copytree(folder, dest)
        if change == "symlink":
            (dest / "data.tar").unlink()
            (dest / "data.tar").symlink_to("/etc/passwd")
        elif change == "unknown file":
            (dest / "run.sh").write_text("echo hi")
        elif change == "other manifest":
            (dest / "snapshot.json").write_text(
                json.dumps({"manifest_id": "org.homeport.notes", "version": "1.0.0"})
            )
        elif change == "unknown version":
            (dest / "snapshot.json").write_text(
                json.dumps({"manifest_id": STATIC, "version": "9.9.9"})
            )
        elif change == "a folder inside":
            (dest / "app.json").unlink()
            (dest / "app.json").mkdir()
        return hid

    for change in (
        "symlink",
        "unknown file",
        "other manifest",
        "unknown version",
        "a folder inside",
    ):
        hid = hostile(change)
        with pytest.raises(Invalid) as refused:
            await apps.cmd("adopt_snapshot", {"app_id": app_id, "snapshot_id": hid})
        assert refused.value.field == "snapshot_id" and hid in str(refused.value), change
    with pytest.raises(Invalid):  # no folder at all
        await apps.cmd("adopt_snapshot", {"app_id": app_id, "snapshot_id": str(uuid.uuid4())})
    assert await apps.events(app_id) == before

    # a good one (a copy, as the backup service restores it) is adopted and restored
    restored = str(uuid.uuid4())
    shutil.copytree(folder, snaps / app_id / restored)
    incoming = str(uuid.uuid4())
    shutil.copytree(folder, snaps / "incoming" / incoming)
    ask = {"app_id": app_id, "snapshot_id": restored}
    assert await apps.cmd("adopt_snapshot", ask) == ask
    assert await apps.cmd("adopt_snapshot", ask) == ask  # once
    assert [t["reason"] for t in await taken(apps, app_id)] == ["backup", "backup"]
    write_page(apps, app_id, "changed after the backup")
    reply = await apps.cmd("restore", ask)
    assert (await apps.wait_task(reply["task_id"]))["type"] == "TaskSucceeded"
    assert "backed up content" in (await apps.page(app_id))[1]

    # forget: the folder goes, and the record
    with pytest.raises(NotFound) as unknown:
        await apps.cmd("forget_snapshot", {"app_id": app_id, "snapshot_id": incoming})
    assert unknown.value.field == "snapshot_id" and incoming in str(unknown.value)
    assert await apps.cmd("forget_snapshot", {"app_id": app_id, "snapshot_id": sid}) == {
        "app_id": app_id,
        "snapshot_id": sid,
    }
    assert not folder.exists()
    assert (await apps.events(app_id))[-1] == "AppSnapshotForgotten"
    rows = await apps.store.pool.fetch(
        "SELECT snapshot_id::text FROM apps.snapshots WHERE app_id = $1", app_id
    )
    assert [r["snapshot_id"] for r in rows] == [restored]
    with pytest.raises(NotFound):  # twice: it is gone
        await apps.cmd("forget_snapshot", {"app_id": app_id, "snapshot_id": sid})

    # an install from a backup's folder: the old data at a new location
    with pytest.raises(Invalid) as mismatch:
        await apps.cmd(
            "install",
            {
                "manifest_id": STATIC,
                "version": "1.1.0",
                "location": "copy",
                "from_snapshot": incoming,
            },
        )
    assert mismatch.value.field == "from_snapshot"
    with pytest.raises(Invalid) as missing:
        await apps.cmd("install", {"manifest_id": STATIC, "location": "copy", "from_snapshot": sid})
    assert missing.value.field == "from_snapshot"
    linked = str(uuid.uuid4())  # an incoming folder that is a link to the app's own snapshot
    (snaps / "incoming" / linked).symlink_to(folder)
    with pytest.raises(Invalid) as link:
        await apps.cmd(
            "install", {"manifest_id": STATIC, "location": "copy", "from_snapshot": linked}
        )
    assert link.value.field == "from_snapshot" and linked in str(link.value)
    assert await apps.store.pool.fetchval("SELECT count(*) FROM apps.apps") == 1
    copy = await install(apps, "copy", from_snapshot=incoming)
    info = await apps.app(copy)
    assert info["location"] == "copy" and info["version"] == "1.0.0"
    assert "backed up content" in (await apps.page(copy))[1]
    assert not (snaps / "incoming" / incoming).exists()
    assert (await apps.ask("snapshots", {"app_id": copy}))["items"] == []
    with pytest.raises(Conflict) as other:  # an id another app's snapshot has
        await apps.cmd("snapshot", {"app_id": copy, "snapshot_id": restored})
    assert other.value.field == "snapshot_id"

    # an update waiting for approval: the app is unchanged, a backup's snapshot is taken
    reply = await apps.cmd("update", {"app_id": app_id, "version": "1.2.0"})
    assert reply["needs_approval"] is True
    waiting = str(uuid.uuid4())
    ask = {"app_id": app_id, "reason": "backup", "snapshot_id": waiting}
    end = await apps.wait_task((await apps.cmd("snapshot", ask))["task_id"])
    assert end["type"] == "TaskSucceeded", end
    assert (snaps / app_id / waiting / "app.json").is_file()

    # an update's snapshot cannot be forgotten while the update runs (it pauses after it here)
    await apps.cmd("approve_update", {"app_id": app_id})
    for _ in range(100):
        update_snaps = [t for t in await taken(apps, app_id) if t["reason"] == "update"]
        if update_snaps and "AppStepCompleted" == (await apps.events(app_id))[-1]:
            break
        await asyncio.sleep(0.2)
    assert update_snaps
    with pytest.raises(Conflict) as busy:
        await apps.cmd(
            "forget_snapshot", {"app_id": app_id, "snapshot_id": update_snaps[0]["snapshot_id"]}
        )
    assert busy.value.field == "snapshot_id"


@pytest.mark.slow
@pytest.mark.xdist_group("addon_postgresql")
async def test_a_platform_restore_rebuilds_the_app_with_its_data_and_database(
    monkeypatch: pytest.MonkeyPatch, apps_env_for: EnvFor, tmp_path: Path, addon_server: AddonServer
) -> None:
    catalog = static_catalog(tmp_path / "catalog")
    manifest = catalog / STATIC / "1.0.0" / "manifest.json"  # with a database, for this test
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps(m | {"addons": {"localstorage": {}, "postgresql": {}}}))
    services = addon_server.services_net
    env = apps_env_for(
        catalog,
        letter="r",
        extra={
            "HP_READY_TIMEOUT": "8",
            "HP_SERVICES_NETWORK": services.name,
            "HP_SERVICES_SUBNET": services.subnet,
            "HP_ADDON_PG_DSN": addon_server.admin_dsn,
            "HP_ADDON_PG_HBA": str(addon_server.hba_file),
            "HP_ADDON_PG_PORT": str(addon_server.port),
        },
    )
    snaps, backup = tmp_path / "apps" / "snapshots", tmp_path / "backup"
    sid = str(uuid.uuid4())
    async with running_apps(monkeypatch, env) as apps:
        app_id = await install(apps, "rb")
        write_page(apps, app_id, "before the disaster")
        db = "app_" + app_id.replace("-", "")
        conn = await asyncpg.connect(addon_server.admin_dsn, database=db)
        try:
            await conn.execute(f"CREATE TABLE notes (body text); ALTER TABLE notes OWNER TO {db}")
            await conn.execute("INSERT INTO notes VALUES ('kept in the database')")
        finally:
            await conn.close()
        password = container_env(apps, app_id)["HOMEPORT_POSTGRESQL_PASSWORD"]
        ask = {"app_id": app_id, "reason": "backup", "snapshot_id": sid}
        reply = await apps.cmd("snapshot", ask)
        assert (await apps.wait_task(reply["task_id"]))["type"] == "TaskSucceeded"
        # the backup service stores the folder, then forgets it
        shutil.copytree(snaps / app_id / sid, backup)
        await apps.cmd("forget_snapshot", {"app_id": app_id, "snapshot_id": sid})
        prefix = apps.prefix
    # a new machine: no container, volume, network or database (the service is stopped and
    # its Docker objects removed as it ends); the log, the keyring and the backup remain
    await addon_server.manager().deprovision(app_id)
    assert not await addon_server.manager().exists(app_id)
    client = docker.DockerClient(base_url=env["HP_DOCKER_HOST"])
    try:
        assert not client.containers.list(all=True, filters={"name": f"{prefix}-app-{app_id}"})
        assert not client.volumes.list(filters={"name": f"{prefix}-data-{app_id}"})
        assert not client.networks.list(names=[f"{prefix}-net-{app_id}"])
    finally:
        client.close()
    shutil.copytree(backup, snaps / app_id / sid)
    stranger = str(uuid.uuid4())  # not an app of this log: skipped; a bad entry: dropped
    pending = {app_id: sid, stranger: str(uuid.uuid4()), "../etc": "x"}
    (tmp_path / "apps" / "restore-pending.json").write_text(json.dumps(pending))

    # the service started (a child process), killed once the addons are made again: the
    # request was recorded and its entry dropped; the next start finishes the rebuild
    proc = AppsProcess(env, tmp_path / "apps.log")
    async with connected(env) as apps:
        try:
            proc.start(HP_APPS_PAUSE_AFTER="rebuild:addons")
            task_id = await rebuild_paused(apps, app_id, proc)
            assert not (tmp_path / "apps" / "restore-pending.json").exists()
            proc.kill9()
            proc.start()
            end = await apps.wait_task(task_id, 180)
            assert end["type"] == "TaskSucceeded", (end, proc.tail())
            await post_rebuild_checks(apps, app_id, password, db, addon_server)
            assert await apps.store.read_stream(f"app-{stranger}") == []
        finally:
            proc.stop()


async def rebuild_paused(apps: Apps, app_id: str, proc: AppsProcess) -> str:
    """The rebuild's task, once its addons step is recorded (the service then pauses)."""
    for _ in range(600):
        assert proc.proc is not None and proc.proc.poll() is None, proc.tail()
        events = await apps.store.read_stream(f"app-{app_id}")
        asked = [i for i, e in enumerate(events) if e.type == "AppRebuildRequested"]
        if asked:
            assert len(asked) == 1
            after = events[asked[0] :]
            steps = [e.data["step"] for e in after if e.type == "AppStepCompleted"]
            if steps[-1:] == ["addons"]:
                return str(after[0].data["task_id"])
        await asyncio.sleep(0.2)
    raise AssertionError(f"no rebuild paused after its addons step:\n{proc.tail()}")


async def post_rebuild_checks(
    apps: Apps, app_id: str, password: str, db: str, addon_server: AddonServer
) -> None:
    info = await apps.app(app_id)
    assert info["state"] == "installed" and info["version"] == "1.0.0"
    assert "before the disaster" in (await apps.page(app_id))[1]
    assert container_env(apps, app_id)["HOMEPORT_POSTGRESQL_PASSWORD"] == password
    conn = await asyncpg.connect(addon_server.admin_dsn, database=db)
    try:
        assert await conn.fetchval("SELECT body FROM notes") == "kept in the database"
        assert (
            await conn.fetchval("SELECT tableowner FROM pg_tables WHERE tablename = 'notes'") == db
        )
    finally:
        await conn.close()
    assert [t["reason"] for t in await taken(apps, app_id)] == ["backup", "backup"]
    events = await apps.events(app_id)
    assert events.count("AppRebuildRequested") == 1 and "AppRebuilt" in events


def container_env(apps: Apps, app_id: str) -> dict[str, str]:
    raw = apps.container(app_id).attrs["Config"]["Env"]
    return dict(item.split("=", 1) for item in raw)
