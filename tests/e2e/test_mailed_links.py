"""Links by email, through real HTTP and the real gateway, identity, notify and mail services (the
mail service with its servers off, sending through an outgoing relay: tests/support/smart_host.py
keeps what it was given):

- an invitation is emailed; the invited person takes the link from the mail's text, joins with
  it and signs in; the administrator's answer says it was emailed;
- "forgot password" emails a link to an enabled account's address, which works once; an unknown
  email and a disabled account's get the same answer and no mail;
- with no way to send mail (no mail service; then one with no relay and no mail domain), an
  invitation is still made, its answer saying why it was not emailed, and its link still works.
"""

from __future__ import annotations

import asyncio
import email
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.kit import Platform, running_platform
from tests.gateway.apikit import Answer
from tests.support.mail import running_mail
from tests.support.smart_host import SmartHost, smart_host
from tests.support.waits import wait_until

DASHBOARD = "https://my.example.test"  # where notify's links point (tests/support/notify.py)
ADMIN = {"username": "admin", "email": "admin@example.test", "password": "admin's long passphrase"}
KIM = {"username": "kim", "email": "kim@example.test", "password": "kim's own passphrase"}
ALICE = {"username": "alice", "email": "alice@example.test", "password": "alice's first phrase"}
DAN = {"username": "dan", "email": "dan@example.test", "password": "dan's long passphrase"}


async def call(p: Platform, method: str, path: str, **kw: Any) -> Answer:
    return await p.client.call(method, "/api/v1" + path, **kw)


async def sign_in(p: Platform, username: str, password: str) -> Answer:
    return await call(p, "POST", "/session", body={"username": username, "password": password})


def session_of(a: Answer) -> str:
    assert a.status == 200, a.body
    return a.headers["Set-Cookie"].split(";", 1)[0].split("=", 1)[1]


async def admin_session(p: Platform) -> str:
    a = await call(p, "POST", "/setup", body=p.identity.setup_body(ADMIN))
    assert a.status == 201, a.body
    return session_of(await sign_in(p, ADMIN["username"], ADMIN["password"]))


@asynccontextmanager
async def platform(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> AsyncIterator[Platform]:
    async with running_platform(
        monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path
    ) as p:
        yield p


@asynccontextmanager
async def mail_by_relay(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path
) -> AsyncIterator[SmartHost]:
    """The mail service (servers off) with an outgoing relay set: the smart host."""
    for folder in ("relay", "mail"):
        (tmp_path / folder).mkdir()
    async with (
        smart_host(tmp_path / "relay") as relay,
        running_mail(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path / "mail") as m,
    ):
        await m.cmd("set_relay", {"host": "127.0.0.1", "port": relay.port, "tls": "tls"})
        yield relay


def parsed(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=default)
    assert isinstance(msg, EmailMessage)
    return msg


async def mail_to(relay: SmartHost, address: str, seconds: float = 30) -> EmailMessage:
    """The one message the relay was given for `address` (waited for)."""

    async def there() -> bool:
        return any(address in m.recipients for m in relay.got)

    await wait_until(there, seconds, f"a mail to {address} at the relay")
    (got,) = [m for m in relay.got if address in m.recipients]
    return parsed(got.data)


def link_in(msg: EmailMessage, path: str) -> str:
    """The token of the `<dashboard>/#/<path>/<token>` link in the mail's plain-text part."""
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None, msg
    text = part.get_content()
    found = re.findall(re.escape(f"{DASHBOARD}/#/{path}/") + r"([A-Za-z0-9_-]+)", text)
    assert found, text
    return str(found[0])


async def test_an_invitation_is_emailed_and_its_link_joins(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> None:
    async with (
        platform(monkeypatch, dsn, nats_url, uniq, tmp_path) as p,
        mail_by_relay(monkeypatch, dsn, nats_url, tmp_path) as relay,
    ):
        admin = await admin_session(p)
        a = await call(p, "POST", "/invitations", session=admin, body={"email": KIM["email"]})
        assert a.status == 201, a.body
        assert (a.body["emailed"], a.body["email_error"]) == (True, None)
        msg = await mail_to(relay, KIM["email"])
        assert msg["To"] == KIM["email"] and "invited" in msg["Subject"]
        # the invited person has only the mail: the link in it is how they join
        token = link_in(msg, "invite")
        accept = {"token": token, **KIM}
        a = await call(p, "POST", "/invitations/accept", body=accept)
        assert a.status == 201, a.body
        kim_id = a.body["user_id"]
        kim = session_of(await sign_in(p, KIM["username"], KIM["password"]))
        a = await call(p, "GET", "/profile", session=kim)
        assert a.status == 200 and a.body["user_id"] == kim_id and not a.body["is_admin"]
        # once only
        again = await call(p, "POST", "/invitations/accept", body={**accept, "username": "kim2"})
        assert again.status == 400 and again.problem["field"] == "token"
        assert len(relay.got) == 1


async def test_forgot_password_emails_a_link_that_works_once(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> None:
    async with (
        platform(monkeypatch, dsn, nats_url, uniq, tmp_path) as p,
        mail_by_relay(monkeypatch, dsn, nats_url, tmp_path) as relay,
    ):
        admin = await admin_session(p)
        for person in (ALICE, DAN):
            a = await call(p, "POST", "/users", session=admin, body=person)
            assert a.status == 201, a.body
            if person is DAN:
                dan_id = a.body["user_id"]
                d = await call(p, "POST", f"/users/{dan_id}/disable", session=admin)
                assert d.status == 204, d.body
        # the same answer for an unknown email, a disabled account's and an enabled one's
        answers = []
        for address in ("nobody@example.test", DAN["email"], "Alice@Example.test"):
            a = await call(p, "POST", "/password-reset", body={"email": address})
            answers.append((a.status, a.body))
        assert answers == [(202, b"")] * 3, answers
        msg = await mail_to(relay, ALICE["email"])
        assert "password" in msg["Subject"].lower()
        token = link_in(msg, "reset")
        await asyncio.sleep(1)  # the other two asked for nothing: no mail is on its way
        assert [m.recipients for m in relay.got] == [[ALICE["email"]]]

        new = {"token": token, "new_password": "alice's second phrase"}
        a = await call(p, "POST", "/password-reset/complete", body=new)
        assert a.status == 204, a.body
        again = await call(
            p, "POST", "/password-reset/complete", body={**new, "new_password": "x" * 20}
        )
        assert again.status == 400 and again.problem["field"] == "token"
        assert (await sign_in(p, "alice", ALICE["password"])).status == 401
        session_of(await sign_in(p, "alice", new["new_password"]))


async def test_without_a_way_to_send_mail_an_invitation_says_why_and_its_link_works(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> None:
    async with platform(monkeypatch, dsn, nats_url, uniq, tmp_path) as p:
        admin = await admin_session(p)
        # no mail service at all
        a = await call(p, "POST", "/invitations", session=admin, body={"email": KIM["email"]})
        assert a.status == 201, a.body
        assert a.body["emailed"] is False
        assert "mail service is running" in a.body["email_error"], a.body
        token = a.body["token"]
        # asking for a reset answers as ever
        a = await call(p, "POST", "/password-reset", body={"email": ADMIN["email"]})
        assert a.status == 202, a.body
        # a mail service with neither a mail domain on nor a relay set
        (tmp_path / "mail").mkdir()
        async with running_mail(
            monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path / "mail"
        ):
            lee = {"email": "lee@example.test"}
            a = await call(p, "POST", "/invitations", session=admin, body=lee)
            assert a.status == 201, a.body
            assert a.body["emailed"] is False
            assert "set an outgoing relay" in a.body["email_error"], a.body
        # the administrator hands the link over: it works
        a = await call(p, "POST", "/invitations/accept", body={"token": token, **KIM})
        assert a.status == 201, a.body
        session_of(await sign_in(p, KIM["username"], KIM["password"]))
