"""Sieve that sends: an away message and a redirect, through the real identity, dns and mail
services, the mail service running Postfix, Dovecot and rspamd (services/mail/sieve_send.py).

Lee keeps an away message over ManageSieve: Kim writes to Lee, the letter is in Lee's inbox and
Kim gets Lee's away message once, DKIM-signed with the key DNS publishes, from the null sender
(no bounce loops). Kim keeps a redirect to Lee: mail to Kim arrives at Lee's, sent on from Kim's
own address (SPF holds at the next server; a bounce would come back to Kim). The endpoint Dovecot
hands these to answers only root and the mail store's group, and refuses what is not an envelope
of addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import imaplib
import json
import os
import pwd
import smtplib
import socket
import stat
import time
from email import message_from_bytes
from email.message import Message
from email.utils import parseaddr
from pathlib import Path

import dkim
import pytest

from services.mail.render import Layout
from services.mail.sieve_send import MAX_RECIPIENTS
from tests.mail.serverskit import ManageSieve, client_tls, message
from tests.support.mail import KIM, LEE, World, resolve

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
AWAY = """\
require ["vacation"];
vacation :days 1 :subject "Away until Monday" "I am away; I will answer next week.";
"""


def _keep_script(w: World, who: dict[str, str], script: str) -> None:
    assert w.mail.ports is not None
    with ManageSieve(HOST, w.mail.ports.managesieve) as c:
        c.starttls(client_tls())
        answer = c.authenticate(who["username"], who["password"])
        assert answer.status == "OK", answer
        answer = c.putscript("mine", script)
        assert answer.status == "OK", answer
        assert c.command("SETACTIVE", "mine").status == "OK"
        assert c.logout().status == "OK"


def _submit(w: World, who: dict[str, str], to: str, subject: str) -> None:
    assert w.mail.ports is not None
    with smtplib.SMTP(HOST, w.mail.ports.submission, timeout=30) as s:
        s.starttls(context=client_tls())
        s.login(who["username"], who["password"])
        s.send_message(message(f"{who['username'].lower()}@{w.domain}", to, subject))


def _inbox(w: World, who: dict[str, str]) -> list[Message]:
    assert w.mail.ports is not None
    with imaplib.IMAP4_SSL(HOST, w.mail.ports.imaps, ssl_context=client_tls(), timeout=30) as m:
        m.login(who["username"], who["password"])
        m.select("INBOX", readonly=True)
        _, found = m.search(None, "ALL")
        out = []
        for num in found[0].split():
            _, data = m.fetch(num, "(RFC822)")
            part = data[0]
            assert isinstance(part, tuple)
            out.append(message_from_bytes(bytes(part[1])))
        return out


async def _arrived(w: World, who: dict[str, str], subject: str) -> list[Message]:
    """Every message with `subject` in `who`'s inbox, once there is one."""
    deadline = time.monotonic() + 30
    while True:
        found = [m for m in await asyncio.to_thread(_inbox, w, who) if m["Subject"] == subject]
        if found:
            return found
        assert time.monotonic() < deadline, f"{subject!r} never reached {who['username']}"
        await asyncio.sleep(0.2)


async def test_an_away_message_answers_once_signed_and_a_redirect_goes_on(
    world: World,
) -> None:
    w = world
    await asyncio.to_thread(_keep_script, w, LEE, AWAY)
    await asyncio.to_thread(_submit, w, KIM, f"lee@{w.domain}", "are you there?")
    await _arrived(w, LEE, "are you there?")  # the letter itself is kept
    replies = await _arrived(w, KIM, "Away until Monday")
    reply = replies[0]
    assert parseaddr(str(reply["From"]))[1] == f"lee@{w.domain}"
    assert "next week" in str(reply.get_payload())
    assert reply["Auto-Submitted"].startswith("auto-replied")
    assert reply["Return-Path"] == "<>"  # nothing answers an auto-reply
    raw = reply.as_bytes()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        found = resolve(w.zone, name.decode().rstrip("."), "TXT")
        return b"".join(part.strip('"').encode() for part in found[0].split('" "'))

    assert dkim.verify(raw, dnsfunc=dnsfunc)
    # a second letter within the day gets no second away message
    await asyncio.to_thread(_submit, w, KIM, f"lee@{w.domain}", "still there?")
    await _arrived(w, LEE, "still there?")
    await asyncio.sleep(2)
    assert len(await _arrived(w, KIM, "Away until Monday")) == 1

    # Kim redirects everything to Lee: a letter from outside ends at Lee's, not at Kim's
    await asyncio.to_thread(_keep_script, w, KIM, f'redirect "lee@{w.domain}";\n')
    assert w.mail.ports is not None
    with smtplib.SMTP(HOST, w.mail.ports.smtp, timeout=30) as s:
        s.ehlo()
        s.starttls(context=client_tls())
        s.send_message(message("friend@elsewhere.example", f"kim@{w.domain}", "for kim"))
    (moved,) = await _arrived(w, LEE, "for kim")
    assert moved["Return-Path"] == f"<kim@{w.domain}>"  # sent on from Kim's own address
    assert "for kim" not in [m["Subject"] for m in await asyncio.to_thread(_inbox, w, KIM)]


def _ask(path: Path, data: bytes) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(path))
        with contextlib.suppress(BrokenPipeError):  # refused before all of it was read
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    return answer.decode()


async def test_the_endpoint_is_the_mail_groups_only_and_refuses_what_is_no_envelope(
    world: World,
) -> None:
    path = Layout(world.mail.root).sieve_socket
    mail_gid = pwd.getpwnam("mail").pw_gid
    for p, mode in ((path, 0o660), (path.parent, 0o750)):
        st = os.stat(p)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, mail_gid, mode), p
    assert grp.getgrgid(mail_gid).gr_name == "mail"

    def envelope(doc: object) -> bytes:
        return json.dumps(doc).encode() + b"\n"

    body = b"Subject: x\r\n\r\nhello\r\n"
    bad = {
        "not json": b"hello\n" + body,
        "no envelope line": b"",
        "a sender that is no address": envelope({"from": "kim", "to": ["a@b.test"]}) + body,
        "no recipient": envelope({"from": "", "to": []}) + body,
        "too many": envelope({"from": "", "to": ["a@b.test"] * (MAX_RECIPIENTS + 1)}) + body,
        "a NUL in an address": envelope({"from": "", "to": ["a\x00@b.test"]}) + body,
        "a 5,000-digit recipient": b'{"from": "", "to": [' + b"9" * 5000 + b"]}\n" + body,
        "no message": envelope({"from": "", "to": ["a@b.test"]}),
        "an envelope line of 1 MiB": b'{"from": "", "to": ["' + b"a" * (1 << 20) + b'"]}\n' + body,
    }
    for what, data in bad.items():
        answer = await asyncio.to_thread(_ask, path, data)
        assert answer.startswith("refused: "), (what, answer)
