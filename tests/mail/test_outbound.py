"""The platform's own mail (the mail service's `send`, services/mail/outbound.py) as its
recipients get it: through the service's own Postfix when mail is on (into a mailbox, and out
through the relay, DKIM-signed as people's mail is), otherwise straight to the outgoing relay
(the smart-host stand-in, signed in), otherwise refused as unavailable; only the platform may
send; nothing can smuggle a header in. A relay given a test address is kept only once it took
the test message. The real identity, dns and mail services; the real servers where mail is on.
"""

from __future__ import annotations

import asyncio
import imaplib
import smtplib
import socket
import stat
import time
import uuid
from collections.abc import AsyncIterator
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import dkim
import pytest

from libs.events.bus import BusError
from services.mail.errors import InvalidRequest
from services.mail.outbound import PlatformLogin, build_message, relay_sender
from services.mail.render import Layout
from tests.mail.serverskit import ALICE, MailStack, client_tls, message
from tests.support.mail import LEE, World, mail_world, resolve
from tests.support.pdns import PdnsZone
from tests.support.smart_host import SmartHost, smart_host

HOST = "127.0.0.1"
RELAY_LOGIN = ("homeport@relay.test", "the relay's password 1")
OUTSIDE = "kim@elsewhere.test"
NO_WAY = "no way to send mail: turn on mail for a domain or set an outgoing relay on the Email page"


def _mail(to: list[str], subject: str, **extra: Any) -> dict[str, Any]:
    return {"to": to, "subject": subject, "text": "The disk is 90 % full.\n", **extra}


async def _set_relay(w: World, relay: SmartHost, **extra: Any) -> Any:
    body = {
        "host": HOST,
        "port": relay.port,
        "tls": "tls",
        "username": RELAY_LOGIN[0],
        "password": RELAY_LOGIN[1],
        **extra,
    }
    return await w.mail.cmd("set_relay", body, actor=w.admin, admin=True)


async def _refused(w: World, verb: str, payload: dict[str, Any], **ctx: Any) -> BusError:
    with pytest.raises(BusError) as e:
        await w.mail.cmd(verb, payload, **ctx)
    return e.value


def _parsed(raw: bytes) -> EmailMessage:
    """A message as a mail client shows it (line ends as Python's)."""
    msg = message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=default)
    assert isinstance(msg, EmailMessage)
    return msg


def _dnsfunc(zone: PdnsZone) -> Any:
    """DKIM keys as the test PowerDNS serves them (where the service published them)."""

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        found = resolve(zone, name.decode().rstrip("."), "TXT")
        return b"".join(part.strip('"').encode() for part in found[0].split('" "'))

    return dnsfunc


def _inbox(w: World, login: str, password: str) -> list[bytes]:
    assert w.mail.ports is not None
    with imaplib.IMAP4_SSL(HOST, w.mail.ports.imaps, ssl_context=client_tls(), timeout=30) as m:
        m.login(login, password)
        m.select("INBOX", readonly=True)
        _, found = m.search(None, "ALL")
        out = []
        for num in found[0].split():
            _, data = m.fetch(num, "(RFC822)")
            part = data[0]
            assert isinstance(part, tuple)
            out.append(bytes(part[1]))
        return out


async def _arrives(w: World, login: str, password: str, subject: str) -> bytes:
    deadline = time.monotonic() + 30
    while True:
        for raw in await asyncio.to_thread(_inbox, w, login, password):
            if _parsed(raw)["Subject"] == subject:
                return raw
        assert time.monotonic() < deadline, f"{subject!r} never reached {login}"
        await asyncio.sleep(0.2)


async def _relayed(relay: SmartHost, count: int = 1) -> None:
    deadline = time.monotonic() + 30
    while len(relay.got) < count:
        assert time.monotonic() < deadline, f"{count - len(relay.got)} never reached the relay"
        await asyncio.sleep(0.1)


@pytest.fixture
async def off(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    pdns_zone: PdnsZone,
) -> AsyncIterator[World]:
    """identity, dns and mail, the mail servers not run here."""
    async with mail_world(
        monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, zone=pdns_zone
    ) as w:
        yield w


# -- mail on: the local servers --------------------------------------------------------------


@pytest.mark.slow
async def test_with_mail_on_it_is_delivered_by_the_servers_and_dkim_signed(
    world: World, tmp_path: Path
) -> None:
    w = world
    subject = f"Disk at 90 % ({uuid.uuid4().hex[:8]})"
    nobody = f"nobody-{uuid.uuid4().hex[:6]}@{w.domain}"
    reply = await w.mail.cmd(
        "send",
        _mail(
            [f"lee@{w.domain}", nobody],
            subject,
            html="<p>The disk is <b>90 %</b> full.</p>",
            from_name="Homeport",
        ),
    )
    # the servers took it for lee and refused the address nobody receives
    assert reply["via"] == "local" and reply["refused"] == [nobody], reply
    raw = await _arrives(w, "lee", LEE["password"], subject)
    msg = _parsed(raw)
    assert msg["From"] == f"Homeport <noreply@{w.domain}>"
    assert msg["Message-ID"] == reply["message_id"]
    assert msg["Auto-Submitted"] == "auto-generated" and msg["Date"]
    assert msg.get_content_type() == "multipart/alternative"
    plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert plain is not None and html is not None
    assert plain.get_content() == "The disk is 90 % full.\n"
    assert "<b>90 %</b>" in html.get_content()
    # signed by rspamd with the key whose public half dns published, as people's mail is
    assert f"d={w.domain};" in msg["DKIM-Signature"].replace(" ", "")
    assert dkim.verify(raw, dnsfunc=_dnsfunc(w.zone))
    # every recipient refused: 4xx naming the first, nothing sent
    e = await _refused(w, "send", _mail([nobody], "to nobody"))
    assert (e.code, e.field) == ("invalid", "to.0"), e
    # mail to the outside leaves through Postfix (and the relay set meanwhile), still signed
    async with smart_host(tmp_path, RELAY_LOGIN) as relay:
        await _set_relay(w, relay)
        status = await w.mail.ask("status", {"wait": True})
        assert status["last_error"] is None, status
        reply = await w.mail.cmd("send", _mail([OUTSIDE], "to the outside"))
        assert reply["via"] == "local", reply
        await _relayed(relay)
        (got,) = relay.got
        assert got.sender == f"noreply@{w.domain}" and got.recipients == [OUTSIDE]
        assert got.login == RELAY_LOGIN[0]  # Postfix signed in to the relay
        assert _parsed(got.data)["Message-ID"] == reply["message_id"]
        assert dkim.verify(got.data, dnsfunc=_dnsfunc(w.zone))


def test_the_platform_listener_is_root_only_and_takes_no_mail_unsigned_in(
    stack: MailStack,
) -> None:
    """Postfix's platform socket: in its private folder (root and Postfix only); without the
    platform's sign-in nothing goes anywhere, and the sign-in is offered only over TLS."""
    path = Layout(stack.settings.root).platform_socket
    assert path.parent.owner() == "postfix"
    mode = stat.S_IMODE(path.parent.stat().st_mode)
    assert mode & 0o077 == 0, oct(mode)

    def session(starttls: bool) -> smtplib.SMTP:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(str(path))
        client = smtplib.SMTP(local_hostname="localhost", timeout=30)
        client.sock = sock
        client.file = None
        assert client.getreply()[0] == 220
        client.ehlo()
        if starttls:
            client._host = "localhost"  # the TLS server name smtplib takes from __init__
            client.starttls(context=client_tls())
            client.ehlo()
        return client

    with session(starttls=False) as plain:
        assert not plain.has_extn("auth")
        code, _ = plain.mail(ALICE.address)
        assert 500 <= code < 600  # TLS first
    with session(starttls=True) as client:
        assert client.has_extn("auth")
        client.mail("someone@outside.test")
        code, text = client.rcpt("victim@elsewhere.test")
        assert 500 <= code < 600 and b"denied" in text.lower(), (code, text)
        code, _ = client.rcpt(ALICE.address)
        assert 500 <= code < 600, "an unsigned-in client delivered locally"
    with session(starttls=True) as client, pytest.raises(smtplib.SMTPAuthenticationError):
        client.login("_homeport", "a guess")
    # port 25 still relays nothing
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        stack.inbound(message("someone@outside.test", "victim@elsewhere.test"))


# -- mail off: the relay ---------------------------------------------------------------------


async def test_with_mail_off_it_goes_straight_to_the_relay_signed_in(
    off: World, tmp_path: Path
) -> None:
    w = off
    async with smart_host(tmp_path, RELAY_LOGIN) as relay:
        await _set_relay(w, relay)
        reply = await w.mail.cmd(
            "send", _mail([OUTSIDE, "lee@example.net"], "Backup failed", from_name="Homeport")
        )
        assert reply["via"] == "relay" and reply["refused"] == [], reply
        (got,) = relay.got
    assert got.login == RELAY_LOGIN[0]
    # the relay's username is an address: the sender (providers take mail from their account)
    assert got.sender == RELAY_LOGIN[0]
    assert got.recipients == [OUTSIDE, "lee@example.net"]
    msg = _parsed(got.data)
    assert msg["From"] == f"Homeport <{RELAY_LOGIN[0]}>"
    assert msg["To"] == f"{OUTSIDE}, lee@example.net"
    assert msg["Subject"] == "Backup failed" and msg["Message-ID"] == reply["message_id"]
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content() == "The disk is 90 % full.\n"


async def test_with_neither_mail_nor_a_relay_it_is_unavailable(off: World) -> None:
    w = off
    e = await _refused(w, "send", _mail([OUTSIDE], "nowhere to go"))
    assert (e.code, e.message) == ("unavailable", NO_WAY), e
    # mail on for a domain does not help while no servers run here
    await w.mail.cmd("enable_domain", {"domain": w.domain})
    await w.mail.ask("status", {"wait": True})
    e = await _refused(w, "send", _mail([OUTSIDE], "nowhere to go"))
    assert (e.code, e.message) == ("unavailable", NO_WAY), e


async def test_only_the_platform_sends_and_no_header_can_be_smuggled_in(
    off: World, tmp_path: Path
) -> None:
    w = off
    async with smart_host(tmp_path, RELAY_LOGIN) as relay:
        await _set_relay(w, relay)
        # a person, even an administrator, may not (the gateway acts for people)
        e = await _refused(w, "send", _mail([OUTSIDE], "hello"), actor=w.admin, admin=True)
        assert e.code == "forbidden", e
        injected = "\r\nBcc: victim@elsewhere.test"
        for payload, field in (
            (_mail([OUTSIDE], "Alert" + injected), "subject"),
            (_mail([OUTSIDE], "Alert\nX-Evil: 1"), "subject"),
            (_mail([OUTSIDE], "Alert\u2028X-Evil: 1"), "subject"),
            (_mail([OUTSIDE], "Alert", from_name="Homeport" + injected), "from_name"),
            (_mail([OUTSIDE], "Alert", from_name="Homeport\r"), "from_name"),
            (_mail([OUTSIDE + injected], "Alert"), "to.0"),
            (_mail([OUTSIDE, "a@b.test, victim@elsewhere.test"], "Alert"), "to.1"),
            (_mail([OUTSIDE, "<victim@elsewhere.test>"], "Alert"), "to.1"),
            (_mail([], "Alert"), "to"),
            (_mail([OUTSIDE] * 51, "Alert"), "to"),
            (_mail([OUTSIDE], ""), "subject"),
            (_mail([OUTSIDE], "x" * 301), "subject"),
            (_mail([OUTSIDE], "Alert", from_name="x" * 101), "from_name"),
            (_mail([OUTSIDE], "Alert", text="x" * 200_001), "text"),
        ):
            e = await _refused(w, "send", payload)
            assert (e.code, e.field) == ("invalid", field), (payload["subject"][:40], e)
        assert relay.got == []


def test_the_message_itself_refuses_a_line_break_in_a_header() -> None:
    """The last guard, below the contract: build_message names the field too."""
    for kwargs, field in (
        ({"subject": "a\r\nBcc: victim@elsewhere.test"}, "subject"),
        ({"subject": "a\x0bb"}, "subject"),
        ({"from_name": "Homeport\nBcc: victim@elsewhere.test"}, "from_name"),
        ({"to": ["kim@example.org\r\nBcc: victim@elsewhere.test"]}, "to.0"),
    ):
        args: dict[str, Any] = {
            "sender": "noreply@example.org",
            "to": ["kim@example.org"],
            "subject": "Alert",
            "text": "body",
            **kwargs,
        }
        with pytest.raises(InvalidRequest) as e:
            build_message(**args)
        assert e.value.field == field


def test_who_the_platform_sends_as_through_the_relay() -> None:
    host = lambda: "server.example.org"  # noqa: E731
    assert relay_sender("alerts@example.org", "me@example.org", "noreply", host) == (
        "alerts@example.org"
    )
    assert relay_sender(None, "me@example.org", "noreply", host) == "me@example.org"
    assert relay_sender(None, "apikey", "noreply", host) == "noreply@server.example.org"
    assert relay_sender(None, None, "homeport", host) == "homeport@server.example.org"


def test_the_platform_sign_in_is_its_password_over_smtp_from_loopback_only() -> None:
    login = PlatformLogin()
    assert login.check(login.password, "127.0.0.1", "smtp")
    assert login.check(login.password, "::1", "smtp")
    assert not login.check(login.password + "x", "127.0.0.1", "smtp")
    assert not login.check(login.password, "192.0.2.7", "smtp")
    assert not login.check(login.password, None, "smtp")
    assert not login.check(login.password, "127.0.0.1", "imap")
    assert PlatformLogin().password != login.password  # made anew at each start


# -- a relay's test message ------------------------------------------------------------------


async def test_a_relay_given_a_test_address_is_kept_once_the_test_message_went(
    off: World, tmp_path: Path
) -> None:
    w = off
    me = "admin@example.net"
    async with smart_host(tmp_path, RELAY_LOGIN) as relay:
        kept = await _set_relay(w, relay, test_to=me)
        assert kept["host"] == HOST and kept["port"] == relay.port
        (got,) = relay.got
    assert got.login == RELAY_LOGIN[0] and got.recipients == [me]
    msg = _parsed(got.data)
    assert msg["Subject"] == "Homeport: your outgoing relay works" and msg["To"] == me
    assert (await w.mail.ask("relay", {}))["relay"]["port"] == relay.port


async def test_a_relay_that_refuses_the_test_message_is_not_kept(
    off: World, tmp_path: Path
) -> None:
    w = off
    me = "admin@example.net"
    async with smart_host(tmp_path, RELAY_LOGIN, refuse={me}) as relay:
        e = await _refused(
            w,
            "set_relay",
            {
                "host": HOST,
                "port": relay.port,
                "tls": "tls",
                "username": RELAY_LOGIN[0],
                "password": RELAY_LOGIN[1],
                "test_to": me,
            },
            actor=w.admin,
            admin=True,
        )
        assert (e.code, e.field) == ("invalid", "test_to"), e
        assert "550" in e.message and me not in e.message, e.message
        assert relay.got == []
        # a bad test address is refused before anything is tried
        e = await _refused(
            w,
            "set_relay",
            {"host": HOST, "port": relay.port, "tls": "tls", "test_to": "me\r\n@example.net"},
        )
        assert (e.code, e.field) == ("invalid", "test_to"), e
    assert (await w.mail.ask("relay", {}))["relay"] is None
    assert await w.mail.events("mail-settings") == []
