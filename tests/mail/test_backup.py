"""People's mail in the platform's backups: the real identity, dns, mail (Postfix, Dovecot,
rspamd), apps and backup services.

A letter delivered to Lee -> "back up now" (a full run) -> the run stores a mail backup beside
the platform's, which names it, and the mail service's snapshot is gone from the disk after.
Then Lee's mailbox is lost -> the restore's steps (the platform backup read, the mail backup
restored into the mail root's restore-pending folder, taken in as the mail service does at its
start) -> Lee reads the letter over IMAP again. A run whose mail cannot be copied
fails, saying so; the platform is still backed up, claiming no mail backup.
"""

from __future__ import annotations

import asyncio
import imaplib
import pwd
import shutil
import smtplib
import time
from collections.abc import AsyncIterator
from email import message_from_bytes
from pathlib import Path

import pytest

from cli.main import main as homeport
from deploy.restore import fetch_platform, open_repository, open_target, restore_mail
from libs.contracts.mail import SNAPSHOTS_FOLDER
from services.mail.render import Layout
from services.mail.snapshots import PENDING, adopt
from tests.apps import appskit
from tests.apps.appskit import EnvFor, running_apps, static_catalog
from tests.backup.servicekit import Backup, backup_env, running_backup
from tests.mail.serverskit import client_tls, message
from tests.support.mail import KIM, LEE, World

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

apps_env_for = appskit.apps_env_for  # the fixture
HOST = "127.0.0.1"


def _submit(w: World, subject: str) -> None:
    assert w.mail.ports is not None
    with smtplib.SMTP(HOST, w.mail.ports.submission, timeout=30) as s:
        s.starttls(context=client_tls())
        s.login(KIM["username"], KIM["password"])
        s.send_message(message(f"kim@{w.domain}", f"lee@{w.domain}", subject))


def _subjects(w: World) -> list[str]:
    """The subjects in Lee's INBOX."""
    assert w.mail.ports is not None
    with imaplib.IMAP4_SSL(HOST, w.mail.ports.imaps, ssl_context=client_tls(), timeout=30) as m:
        m.login("lee", LEE["password"])
        m.select("INBOX", readonly=True)
        _, found = m.search(None, "ALL")
        out = []
        for num in found[0].split():
            _, data = m.fetch(num, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            part = data[0]
            assert isinstance(part, tuple)
            out.append(str(message_from_bytes(bytes(part[1]))["Subject"]))
        return out


async def _until_in_inbox(w: World, subject: str) -> None:
    deadline = time.monotonic() + 30
    while subject not in await asyncio.to_thread(_subjects, w):
        assert time.monotonic() < deadline, f"{subject!r} never reached Lee"
        await asyncio.sleep(0.2)


async def _done(backup: Backup, answer: dict[str, object]) -> tuple[str, dict[str, object]]:
    return await backup.task_end(str(answer["task_id"]), 180)


@pytest.fixture
async def backup(
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    apps_env_for: EnvFor,
    tmp_path: Path,
    dsn: str,
    nats_url: str,
    uniq: str,
) -> AsyncIterator[Backup]:
    """The apps service (no app installed) and the backup service, which asks the world's mail
    service for its store; a local target and a key set."""
    env = apps_env_for(static_catalog(tmp_path / "catalog"), letter="m")
    async with running_apps(monkeypatch, env, mail=False):  # the world's mail service
        benv = backup_env(
            dsn=dsn,
            nats_url=nats_url,
            tmp_path=tmp_path / "backup-service",
            uniq=uniq,
            extra={"HP_MAIL_DIR": str(world.mail.root), "HP_MAIL_TIMEOUT": "30"},
        )
        async with running_backup(monkeypatch, benv) as b:
            (tmp_path / "disk").mkdir()
            await b.cmd("set_target", {"kind": "local", "path": str(tmp_path / "disk" / "b")})
            yield b


async def test_the_mail_is_backed_up_and_comes_back_after_a_restore(
    world: World, backup: Backup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = world
    identity = str((await backup.cmd("setup_key", {}))["identity"])
    await asyncio.to_thread(_submit, w, "a letter worth keeping")
    await _until_in_inbox(w, "a letter worth keeping")

    ended, data = await _done(backup, await backup.cmd("back_up", {}))
    assert ended == "TaskSucceeded", data
    result = data["result"]
    assert isinstance(result, dict)
    run = result["snapshots"]
    assert set(run) == {"platform", "mail"}, run
    items = (await backup.ask("backups", {}))["items"]
    assert {(b["kind"], b["snapshot_id"]) for b in items} == {
        ("platform", run["platform"]),
        ("mail", run["mail"]),
    }
    # the mail service's snapshot was read and is gone from the disk
    assert list((w.mail.root / SNAPSHOTS_FOLDER).iterdir()) == []
    completed = [d for _, d in await backup.events(f"backup-{result['run_id']}")]
    assert any(d.get("kind") == "mail" for d in completed), completed
    # `homeport backup list` names it; `verify` checks it with the platform backup
    disk = tmp_path / "disk" / "b"
    key = tmp_path / "key.txt"
    key.write_text(identity + "\n")
    capsys.readouterr()
    assert await asyncio.to_thread(homeport, ["backup", "list", "--from", str(disk)]) == 0
    listed = capsys.readouterr().out
    assert "platform (0 app backups, the mail)" in listed and "mail (1 mailbox)" in listed
    verify = ["backup", "verify", "--from", str(disk), "--key", str(key)]
    assert await asyncio.to_thread(homeport, verify) == 0
    assert "all 2 backups checked: every chunk decrypted and checked" in capsys.readouterr().out

    # Lee's mailbox is lost (a disk gave up): the letter is gone
    store = Layout(w.mail.root).store
    for home in store.iterdir():
        shutil.rmtree(home)
    assert "a letter worth keeping" not in await asyncio.to_thread(_subjects, w)

    # the restore: the platform backup names the mail backup; it is restored for the mail
    # service to take in at its start (here: called as the start calls it)
    target = open_target(str(tmp_path / "disk" / "b"))
    try:
        repo = await open_repository(target)
        said: list[str] = []
        work = tmp_path / "work"
        work.mkdir()
        _, doc, apps = await fetch_platform(repo, work, identity, None, said.append)
        assert doc["mail"] == run["mail"] and apps == {}
        assert await restore_mail(repo, w.mail.root, doc["mail"], identity, said.append)
    finally:
        await target.close()
    assert (w.mail.root / PENDING).is_dir()
    assert f"restoring the mail from backup {run['mail']}" in said
    vmail = pwd.getpwnam("mail")
    moved = await asyncio.to_thread(adopt, w.mail.root, store, vmail.pw_uid, vmail.pw_gid)
    assert moved
    assert "a letter worth keeping" in await asyncio.to_thread(_subjects, w)


async def test_a_run_whose_mail_cannot_be_copied_fails_saying_so(
    world: World, backup: Backup
) -> None:
    await backup.cmd("setup_key", {})
    await asyncio.to_thread(_submit, world, "another letter")
    await _until_in_inbox(world, "another letter")
    # the mail store cannot be copied: its snapshots folder is a file
    (world.mail.root / SNAPSHOTS_FOLDER).write_text("in the way")
    ended, data = await _done(backup, await backup.cmd("back_up", {}))
    assert ended == "TaskFailed", data
    assert "mail store could not be copied" in str(data["message"]), data
    items = (await backup.ask("backups", {}))["items"]
    # the platform is still backed up (its users, settings), naming no mail backup
    assert [b["kind"] for b in items] == ["platform"], items
