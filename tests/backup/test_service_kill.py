"""The backup service stopped mid-backup (kill -9, or SIGTERM): the task of the job ends failed
(at the next start after a kill -9, at once on SIGTERM), the job runs again and completes,
reusing what was uploaded; no half-done backup is ever listed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import nats
import pytest

from libs.contracts.errors import BusError
from libs.events.store import PostgresEventStore
from services.apps.events import AppSnapshotTaken, app_stream
from tests.backup.servicekit import ADMIN, backup_env
from tests.support.bus import ActorBus, relaying
from tests.support.waits import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]


def _big_folder(folder: Path, files: int, size: int) -> None:
    (folder / "data").mkdir(parents=True)
    for i in range(files):
        with open(folder / "data" / f"blob{i}.bin", "wb") as f:
            for _ in range(size // (1 << 20)):
                f.write(os.urandom(1 << 20))
    (folder / "app.json").write_text(json.dumps({"manifest_id": "org.homeport.static"}))


@pytest.mark.parametrize("how", ["kill -9", "SIGTERM"])
async def test_a_service_stopped_mid_backup_fails_that_task_and_the_job_completes_later(
    dsn: str, nats_url: str, tmp_path: Path, uniq: str, how: str
) -> None:
    env = {**os.environ, **backup_env(dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, uniq=uniq)}
    log = tmp_path / "backup.log"
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            p = subprocess.Popen(
                [sys.executable, "-m", "services.backup"],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        procs.append(p)
        return p

    nc = await nats.connect(nats_url)
    store = await PostgresEventStore.open(dsn, max_size=2)
    bus = ActorBus(nc, default_timeout=30)

    async def answers() -> bool:
        try:
            await bus.query("backup", "settings", {}, ctx=ADMIN, timeout=2)
        except BusError:
            return False
        return True

    async def tasks() -> list[dict[str, Any]]:
        rows = await store.pool.fetch(
            "SELECT s.data->>'task_id' AS id, (SELECT e.type FROM events.events e"
            " WHERE e.stream = s.stream AND e.type IN ('TaskSucceeded', 'TaskFailed')) AS ended,"
            " (SELECT e.data->>'code' FROM events.events e WHERE e.stream = s.stream"
            " AND e.type = 'TaskFailed') AS code"
            " FROM events.events s WHERE s.type = 'TaskStarted'"
            " AND s.data->>'kind' = 'backup.update' ORDER BY s.position"
        )
        return [dict(r) for r in rows]

    try:
        async with relaying(dsn, nats_url, uniq):
            first = start()
            await wait_until(answers, 60, "the backup service to answer")
            where = tmp_path / "disk" / "backups"
            where.parent.mkdir(parents=True)
            await bus.command(
                "backup", "set_target", {"kind": "local", "path": str(where)}, ctx=ADMIN
            )
            await bus.command("backup", "setup_key", {}, ctx=ADMIN)
            app_id, snapshot_id = str(uuid.uuid4()), str(uuid.uuid4())
            folder = tmp_path / "apps" / "snapshots" / app_id / snapshot_id
            await asyncio.to_thread(_big_folder, folder, 3, 48 << 20)
            taken = AppSnapshotTaken(
                app_id=app_id,
                snapshot_id=snapshot_id,
                manifest_id="org.homeport.static",
                version="1.0.0",
                reason="update",
                size_bytes=3 * (48 << 20),
            )
            await store.append(app_stream(app_id), [taken], expected_version=0)

            async def some_packs_uploaded() -> bool:  # a pack and its index are on the target
                return len([p for p in where.glob("index/**/*") if p.is_file()]) >= 2

            await wait_until(some_packs_uploaded, 60, "packs to be uploaded", step=0.02)
            first.send_signal(signal.SIGKILL if how == "kill -9" else signal.SIGTERM)
            code = first.wait(20)
            assert (
                not list((where / "snapshots").glob("*"))
                if (where / "snapshots").exists()
                else True
            )
            [killed] = await tasks()
            if how == "kill -9":
                assert killed["ended"] is None  # the killed job's task is still open
            else:  # a stop cancels the job at once and says so, and exits cleanly
                assert code == 0, open(log).read()[-3000:]
                assert (killed["ended"], killed["code"]) == ("TaskFailed", "interrupted")

            start()

            async def two_tasks_ended() -> bool:
                found = await tasks()
                return len(found) == 2 and all(t["ended"] for t in found)

            await wait_until(two_tasks_ended, 120, "the job to run again and end")
            killed, again = await tasks()
            assert (killed["ended"], killed["code"]) == ("TaskFailed", "interrupted")
            assert again["ended"] == "TaskSucceeded", open(log).read()[-3000:]
            done = [
                json.loads(r["data"])
                for r in await store.pool.fetch(
                    "SELECT data::text AS data FROM events.events WHERE type = 'BackupCompleted'"
                )
            ]
            assert len(done) == 1
            assert done[0]["new_bytes"] < done[0]["size_bytes"]  # what was uploaded is reused
            listed = await bus.query("backup", "backups", {"app_id": app_id}, ctx=ADMIN)
            assert [b["snapshot_id"] for b in listed["items"]] == [done[0]["snapshot_id"]]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        await store.close()
        await nc.close()
