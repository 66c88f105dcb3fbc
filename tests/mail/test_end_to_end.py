"""Mail as a person gets it: the real identity, dns (the test PowerDNS) and mail services, the
mail service running Postfix, Dovecot and rspamd; clients are smtplib and imaplib.

A person signs in to submission and IMAP with their platform account; an account with TOTP only
with an app password; a wrong password is refused and recorded as a LoginFailed with the
client's address (the firewall bans from those); outgoing mail is DKIM-signed with the key whose
public half the service published through dns; aliases and lists deliver to the people they
name, as identity's groups say at that moment.
"""

from __future__ import annotations

import asyncio
import imaplib
import json
import smtplib
import time
from email import message_from_bytes
from typing import Any

import dkim
import pytest

from libs.events.bus import BusError
from tests.identity.kit import code_for
from tests.mail.serverskit import client_tls, message
from tests.support.mail import World, resolve

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"


def _submit(w: World, login: str, password: str, sender: str, to: str, subject: str) -> None:
    assert w.mail.ports is not None
    with smtplib.SMTP(HOST, w.mail.ports.submission, timeout=30) as s:
        s.starttls(context=client_tls())
        s.login(login, password)
        s.send_message(message(sender, to, subject))


def _inbox(w: World, login: str, password: str) -> list[bytes]:
    """Every message in the INBOX, whole."""
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
    """The message with `subject` once it is in the mailbox (delivery is asynchronous)."""
    deadline = time.monotonic() + 30
    while True:
        for raw in await asyncio.to_thread(_inbox, w, login, password):
            if message_from_bytes(raw)["Subject"] == subject:
                return raw
        assert time.monotonic() < deadline, f"{subject!r} never reached {login}"
        await asyncio.sleep(0.2)


async def test_a_person_sends_with_their_platform_account_and_it_arrives_signed(
    world: World,
) -> None:
    w = world
    kim_pw, lee_pw = "kim's long password 1", "lee's long password 2"
    subject = "hello from kim"
    await asyncio.to_thread(
        _submit, w, "kim", kim_pw, f"kim@{w.domain}", f"lee@{w.domain}", subject
    )
    raw = await _arrives(w, "lee", lee_pw, subject)
    # signed with the key whose public half dns published (the test PowerDNS answers)
    assert b"DKIM-Signature:" in raw

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        found = resolve(w.zone, name.decode().rstrip("."), "TXT")
        return b"".join(part.strip('"').encode() for part in found[0].split('" "'))

    assert dkim.verify(raw, dnsfunc=dnsfunc)
    # the mailbox login is case-insensitive and also the full address
    assert await _arrives(w, f"LEE@{w.domain}", lee_pw, subject)


async def test_a_wrong_password_is_refused_and_recorded_with_the_clients_address(
    world: World,
) -> None:
    w = world
    with pytest.raises(smtplib.SMTPAuthenticationError):
        await asyncio.to_thread(
            _submit, w, "kim", "not kim's password", f"kim@{w.domain}", f"lee@{w.domain}", "x"
        )
    with pytest.raises(imaplib.IMAP4.error):
        await asyncio.to_thread(_inbox, w, "nobody-here", "whatever")
    rows = await w.mail.store.pool.fetch(
        "SELECT data FROM events.events WHERE type = 'LoginFailed' ORDER BY position"
    )
    failures = [json.loads(r["data"]) for r in rows]
    # smtplib tries PLAIN, then LOGIN: each wrong try is one failure
    assert {(f["reason"], f["user_id"]) for f in failures} == {
        ("mail_password", w.kim),
        ("mail_unknown_user", None),
    }, failures
    # the address is sealed in the event; identity reads it back
    assert {w.ident.address(f["ip"]) for f in failures} == {"127.0.0.1"}
    assert all("127.0.0.1" not in json.dumps(f) for f in failures)


async def test_an_account_with_totp_signs_in_to_mail_with_an_app_password_only(
    world: World,
) -> None:
    w = world
    started = await w.ident.cmd("totp_enrol", {"user_id": w.kim}, actor=w.kim)
    step = int(w.ident.clock.time() // 30)
    await w.ident.cmd(
        "totp_confirm",
        {"user_id": w.kim, "code": code_for(started["secret"], step)},
        actor=w.kim,
    )
    kim_pw = "kim's long password 1"
    with pytest.raises(imaplib.IMAP4.error):
        await asyncio.to_thread(_inbox, w, "kim", kim_pw)
    made = await w.mail.cmd("create_app_password", {"user_id": w.kim, "label": "laptop"})
    assert await asyncio.to_thread(_inbox, w, "kim", made["password"]) == []
    subject = "sent with an app password"
    await asyncio.to_thread(
        _submit, w, "kim", made["password"], f"kim@{w.domain}", f"kim@{w.domain}", subject
    )
    assert await _arrives(w, "kim", made["password"], subject)
    # someone else's app password is no key to kim's mailbox, nor kim's to lee's
    with pytest.raises(imaplib.IMAP4.error):
        await asyncio.to_thread(_inbox, w, "lee", made["password"])
    await w.mail.cmd("revoke_app_password", {"user_id": w.kim, "password_id": made["password_id"]})
    with pytest.raises(imaplib.IMAP4.error):
        await asyncio.to_thread(_inbox, w, "kim", made["password"])


async def test_aliases_and_lists_deliver_and_only_their_people_send_as_them(
    world: World,
) -> None:
    w = world
    d = w.domain
    kim_pw, lee_pw = "kim's long password 1", "lee's long password 2"
    group = await w.ident.cmd("create_group", {"name": "family"}, actor=w.admin)
    gid = group["group_id"]
    await w.ident.cmd("add_group_member", {"group_id": gid, "user_id": w.lee}, actor=w.admin)
    await w.mail.cmd(
        "set_address", {"domain": d, "local_part": "info", "kind": "alias", "user_ids": [w.kim]}
    )
    await w.mail.cmd(
        "set_address", {"domain": d, "local_part": "family", "kind": "list", "group_id": gid}
    )
    await w.mail.ask("status", {"wait": True})
    assert w.mail.ports is not None
    # from the world, on port 25, to the alias and the list
    with smtplib.SMTP(HOST, w.mail.ports.smtp, timeout=30) as s:
        s.send_message(message("someone@elsewhere.example", f"info@{d}", "to info"))
        s.send_message(message("someone@elsewhere.example", f"family@{d}", "to family"))
    assert await _arrives(w, "kim", kim_pw, "to info")
    assert await _arrives(w, "lee", lee_pw, "to family")
    # a member added in identity receives the list's next message
    await w.ident.cmd("add_group_member", {"group_id": gid, "user_id": w.kim}, actor=w.admin)
    await w.mail.ask("status", {"wait": True})
    with smtplib.SMTP(HOST, w.mail.ports.smtp, timeout=30) as s:
        s.send_message(message("someone@elsewhere.example", f"family@{d}", "family again"))
    assert await _arrives(w, "kim", kim_pw, "family again")
    # kim may send as info@ (her alias); lee may not
    await asyncio.to_thread(_submit, w, "kim", kim_pw, f"info@{d}", f"lee@{d}", "as info")
    assert await _arrives(w, "lee", lee_pw, "as info")
    # (refused at RCPT: Postfix delays its sender checks to there)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        await asyncio.to_thread(_submit, w, "lee", lee_pw, f"info@{d}", f"kim@{d}", "not mine")
    ((code, reason),) = e.value.recipients.values()
    assert code == 553 and b"not owned by user" in reason


async def test_mail_turned_off_stops_the_servers_and_on_again_serves_the_mail_kept(
    world: World,
) -> None:
    w = world
    lee_pw = "lee's long password 2"
    subject = "kept across off and on"
    await asyncio.to_thread(
        _submit, w, "lee", lee_pw, f"lee@{w.domain}", f"lee@{w.domain}", subject
    )
    assert await _arrives(w, "lee", lee_pw, subject)
    await w.mail.cmd("disable_domain", {"domain": w.domain})
    status: dict[str, Any] = await w.mail.ask("status", {"wait": True})
    assert status["running"] is False
    with pytest.raises(OSError):
        await asyncio.to_thread(_inbox, w, "lee", lee_pw)
    await w.mail.cmd("enable_domain", {"domain": w.domain})
    status = await w.mail.ask("status", {"wait": True})
    assert status["running"] is True and status["last_error"] is None
    assert await _arrives(w, "lee", lee_pw, subject)


async def test_a_relay_is_kept_only_once_it_took_the_sign_in(world: World) -> None:
    """The relay here is the service's own submission port (a smart host that answers); mail
    is not sent through it (it would come back to itself)."""
    w = world
    assert w.mail.ports is not None
    from deploy.embedded import free_port

    closed = free_port()
    good = {"host": "127.0.0.1", "port": w.mail.ports.submission, "tls": "starttls"}
    for payload, field in (
        ({**good, "port": closed, "username": "kim", "password": "x"}, "host"),
        ({**good, "username": "kim", "password": "not kim's password"}, "password"),
        ({**good, "username": "kim", "password": None}, "password"),
        ({**good, "tls": "tls", "username": "kim", "password": "x"}, "tls"),
        # outside the networks a relay may be in (here: loopback only), never tried
        ({**good, "host": "192.0.2.1", "username": "kim", "password": "x"}, "host"),
        ({**good, "host": "a..b", "username": "kim", "password": "x"}, "host"),
    ):
        with pytest.raises(BusError) as e:
            await w.mail.cmd("set_relay", payload)
        assert (e.value.code, e.value.field) == ("invalid", field), e.value
    assert (await w.mail.ask("relay", {}))["relay"] is None
    kim_pw = "kim's long password 1"
    assert resolve(w.zone, w.domain, "TXT") == ['"v=spf1 mx -all"']
    spf = "include:_spf.Provider.example ip4:203.0.113.0/24 ip6:2001:DB8::/48"
    await w.mail.cmd("set_relay", {**good, "username": "kim", "password": kim_pw, "spf": spf})
    shown = (await w.mail.ask("relay", {}))["relay"]
    spf = spf.lower()
    assert shown == {**good, "username": "kim", "spf": spf}
    (_, data), *_ = reversed(await w.mail.events("mail-settings"))
    assert kim_pw not in json.dumps(data) and data["password"]
    status = await w.mail.ask("status", {"wait": True})
    assert status["running"] and status["last_error"] is None, status
    # the provider's senders are in the domain's SPF record while mail leaves through it
    assert resolve(w.zone, w.domain, "TXT") == [f'"v=spf1 mx {spf} -all"']
    view = await w.mail.ask("domain", {"domain": w.domain})
    assert f"v=spf1 mx {spf} -all" in [v for r in view["records"] for v in r["values"]]
    await w.mail.cmd("clear_relay", {})
    assert (await w.mail.ask("relay", {}))["relay"] is None
    await w.mail.ask("status", {"wait": True})
    assert resolve(w.zone, w.domain, "TXT") == ['"v=spf1 mx -all"']
