"""Backup jobs of the real backup service: a full run stores the platform, the list shows it,
restore and clone refuse a wrong key and a platform backup, verify names damage, retention
forgets old backups, an unreachable target ends in BackupFailed."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from nats.aio.msg import Msg

from libs.events.bus import BusClient, Conflict, Invalid
from libs.events.sealing import Keyring
from libs.service.config import load_config
from services.apps.events import AppSnapshotTaken, app_stream
from services.backup.config import BackupConfig
from services.backup.repo import Repository, new_identity
from services.backup.service.apps import AppsPeer
from services.backup.service.jobs import Engine
from services.backup.service.scheduler import Scheduler
from services.backup.targets.local import LocalTarget
from tests.backup.servicekit import Backup, backup_env, running_backup
from tests.support.moto import MotoServer, run_moto
from tests.support.waits import wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    yield from run_moto()


@asynccontextmanager
async def apps_stand_in(nats_url: str, items: Sequence[dict[str, Any]]) -> AsyncIterator[None]:
    """A STAND-IN for the apps service's `apps` and `app` queries only (the real one needs
    dockerd and a catalog): a platform with these apps installed."""
    nc = await nats.connect(nats_url)

    async def answer(msg: Msg) -> None:
        await msg.respond(json.dumps({"ok": True, "result": {"items": list(items)}}).encode())

    async def app(msg: Msg) -> None:
        app_id = json.loads(msg.data)["payload"]["app_id"]
        found = [i for i in items if i["app_id"] == app_id]
        error = {"code": "not_found", "message": f"no app {app_id}", "field": "app_id"}
        body = {"ok": True, "result": found[0]} if found else {"ok": False, "error": error}
        await msg.respond(json.dumps(body).encode())

    try:
        await nc.subscribe("hp.qry.apps.apps.*", queue="hp.apps", cb=answer)
        await nc.subscribe("hp.qry.apps.app.*", queue="hp.apps", cb=app)
        await nc.flush()
        yield
    finally:
        await nc.close()


@pytest.fixture
async def backup(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path, uniq: str
) -> AsyncIterator[Backup]:
    (tmp_path / "certs" / "my.example.com").mkdir(parents=True)
    (tmp_path / "certs" / "my.example.com" / "fullchain.pem").write_text("CERT\n")
    env = backup_env(dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, uniq=uniq)
    async with apps_stand_in(nats_url, []), running_backup(monkeypatch, env) as b:
        yield b


async def set_up(backup: Backup, where: Path) -> str:
    """A local target and a key; the private key."""
    where.parent.mkdir(parents=True, exist_ok=True)
    await backup.cmd("set_target", {"kind": "local", "path": str(where)})
    key: dict[str, Any] = await backup.cmd("setup_key", {})
    return str(key["identity"])


async def run(backup: Backup, payload: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    answer = await backup.cmd("back_up", payload or {})
    return await backup.task_end(answer["task_id"])


async def test_a_full_run_stores_the_platform_lists_it_and_verifies_it(
    backup: Backup, tmp_path: Path
) -> None:
    identity = await set_up(backup, tmp_path / "disk" / "backups")
    ended, data = await run(backup)
    assert ended == "TaskSucceeded", data
    run_id = data["result"]["run_id"]
    types = [t for t, _ in await backup.events(f"backup-{run_id}")]
    assert types == ["BackupStarted", "BackupCompleted"]
    done = dict((await backup.events(f"backup-{run_id}"))[1][1])
    assert done["kind"] == "platform" and done["size_bytes"] > 0 and done["new_bytes"] > 0

    listed = (await backup.ask("backups", {}))["items"]
    assert [b["snapshot_id"] for b in listed] == [done["snapshot_id"]]
    s = await backup.ask("settings", {})
    assert s["last_success"]["snapshot_id"] == done["snapshot_id"] and s["last_failure"] is None
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{backup.svc.port}/metrics") as r,
    ):
        metrics = await r.text()
    gauges = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("homeport_backup_")
    }
    assert gauges["homeport_backup_last_success_timestamp_seconds"] > 1.7e9
    assert gauges["homeport_backup_last_new_bytes"] == done["new_bytes"]
    assert gauges["homeport_backup_last_size_bytes"] == done["size_bytes"]
    assert gauges["homeport_backup_last_duration_seconds"] > 0
    assert listed[0]["kind"] == "platform" and listed[0]["size_bytes"] == done["size_bytes"]

    ended, data = await backup.task_end(
        (await backup.cmd("verify", {"snapshot_id": done["snapshot_id"], "identity": identity}))[
            "task_id"
        ]
    )
    assert ended == "TaskSucceeded" and data["result"]["ok"] is True, data

    ended, data = await run(backup)
    assert ended == "TaskSucceeded", data
    listed = (await backup.ask("backups", {}))["items"]
    assert len(listed) == 2 and listed[0]["time"] >= listed[1]["time"]  # newest first


async def test_back_up_now_pressed_three_times_with_a_prune_runs_each_once_and_loses_nothing(
    backup: Backup, tmp_path: Path
) -> None:
    """Three "back up now" and a prune sent at once (a double click, two admins): they run one
    after another, each backup is listed once and every one still opens with the key."""
    identity = await set_up(backup, tmp_path / "disk" / "backups")
    answers = await asyncio.gather(
        backup.cmd("back_up", {}),
        backup.cmd("back_up", {}),
        backup.cmd("prune", {}),
        backup.cmd("back_up", {}),
    )
    ends = [await backup.task_end(a["task_id"]) for a in answers]
    assert [e for e, _ in ends] == ["TaskSucceeded"] * 4, ends
    made = [d["result"]["snapshots"]["platform"] for e, d in ends if "snapshots" in d["result"]]
    listed = [b["snapshot_id"] for b in (await backup.ask("backups", {}))["items"]]
    assert len(made) == 3 and sorted(listed) == sorted(made)
    for snapshot_id in made:
        ended, data = await backup.task_end(
            (await backup.cmd("verify", {"snapshot_id": snapshot_id, "identity": identity}))[
                "task_id"
            ]
        )
        assert ended == "TaskSucceeded" and data["result"]["ok"] is True, data


async def test_restore_of_a_platform_backup_is_refused(backup: Backup, tmp_path: Path) -> None:
    identity = await set_up(backup, tmp_path / "disk" / "backups")
    ended, data = await run(backup)
    assert ended == "TaskSucceeded", data
    snapshot_id = data["result"]["snapshots"]["platform"]
    for verb, extra in (("restore", {}), ("clone", {"location": "copy"})):
        with pytest.raises(Conflict) as e:
            await backup.cmd(verb, {"snapshot_id": snapshot_id, "identity": identity, **extra})
        assert e.value.field == "snapshot_id" and "homeport restore" in e.value.message


async def app_backup(where: Path, identity: str, app_id: str) -> str:
    """An app's backup on the target, as an earlier run stored it (the repository library)."""
    folder = where.parent / "app-folder"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "notes.txt").write_text("my notes\n")
    (folder / "app.json").write_text(json.dumps({"manifest_id": "org.homeport.static"}))
    repo = await Repository.open(LocalTarget(where))
    labels = {"kind": "app", "app_id": app_id, "location": "blog", "reason": "backup"}
    info = await repo.backup(folder, {"app": {"manifest_id": "org.homeport.static"}}, labels=labels)
    return info.id


async def test_restore_with_a_wrong_key_is_refused_naming_identity_before_any_change(
    backup: Backup, tmp_path: Path
) -> None:
    where = tmp_path / "disk" / "backups"
    identity = await set_up(backup, where)
    app_id = str(uuid.uuid4())
    snapshot_id = await app_backup(where, identity, app_id)
    listed = (await backup.ask("backups", {"app_id": app_id}))["items"]
    assert [(b["snapshot_id"], b["location"]) for b in listed] == [(snapshot_id, "blog")]
    wrong, _ = new_identity()
    before = await backup.all_events()
    for verb, extra in (("restore", {}), ("clone", {"location": "copy"})):
        with pytest.raises(Invalid) as e:
            await backup.cmd(verb, {"snapshot_id": snapshot_id, "identity": wrong, **extra})
        assert e.value.field == "identity", e.value
    # the right key, but the app is not installed any more: clone it instead
    with pytest.raises(Conflict) as c:
        await backup.cmd("restore", {"snapshot_id": snapshot_id, "identity": identity})
    assert "clone it to a new location" in c.value.message and snapshot_id in c.value.message
    assert len(await backup.all_events()) == len(before)  # no task, nothing recorded
    assert not (tmp_path / "apps" / "snapshots" / app_id).exists()


async def test_verify_names_damage(backup: Backup, tmp_path: Path) -> None:
    where = tmp_path / "disk" / "backups"
    identity = await set_up(backup, where)
    ended, data = await run(backup)
    snapshot_id = data["result"]["snapshots"]["platform"]
    for pack in (where / "data").rglob("*"):
        if pack.is_file():
            raw = bytearray(pack.read_bytes())
            raw[len(raw) // 2] ^= 0xFF
            pack.write_bytes(bytes(raw))
    task = await backup.cmd("verify", {"snapshot_id": snapshot_id, "identity": identity})
    ended, data = await backup.task_end(task["task_id"])
    assert ended == "TaskFailed" and data["code"] == "damaged", data
    assert "of the platform is damaged" in data["message"]
    # the files whose stored pieces lay where the bytes were flipped: which ones depends on
    # how the packs were laid out (CI once saw the keyring's files named, events.jsonl spared)
    assert "; damaged files: " in data["message"], data["message"]
    named = data["message"].split("; damaged files: ", 1)[1].split(", ")
    platform = ("events.jsonl", "keyring", "certs/", "audit/", "platform.json")  # platform.py
    assert named and all(n.startswith(platform) for n in named), named
    # without the key: the packs are checked against their names, the files cannot be named
    task = await backup.cmd("verify", {"snapshot_id": snapshot_id})
    ended, data = await backup.task_end(task["task_id"])
    assert ended == "TaskFailed" and data["code"] == "damaged", data
    assert "content hash differs" in data["message"]


async def test_retention_forgets_old_backups_keeping_the_newest(
    backup: Backup, tmp_path: Path
) -> None:
    where = tmp_path / "disk" / "backups"
    where.parent.mkdir(parents=True)
    await backup.cmd("set_target", {"kind": "local", "path": str(where)})
    await backup.cmd("setup_key", {"passphrase": "a long enough passphrase"})
    ids = []
    for _ in range(3):
        ended, data = await run(backup)
        assert ended == "TaskSucceeded", data
        ids.append(data["result"]["snapshots"]["platform"])
    await backup.cmd("set_retention", {"last": 1, "daily": 0, "weekly": 0, "monthly": 0})
    ended, data = await backup.task_end((await backup.cmd("prune", {}))["task_id"])
    assert ended == "TaskSucceeded", data
    assert data["result"]["forgotten"] == 2
    listed = (await backup.ask("backups", {}))["items"]
    assert [b["snapshot_id"] for b in listed] == [ids[-1]]
    assert (where / "recovery" / "identity.age").is_file()  # the key's copy is not pruned
    pruned = await backup.events("backup-prune")
    assert pruned[-1][0] == "BackupPruned" and sorted(pruned[-1][1]["snapshot_ids"]) == sorted(
        ids[:2]
    )


async def test_an_unreachable_target_ends_in_backup_failed(
    backup: Backup, moto: MotoServer
) -> None:
    bucket = f"hp-{uuid.uuid4().hex[:12]}"
    s3 = moto.client("s3")
    s3.create_bucket(Bucket=bucket)
    target = {
        "kind": "s3",
        "bucket": bucket,
        "endpoint_url": moto.url,
        "access_key_id": moto.access_key_id,
        "secret_access_key": moto.secret_access_key,
    }
    await backup.cmd("set_target", target)
    await backup.cmd("setup_key", {})
    for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        s3.delete_object(Bucket=bucket, Key=obj["Key"])
    s3.delete_bucket(Bucket=bucket)  # the storage went away
    ended, data = await run(backup)
    assert ended == "TaskFailed", data
    failed = [d for _, t, d in await backup.all_events() if t == "BackupFailed"]
    assert len(failed) == 1
    reason = json.loads(failed[0])["reason"]
    assert "tries" in reason and bucket in reason
    assert moto.secret_access_key not in reason


async def test_backups_of_nothing_set_up_list_nothing(backup: Backup) -> None:
    assert await backup.ask("backups", {}) == {"items": []}
    with pytest.raises(Conflict):
        await backup.cmd("prune", {})


async def test_a_pre_update_snapshot_becomes_a_backup_and_stays_on_the_disk(
    backup: Backup, tmp_path: Path
) -> None:
    where = tmp_path / "disk" / "backups"
    identity = await set_up(backup, where)
    app_id, snapshot_id = str(uuid.uuid4()), str(uuid.uuid4())
    folder = tmp_path / "apps" / "snapshots" / app_id / snapshot_id
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "page.html").write_text("<p>before the update</p>\n")
    about = {"manifest_id": "org.homeport.static", "version": "1.0.0", "location": "blog"}
    (folder / "app.json").write_text(json.dumps(about))
    # what the apps service records when it snapshots an app before updating it
    taken = AppSnapshotTaken(
        app_id=app_id,
        snapshot_id=snapshot_id,
        manifest_id="org.homeport.static",
        version="1.0.0",
        reason="update",
        size_bytes=26,
    )
    await backup.store.append(app_stream(app_id), [taken], expected_version=0)

    async def listed() -> list[dict[str, Any]]:
        return list((await backup.ask("backups", {"app_id": app_id}))["items"])

    stored: list[dict[str, Any]] = []

    async def stored_one() -> bool:
        rows = await backup.store.pool.fetch(
            "SELECT state FROM backup.updates WHERE snapshot_id = $1", snapshot_id
        )
        if rows and rows[0]["state"] == "stored":
            stored[:] = await listed()
            return bool(stored)
        return False

    await wait_until(stored_one, 30, "the pre-update snapshot to be stored")
    assert [(b["reason"], b["version"], b["location"]) for b in stored] == [
        ("update", "1.0.0", "blog")
    ]
    assert (folder / "data" / "page.html").exists()  # apps rolls back from it: not forgotten
    repo = await Repository.open(LocalTarget(where))
    out = tmp_path / "out"
    await repo.restore(stored[0]["snapshot_id"], out, identity)
    assert (out / "data" / "page.html").read_text() == "<p>before the update</p>\n"


async def test_the_schedule_runs_everything_then_retention_at_its_time_only(
    backup: Backup, tmp_path: Path, nats_url: str, dsn: str, uniq: str
) -> None:
    await set_up(backup, tmp_path / "disk" / "backups")
    await backup.cmd("set_schedule", {"time": "03:30", "jitter_minutes": 20})
    await backup.cmd("set_retention", {"last": 1, "daily": 0, "weekly": 0, "monthly": 0})
    env = backup_env(dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, uniq=uniq)
    cfg = load_config(BackupConfig, env)
    now = [dt.datetime(2026, 3, 2, 1, 0, tzinfo=dt.UTC)]
    nc = await nats.connect(nats_url)
    try:
        with Keyring.open(cfg.keyring) as keys:
            apps = AppsPeer(
                BusClient(nc, sender="backup"), backup.store, timeout=3, task_seconds=10
            )
            engine = Engine(cfg, backup.store, keys, apps)
            runner = asyncio.create_task(engine.run())
            try:
                scheduler = Scheduler(engine, lambda: now[0], seed="test")
                look = await scheduler.tick()
                due = scheduler.due
                assert due is not None
                assert dt.datetime(2026, 3, 2, 3, 30, tzinfo=dt.UTC) <= due
                assert due < dt.datetime(2026, 3, 2, 3, 50, tzinfo=dt.UTC)
                assert look <= due and engine.idle.is_set()  # nothing runs before its time
                now[0] = due - dt.timedelta(seconds=1)
                await scheduler.tick()
                assert engine.idle.is_set()
                for day in range(2):  # two days pass: two runs, retention keeps the newest
                    now[0] = due + dt.timedelta(days=day, minutes=1)
                    await scheduler.tick()
                    assert not engine.idle.is_set()
                    await asyncio.wait_for(engine.idle.wait(), 60)
                    assert scheduler.due is not None and scheduler.due > now[0]
            finally:
                engine.stop()
                await asyncio.wait_for(runner, 30)
                await engine.close()
    finally:
        await nc.close()
    types = [t for _, t, _ in await backup.all_events()]
    assert types.count("BackupCompleted") == 2 and types.count("BackupPruned") == 2
    assert len((await backup.ask("backups", {}))["items"]) == 1


async def test_a_prune_from_another_process_racing_a_backup_loses_nothing(
    backup: Backup, tmp_path: Path, nats_url: str, dsn: str, uniq: str
) -> None:
    where = tmp_path / "disk" / "backups"
    identity = await set_up(backup, where)
    ended, data = await run(backup)
    assert ended == "TaskSucceeded", data
    await backup.cmd("set_retention", {"last": 1, "daily": 0, "weekly": 0, "monthly": 0})
    app_id, snapshot_id = str(uuid.uuid4()), str(uuid.uuid4())
    folder = tmp_path / "apps" / "snapshots" / app_id / snapshot_id
    (folder / "data").mkdir(parents=True)
    for i in range(3):
        (folder / "data" / f"f{i}.bin").write_bytes(os.urandom(8 << 20))
    env = backup_env(dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, uniq=uniq)
    cfg = load_config(BackupConfig, env)
    nc = await nats.connect(nats_url)
    try:
        with Keyring.open(cfg.keyring) as keys:
            other = Engine(
                cfg,
                backup.store,
                keys,
                AppsPeer(BusClient(nc, sender="backup"), backup.store, timeout=3, task_seconds=10),
            )
            runner = asyncio.create_task(other.run())
            try:
                taken = AppSnapshotTaken(
                    app_id=app_id,
                    snapshot_id=snapshot_id,
                    manifest_id="org.homeport.static",
                    version="1.0.0",
                    reason="update",
                    size_bytes=24 << 20,
                )
                await backup.store.append(app_stream(app_id), [taken], expected_version=0)

                async def started() -> bool:
                    rows = await backup.store.pool.fetch(
                        "SELECT 1 FROM events.events WHERE type = 'TaskStarted'"
                        " AND data->>'kind' = 'backup.update'"
                    )
                    return bool(rows)

                await wait_until(started, 30, "the backup to start", step=0.02)
                pruning = await other.submit("prune", "Apply retention", other.prune_job())
                ended, data = await backup.task_end(pruning)
                assert ended == "TaskSucceeded", data
            finally:
                other.stop()
                await asyncio.wait_for(runner, 30)
                await other.close()
    finally:
        await nc.close()

    async def stored() -> bool:
        rows = await backup.store.pool.fetch("SELECT state FROM backup.updates")
        return bool(rows) and rows[0]["state"] in ("stored", "failed")

    await wait_until(stored, 60, "the pre-update backup to end")
    repo = await Repository.open(LocalTarget(where))
    for info in await repo.snapshots():
        report = await repo.verify(info.id, identity)
        assert report.ok, report.problems
    kinds = sorted(i.labels["kind"] for i in await repo.snapshots())
    assert "app" in kinds  # the backup that ran meanwhile is whole and listed


async def test_a_target_whose_keys_were_altered_is_refused_and_nothing_is_stored(
    backup: Backup, tmp_path: Path
) -> None:
    where = tmp_path / "disk" / "backups"
    await set_up(backup, where)
    # someone with write access to the target adds their own key to the repository
    config = json.loads((where / "config").read_text())
    _, attacker = new_identity()
    config["recipients"].append(attacker)
    (where / "config").write_text(json.dumps(config))
    ended, data = await run(backup)
    assert ended == "TaskFailed", data
    assert "recipients differ" in data["message"]
    assert not list(where.glob("snapshots/*"))
    s = await backup.ask("settings", {})
    assert s["last_success"] is None and "recipients differ" in s["last_failure"]["reason"]


async def test_back_up_of_an_app_that_is_not_installed_is_refused(
    backup: Backup, tmp_path: Path
) -> None:
    await set_up(backup, tmp_path / "disk" / "backups")
    before = await backup.all_events()
    with pytest.raises(Invalid) as e:
        await backup.cmd("back_up", {"app_id": str(uuid.uuid4())})
    assert e.value.field == "app_id" and "installed" in e.value.message
    assert len(await backup.all_events()) == len(before)
