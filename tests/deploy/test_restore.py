"""`homeport restore`, `homeport backup list` and `homeport backup verify` against backups made
with the repository API on a LocalTarget (and one S3 target on moto): what the administrator
sees, what lands in the data directory, and what is refused without changing anything."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from cli.main import main as homeport
from deploy.embedded import PostgresServer
from deploy.planning import DATABASE
from libs.events.envelope import NewEvent
from libs.events.sealing import KEYRING_OWNERS, SHARED_OWNERS, Keyring, keyring_file
from libs.events.store import PostgresEventStore
from services.backup.platform import dump_platform
from services.backup.repo import Repository, new_identity
from services.backup.targets.local import LocalTarget
from services.identity import events as ev
from tests.support.moto import MotoServer, run_moto

U1 = str(uuid.uuid4())
U2 = str(uuid.uuid4())
S1 = str(uuid.uuid4())
S2 = str(uuid.uuid4())
APP = str(uuid.uuid4())


@dataclass
class Made:
    target: Path
    key_file: Path
    keyrings: dict[str, bytes]  # each service's
    app_backup: str
    platform_backup: str
    events: int
    tar: bytes


def _session(user: str, session: str) -> ev.SessionStarted:
    return ev.SessionStarted(
        user_id=user,
        session_id=session,
        session_hash="00" * 32,
        expires_at="2999-01-01T00:00:00+00:00",
        idle_seconds=3600,
        ip=None,
        user_agent=None,
    )


async def _make_backups(dsn: str, root: Path, target_dir: Path) -> Made:
    """A platform with two sessions (one ended), one app backup and one platform backup."""
    async with await PostgresEventStore.open(dsn) as store:
        await store.append("thing-1", [NewEvent("ThingHappened", {"n": 1.5})])
        for user in (U1, U2):
            created = ev.UserCreated(
                user_id=user,
                username=f"sealed-name-{user}",
                username_index=f"index-{user}",
                email=f"sealed-email-{user}",
                email_index=f"email-index-{user}",
                display_name=None,
                password_hash="sealed-hash",
                is_admin=False,
                via="admin",
            )
            await store.append(ev.user_stream(user), [created])
        await store.append(ev.user_stream(U1), [_session(U1, S1)])
        await store.append(ev.user_stream(U2), [_session(U2, S2)])
        await store.append(
            ev.user_stream(U2), [ev.SessionEnded(user_id=U2, session_id=S2, reason="logout")]
        )
    keyring = keyring_file(root / "old" / "keyring", "backup")  # beside the others' folders
    for owner in KEYRING_OWNERS:
        Keyring.open(keyring_file(root / "old" / "keyring", owner)).close()
    certs = root / "old" / "certs" / "example.test"
    certs.mkdir(parents=True)
    (certs / "fullchain.pem").write_text("chain\n")
    app = root / "old" / "snap"
    app.mkdir(mode=0o700)
    tar = os.urandom(200_000)
    (app / "data.tar").write_bytes(tar)
    (app / "snapshot.json").write_text('{"manifest_id": "notes", "version": "1.0.0"}')
    (app / "app.json").write_text('{"location": "notes"}')
    identity, recipient = new_identity()
    target_dir.mkdir(exist_ok=True)
    repo = await Repository.init(LocalTarget(target_dir), [recipient])
    app_info = await repo.backup(
        app,
        {},
        labels={
            "kind": "app",
            "app_id": APP,
            "manifest_id": "notes",
            "version": "1.0.0",
            "location": "notes",
            "reason": "backup",
            "run": "r1",
        },
    )
    out = root / "old" / "platform"
    conn = await asyncpg.connect(dsn)
    try:
        await dump_platform(
            conn,
            keyring=keyring,
            certs_dir=certs.parent,
            out_dir=out,
            apps={APP: app_info.id},
            platform_version="0.1.0",
        )
    finally:
        await conn.close()
    plat = await repo.backup(out, {}, labels={"kind": "platform", "run": "r1", "apps": app_info.id})
    key_file = root / "backup-key.txt"
    key_file.write_text(f"# Homeport backup key\n{identity}\n")
    rings = {o: keyring_file(keyring.parent.parent, o).read_bytes() for o in KEYRING_OWNERS}
    return Made(target_dir, key_file, rings, app_info.id, plat.id, 6, tar)


@pytest.fixture
async def made(dsn: str, tmp_path: Path) -> Made:
    return await _make_backups(dsn, tmp_path, tmp_path / "target")


def _cli(*args: str | Path) -> int:
    return homeport([str(a) for a in args])


async def run_cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(_cli, *args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def data_dir(tmp_root: Path) -> Iterator[Path]:
    """A data directory the postgres user can reach (as the stack tests use), removed after."""
    d = tmp_root / f"restore-{uuid.uuid4().hex[:8]}"
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.slow
async def test_restore_brings_the_platform_back_into_an_empty_data_dir(
    made: Made, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = data_dir
    # what a restore killed half-way leaves: the marker and some of what it wrote
    data.mkdir()
    (data / "restore-in-progress.json").write_text("{}")
    (data / "apps" / "snapshots" / APP / "x.partial").mkdir(parents=True)
    keyring_file(data / "keyring", "identity").parent.mkdir(parents=True)
    keyring_file(data / "keyring", "identity").write_text("half")

    code, out, err = await run_cli(
        capsys, "restore", "--from", made.target, "--key", made.key_file, "--data-dir", data
    )
    assert code == 0, err
    assert "did not finish: clearing what it wrote" in out
    assert f"restoring platform backup {made.platform_backup}" in out
    assert f"restoring app {APP} from backup {made.app_backup}" in out
    assert "ended 1 sessions" in out
    assert "read model identity: built from" in out and "could NOT" not in out
    assert "Now run `make run`" in out
    assert "AGE-SECRET-KEY" not in out + err

    assert not (data / "restore-in-progress.json").exists()
    assert not (data / ".restore-work").exists()
    for owner, ring in made.keyrings.items():  # each service's keyring back in its place
        assert keyring_file(data / "keyring", owner).read_bytes() == ring
        assert stat.S_IMODE(keyring_file(data / "keyring", owner).stat().st_mode) == 0o600
    assert len(set(made.keyrings.values())) == len(KEYRING_OWNERS)
    assert not (data / "keyring.json").exists()
    assert (data / "certs" / "example.test" / "fullchain.pem").read_text() == "chain\n"
    pending = json.loads((data / "apps" / "restore-pending.json").read_text())
    assert list(pending) == [APP]
    folder = data / "apps" / "snapshots" / APP / pending[APP]
    assert (folder / "data.tar").read_bytes() == made.tar
    assert sorted(p.name for p in (data / "apps" / "snapshots" / APP).iterdir()) == [pending[APP]]

    # the stack's Postgres holds the events, the chain verifies, the open session is ended
    pg = PostgresServer(
        data / "postgres", password=(data / "database-password").read_text().strip()
    )
    await asyncio.to_thread(pg.start)
    try:
        dsn = pg.dsn_for(DATABASE)
        code, out, _ = await run_cli(capsys, "audit", "verify", "--dsn", dsn)
        assert code == 0 and f"{made.events + 1} events checked" in out
        conn = await asyncpg.connect(dsn)
        try:
            last = await conn.fetchrow(
                "SELECT stream, type, data, meta FROM events.events ORDER BY position DESC LIMIT 1"
            )
        finally:
            await conn.close()
        assert last["stream"] == f"user-{U1}" and last["type"] == "SessionEnded"
        assert json.loads(last["data"])["session_id"] == S1
        assert json.loads(last["meta"])["actor"] == "system"
        # the read models are built: both users known, no session open
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM identity.users") == 2
            assert await conn.fetchval("SELECT count(*) FROM identity.sessions") == 0
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(pg.stop)

    # done: a second restore into the same directory is refused, and changes nothing
    before = sorted(str(p) for p in data.rglob("*") if "postgres" not in p.parts)
    code, _, err = await run_cli(
        capsys, "restore", "--from", made.target, "--key", made.key_file, "--data-dir", data
    )
    assert code == 1 and f"the data directory {data} is not empty" in err
    assert sorted(str(p) for p in data.rglob("*") if "postgres" not in p.parts) == before


async def test_restore_refusals_leave_the_data_dir_empty(
    made: Made, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "d"
    base: list[str | Path] = ["restore", "--from", made.target, "--data-dir", data]

    bad_key = tmp_path / "bad.txt"
    bad_key.write_text("not a key, but a secret-looking string s3cr3t\n")
    code, out, err = await run_cli(capsys, *base, "--key", bad_key)
    assert code == 1 and "holds no backup key" in err and "s3cr3t" not in out + err

    other_identity, _ = new_identity()
    wrong = tmp_path / "wrong.txt"
    wrong.write_text(other_identity + "\n")
    code, out, err = await run_cli(capsys, *base, "--key", wrong)
    assert code == 1 and made.platform_backup in err
    assert other_identity not in out + err
    assert data.is_dir() and list(data.iterdir()) == []  # undone: empty again

    code, _, err = await run_cli(
        capsys, *base, "--key", made.key_file, "--snapshot", made.app_backup
    )
    assert code == 1 and "not of the platform" in err
    code, _, err = await run_cli(
        capsys, *base, "--key", made.key_file, "--snapshot", "20200101000000-0000000000000000"
    )
    assert code == 1 and "holds no backup '20200101000000-0000000000000000'" in err
    assert list(data.iterdir()) == []

    # the app backup the platform backup names is gone: refused before anything is loaded
    app_snapshot = made.target / "snapshots" / made.app_backup
    app_snapshot.rename(tmp_path / "moved")
    code, _, err = await run_cli(capsys, *base, "--key", made.key_file)
    assert code == 1 and f"{APP} ({made.app_backup})" in err
    assert list(data.iterdir()) == []

    (data / "something").write_text("mine")
    code, _, err = await run_cli(capsys, *base, "--key", made.key_file)
    assert code == 1 and f"the data directory {data} is not empty" in err
    assert [p.name for p in data.iterdir()] == ["something"]

    code, _, err = await run_cli(
        capsys, "restore", "--from", "s3://bucket/prefix", "--key", made.key_file,
        "--data-dir", tmp_path / "e",
    )  # fmt: skip
    assert code == 1 and "AWS_ACCESS_KEY_ID" in err
    assert not (tmp_path / "e").exists()


async def test_backup_list_and_verify_name_the_damaged_app(
    made: Made, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await run_cli(capsys, "backup", "list", "--from", made.target)
    assert code == 0
    assert made.app_backup in out and f"app {APP} (notes 1.0.0, backup)" in out
    assert made.platform_backup in out and "platform (1 app backup)" in out

    code, out, _ = await run_cli(capsys, "backup", "verify", "--from", made.target)
    assert code == 0 and "all 2 backups checked: every chunk present with their sizes" in out
    code, out, _ = await run_cli(
        capsys, "backup", "verify", "--from", made.target, "--key", made.key_file, "--all"
    )
    assert code == 0 and "all 2 backups checked: every chunk decrypted and checked" in out

    # flip one byte of every pack the app backup has and no other backup has
    packs = sorted((made.target / "data").rglob("*"))
    packs = [p for p in packs if p.is_file()]
    for pack in packs:
        raw = bytearray(pack.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        pack.write_bytes(bytes(raw))
    code, out, _ = await run_cli(
        capsys, "backup", "verify", "--from", made.target, "--key", made.key_file, made.app_backup
    )
    assert code == 1
    assert f"DAMAGED  {made.app_backup}  app {APP}" in out
    assert "file hurt: data.tar" in out
    assert f"1 of 1 backups damaged: app {APP} (notes 1.0.0, backup)" in out

    code, _, err = await run_cli(
        capsys, "backup", "verify", "--from", made.target, "20200101000000-0000000000000000"
    )
    assert code == 1 and "holds no backup" in err


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    yield from run_moto()


async def test_backup_list_from_s3_takes_credentials_from_the_environment(
    dsn: str,
    tmp_path: Path,
    moto: MotoServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket = f"hp-{uuid.uuid4().hex[:12]}"
    moto.client("s3").create_bucket(Bucket=bucket)
    from services.backup.targets.factory import target_from_settings

    settings = {
        "kind": "s3",
        "bucket": bucket,
        "prefix": "hp/",
        "endpoint_url": moto.url,
        "region": "us-east-1",
        "access_key": moto.access_key_id,
        "secret_key": moto.secret_access_key,
    }
    target = target_from_settings(settings, allow_loopback=True)
    _, recipient = new_identity()
    try:
        repo = await Repository.init(target, [recipient])
        src = tmp_path / "src"
        src.mkdir()
        (src / "f").write_text("x")
        info = await repo.backup(src, {}, labels={"kind": "app", "app_id": "a1"})
    finally:
        await target.close()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto.secret_access_key)
    args = ["backup", "list", "--from", f"s3://{bucket}/hp", "--endpoint-url", moto.url]
    code, out, err = await run_cli(capsys, *args)
    assert code == 0, err
    assert info.id in out and "app a1" in out
    assert moto.secret_access_key not in out + err

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    code, out, err = await run_cli(capsys, *args)
    assert code == 1 and "cannot open the backups" in err
    assert "wrong-secret-value" not in out + err


async def test_a_platform_backup_naming_a_path_instead_of_an_app_is_refused(
    dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A backup a compromised server wrote (it holds the public key): an app id that would
    lead out of <data>/apps is refused before anything is written."""
    made = await _make_backups(dsn, tmp_path, tmp_path / "target")
    identity = made.key_file.read_text().split("\n")[1]
    repo = await Repository.open(LocalTarget(made.target))
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "data.tar").write_text("x")
    bad_app = await repo.backup(evil, {}, labels={"kind": "app", "app_id": "../../../escape"})
    out = tmp_path / "evil-platform"
    src = tmp_path / "restored-platform"
    await repo.restore(made.platform_backup, src, identity)
    out.mkdir()
    shutil.copy(src / "events.jsonl", out / "events.jsonl")
    shutil.copytree(src / "keyring", out / "keyring")
    shutil.copytree(src / "certs", out / "certs")
    doc = json.loads((src / "platform.json").read_text())
    doc["apps"] = {"../../../escape": bad_app.id}
    (out / "platform.json").write_text(json.dumps(doc))
    plat = await repo.backup(out, {}, labels={"kind": "platform", "apps": bad_app.id})
    data = tmp_path / "d"
    code, _, err = await run_cli(
        capsys, "restore", "--from", made.target, "--key", made.key_file,
        "--data-dir", data, "--snapshot", plat.id,
    )  # fmt: skip
    assert code == 1 and "names an app '../../../escape'" in err
    assert list(data.iterdir()) == []
    assert not (tmp_path / "escape").exists() and not (data.parent / "escape").exists()


async def test_an_old_platform_backup_with_one_keyring_restores_for_every_service(
    dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A backup from before each service had its own keyring: its keyring.json becomes each
    service's keyring in <data>/keyring/, and no shared keyring.json is written."""
    made = await _make_backups(dsn, tmp_path, tmp_path / "target")
    identity = made.key_file.read_text().split("\n")[1]
    repo = await Repository.open(LocalTarget(made.target))
    src = tmp_path / "restored-platform"
    await repo.restore(made.platform_backup, src, identity)
    out = tmp_path / "old-platform"
    out.mkdir()
    for name in ("events.jsonl", "platform.json"):
        shutil.copy(src / name, out / name)
    shutil.copytree(src / "certs", out / "certs")
    shutil.copy(src / "keyring" / "identity.json", out / "keyring.json")
    doc = json.loads((src / "platform.json").read_text())
    plat = await repo.backup(out, {}, labels={"kind": "platform", "apps": ",".join(doc["apps"])})
    data = tmp_path / "d"
    code, out_text, err = await run_cli(
        capsys, "restore", "--from", made.target, "--key", made.key_file,
        "--data-dir", data, "--snapshot", plat.id,
    )  # fmt: skip
    assert code == 0, err
    assert f"loaded {made.events} events" in out_text
    # the services of that time get it; a newer one (notify) starts with keys of its own
    assert not keyring_file(data / "keyring", "notify").exists()
    for owner in SHARED_OWNERS:
        put = keyring_file(data / "keyring", owner)
        assert put.read_bytes() == made.keyrings["identity"]
        assert stat.S_IMODE(put.stat().st_mode) == 0o600
    assert not (data / "keyring.json").exists()


def test_up_refuses_a_data_dir_whose_restore_did_not_finish(tmp_path: Path) -> None:
    (tmp_path / "restore-in-progress.json").write_text("{}")
    r = subprocess.run(
        [sys.executable, "-m", "cli.main", "up", "--data-dir", str(tmp_path)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 1 and "did not finish: run the same restore command again" in r.stderr
    assert not (tmp_path / "stack.json").exists() and not (tmp_path / "postgres").exists()


@pytest.mark.slow
async def test_a_restore_killed_half_way_is_run_again_from_the_start(
    made: Made, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        sys.executable, "-m", "cli.main", "restore", "--from", str(made.target),
        "--key", str(made.key_file), "--data-dir", str(data_dir),
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # Postgres runs and the events are in: kill -9 now
        seen.append(line)
        if "loaded " in line:
            proc.kill()
            break
    proc.wait(timeout=30)
    proc.stdout.close()
    assert any("loaded " in line for line in seen), seen
    assert (data_dir / "restore-in-progress.json").exists()
    pid = int((data_dir / "postgres" / "pgdata" / "postmaster.pid").read_text().split()[0])
    assert Path(f"/proc/{pid}").exists()  # the killed restore's Postgres is still there

    code, out, err = await run_cli(
        capsys, "restore", "--from", made.target, "--key", made.key_file, "--data-dir", data_dir
    )
    assert code == 0, err
    assert "did not finish: clearing what it wrote" in out and "loaded 6 events" in out
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert not (data_dir / "restore-in-progress.json").exists()
    for owner, ring in made.keyrings.items():
        assert keyring_file(data_dir / "keyring", owner).read_bytes() == ring
