"""The backup service over its bus: settings checked before they are kept, the S3 secret
sealed and never answered, the private key shown once, defaults when unset."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pyrage
import pytest

from libs.events.bus import Conflict, Forbidden, Invalid
from libs.events.context import Context
from services.backup.repo import Repository, new_identity
from services.backup.targets.local import LocalTarget
from tests.backup.servicekit import Backup, backup_env, running_backup
from tests.support.moto import MotoServer, run_moto
from tests.support.waits import wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    yield from run_moto()


@pytest.fixture
async def backup(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path, uniq: str
) -> AsyncIterator[Backup]:
    env = backup_env(dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, uniq=uniq)
    async with running_backup(monkeypatch, env) as b:
        yield b


def s3_target(moto: MotoServer) -> dict[str, Any]:
    bucket = f"hp-{uuid.uuid4().hex[:12]}"
    moto.client("s3").create_bucket(Bucket=bucket)
    return {
        "kind": "s3",
        "bucket": bucket,
        "prefix": "homeport/",
        "endpoint_url": moto.url,
        "region": "us-east-1",
        "access_key_id": moto.access_key_id,
        "secret_access_key": moto.secret_access_key,
    }


async def test_defaults_are_shown_before_anything_is_set(backup: Backup) -> None:
    s = await backup.ask("settings", {})
    assert s["target"] is None and s["recipients"] == [] and s["ready"] is False
    assert s["next_run"] is None  # nothing runs before a target and key are set up
    assert s["schedule"] == {"enabled": True, "time": "03:30", "jitter_minutes": 30}
    assert s["retention"] == {"last": 7, "daily": 7, "weekly": 4, "monthly": 6}


async def test_schedule_and_retention_round_trip_keeping_what_is_not_named(
    backup: Backup,
) -> None:
    s = await backup.cmd("set_schedule", {"time": "01:15", "jitter_minutes": 0})
    assert s["schedule"] == {"enabled": True, "time": "01:15", "jitter_minutes": 0}
    s = await backup.cmd("set_retention", {"daily": 3, "monthly": 0})
    assert s["retention"] == {"last": 7, "daily": 3, "weekly": 4, "monthly": 0}
    again = await backup.ask("settings", {})
    assert again["schedule"]["time"] == "01:15" and again["retention"]["daily"] == 3


_S3 = {"kind": "s3", "bucket": "bucket1", "access_key_id": "AKIA1", "secret_access_key": "s"}


@pytest.mark.parametrize(
    ("verb", "payload", "field"),
    [
        ("set_schedule", {"time": "25:00"}, "time"),
        ("set_schedule", {"jitter_minutes": -1}, "jitter_minutes"),
        ("set_retention", {"last": 1001}, "last"),
        ("set_target", {"kind": "ftp"}, "kind"),
        ("set_target", {"kind": "local", "path": "relative/dir"}, "path"),
        ("set_target", {"kind": "local"}, "path"),
        ("set_target", {"kind": "local", "path": "/tmp/x", "bucket": "abc"}, "bucket"),
        ("set_target", {"kind": "s3", "bucket": "b1", "access_key_id": "a"}, "bucket"),
        ("set_target", {**_S3, "bucket": "Bad_Bucket"}, "bucket"),
        ("set_target", {**_S3, "secret_access_key": "with space"}, "secret_access_key"),
        ("set_target", {**_S3, "endpoint_url": "ftp://x"}, "endpoint_url"),
        ("setup_key", {"second_recipient": "age1nope"}, "second_recipient"),
        ("setup_key", {"passphrase": "short"}, "passphrase"),
    ],
)
async def test_bad_settings_are_refused_naming_the_field_and_nothing_is_kept(
    backup: Backup, verb: str, payload: dict[str, Any], field: str
) -> None:
    with pytest.raises(Invalid) as e:
        await backup.cmd(verb, payload)
    assert e.value.field == field, e.value
    assert await backup.events("backup-settings") == []


async def test_a_local_target_is_checked_then_kept_and_a_key_makes_its_repository(
    backup: Backup, tmp_path: Path
) -> None:
    (tmp_path / "disk").mkdir()  # a mounted disk: the backups folder is made on it
    where = tmp_path / "disk" / "backups"
    s = await backup.cmd("set_target", {"kind": "local", "path": str(where)})
    assert s["target"] == {"kind": "local", "path": str(where)}
    assert sorted(p.name for p in where.iterdir()) == []  # the probe object is gone

    key = await backup.cmd("setup_key", {})
    assert key["identity"].startswith("AGE-SECRET-KEY-1")
    assert key["recipients"][0].startswith("age1") and len(key["recipients"]) == 1
    config = json.loads((where / "config").read_text())
    assert config["recipients"] == key["recipients"]

    s = await backup.ask("settings", {})
    assert s["recipients"] == key["recipients"] and s["ready"] is True
    assert s["next_run"] is not None and "T03:" in s["next_run"]  # 03:30 + up to 30 min
    assert key["identity"] not in json.dumps(s)
    stored = json.dumps(await backup.all_events())
    assert key["identity"] not in stored  # the private key is never kept


async def test_a_folder_of_the_platform_is_refused_as_a_target(
    backup: Backup, tmp_path: Path
) -> None:
    for inside in ("apps", "apps/snapshots", "backup/cache", "certs"):
        with pytest.raises(Invalid) as e:
            await backup.cmd("set_target", {"kind": "local", "path": str(tmp_path / inside)})
        assert e.value.field == "path" and "platform's data folder" in e.value.message
    with pytest.raises(Invalid) as e:
        await backup.cmd("set_target", {"kind": "local", "path": "/var/lib/homeport/backups"})
    assert e.value.field == "path" and "system folder /var/lib/homeport" in e.value.message
    assert await backup.events("backup-settings") == []
    assert not (tmp_path / "apps" / "snapshots").exists()  # nothing made there either


async def test_a_target_that_fails_its_check_is_not_kept(backup: Backup, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(Invalid) as e:
        await backup.cmd("set_target", {"kind": "local", "path": str(blocker / "backups")})
    assert e.value.field == "path" and "nothing was saved" in e.value.message
    assert await backup.events("backup-settings") == []


async def test_a_target_holding_a_repository_for_other_keys_is_refused(
    backup: Backup, tmp_path: Path
) -> None:
    mine = tmp_path / "mine"
    await backup.cmd("set_target", {"kind": "local", "path": str(mine)})
    await backup.cmd("setup_key", {})
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    _, stranger = new_identity()
    await Repository.init(LocalTarget(theirs), [stranger])
    before = await backup.events("backup-settings")
    with pytest.raises(Conflict) as e:
        await backup.cmd("set_target", {"kind": "local", "path": str(theirs)})
    assert "other keys" in e.value.message
    assert await backup.events("backup-settings") == before
    assert (await backup.ask("settings", {}))["target"]["path"] == str(mine)


async def test_the_s3_secret_is_sealed_never_answered_and_a_second_recipient_is_kept(
    backup: Backup, moto: MotoServer
) -> None:
    target = s3_target(moto)
    secret = target["secret_access_key"]
    s = await backup.cmd("set_target", target)
    assert s["target"]["secret_set"] is True and "secret_access_key" not in s["target"]
    assert s["target"]["bucket"] == target["bucket"]
    _, second = new_identity()
    key = await backup.cmd(
        "setup_key", {"second_recipient": second, "passphrase": "correct horse battery"}
    )
    assert key["recipients"][1] == second
    # the copy of the key on the target opens with the passphrase only
    body = moto.client("s3").get_object(
        Bucket=target["bucket"], Key="homeport/recovery/identity.age"
    )
    copy = body["Body"].read()
    assert pyrage.passphrase.decrypt(copy, "correct horse battery").decode() == key["identity"]
    # the same target again without the secret keeps the sealed one
    again = {k: v for k, v in target.items() if k != "secret_access_key"}
    s = await backup.cmd("set_target", again)
    assert s["target"]["secret_set"] is True
    # ... but never to another server: it would hand the secret to whoever runs that one
    elsewhere = {**again, "endpoint_url": "http://127.0.0.1:9"}
    with pytest.raises(Invalid) as e:
        await backup.cmd("set_target", elsewhere)
    assert e.value.field == "secret_access_key"
    everything = json.dumps(await backup.all_events())
    assert secret not in everything and key["identity"] not in everything
    assert secret not in json.dumps(await backup.ask("settings", {}))


async def test_back_up_without_a_target_is_refused(backup: Backup) -> None:
    with pytest.raises(Conflict) as e:
        await backup.cmd("back_up", {})
    assert e.value.field == "target"


async def test_a_caller_who_is_not_an_admin_is_refused(backup: Backup, tmp_path: Path) -> None:
    someone = Context(str(uuid.uuid4()), "backup-test", None, None, admin=False)
    for kind, name, payload in (
        ("qry", "settings", {}),
        ("qry", "backups", {}),
        ("cmd", "set_target", {"kind": "local", "path": str(tmp_path)}),
        ("cmd", "setup_key", {}),
        ("cmd", "back_up", {}),
    ):
        call = backup.bus.query if kind == "qry" else backup.bus.command
        with pytest.raises(Forbidden):
            await call("backup", name, payload, ctx=someone, timeout=10)
    assert await backup.events("backup-settings") == []


async def test_the_service_signs_checkpoints_at_start_and_at_its_interval(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path, uniq: str
) -> None:
    """The backup service keeps the signed checkpoints of the event chain (its own key, in its
    own folder): one at start, another once the chain moved and the interval passed; both
    verify against the event store."""
    from libs.events.checkpoints import CheckpointLog, verify_checkpoints
    from libs.events.envelope import NewEvent

    env = backup_env(
        dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, uniq=uniq,
        extra={"HP_CHECKPOINT_SECONDS": "0.2"},
    )  # fmt: skip
    audit = tmp_path / "backup" / "audit"
    log = CheckpointLog(audit / "checkpoints.jsonl")
    async with running_backup(monkeypatch, env) as b:
        await b.store.append(f"thing-{uniq}", [NewEvent("ThingHappened", {"i": 1})])
        head = await b.store.head()

        async def at_head() -> bool:
            lines = log.path.read_text().splitlines() if log.path.exists() else []
            return bool(lines) and json.loads(lines[-1])["position"] == head

        await wait_until(at_head, 20, "a checkpoint of the new head")
        public = (audit / "checkpoint.key.pub").read_text().strip()
        matched, problems = await verify_checkpoints(b.store, log, public)
        assert problems == [] and matched == len(log.path.read_text().splitlines()) >= 1
    assert (audit / "checkpoint.key").stat().st_mode & 0o777 == 0o600


async def test_a_negative_checkpoint_interval_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from libs.service.config import ConfigError, load_config
    from services.backup.config import BackupConfig

    monkeypatch.setenv("HP_CHECKPOINT_SECONDS", "-5")
    with pytest.raises(ConfigError, match="HP_CHECKPOINT_SECONDS"):
        load_config(BackupConfig)
