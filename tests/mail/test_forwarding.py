"""Forwarding of a mailbox as a person and an administrator get it: the real identity, dns (the
test PowerDNS), mail (running Postfix, Dovecot and rspamd) and gateway services; clients are
the REST API, smtplib and imaplib, and an SMTP stand-in on loopback for the outbound relay.

kim forwards to lee: without a copy her mail reaches lee only, with one both. kim forwards to an
outside address while mail leaves through a relay: the message reaches the relay for that
address, its original sender kept. Bad input is a 400 naming the field and records nothing;
lee may not touch kim's forwarding, an administrator may. The outside address is sealed in the
event log and the read model.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import json
import smtplib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import expect

from tests.dashboard.browserkit import chromium, field_error, shot, sign_in
from tests.dashboard.dashkit import OWNER, edged_platform
from tests.dns.dnskit import dns_env, pdns_provider, running_dns
from tests.gateway.apikit import Answer, Client, running_gateway
from tests.identity.kit import ADMIN
from tests.mail.serverskit import client_tls, message
from tests.support.mail import KIM, LEE, World, mail_on, running_mail
from tests.support.pdns import PdnsServer, PdnsZone
from tests.support.smart_host import smart_host

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

HOST = "127.0.0.1"
KIM_PW, LEE_PW = KIM["password"], LEE["password"]


@dataclass
class Forwarding:
    w: World
    api: Client
    admin: str  # sessions
    kim: str
    lee: str

    async def call(self, method: str, path: str, session: str, body: Any = None) -> Answer:
        return await self.api.call(method, "/api/v1" + path, session=session, body=body)


@pytest.fixture
async def fw(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
    pdns: PdnsServer,
    pdns_zone: PdnsZone,
) -> AsyncIterator[Forwarding]:
    async with mail_on(
        monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, pdns=pdns, zone=pdns_zone
    ) as w:
        async with running_gateway(
            monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path / "gateway"
        ) as gw:
            await _settled(w)
            sessions = [
                str((await w.ident.login(who["username"], who["password"]))["session"])
                for who in (ADMIN, KIM, LEE)
            ]
            yield Forwarding(w, gw.client, *sessions)


async def _settled(w: World) -> None:
    status = await w.mail.ask("status", {"wait": True})
    assert status["running"] and status["last_error"] is None, status


def _inbox(w: World, login: str, password: str) -> list[str]:
    """The subjects in the INBOX."""
    assert w.mail.ports is not None
    with imaplib.IMAP4_SSL(HOST, w.mail.ports.imaps, ssl_context=client_tls(), timeout=30) as m:
        m.login(login, password)
        m.select("INBOX", readonly=True)
        _, found = m.search(None, "ALL")
        out = []
        for num in found[0].split():
            _, data = m.fetch(num, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            part = data[0]
            assert isinstance(part, tuple)
            out.append(str(message_from_bytes(bytes(part[1]))["Subject"]))
        return out


async def _arrives(w: World, login: str, password: str, subject: str) -> list[str]:
    """The INBOX's subjects once `subject` is among them (delivery is asynchronous)."""
    deadline = time.monotonic() + 30
    while True:
        subjects = await asyncio.to_thread(_inbox, w, login, password)
        if subject in subjects:
            return subjects
        assert time.monotonic() < deadline, f"{subject!r} never reached {login}"
        await asyncio.sleep(0.2)


def _send(w: World, to: str, subject: str, sender: str = "someone@elsewhere.example") -> None:
    """A message from the world, on port 25."""
    assert w.mail.ports is not None
    with smtplib.SMTP(HOST, w.mail.ports.smtp, timeout=30) as s:
        s.send_message(message(sender, to, subject))


async def test_kim_forwards_to_lee_without_and_with_a_copy(fw: Forwarding) -> None:
    w, d = fw.w, fw.w.domain
    a = await fw.call(
        "PUT", "/profile/mail/forwarding", fw.kim, {"to": [f"LEE@{d.upper()}"], "keep_copy": False}
    )
    assert a.status == 200, a.body
    assert a.body == {"user_id": w.kim, "to": [f"lee@{d}"], "keep_copy": False}
    box = (await fw.call("GET", "/profile/mail", fw.kim)).body
    assert box["forwarding"]["to"] == [f"lee@{d}"] and box["forwarding"]["keep_copy"] is False
    # lee's addresses are her own: kim's forwarding is no address of lee's
    assert (await fw.call("GET", "/profile/mail", fw.lee)).body["addresses"] == [f"lee@{d}"]
    await _settled(w)
    await asyncio.to_thread(_send, w, f"kim@{d}", "forwarded only")
    await _arrives(w, "lee", LEE_PW, "forwarded only")

    a = await fw.call(
        "PUT", "/profile/mail/forwarding", fw.kim, {"to": [f"lee@{d}"], "keep_copy": True}
    )
    assert a.status == 200, a.body
    await _settled(w)
    await asyncio.to_thread(_send, w, f"kim@{d}", "forwarded and kept")
    await _arrives(w, "lee", LEE_PW, "forwarded and kept")
    # kim kept the second message, never the first (both were delivered in one go each)
    assert await _arrives(w, "kim", KIM_PW, "forwarded and kept") == ["forwarded and kept"]

    a = await fw.call("DELETE", "/profile/mail/forwarding", fw.kim)
    assert a.status == 204, a.body
    assert (await fw.call("GET", "/profile/mail", fw.kim)).body["forwarding"] is None
    await _settled(w)
    await asyncio.to_thread(_send, w, f"kim@{d}", "not forwarded")
    await _arrives(w, "kim", KIM_PW, "not forwarded")
    assert "not forwarded" not in await asyncio.to_thread(_inbox, w, "lee", LEE_PW)


async def test_outside_forwarding_leaves_through_the_relay_sealed_and_only_by_right(
    fw: Forwarding, tmp_path: Path
) -> None:
    w, d = fw.w, fw.w.domain
    outside = f"fwd{uuid.uuid4().hex[:8]}@elsewhere.example"
    # -- bad input: a 400 naming the field, nothing recorded
    for body, where in (
        ({"to": [f"kim@{d}"], "keep_copy": False}, "to.0"),  # her own address
        ({"to": [outside, f"Kim@{d}"], "keep_copy": True}, "to.1"),
        ({"to": [f"nobody@{d}"], "keep_copy": False}, "to.0"),  # nobody receives it here
        ({"to": [f"x{i}@elsewhere.example" for i in range(6)], "keep_copy": False}, "to"),
        ({"to": [], "keep_copy": False}, "to"),
        ({"to": ["me\x00@elsewhere.example"], "keep_copy": False}, "to.0"),
        ({"to": [outside, "not an address"], "keep_copy": False}, "to.1"),
        ({"to": [outside, "a@b"], "keep_copy": False}, "to.1"),  # no domain to send to
        ({"to": [outside + "\n"], "keep_copy": False}, "to.0"),
        ({"to": [outside, outside.upper()], "keep_copy": False}, "to.1"),  # twice
        ({"to": [outside]}, "keep_copy"),
    ):
        a = await fw.call("PUT", "/profile/mail/forwarding", fw.kim, body)
        assert a.status == 400 and a.problem["field"] == where, (body, a.status, a.body)
    assert (await fw.call("GET", "/profile/mail", fw.kim)).body["forwarding"] is None
    assert not [t for t, _ in await w.mail.events(f"mailbox-{w.kim}") if "Forwarding" in t]
    # -- lee may not set or clear kim's; an administrator may
    body = {"to": [outside], "keep_copy": False}
    path = f"/mail/mailboxes/{w.kim}/forwarding"
    assert (await fw.call("PUT", path, fw.lee, body)).status == 403
    assert (await fw.call("DELETE", path, fw.lee)).status == 403
    assert (await fw.call("GET", "/profile/mail", fw.kim)).body["forwarding"] is None
    a = await fw.call("PUT", path, fw.admin, body)
    assert a.status == 200 and a.body["to"] == [outside], a.body
    assert (await fw.call("GET", f"/mail/mailboxes/{w.kim}", fw.admin)).body["forwarding"][
        "to"
    ] == [outside]
    # -- through the relay: the message reaches it for the outside address, sender unchanged
    async with smart_host(tmp_path) as relay:
        relay_body = {"host": HOST, "port": relay.port, "tls": "tls"}
        assert (await fw.call("PUT", "/mail/relay", fw.admin, relay_body)).status == 200
        await _settled(w)
        await asyncio.to_thread(_send, w, f"kim@{d}", "to kim, on to elsewhere")
        deadline = time.monotonic() + 30
        while not relay.got:
            assert time.monotonic() < deadline, "nothing reached the relay"
            await asyncio.sleep(0.2)
        (got,) = relay.got
        assert got.recipients == [outside] and got.sender == "someone@elsewhere.example"
        assert b"Subject: to kim, on to elsewhere" in got.data
        assert "to kim, on to elsewhere" not in await asyncio.to_thread(_inbox, w, "kim", KIM_PW)
    # -- the outside address is in no event and no read-model row in clear
    rows = await w.mail.store.pool.fetch("SELECT to_jsonb(e)::text AS t FROM events.events e")
    assert rows and not [r["t"] for r in rows if outside in r["t"]]
    kept = await w.mail.store.pool.fetchval(
        "SELECT addresses::text FROM mail.forwarding WHERE user_id = $1", w.kim
    )
    assert kept and outside not in kept
    (_, data), *_ = [e for e in await w.mail.events(f"mailbox-{w.kim}") if "Forwarding" in e[0]]
    assert outside not in json.dumps(data) and len(data["to"]) == 1
    a = await fw.call("DELETE", path, fw.admin)
    assert a.status == 204
    assert (await fw.call("GET", "/profile/mail", fw.kim)).body["forwarding"] is None


async def test_the_profile_form_names_the_bad_line_saves_and_stops(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
    pdns_zone: PdnsZone,
) -> None:
    """In chromium, against the gateway with nginx, identity, dns and mail (servers off)."""
    zone = pdns_zone.name
    async with contextlib.AsyncExitStack() as stack:
        ed = await stack.enter_async_context(
            edged_platform(monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path)
        )
        dns = dns_env(dsn=dsn, nats_url=nats_url, tmp_path=tmp_path)
        await stack.enter_async_context(running_dns(monkeypatch, dns))
        await stack.enter_async_context(
            running_mail(
                monkeypatch,
                dsn=dsn,
                nats_url=nats_url,
                tmp_path=tmp_path,
                env={"HP_EVENTS_PREFIX": f"t{uniq}.evt"},
            )
        )
        browser = await stack.enter_async_context(chromium(ed.direct_url))
        client = ed.platform.client

        async def ok(method: str, path: str, session: str, body: Any = None) -> Any:
            a = await client.call(method, "/api/v1" + path, session=session, body=body)
            assert a.status in (200, 201, 204), (method, path, a.status, a.body)
            return a.body

        a = await client.call("POST", "/api/v1/setup", body=ed.platform.identity.setup_body(OWNER))
        assert a.status == 201, a.body
        admin = str(
            (await ed.platform.identity.login(OWNER["username"], OWNER["password"]))["session"]
        )
        for who in (KIM, LEE):
            await ok("POST", "/users", admin, who)
        body = {"domain": zone, "provider": pdns_provider(pdns_zone), "server_ipv4": "192.0.2.10"}
        await ok("POST", "/domains", admin, body)
        await ok("POST", "/mail/domains", admin, {"domain": zone})
        kim = str((await ed.platform.identity.login(KIM["username"], KIM["password"]))["session"])
        deadline = time.monotonic() + 30
        while (await ok("GET", "/profile/mail", kim))["address"] != f"kim@{zone}":
            assert time.monotonic() < deadline, "kim's mailbox never came"
            await asyncio.sleep(0.25)

        page = await browser.page()
        await page.goto("/#/profile")
        await sign_in(page, KIM["username"], KIM["password"])
        mail = page.get_by_role("region", name="Mail", exact=True)
        form = mail.get_by_role("form", name="Forwarding")
        await expect(form.get_by_text("Your mail is not forwarded.")).to_be_visible()
        await expect(form.get_by_label("Keep a copy in this mailbox")).to_be_checked()
        await expect(form.get_by_role("button", name="Stop forwarding")).to_have_count(0)
        # -- an address nobody receives here: the API's message at the field, for its line
        await form.get_by_label("Forward to").fill(f"lee@{zone}\n\nnobody@{zone}")
        await form.get_by_role("button", name="Save forwarding").click()
        error = field_error(form, "Forward to")
        await expect(error).to_have_text(
            f"Line 3: nobody here receives mail for nobody@{zone}: check the address"
        )
        await shot(page, "profile-mail-forwarding-error")
        assert (await ok("GET", "/profile/mail", kim))["forwarding"] is None
        # -- saved without a copy, lower-cased, as the API holds it
        outside = "Me@Elsewhere.example"
        await form.get_by_label("Forward to").fill(f"LEE@{zone}\n{outside}\n")
        await form.get_by_label("Keep a copy in this mailbox").uncheck()
        await form.get_by_role("button", name="Save forwarding").click()
        await expect(
            mail.get_by_role("status").filter(has_text="Forwarding is saved.")
        ).to_be_visible()
        await expect(form.get_by_text("does not stay in this mailbox")).to_be_visible()
        held = (await ok("GET", "/profile/mail", kim))["forwarding"]
        assert (held["to"], held["keep_copy"]) == ([f"lee@{zone}", outside.lower()], False)
        await page.reload()
        await expect(form.get_by_label("Forward to")).to_have_value(
            f"lee@{zone}\n{outside.lower()}"
        )
        await expect(form.get_by_label("Keep a copy in this mailbox")).not_to_be_checked()
        await shot(page, "profile-mail-forwarding")
        # -- stopped
        await form.get_by_role("button", name="Stop forwarding").click()
        await expect(
            mail.get_by_role("status").filter(has_text="Forwarding is stopped")
        ).to_be_visible()
        await expect(form.get_by_text("Your mail is not forwarded.")).to_be_visible()
        assert (await ok("GET", "/profile/mail", kim))["forwarding"] is None
