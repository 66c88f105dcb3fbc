"""Credentials end when they should and cannot be guessed without limit (issue 13, items 6 and
7): a check of the current password is a sign-in attempt; creating an API token needs a recent
sign-in, and every token expires; a new password ends the user's tokens; anonymous reset
requests are limited and append nothing for an email without an account."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from libs.events.bus import Forbidden, Invalid, Unauthorized
from tests.identity.kit import ADMIN, Identity, running_identity

ALICE = {"username": "alice", "email": "alice@example.test", "password": "a long enough phrase"}
IP = "198.51.100.7"
LIMITS = {
    "HP_SIGNIN_ACCOUNT_LIMIT": "3",
    "HP_RESET_IP_LIMIT": "4",
    "HP_RESET_EMAIL_LIMIT": "2",
}


@pytest.fixture
async def ident(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path
) -> AsyncIterator[Identity]:
    async with running_identity(
        monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, env=LIMITS
    ) as i:
        yield i


async def with_alice(ident: Identity) -> tuple[str, str, str]:
    """(admin id, alice's id, a session alice just started from IP)."""
    admin = await ident.set_up()
    alice = str((await ident.cmd("create_user", dict(ALICE), actor=admin))["user_id"])
    session = str((await ident.login("alice", ALICE["password"], ip=IP))["session"])
    return admin, alice, session


async def events(dsn: str, kind: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT data::text FROM events.events WHERE type = $1 ORDER BY position", kind
        )
    finally:
        await conn.close()
    return [json.loads(r["data"]) for r in rows]


async def test_checks_of_the_current_password_count_as_failed_sign_ins(
    ident: Identity, dsn: str
) -> None:
    _, alice, session = await with_alice(ident)
    stranger = "203.0.113.9"  # an address alice never signed in from
    change = {"user_id": alice, "new_password": "another long phrase", "session": session}
    off = {"user_id": alice}
    for verb, payload in (("change_password", change), ("totp_disable", off)):
        with pytest.raises(Invalid) as e:
            await ident.cmd(
                verb, {**payload, "current_password": "guess one"}, actor=alice, ip=stranger
            )
        assert e.value.field == "current_password"
    failed = await events(dsn, "LoginFailed")
    got = [(f["user_id"], ident.address(f["ip"])) for f in failed]
    assert got == [(alice, stranger)] * 2  # bans count them
    with pytest.raises(Invalid):
        await ident.cmd(
            "change_password", {**change, "current_password": "guess 3"}, actor=alice, ip=stranger
        )
    # past the account's limit (3 here), from an unknown address even the right one is refused
    with pytest.raises(Invalid, match="too many"):
        await ident.cmd(
            "change_password",
            {**change, "current_password": ALICE["password"]},
            actor=alice,
            ip=stranger,
        )
    with pytest.raises(Unauthorized):
        await ident.login("alice", "another long phrase", ip=IP)  # nothing changed
    # the real user, from where she signs in, is not locked out
    await ident.cmd(
        "change_password", {**change, "current_password": ALICE["password"]}, actor=alice, ip=IP
    )
    assert (await ident.login("alice", "another long phrase", ip=IP))["user_id"] == alice


async def test_a_token_needs_a_recent_sign_in_and_expires_within_a_year(ident: Identity) -> None:
    _, alice, session = await with_alice(ident)
    new = {"user_id": alice, "name": "ci", "scope": "full"}
    root = str((await ident.login("root", ADMIN["password"], ip=IP))["session"])
    for proof in ({}, {"session": "not a session"}, {"session": root}):
        with pytest.raises(Forbidden, match="recent sign-in") as e:
            await ident.cmd("create_token", {**new, **proof}, actor=alice, ip=IP)
        assert e.value.field == "session"
    made = await ident.cmd("create_token", {**new, "session": session}, actor=alice, ip=IP)
    assert made["expires_at"] is not None
    for never in ({"expires_at": None}, {"expires_in_days": 400}):
        with pytest.raises(Invalid):
            await ident.cmd("create_token", {**new, **never, "session": session}, actor=alice)
    ident.clock.advance(11 * 60)  # the session lives on, but the sign-in is no longer recent
    assert (await ident.ask("whoami", {"session": session}))["user_id"] == alice
    with pytest.raises(Forbidden, match="sign in again"):
        await ident.cmd("create_token", {**new, "session": session}, actor=alice, ip=IP)
    fresh = str((await ident.login("alice", ALICE["password"], ip=IP))["session"])
    await ident.cmd("create_token", {**new, "session": fresh}, actor=alice, ip=IP)
    assert len((await ident.ask("tokens", {"user_id": alice}, actor=alice))["items"]) == 2


async def test_a_new_password_ends_the_users_tokens(ident: Identity) -> None:
    admin, alice, session = await with_alice(ident)
    new = {"user_id": alice, "name": "ci", "scope": "full", "session": session}
    first = (await ident.cmd("create_token", new, actor=alice))["token"]
    change = {
        "user_id": alice,
        "current_password": ALICE["password"],
        "new_password": "another long phrase",
        "session": session,
    }
    await ident.cmd("change_password", change, actor=alice, ip=IP)
    with pytest.raises(Unauthorized):
        await ident.ask("whoami", {"token": first})
    assert (await ident.ask("whoami", {"session": session}))["user_id"] == alice  # this one stays
    assert (await ident.ask("tokens", {"user_id": alice}, actor=alice))["items"] == []

    second = (await ident.cmd("create_token", new, actor=alice))["token"]
    link = await ident.cmd("create_password_reset", {"user_id": alice}, actor=admin)
    await ident.cmd("reset_password", {"token": link["token"], "new_password": "a third phrase"})
    with pytest.raises(Unauthorized):
        await ident.ask("whoami", {"token": second})
    with pytest.raises(Unauthorized):
        await ident.ask("whoami", {"session": session})


async def test_reset_requests_are_limited_and_unknown_emails_append_nothing(
    ident: Identity, dsn: str
) -> None:
    await with_alice(ident)

    async def ask(email: str, ip: str) -> Any:
        return await ident.cmd("request_password_reset", {"email": email}, actor="anonymous", ip=ip)

    for i in range(3):
        assert await ask(f"nobody{i}@example.test", "192.0.2.50") == {}
    assert await events(dsn, "PasswordResetRequested") == []  # the log is not filled
    # alice's email: an event each, up to the email's limit (2 an hour), then the same answer
    for ip in ("192.0.2.61", "192.0.2.62", "192.0.2.63"):
        assert await ask("alice@example.test", ip) == {}
    assert len(await events(dsn, "PasswordResetRequested")) == 2
    # one address may ask 4 times an hour, for any emails: then 403, known email or not
    assert await ask("someone@example.test", "192.0.2.50") == {}
    for email in ("alice@example.test", "other@example.test"):
        with pytest.raises(Forbidden, match="try again in"):
            await ask(email, "192.0.2.50")
    assert len(await events(dsn, "PasswordResetRequested")) == 2
    ident.clock.advance(3601)
    assert await ask("alice@example.test", "192.0.2.50") == {}
    assert len(await events(dsn, "PasswordResetRequested")) == 3
