"""The backup service with the real apps service and dockerd: an app backed up end to end
(apps snapshot -> repository -> the disk copy forgotten), restored in place to its old data,
cloned from its backup to a new location, and a full run (apps and the platform)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.apps import appskit
from tests.apps.appskit import STATIC, Apps, EnvFor, running_apps, static_catalog
from tests.backup.servicekit import Backup, backup_env, running_backup

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

apps_env_for = appskit.apps_env_for  # the fixture
EVERYONE = {"all_users": True}


@pytest.fixture
async def both(
    monkeypatch: pytest.MonkeyPatch,
    apps_env_for: EnvFor,
    tmp_path: Path,
    dsn: str,
    nats_url: str,
    uniq: str,
) -> AsyncIterator[tuple[Apps, Backup]]:
    env = apps_env_for(static_catalog(tmp_path / "catalog"), letter="b")
    async with running_apps(monkeypatch, env) as apps:
        benv = backup_env(dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, uniq=uniq)
        async with running_backup(monkeypatch, benv) as backup:
            yield apps, backup


async def install(apps: Apps, location: str) -> str:
    payload = {"manifest_id": STATIC, "version": "1.0.0", "location": location, "access": EVERYONE}
    reply = await apps.cmd("install", payload)
    end = await apps.wait_task(reply["task_id"])
    assert end["type"] == "TaskSucceeded", end
    return str(reply["app_id"])


def write_page(apps: Apps, app_id: str, text: str) -> None:
    c = apps.container(app_id)
    r = c.exec_run(["sh", "-c", f"echo '{text}' > /app/data/www/index.html"], user="1000:1000")
    assert r.exit_code == 0, r.output


async def done(backup: Backup, answer: dict[str, Any], timeout: float = 180) -> dict[str, Any]:
    ended, data = await backup.task_end(answer["task_id"], timeout)
    assert ended == "TaskSucceeded", data
    return data


async def test_an_app_is_backed_up_restored_in_place_and_cloned(
    both: tuple[Apps, Backup], tmp_path: Path
) -> None:
    apps, backup = both
    app_id = await install(apps, "bk")
    write_page(apps, app_id, "the old page")
    (tmp_path / "disk").mkdir()
    await backup.cmd("set_target", {"kind": "local", "path": str(tmp_path / "disk" / "b")})
    identity = (await backup.cmd("setup_key", {}))["identity"]

    data = await done(backup, await backup.cmd("back_up", {"app_id": app_id}))
    snapshot_id = data["result"]["snapshots"][app_id]
    [listed] = (await backup.ask("backups", {"app_id": app_id}))["items"]
    assert listed["snapshot_id"] == snapshot_id
    assert (listed["kind"], listed["location"], listed["manifest_id"], listed["version"]) == (
        "app",
        "bk",
        STATIC,
        "1.0.0",
    )
    assert listed["reason"] == "backup" and listed["size_bytes"] > 0
    # the disk copy the apps service made for it is gone
    assert [p.name for p in (tmp_path / "apps" / "snapshots" / app_id).iterdir()] == []

    write_page(apps, app_id, "the new page")
    await done(
        backup, await backup.cmd("restore", {"snapshot_id": snapshot_id, "identity": identity})
    )
    status, text = await apps.page(app_id, "/")
    assert status == 200 and "the old page" in text

    data = await done(
        backup,
        await backup.cmd(
            "clone", {"snapshot_id": snapshot_id, "identity": identity, "location": "bk2"}
        ),
    )
    clone_id = data["result"]["app_id"]
    assert clone_id != app_id
    status, text = await apps.page(clone_id, "/")
    assert status == 200 and "the old page" in text
    info = await apps.app(clone_id)
    assert info["location"] == "bk2"
    # a clone to a location taken: refused by the apps service, the restored copy removed
    taken = {"snapshot_id": snapshot_id, "identity": identity, "location": "bk"}
    ended, failed = await backup.task_end((await backup.cmd("clone", taken))["task_id"], 120)
    assert ended == "TaskFailed" and "bk" in failed["message"], failed
    incoming = tmp_path / "apps" / "snapshots" / "incoming"
    assert not incoming.exists() or list(incoming.iterdir()) == []

    # a full run: every app and the platform, naming the app backups of the run
    data = await done(backup, await backup.cmd("back_up", {}))
    run = data["result"]["snapshots"]
    assert set(run) == {app_id, clone_id, "platform"}
    items = (await backup.ask("backups", {}))["items"]
    platform = [b for b in items if b["kind"] == "platform"]
    assert [b["snapshot_id"] for b in platform] == [run["platform"]]
    completed = [json.loads(d) for _, t, d in await backup.all_events() if t == "BackupCompleted"]
    assert len(completed) == 4  # the first app backup, then two apps and the platform
