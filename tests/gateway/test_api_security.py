"""Second factor, API tokens and the MFA policy over real HTTP: the real gateway in front of the
real identity service, on the same Postgres and NATS (no stand-ins)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest

from services.gateway.api import SESSION_COOKIE, default_table
from services.gateway.api.app import ENROLMENT_ROUTES
from tests.gateway.apikit import Answer, Client, running_gateway
from tests.identity.kit import ADMIN, Identity, running_identity

pytestmark = pytest.mark.asyncio(loop_scope="function")

ALICE = {"username": "alice", "email": "alice@example.test", "password": "a long enough phrase"}


@dataclass
class Platform:
    identity: Identity
    client: Client
    admin_id: str
    admin: str  # the admin's session
    alice_id: str
    alice: str  # alice's session


@pytest.fixture
async def platform(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> AsyncIterator[Platform]:
    async with (
        running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path) as ident,
        running_gateway(
            monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path
        ) as gw,
    ):
        client = gw.client
        a = await client.call("POST", "/api/v1/setup", body=ident.setup_body(ADMIN))
        assert a.status == 201, a.body
        admin_id = a.body["user_id"]
        admin = await sign_in(client, ADMIN)
        a = await client.call("POST", "/api/v1/users", session=admin, body=ALICE)
        assert a.status == 201, a.body
        alice = await sign_in(client, ALICE)
        yield Platform(ident, client, admin_id, admin, a.body["user_id"], alice)


def code_for(secret: str, step: int) -> str:
    """RFC 4226 HOTP (SHA-1, 6 digits): the TOTP code of a 30 s step."""
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    mac = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 1_000_000).zfill(6)


async def now_step() -> int:
    """The current step, at least 4 s before the next one."""
    if time.time() % 30 > 26:
        await asyncio.sleep(30 - time.time() % 30 + 0.1)
    return int(time.time() // 30)


def session_of(a: Answer) -> str:
    (raw,) = a.headers.getall("Set-Cookie")
    morsel = SimpleCookie(raw)[SESSION_COOKIE]
    assert morsel["secure"] and morsel["httponly"] and morsel["samesite"] == "Lax"
    assert morsel["path"] == "/" and int(morsel["max-age"]) > 11 * 3600
    return morsel.value


async def sign_in(client: Client, who: dict[str, str], **extra: Any) -> str:
    body = {"username": who["username"], "password": who["password"], **extra}
    a = await client.call("POST", "/api/v1/session", body=body)
    assert a.status == 200, a.body
    return session_of(a)


async def enrol(client: Client, session: str) -> str:
    """Enrol TOTP over HTTP with the code of the previous step; returns the secret."""
    a = await client.call("POST", "/api/v1/profile/totp", session=session)
    assert a.status == 200, a.body
    secret = a.body["secret"]
    assert a.body["otpauth_uri"].startswith("otpauth://totp/Homeport:")
    step = await now_step()
    a = await client.call(
        "POST",
        "/api/v1/profile/totp/confirm",
        session=session,
        body={"code": code_for(secret, step - 1)},
    )
    assert a.status == 200, a.body
    assert len(a.body["recovery_codes"]) == 10
    return str(secret)


def assert_problem(a: Answer, status: int, field: str | None = None) -> None:
    assert a.status == status, (a.status, a.body)
    if field is not None:
        assert a.problem["field"] == field, a.body


async def test_sign_in_with_totp_sets_the_cookie(platform: Platform) -> None:
    client = platform.client
    secret = await enrol(client, platform.alice)
    a = await client.call("GET", "/api/v1/profile/totp", session=platform.alice)
    assert a.status == 200 and a.body == {"enabled": True, "recovery_codes_left": 10}

    body = {"username": ALICE["username"], "password": ALICE["password"]}
    a = await client.call("POST", "/api/v1/session", body=body)
    assert a.status == 200, a.body
    assert set(a.body) == {"totp_required", "ticket"} and a.body["totp_required"] is True
    assert a.headers.getall("Set-Cookie", []) == []  # no session before the second factor
    step = await now_step()
    a = await client.call(
        "POST",
        "/api/v1/session/totp",
        body={"ticket": a.body["ticket"], "code": code_for(secret, step - 1)},  # used up
    )
    assert_problem(a, 401)
    assert a.problem["detail"] == "wrong code"
    assert a.headers.getall("Set-Cookie", []) == []

    ticket = (await client.call("POST", "/api/v1/session", body=body)).body["ticket"]
    a = await client.call(
        "POST", "/api/v1/session/totp", body={"ticket": ticket, "code": code_for(secret, step)}
    )
    assert a.status == 200, a.body
    assert a.body["username"] == "alice" and a.body["is_admin"] is False
    assert set(a.body) == {"user_id", "username", "is_admin", "expires_at"}
    session = session_of(a)
    assert session not in str(a.body)
    me = await client.call("GET", "/api/v1/profile", session=session)
    assert me.status == 200 and me.body["username"] == "alice"
    a = await client.call(
        "POST", "/api/v1/session/totp", body={"ticket": ticket, "code": code_for(secret, step)}
    )
    assert_problem(a, 401)  # the ticket worked once

    # one step: the code with the password; a used code is the one refusal of POST /session
    a = await client.call("POST", "/api/v1/session", body={**body, "totp": code_for(secret, step)})
    assert_problem(a, 401)
    assert a.problem["detail"] == "wrong username or password"
    session_of_one_step = await sign_in(client, ALICE, totp=code_for(secret, step + 1))
    assert session_of_one_step != session

    # turning it off needs the password
    a = await client.call(
        "POST",
        "/api/v1/profile/totp/disable",
        session=session,
        body={"current_password": "not it"},
    )
    assert_problem(a, 400, "current_password")
    a = await client.call(
        "POST",
        "/api/v1/profile/totp/disable",
        session=session,
        body={"current_password": ALICE["password"]},
    )
    assert a.status == 204
    await sign_in(client, ALICE)  # straight to a session again


BAD_INPUT: list[tuple[str, str, Any, str]] = [
    ("POST", "/api/v1/session/totp", {"code": "123456"}, "ticket"),
    ("POST", "/api/v1/session/totp", {"ticket": "abc", "code": "12345x"}, "code"),
    ("POST", "/api/v1/session/totp", {"ticket": "abc"}, "code"),  # identity: one is needed
    ("POST", "/api/v1/session/totp", {"ticket": "a/b", "code": "123456"}, "ticket"),
    ("POST", "/api/v1/session", {"username": "alice", "password": "x", "totp": "12"}, "totp"),
    ("POST", "/api/v1/profile/totp/confirm", {"code": "abcdef"}, "code"),
    ("POST", "/api/v1/profile/totp/confirm", {}, "code"),
    ("POST", "/api/v1/profile/totp/disable", {}, "current_password"),
    ("POST", "/api/v1/profile/tokens", {"name": "x", "scope": "admin"}, "scope"),
    ("POST", "/api/v1/profile/tokens", {"name": "", "scope": "read"}, "name"),
    ("POST", "/api/v1/profile/tokens", {"scope": "read"}, "name"),
    ("POST", "/api/v1/profile/tokens", {"name": "x", "scope": "read", "n": 1}, "n"),
    (
        "POST",
        "/api/v1/profile/tokens",
        {"name": "x", "scope": "read", "expires_at": "2020-01-01T00:00:00Z"},
        "expires_at",  # well-formed, but identity refuses a time in the past
    ),
    (
        "POST",
        "/api/v1/profile/tokens",
        {"name": "x", "scope": "read", "expires_at": "next week"},
        "expires_at",
    ),
    ("DELETE", "/api/v1/profile/tokens/not-a-uuid", None, "token_id"),
    ("PUT", "/api/v1/settings/mfa", {"require_admin_totp": "yes"}, "require_admin_totp"),
    ("PUT", "/api/v1/settings/mfa", {}, "require_admin_totp"),
]


async def test_bad_input_is_a_problem_naming_the_field(platform: Platform) -> None:
    for method, path, body, field in BAD_INPUT:
        session = platform.admin if "settings" in path else platform.alice
        a = await platform.client.call(method, path, session=session, body=body)
        assert a.status == 400, (method, path, body, a.body)
        assert a.problem["code"] == "invalid" and a.problem["field"] == field, (path, a.body)
    a = await platform.client.call("GET", "/api/v1/profile/tokens", session=platform.alice)
    assert a.body == {"items": []}  # nothing was made
    a = await platform.client.call("GET", "/api/v1/settings/mfa", session=platform.admin)
    assert a.body == {"require_admin_totp": False}


async def test_tokens_read_scope_and_revocation(platform: Platform) -> None:
    client = platform.client
    a = await client.call(
        "POST", "/api/v1/profile/tokens", session=platform.alice,
        body={"name": "grafana", "scope": "read"},
    )  # fmt: skip
    assert a.status == 201, a.body
    read = a.body
    assert read["token"].startswith("hp_") and read["scope"] == "read"
    end = datetime.fromisoformat(read["expires_at"]) - datetime.now(UTC)
    assert timedelta(days=89) < end <= timedelta(days=90)
    a = await client.call(
        "POST", "/api/v1/profile/tokens", session=platform.alice,
        body={"name": "ci", "scope": "full", "expires_in_days": 365},
    )  # fmt: skip
    assert a.status == 201, a.body
    end = datetime.fromisoformat(a.body["expires_at"]) - datetime.now(UTC)
    assert timedelta(days=364) < end <= timedelta(days=365)
    full = a.body

    # a read token reads, and may not change anything
    a = await client.call("GET", "/api/v1/profile", token=read["token"])
    assert a.status == 200 and a.body["username"] == "alice"
    a = await client.call("GET", "/api/v1/profile/tokens", token=read["token"])
    assert a.status == 200
    assert [t["name"] for t in a.body["items"]] == ["ci", "grafana"]
    assert "hp_" not in str(a.body)
    for method, path, body in (
        ("POST", "/api/v1/profile/tokens", {"name": "more", "scope": "full"}),
        ("DELETE", f"/api/v1/profile/tokens/{full['token_id']}", None),
        ("POST", "/api/v1/profile/totp", None),
    ):
        a = await client.call(method, path, token=read["token"], body=body)
        assert_problem(a, 403)
        assert "read-only" in a.problem["detail"]
    # a full token may; a user's token is not an admin's
    a = await client.call("POST", "/api/v1/profile/totp", token=full["token"])
    assert a.status == 200
    a = await client.call("GET", "/api/v1/users", token=full["token"])
    assert_problem(a, 403)

    # revoked: refused from the very next request on
    a = await client.call(
        "DELETE", f"/api/v1/profile/tokens/{read['token_id']}", session=platform.alice
    )
    assert a.status == 204, a.body
    a = await client.call("GET", "/api/v1/profile", token=read["token"])
    assert_problem(a, 401)
    assert 'error="invalid_token"' in a.headers["WWW-Authenticate"]
    a = await client.call(
        "DELETE", f"/api/v1/profile/tokens/{read['token_id']}", session=platform.alice
    )
    assert_problem(a, 404, "token_id")
    # someone else's token is not found among mine, and stays valid
    a = await client.call(
        "DELETE", f"/api/v1/profile/tokens/{full['token_id']}", session=platform.admin
    )
    assert_problem(a, 404, "token_id")
    a = await client.call("GET", "/api/v1/profile", token=full["token"])
    assert a.status == 200

    # disabling the user ends their tokens
    a = await client.call(
        "POST", f"/api/v1/users/{platform.alice_id}/disable", session=platform.admin
    )
    assert a.status == 204
    a = await client.call("GET", "/api/v1/profile", token=full["token"])
    assert_problem(a, 401)


async def test_admins_required_to_enrol_may_only_enrol(platform: Platform) -> None:
    client = platform.client
    a = await client.call("GET", "/api/v1/settings/mfa", session=platform.admin)
    assert a.status == 200 and a.body == {"require_admin_totp": False}
    a = await client.call(
        "PUT", "/api/v1/settings/mfa", session=platform.alice, body={"require_admin_totp": True}
    )
    assert_problem(a, 403)
    a = await client.call(
        "PUT", "/api/v1/settings/mfa", session=platform.admin, body={"require_admin_totp": True}
    )
    assert a.status == 200 and a.body == {"require_admin_totp": True}

    # the admin's session now reaches only what enrolling needs
    a = await client.call("GET", "/api/v1/users", session=platform.admin)
    assert_problem(a, 403)
    assert "second factor" in a.problem["detail"]
    a = await client.call("GET", "/api/v1/settings/mfa", session=platform.admin)
    assert_problem(a, 403)
    a = await client.call("GET", "/api/v1/profile", session=platform.admin)
    assert a.status == 200
    a = await client.call("GET", "/api/v1/profile/totp", session=platform.admin)
    assert a.status == 200 and a.body["enabled"] is False
    # users are not concerned
    a = await client.call("GET", "/api/v1/profile/tokens", session=platform.alice)
    assert a.status == 200
    # signing in says so
    body = {"username": ADMIN["username"], "password": ADMIN["password"]}
    a = await client.call("POST", "/api/v1/session", body=body)
    assert a.status == 200 and a.body["totp_enrolment_required"] is True
    fresh = session_of(a)
    a = await client.call("POST", "/api/v1/profile/tokens", session=fresh,
                          body={"name": "x", "scope": "full"})  # fmt: skip
    assert_problem(a, 403)

    secret = await enrol(client, fresh)
    for session in (fresh, platform.admin):
        a = await client.call("GET", "/api/v1/users", session=session)
        assert a.status == 200, a.body
    a = await client.call("POST", "/api/v1/session", body=body)
    assert a.body["totp_required"] is True
    step = await now_step()
    a = await client.call(
        "POST", "/api/v1/session/totp",
        body={"ticket": a.body["ticket"], "code": code_for(secret, step)},
    )  # fmt: skip
    assert a.status == 200 and "totp_enrolment_required" not in a.body
    a = await client.call(
        "PUT", "/api/v1/settings/mfa", session=session_of(a), body={"require_admin_totp": False}
    )
    assert a.status == 200 and a.body == {"require_admin_totp": False}


async def test_every_enrolment_route_is_in_the_table() -> None:
    labels = {route.label for route in default_table()}
    assert ENROLMENT_ROUTES <= labels, ENROLMENT_ROUTES - labels
