"""The real backup service, with a keyring of its own (`<data>/keyring/backup/keyring.json`),
backs up the keyring of every service that seals: each file as it is, in the platform backup's
`keyring/` folder (as `<service>.json`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from libs.events.sealing import Keyring, keyring_file
from services.backup.repo import Repository
from services.backup.targets.local import LocalTarget
from tests.backup.servicekit import backup_env, running_backup

pytestmark = pytest.mark.timeout(120)


@asynccontextmanager
async def no_apps(nats_url: str) -> AsyncIterator[None]:
    """A STAND-IN for the apps service's `apps` query only: a platform without apps."""
    nc = await nats.connect(nats_url)

    async def answer(msg: Msg) -> None:
        await msg.respond(json.dumps({"ok": True, "result": {"items": []}}).encode())

    try:
        await nc.subscribe("hp.qry.apps.apps.*", queue="hp.apps", cb=answer)
        await nc.flush()
        yield
    finally:
        await nc.close()


async def test_a_platform_backup_holds_every_services_keyring(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path, uniq: str
) -> None:
    folder = tmp_path / "keyring"
    made: dict[str, bytes] = {}
    for owner in ("identity", "apps"):  # dns and certs have not started: no keyring yet
        with Keyring.open(keyring_file(folder, owner)) as k:
            k.seal_for(f"{owner}-subject", "x")
        made[owner] = keyring_file(folder, owner).read_bytes()
    env = backup_env(
        dsn=dsn,
        nats_url=nats_url,
        tmp_path=tmp_path,
        uniq=uniq,
        extra={"HP_KEYRING": str(keyring_file(folder, "backup"))},
    )
    target = tmp_path / "disk" / "backups"
    target.parent.mkdir(parents=True)
    async with no_apps(nats_url), running_backup(monkeypatch, env) as backup:
        await backup.cmd("set_target", {"kind": "local", "path": str(target)})
        key: dict[str, Any] = await backup.cmd("setup_key", {})
        answer = await backup.cmd("back_up", {})
        ended, data = await backup.task_end(answer["task_id"])
    assert ended == "TaskSucceeded", data
    made["backup"] = keyring_file(folder, "backup").read_bytes()  # its target secret's key

    repo = await Repository.open(LocalTarget(target))
    out = tmp_path / "restored"
    await repo.restore(data["result"]["snapshots"]["platform"], out, str(key["identity"]))
    assert sorted(p.name for p in (out / "keyring").iterdir()) == sorted(f"{o}.json" for o in made)
    for owner, ring in made.items():
        assert (out / "keyring" / f"{owner}.json").read_bytes() == ring  # a backup's layout
    assert not (out / "keyring.json").exists()
