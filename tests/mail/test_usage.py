"""Every mailbox with what it holds, as an administrator sees it: the real identity, dns (the
test PowerDNS) and mail services, the mail service running Postfix, Dovecot and rspamd.

The `mailboxes` query lists each account's mailbox with its quota (from the read model, at
once) and its usage as Dovecot counts it (`doveadm quota get`): a message delivered makes it
grow. When Dovecot cannot answer (its auth process stopped), the query still answers in time,
the usage unknown (null); a person who is not an administrator may not list mailboxes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from libs.events.bus import BusError
from services.mail.render import Layout
from tests.mail.serverskit import client_tls, message
from tests.support.mail import World

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
BODY = "a line of a long letter\n" * 2000  # about 48 KB


async def _boxes(w: World) -> dict[str, dict[str, Any]]:
    """The `mailboxes` answer by username, as an administrator asks."""
    answer = await w.mail.ask("mailboxes", {}, actor=w.admin, admin=True)
    return {b["username"]: b for b in answer["items"]}


def _deliver(w: World, to: str, subject: str) -> None:
    """A message from another server, on port 25."""
    assert w.mail.ports is not None
    with smtplib.SMTP(HOST, w.mail.ports.smtp, timeout=30) as s:
        s.ehlo()
        if s.has_extn("starttls"):
            s.starttls(context=client_tls())
        s.send_message(message("someone@elsewhere.example", to, subject, body=BODY))


async def _until(w: World, check: Any, what: str) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        boxes = await _boxes(w)
        if check(boxes):
            return boxes
        assert time.monotonic() < deadline, f"{what}: {boxes}"
        await asyncio.sleep(0.3)


async def test_usage_grows_when_mail_arrives_and_the_quota_shows(world: World) -> None:
    w = world
    boxes = await _boxes(w)
    assert {"kim", "lee"} <= set(boxes), boxes
    lee = boxes["lee"]
    assert lee["user_id"] == w.lee and lee["address"] == f"lee@{w.domain}"
    assert lee["quota_bytes"] is None
    # Dovecot answers for every mailbox: nothing held yet
    assert (lee["used_bytes"], lee["messages"]) == (0, 0), lee
    assert boxes["kim"]["used_bytes"] == 0

    await asyncio.to_thread(_deliver, w, f"lee@{w.domain}", "a long letter")
    boxes = await _until(w, lambda b: b["lee"]["messages"] == 1, "the letter never counted")
    assert boxes["lee"]["used_bytes"] >= len(BODY), boxes["lee"]
    assert boxes["kim"]["used_bytes"] == 0 and boxes["kim"]["messages"] == 0

    # a quota shows at once (the read model), the usage stays what Dovecot counts
    await w.mail.cmd("set_quota", {"user_id": w.lee, "quota_bytes": 5 << 20})
    boxes = await _boxes(w)
    assert boxes["lee"]["quota_bytes"] == 5 << 20
    assert boxes["lee"]["used_bytes"] >= len(BODY) and boxes["lee"]["messages"] == 1
    assert boxes["kim"]["quota_bytes"] is None

    # a second letter adds to it
    before = boxes["lee"]["used_bytes"]
    await asyncio.to_thread(_deliver, w, f"lee@{w.domain}", "another long letter")
    boxes = await _until(w, lambda b: b["lee"]["messages"] == 2, "the second letter")
    assert boxes["lee"]["used_bytes"] >= before + len(BODY), boxes["lee"]

    # only an administrator lists mailboxes
    with pytest.raises(BusError) as e:
        await w.mail.ask("mailboxes", {}, actor=w.kim)
    assert e.value.code == "forbidden", e.value


def _auth_process(root: Path) -> int | None:
    """The pid of Dovecot's auth process (the one that answers doveadm's user look-ups)."""
    master = int((Layout(root).dovecot_base / "master.pid").read_text().strip())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").strip()
        except (OSError, ValueError, IndexError):
            continue
        # "dovecot-<instance name>/auth"; its workers are ".../auth -w"
        if parent == master and title.startswith(b"dovecot") and title.endswith(b"/auth"):
            return int(entry.name)
    return None


@contextlib.contextmanager
def _stopped(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_the_list_answers_in_time_with_usage_unknown_when_dovecot_hangs(
    world: World,
) -> None:
    w = world
    boxes = await _boxes(w)  # doveadm's look-ups start Dovecot's auth process if it was not
    assert boxes["kim"]["used_bytes"] == 0
    pid = _auth_process(w.mail.root)
    assert pid is not None, "no Dovecot auth process"
    with _stopped(pid):
        started = time.monotonic()
        boxes = await _boxes(w)
        took = time.monotonic() - started
    assert took < 10, f"the list took {took:.1f} s with Dovecot hung"
    assert {"kim", "lee"} <= set(boxes)
    assert all(b["used_bytes"] is None and b["messages"] is None for b in boxes.values()), boxes
    assert boxes["kim"]["address"] == f"kim@{w.domain}"
    # Dovecot going on, the usage is known again
    boxes = await _until(w, lambda b: b["kim"]["used_bytes"] == 0, "usage never came back")


async def test_quota_is_asked_at_rcpt_only_for_mailboxes_one_message_could_fill(
    world: World,
) -> None:
    """A 1 GiB mailbox holding little is not asked about at each RCPT (a look-up per message
    for nothing); a 2 MiB one is, and its 3rd big message is refused at RCPT, not bounced."""
    w = world
    lee = f"lee@{w.domain}"
    await w.mail.cmd("set_quota", {"user_id": w.kim, "quota_bytes": 1 << 30})
    await w.mail.cmd("set_quota", {"user_id": w.lee, "quota_bytes": 2 << 20})
    await w.mail.ask("status", {"wait": True})  # usage read once the servers run
    await w.mail.ask("status", {"wait": True})
    checked = Layout(w.mail.root).conf / "postfix" / "quota_limited"
    assert checked.read_text().lower().split() == [lee, "quota_check"]  # not kim's
    for i in range(2):
        await asyncio.to_thread(_deliver, w, lee, f"big {i}")
    await _until(w, lambda b: (b["lee"]["used_bytes"] or 0) > 90_000, "lee's two messages")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        for i in range(2, 60):  # about 48 KB each: over 2 MiB well before 60
            await asyncio.to_thread(_deliver, w, lee, f"big {i}")
    code, text = refused.value.recipients[lee]
    assert code == 552 and b"Mailbox is full" in text, refused.value.recipients
