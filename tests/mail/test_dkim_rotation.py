"""DKIM key rotation as an administrator and a recipient see it: the real identity, dns (the
test PowerDNS) and mail services, the mail service running Postfix, Dovecot and rspamd.

A rotation publishes the new key's record beside the signing one and keeps signing with the old
key; once the zone's nameservers serve the new record (and it had DKIM_SETTLE to spread), the
new key signs; the old record is removed a week later. The service's clock (services.mail
__main__.build's `now`) is turned by the test: nothing sleeps through minutes or days.
"""

from __future__ import annotations

import asyncio
import imaplib
import json
import re
import smtplib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes
from functools import partial
from pathlib import Path
from typing import Any

import dkim
import pytest

from libs.events.bus import BusError
from libs.events.projection import ProjectionRunner
from services.mail.commands import next_selector
from services.mail.projections import MailProjection
from services.mail.queries import DKIM_DEADLINE, DKIM_KEEP, DKIM_SETTLE
from tests.mail.serverskit import client_tls, message
from tests.support.mail import World, mail_world, resolve
from tests.support.pdns import PdnsZone

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

HOST = "127.0.0.1"
KIM_PW, LEE_PW = "kim's long password 1", "lee's long password 2"


@dataclass
class Clock:
    """The mail service's clock: the real one, turned forward by the test."""

    offset: float = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def turn(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The clock the mail service under test is built with (tests/support/mail.py builds it
    through services.mail.__main__.build, looked up when it starts)."""
    import services.mail.__main__ as mail_main

    c = Clock()
    monkeypatch.setattr(mail_main, "build", partial(mail_main.build, now=c.now))
    return c


@pytest.fixture
async def world(clock: Clock, world: World) -> World:
    """conftest's mail-on world, the mail service built with `clock` (set up first), settled."""
    await _settled(world)
    return world


@pytest.fixture
async def quiet_world(
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    pdns_zone: PdnsZone,
) -> AsyncIterator[World]:
    """Mail on for the test zone, its servers not run (what is recorded and published only)."""
    async with mail_world(
        monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, zone=pdns_zone
    ) as w:
        await w.mail.cmd("enable_domain", {"domain": w.domain})
        await _settled(w)
        yield w


async def _settled(w: World) -> None:
    """A round of the sync that began after every change so far has ended, without error."""
    status: dict[str, Any] = await w.mail.ask("status", {"wait": True})
    assert status["last_error"] is None, status["last_error"]
    assert status["record_errors"] == [], status["record_errors"]


async def _view(w: World) -> dict[str, Any]:
    view: dict[str, Any] = await w.mail.ask(
        "domain", {"domain": w.domain}, actor=w.admin, admin=True
    )
    return view


def _published(w: World, selector: str) -> str | None:
    """The p= of `selector`'s record as the zone's nameserver serves it; None: not served."""
    found = resolve(w.zone, f"{selector}._domainkey.{w.domain}", "TXT")
    if not found:
        return None
    text = "".join(part.strip('"') for part in found[0].split('" "'))
    return text.split("p=", 1)[1]


def _dnsfunc(w: World) -> Any:
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        found = resolve(w.zone, name.decode().rstrip("."), "TXT")
        return b"".join(part.strip('"').encode() for part in found[0].split('" "'))

    return dnsfunc


def _submit(w: World, subject: str) -> None:
    """kim sends lee a message through submission (signed on the way out)."""
    assert w.mail.ports is not None
    with smtplib.SMTP(HOST, w.mail.ports.submission, timeout=30) as s:
        s.starttls(context=client_tls())
        s.login("kim", KIM_PW)
        s.send_message(message(f"kim@{w.domain}", f"lee@{w.domain}", subject))


def _inbox(w: World) -> list[bytes]:
    assert w.mail.ports is not None
    with imaplib.IMAP4_SSL(HOST, w.mail.ports.imaps, ssl_context=client_tls(), timeout=30) as m:
        m.login("lee", LEE_PW)
        m.select("INBOX", readonly=True)
        _, found = m.search(None, "ALL")
        out = []
        for num in found[0].split():
            _, data = m.fetch(num, "(RFC822)")
            part = data[0]
            assert isinstance(part, tuple)
            out.append(bytes(part[1]))
        return out


async def _signed_with(w: World, subject: str) -> str:
    """Send a message, wait for it in lee's mailbox, check its DKIM signature against the key
    DNS publishes; the signature's selector (s=)."""
    await asyncio.to_thread(_submit, w, subject)
    deadline = time.monotonic() + 30
    while True:
        raw = next(
            (
                r
                for r in await asyncio.to_thread(_inbox, w)
                if message_from_bytes(r)["Subject"] == subject
            ),
            None,
        )
        if raw is not None:
            break
        assert time.monotonic() < deadline, f"{subject!r} never arrived"
        await asyncio.sleep(0.2)
    header = str(message_from_bytes(raw)["DKIM-Signature"])
    found = re.search(r"(?:^|;)\s*s=([^;\s]+)", re.sub(r"\s+", " ", header))
    assert found, header
    assert dkim.verify(raw, dnsfunc=_dnsfunc(w)), "the signature does not verify against DNS"
    return found.group(1)


async def _read_model(w: World) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    pool = w.mail.store.pool
    domains = [dict(r) for r in await pool.fetch("SELECT * FROM mail.domains ORDER BY domain")]
    keys = [dict(r) for r in await pool.fetch("SELECT * FROM mail.dkim_keys ORDER BY selector")]
    return domains, keys


async def _quiet(w: World) -> None:
    """Sync rounds until one appends nothing to the domain's stream. The test's clock runs
    weeks ahead of the time the store records: a key added now is already old enough to its
    rounds, which then activate and retire keys on their own (CI at 0c8aefc read the model
    between two of them)."""
    stream = f"maildomain-{w.domain}"
    for _ in range(10):
        before = len(await w.mail.events(stream))
        await _settled(w)
        if len(await w.mail.events(stream)) == before:
            return
    raise AssertionError("the mail service's rounds kept changing the domain")


async def _replays_the_same(w: World) -> None:
    """The read model rebuilt from the events alone is the one the service has."""
    before = await _read_model(w)
    await ProjectionRunner(MailProjection.for_replay(), w.mail.store).rebuild()
    assert await _read_model(w) == before


async def test_a_rotation_signs_with_the_new_key_once_served_and_drops_the_old_a_week_on(
    world: World, clock: Clock
) -> None:
    w = world
    old = (await _view(w))["selector"]
    old_public = _published(w, old)
    assert old_public
    reply = await w.mail.cmd("rotate_dkim", {"domain": w.domain}, actor=w.admin, admin=True)
    new = reply["next_selector"]
    assert reply["selector"] == old and new != old and new.startswith("hp")
    # one rotation at a time
    with pytest.raises(BusError) as e:
        await w.mail.cmd("rotate_dkim", {"domain": w.domain}, actor=w.admin, admin=True)
    assert (e.value.code, e.value.field) == ("conflict", "domain")
    assert new in e.value.message and "waiting" in e.value.message
    await _settled(w)

    # both records are served; mail is still signed with the old key
    new_public = _published(w, new)
    assert new_public and new_public != old_public
    assert _published(w, old) == old_public
    view = await _view(w)
    assert view["selector"] == old and view["dkim_retiring"] == []
    assert view["dkim_next"]["selector"] == new
    names = {r["name"]: r for r in view["records"] if r["type"] == "TXT"}
    assert names[f"{new}._domainkey.{w.domain}"]["ok"] is True
    assert names[f"{old}._domainkey.{w.domain}"]["ok"] is True
    assert await _signed_with(w, "before the switch") == old

    # the new record has been served a while: the new key signs
    clock.turn(DKIM_SETTLE + 1)
    await _settled(w)
    view = await _view(w)
    assert view["selector"] == new and view["dkim_next"] is None
    (retiring,) = view["dkim_retiring"]
    assert retiring["selector"] == old
    assert await _signed_with(w, "after the switch") == new
    *_, (kind, data) = await w.mail.events(f"maildomain-{w.domain}")
    assert (kind, data) == (
        "MailDkimKeyActivated",
        {"domain": w.domain, "selector": new, "served": True},
    )
    await _replays_the_same(w)

    # the old record stays for mail in flight, a week, then is removed from DNS
    clock.turn(DKIM_KEEP - 600)
    await _settled(w)
    assert _published(w, old) == old_public
    clock.turn(600)
    await _settled(w)
    assert _published(w, old) is None
    assert _published(w, new) == new_public
    view = await _view(w)
    assert view["selector"] == new and view["dkim_next"] is None and view["dkim_retiring"] == []
    assert f"{old}._domainkey.{w.domain}" not in {r["name"] for r in view["records"]}
    kinds = [k for k, _ in await w.mail.events(f"maildomain-{w.domain}")]
    assert kinds[-3:] == ["MailDkimKeyAdded", "MailDkimKeyActivated", "MailDkimKeyRetired"]

    # a new rotation: a selector none of the published keys has; the replay gives its state
    again = await w.mail.cmd("rotate_dkim", {"domain": w.domain}, actor=w.admin, admin=True)
    assert again["selector"] == new and again["next_selector"] not in (old, new)
    await _quiet(w)
    await _replays_the_same(w)
    # no private key in clear in any event: the new keys are sealed
    rows = await w.mail.store.pool.fetch(
        "SELECT type, data FROM events.events WHERE type = 'MailDkimKeyAdded'"
    )
    assert len(rows) == 2
    for r in rows:
        data = json.loads(r["data"])
        assert data["dkim_key"] and "PRIVATE KEY" not in r["data"], data
    text = await w.mail.store.pool.fetchval("SELECT string_agg(data::text, '') FROM events.events")
    assert "BEGIN PRIVATE KEY" not in text


async def test_rotation_refusals_and_a_record_dns_never_serves(
    quiet_world: World, clock: Clock
) -> None:
    w = quiet_world
    stream = f"maildomain-{w.domain}"
    before = await w.mail.events(stream)
    # who may, and for what domain
    for payload, ctx, code in (
        ({"domain": w.domain}, {"actor": w.kim}, "forbidden"),
        ({"domain": f"nomail.{w.domain}"}, {"actor": w.admin, "admin": True}, "not_found"),
        ({"domain": "Not a domain"}, {"actor": w.admin, "admin": True}, "invalid"),
    ):
        with pytest.raises(BusError) as e:
            await w.mail.cmd("rotate_dkim", payload, **ctx)
        assert e.value.code == code, e.value
        if code != "forbidden":
            assert e.value.field == "domain"
    assert await w.mail.events(stream) == before

    reply = await w.mail.cmd("rotate_dkim", {"domain": w.domain}, actor=w.admin, admin=True)
    old, new = reply["selector"], reply["next_selector"]
    await _settled(w)
    assert _published(w, new)
    # the record is taken away behind Homeport's back: DNS does not serve it, no switch
    w.zone.server.api(
        "PATCH",
        f"/api/v1/servers/localhost/zones/{w.zone.name}.",
        {
            "rrsets": [
                {"name": f"{new}._domainkey.{w.domain}.", "type": "TXT", "changetype": "DELETE"}
            ]
        },
    )
    clock.turn(DKIM_SETTLE + 1)
    await _settled(w)
    view = await _view(w)
    assert view["selector"] == old and view["dkim_next"]["selector"] == new
    # ... until the wait runs out: then it signs all the same, and the events say why
    clock.turn(DKIM_DEADLINE)
    await _settled(w)
    view = await _view(w)
    assert view["selector"] == new and view["dkim_next"] is None
    assert [r["selector"] for r in view["dkim_retiring"]] == [old]
    *_, last = await w.mail.events(stream)
    assert last == ("MailDkimKeyActivated", {"domain": w.domain, "selector": new, "served": False})
    # mail turned off: no rotation for it
    await w.mail.cmd("disable_domain", {"domain": w.domain})
    with pytest.raises(BusError) as e:
        await w.mail.cmd("rotate_dkim", {"domain": w.domain}, actor=w.admin, admin=True)
    assert (e.value.code, e.value.field) == ("not_found", "domain")
    assert "turn it on" in e.value.message


def test_a_new_selector_names_its_day_and_is_never_one_still_published() -> None:
    day = datetime(2025, 7, 15, 23, 59, tzinfo=UTC)
    assert next_selector(day, ["hp202507"]) == "hp20250715"
    assert next_selector(day, ["hp20250715"]) == "hp20250715-2"
    assert next_selector(day, ["hp20250715", "hp20250715-2", "hp202507"]) == "hp20250715-3"
