"""A deleted account's mail goes with it: the real identity, dns and mail services, the mail
service running Postfix, Dovecot and rspamd.

Lee and Kim each have mail. Kim's account is disabled: Kim's mail stays. Lee's account is
deleted: once the mail service hears of it, Lee's mailbox folder is gone with the letter in it;
Kim's and a folder the store holds for no account identity deleted (as a restore may leave)
stay.
"""

from __future__ import annotations

import asyncio
import smtplib
import time
import uuid
from pathlib import Path

import pytest

from services.mail.render import Layout
from tests.mail.serverskit import client_tls, message
from tests.support.mail import World

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"


def _deliver(w: World, to: str, subject: str) -> None:
    assert w.mail.ports is not None
    with smtplib.SMTP(HOST, w.mail.ports.smtp, timeout=30) as s:
        s.ehlo()
        s.starttls(context=client_tls())
        s.send_message(message("someone@elsewhere.example", to, subject))


def _letters(folder: Path) -> list[Path]:
    return [p for sub in ("new", "cur") for p in (folder / "Maildir" / sub).glob("*")]


async def _until(what: str, check: object, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


async def test_a_deleted_accounts_mailbox_goes_a_disabled_ones_stays(world: World) -> None:
    w = world
    store = Layout(w.mail.root).store
    lee, kim = store / w.lee, store / w.kim
    await asyncio.to_thread(_deliver, w, f"lee@{w.domain}", "for lee")
    await asyncio.to_thread(_deliver, w, f"kim@{w.domain}", "for kim")
    await _until("both letters delivered", lambda: _letters(lee) and _letters(kim))
    stray = store / str(uuid.uuid4())  # no account ever deleted with this id
    (stray / "Maildir" / "cur").mkdir(parents=True)

    await w.ident.cmd("disable_user", {"user_id": w.kim}, actor=w.admin)
    await w.ident.cmd("delete_user", {"user_id": w.lee}, actor=w.admin)
    # the next round of the sync (the platform's relay would start one on the event; this
    # world has none, so the test asks for one)
    status = await w.mail.ask("status", {"wait": True})
    assert status["last_error"] is None, status
    assert not lee.exists()
    assert len(_letters(kim)) == 1 and stray.is_dir()
    names = {p.name for p in store.iterdir()}
    assert w.lee not in names and {w.kim, stray.name} <= names
