"""TOTP second factor, the admin MFA policy and API tokens, over the real bus, Postgres and keyring.

Codes are computed here from the enrolled secret with an RFC 4226 implementation of the test's
own, not with services.identity.totp.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from libs.events.bus import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from libs.events.projection import replay_by_name
from tests.identity.kit import ADMIN, Identity, code_for, running_identity

pytestmark = pytest.mark.asyncio(loop_scope="function")

ALICE = {"username": "Alice", "email": "alice@example.test", "password": "a long enough phrase"}
IP = "192.0.2.10"


@pytest.fixture
async def ident(monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path) -> Any:
    async with running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path) as i:
        yield i


def now_step(ident: Identity) -> int:
    """The service's current step, at least 4 s before the next one (so the service still sees
    the same when the code arrives): near a step's end, its clock moves to the next step."""
    at = ident.clock.time()
    if at % 30 > 26:
        ident.clock.advance(30 - at % 30 + 0.1)
    return int(ident.clock.time() // 30)


def wrong_code(secret: str, step: int) -> str:
    """A code that no step within ±3 of `step` has."""
    taken = {code_for(secret, s) for s in range(step - 3, step + 4)}
    return next(c for c in (f"{n:06d}" for n in range(1, 100)) if c not in taken)


async def with_alice(ident: Identity) -> tuple[str, str]:
    admin = await ident.set_up()
    reply = await ident.cmd("create_user", dict(ALICE), actor=admin)
    return admin, str(reply["user_id"])


async def login(ident: Identity, who: dict[str, str], **extra: Any) -> dict[str, Any]:
    payload = {"username": who["username"], "password": who["password"], **extra}
    reply: dict[str, Any] = await ident.cmd("login", payload, actor="anonymous", ip=IP)
    return reply


async def signed_in(ident: Identity, who: dict[str, str] = ALICE) -> str:
    """A fresh session of `who`: creating an API token needs a recent sign-in."""
    return str((await login(ident, who))["session"])


async def login_totp(ident: Identity, **payload: Any) -> dict[str, Any]:
    reply: dict[str, Any] = await ident.cmd("login_totp", payload, actor="anonymous", ip=IP)
    return reply


async def enrol(ident: Identity, user_id: str) -> tuple[str, list[str]]:
    """Enrol and confirm TOTP for `user_id`; returns (secret, recovery codes)."""
    started = await ident.cmd("totp_enrol", {"user_id": user_id}, actor=user_id)
    step = now_step(ident)
    confirmed = await ident.cmd(
        "totp_confirm",
        {"user_id": user_id, "code": code_for(started["secret"], step - 1)},
        actor=user_id,
    )
    return str(started["secret"]), list(confirmed["recovery_codes"])


async def failures(dsn: str, reason: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT data, meta FROM events.events WHERE type = 'LoginFailed'"
            " AND data ->> 'reason' = $1 ORDER BY position",
            reason,
        )
    finally:
        await conn.close()
    return [{"data": json.loads(r["data"]), "meta": json.loads(r["meta"])} for r in rows]


async def dump(dsn: str) -> str:
    """Every event and every identity table, as text (to look for secrets in)."""
    conn = await asyncpg.connect(dsn)
    try:
        parts = [
            json.dumps(
                [dict(r) for r in await conn.fetch("SELECT * FROM events.events")], default=str
            )
        ]
        for table in ("totp", "api_tokens", "login_tickets", "users", "sessions"):
            rows = await conn.fetch(f"SELECT * FROM identity.{table}")
            parts.append(json.dumps([dict(r) for r in rows], default=str))
    finally:
        await conn.close()
    return " ".join(parts)


# -- enrolment ----------------------------------------------------------------------------------


async def test_enrol_confirm_state_and_what_is_stored(ident: Identity, dsn: str) -> None:
    _, alice = await with_alice(ident)
    assert await ident.ask("totp_state", {"user_id": alice}, actor=alice) == {
        "enabled": False,
        "recovery_codes_left": 0,
    }
    started = await ident.cmd("totp_enrol", {"user_id": alice}, actor=alice)
    secret = started["secret"]
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)
    uri = urlsplit(started["otpauth_uri"])
    assert (uri.scheme, uri.netloc, uri.path) == ("otpauth", "totp", "/Homeport:Alice")
    assert parse_qs(uri.query)["secret"] == [secret]
    # pending: not on yet, and sign-in still needs no code
    assert (await ident.ask("totp_state", {"user_id": alice}, actor=alice))["enabled"] is False
    assert "session" in await login(ident, ALICE)

    step = now_step(ident)
    with pytest.raises(Invalid) as e:
        await ident.cmd(
            "totp_confirm", {"user_id": alice, "code": wrong_code(secret, step)}, actor=alice
        )
    assert e.value.field == "code"
    # enrolling again replaces the pending secret: the old one's codes no longer confirm
    again = await ident.cmd("totp_enrol", {"user_id": alice}, actor=alice)
    assert again["secret"] != secret
    with pytest.raises(Invalid):
        await ident.cmd(
            "totp_confirm", {"user_id": alice, "code": code_for(secret, step)}, actor=alice
        )
    secret = again["secret"]
    confirmed = await ident.cmd(
        "totp_confirm", {"user_id": alice, "code": f" {code_for(secret, step)[:3]} "
                         f"{code_for(secret, step)[3:]}"}, actor=alice,
    )  # fmt: skip
    codes = confirmed["recovery_codes"]
    assert len(codes) == 10 == len(set(codes))
    assert all(re.fullmatch(r"[0-9a-z]{4}(-[0-9a-z]{4}){3}", c) for c in codes)
    assert await ident.ask("totp_state", {"user_id": alice}, actor=alice) == {
        "enabled": True,
        "recovery_codes_left": 10,
    }
    with pytest.raises(Conflict):
        await ident.cmd("totp_enrol", {"user_id": alice}, actor=alice)
    with pytest.raises(Conflict):
        await ident.cmd(
            "totp_confirm", {"user_id": alice, "code": code_for(secret, step + 1)}, actor=alice
        )
    everything = await dump(dsn)
    assert secret not in everything  # sealed with alice's key
    for code in codes:
        assert code not in everything and code.replace("-", "") not in everything
        assert hashlib.sha256(code.replace("-", "").encode()).hexdigest() in everything


async def test_only_the_user_enrols_and_admins_may_only_look(ident: Identity) -> None:
    admin, alice = await with_alice(ident)
    for verb in ("totp_enrol", "totp_confirm"):
        payload: dict[str, Any] = {"user_id": alice}
        if verb == "totp_confirm":
            payload["code"] = "123456"
        with pytest.raises(Forbidden):
            await ident.cmd(verb, payload, actor=admin)
    with pytest.raises(Forbidden):
        await ident.ask("totp_state", {"user_id": admin}, actor=alice)
    assert (await ident.ask("totp_state", {"user_id": alice}, actor=admin))["enabled"] is False
    with pytest.raises(Conflict):  # nothing pending
        await ident.cmd("totp_confirm", {"user_id": alice, "code": "123456"}, actor=alice)
    with pytest.raises(Invalid) as e:
        await ident.cmd("totp_enrol", {"user_id": alice, "colour": "red"}, actor=alice)
    assert e.value.field == "colour"
    with pytest.raises(Invalid) as e:
        await ident.cmd("totp_confirm", {"user_id": alice, "code": 123456}, actor=alice)
    assert e.value.field == "code"


# -- signing in -------------------------------------------------------------------------------


async def test_two_step_login_with_a_ticket(ident: Identity, dsn: str) -> None:
    _, alice = await with_alice(ident)
    started = await ident.cmd("totp_enrol", {"user_id": alice}, actor=alice)
    secret, used = str(started["secret"]), now_step(ident) - 1
    await ident.cmd("totp_confirm", {"user_id": alice, "code": code_for(secret, used)}, actor=alice)
    challenge = await login(ident, ALICE)
    assert set(challenge) == {"totp_required", "ticket"} and challenge["totp_required"] is True
    assert len(challenge["ticket"]) >= 43
    step = now_step(ident)
    # the code that confirmed the enrolment is used up: refused, and the ticket with it (its
    # step, not the one before now: a step may have ended since, under load)
    with pytest.raises(Unauthorized, match="wrong code"):
        await login_totp(ident, ticket=challenge["ticket"], code=code_for(secret, used))
    with pytest.raises(Unauthorized, match="ticket"):
        await login_totp(ident, ticket=challenge["ticket"], code=code_for(secret, step))
    ticket = (await login(ident, ALICE))["ticket"]
    with pytest.raises(Invalid) as e:  # neither code nor recovery code: the ticket is kept
        await login_totp(ident, ticket=ticket)
    assert e.value.field == "code"
    with pytest.raises(Invalid) as e:
        await login_totp(ident, ticket=ticket, code="123456", recovery_code="x")
    assert e.value.field == "recovery_code"
    s = await login_totp(ident, ticket=ticket, code=code_for(secret, step), user_agent="test/1")
    assert s["user_id"] == alice and s["username"] == "Alice" and len(s["session"]) >= 43
    assert "totp_enrolment_required" not in s
    who = await ident.ask("whoami", {"session": s["session"]})
    assert who.pop("profile")["user_id"] == alice
    assert who == {"user_id": alice, "username": "Alice", "is_admin": False, "scope": "full"}
    sessions = await ident.ask("sessions", {"user_id": alice})
    assert sessions["items"][0]["user_agent"] == "test/1"
    with pytest.raises(Unauthorized, match="ticket"):  # single use
        await login_totp(ident, ticket=ticket, code=code_for(secret, step + 1))
    with pytest.raises(Unauthorized, match="ticket"):
        await login_totp(ident, ticket="x" * 43, code=code_for(secret, step + 1))
    # a wrong code is a failed sign-in of the account, from the address, counted like one
    failed = await failures(dsn, "totp")
    assert [f["data"]["user_id"] for f in failed] == [alice]
    assert (
        ident.address(failed[0]["data"]["ip"]) == IP and failed[0]["meta"]["actor"] == "anonymous"
    )
    conn = await asyncpg.connect(dsn)
    try:
        used = await conn.fetch("SELECT meta FROM events.events WHERE type = 'SecondFactorUsed'")
    finally:
        await conn.close()
    assert [json.loads(r["meta"])["actor"] for r in used] == [alice]  # the user's own act
    assert len(await failures(dsn, "ticket")) == 3
    everything = await dump(dsn)
    assert ticket not in everything and s["session"] not in everything


async def test_tickets_expire(ident: Identity, dsn: str) -> None:
    _, alice = await with_alice(ident)
    secret, _ = await enrol(ident, alice)
    ticket = (await login(ident, ALICE))["ticket"]
    conn = await asyncpg.connect(dsn)
    try:
        expires = await conn.fetchval("SELECT expires_at FROM identity.login_tickets")
        assert timedelta(minutes=4) < expires - ident.clock() <= timedelta(minutes=5)
        await conn.execute("UPDATE identity.login_tickets SET expires_at = now() - interval '1s'")
    finally:
        await conn.close()
    step = now_step(ident)
    with pytest.raises(Unauthorized, match="ticket"):
        await login_totp(ident, ticket=ticket, code=code_for(secret, step))


async def test_one_step_login_drift_and_reuse(ident: Identity, dsn: str) -> None:
    _, alice = await with_alice(ident)
    secret, _ = await enrol(ident, alice)
    step = now_step(ident)
    for off in (-2, 2):  # outside the ±1 step window
        with pytest.raises(Unauthorized, match="wrong code"):
            await login(ident, ALICE, totp=code_for(secret, step + off))
    with pytest.raises(Unauthorized, match="wrong code"):
        await login(ident, ALICE, totp="12345")  # not 6 digits
    s = await login(ident, ALICE, totp=code_for(secret, step))  # step - 1 went to the enrolment
    assert s["user_id"] == alice and "session" in s
    for off in (0, -1):  # used, or older than the last used step
        with pytest.raises(Unauthorized, match="wrong code"):
            await login(ident, ALICE, totp=code_for(secret, step + off))
    s = await login(ident, ALICE, totp=code_for(secret, step + 1))  # one step ahead is fine
    assert "session" in s
    with pytest.raises(Unauthorized, match="wrong code"):
        await login(ident, ALICE, totp=code_for(secret, step + 1))
    assert len(await failures(dsn, "totp")) == 6
    # a wrong password with a right code is still the one refusal for every wrong credential
    with pytest.raises(Unauthorized, match="wrong username or password"):
        await login(ident, {**ALICE, "password": "not the password"}, totp="123456")


async def test_one_code_gives_one_session_under_concurrency(ident: Identity) -> None:
    _, alice = await with_alice(ident)
    secret, _ = await enrol(ident, alice)
    step = now_step(ident)
    code = code_for(secret, step)
    tickets = [(await login(ident, ALICE))["ticket"] for _ in range(4)]
    results = await asyncio.gather(
        *(login_totp(ident, ticket=t, code=code) for t in tickets), return_exceptions=True
    )
    assert sum(isinstance(r, dict) for r in results) == 1, results
    assert all(isinstance(r, Unauthorized) for r in results if not isinstance(r, dict))


async def test_recovery_codes_work_once_each(ident: Identity) -> None:
    _, alice = await with_alice(ident)
    _, codes = await enrol(ident, alice)
    ticket = (await login(ident, ALICE))["ticket"]
    s = await login_totp(ident, ticket=ticket, recovery_code=codes[0])
    assert s["user_id"] == alice
    with pytest.raises(Unauthorized, match="wrong code"):
        await login(ident, ALICE, recovery_code=codes[0])
    # case, spaces and dashes do not matter
    typed = codes[1].upper().replace("-", " ")
    assert "session" in await login(ident, ALICE, recovery_code=typed)
    with pytest.raises(Unauthorized, match="wrong code"):
        await login(ident, ALICE, recovery_code=codes[1])
    with pytest.raises(Unauthorized, match="wrong code"):
        await login(ident, ALICE, recovery_code="0000-0000-0000-0000")
    state = await ident.ask("totp_state", {"user_id": alice}, actor=alice)
    assert state == {"enabled": True, "recovery_codes_left": 8}


async def test_disable_needs_the_password(ident: Identity) -> None:
    _, alice = await with_alice(ident)
    secret, _ = await enrol(ident, alice)
    ticket = (await login(ident, ALICE))["ticket"]
    with pytest.raises(Invalid) as e:
        await ident.cmd("totp_disable", {"user_id": alice, "current_password": "nope"}, actor=alice)
    assert e.value.field == "current_password"
    with pytest.raises(Invalid) as e:
        await ident.cmd("totp_disable", {"user_id": alice}, actor=alice)
    assert e.value.field == "current_password"
    await ident.cmd(
        "totp_disable", {"user_id": alice, "current_password": ALICE["password"]}, actor=alice
    )
    assert (await ident.ask("totp_state", {"user_id": alice}, actor=alice))["enabled"] is False
    assert "session" in await login(ident, ALICE)
    step = now_step(ident)
    with pytest.raises(Unauthorized):  # outstanding tickets end with the second factor
        await login_totp(ident, ticket=ticket, code=code_for(secret, step))
    # idempotent, and enrolling again works
    await ident.cmd(
        "totp_disable", {"user_id": alice, "current_password": ALICE["password"]}, actor=alice
    )
    secret, _ = await enrol(ident, alice)
    assert (await login(ident, ALICE))["totp_required"] is True


async def test_disabled_or_deleted_user_cannot_finish_a_login(ident: Identity) -> None:
    admin, alice = await with_alice(ident)
    secret, _ = await enrol(ident, alice)
    ticket = (await login(ident, ALICE))["ticket"]
    await ident.cmd("disable_user", {"user_id": alice}, actor=admin)
    step = now_step(ident)
    with pytest.raises(Unauthorized):
        await login_totp(ident, ticket=ticket, code=code_for(secret, step))
    await ident.cmd("enable_user", {"user_id": alice}, actor=admin)
    ticket = (await login(ident, ALICE))["ticket"]
    await ident.cmd("delete_user", {"user_id": alice}, actor=admin)
    with pytest.raises(Unauthorized):
        await login_totp(ident, ticket=ticket, code=code_for(secret, step))


# -- the admin policy -------------------------------------------------------------------------


async def test_admins_can_be_required_to_enrol(ident: Identity) -> None:
    admin, alice = await with_alice(ident)
    assert await ident.ask("mfa_policy", {}) == {"require_admin_totp": False}
    with pytest.raises(Forbidden):
        await ident.cmd("set_mfa_policy", {"require_admin_totp": True}, actor=alice)
    with pytest.raises(Invalid) as e:
        await ident.cmd("set_mfa_policy", {}, actor=admin)
    assert e.value.field == "require_admin_totp"
    with pytest.raises(Invalid) as e:
        await ident.cmd("set_mfa_policy", {"require_admin_totp": "yes"}, actor=admin)
    assert e.value.field == "require_admin_totp"
    before = await login(ident, ADMIN)
    reply = await ident.cmd("set_mfa_policy", {"require_admin_totp": True}, actor=admin)
    assert reply == {"require_admin_totp": True}
    assert await ident.ask("mfa_policy", {}) == {"require_admin_totp": True}

    s = await login(ident, ADMIN)  # a session still, flagged
    assert s["totp_enrolment_required"] is True and "session" in s
    for session in (s["session"], before["session"]):
        who = await ident.ask("whoami", {"session": session})
        assert who.pop("profile")["is_admin"] is True
        assert who == {
            "user_id": admin,
            "username": "root",
            "is_admin": True,
            "scope": "full",
            "totp_enrolment_required": True,
        }
    # users are not concerned
    a = await login(ident, ALICE)
    assert "totp_enrolment_required" not in a
    assert "totp_enrolment_required" not in await ident.ask("whoami", {"session": a["session"]})

    secret, _ = await enrol(ident, admin)
    who = await ident.ask("whoami", {"session": s["session"]})
    assert "totp_enrolment_required" not in who
    assert (await login(ident, ADMIN))["totp_required"] is True
    step = now_step(ident)
    s = await login(ident, ADMIN, totp=code_for(secret, step))
    assert "totp_enrolment_required" not in s
    await ident.cmd("set_mfa_policy", {"require_admin_totp": False}, actor=admin)
    assert await ident.ask("mfa_policy", {}) == {"require_admin_totp": False}


# -- API tokens -------------------------------------------------------------------------------


async def test_tokens_create_list_use_revoke(ident: Identity, dsn: str) -> None:
    admin, alice = await with_alice(ident)
    s = await signed_in(ident)
    full = await ident.cmd(
        "create_token",
        {"user_id": alice, "name": "laptop", "scope": "full", "session": s},
        actor=alice,
    )
    read = await ident.cmd(
        "create_token",
        {
            "user_id": alice,
            "name": "grafana",
            "scope": "read",
            "expires_in_days": 365,
            "session": s,
        },
        actor=alice,
    )
    assert full["token"].startswith("hp_") and len(full["token"]) == 46
    assert full["scope"] == "full" and full["name"] == "laptop"
    default_end = datetime.fromisoformat(full["expires_at"]) - ident.clock()
    assert timedelta(days=89) < default_end <= timedelta(days=90)
    year_end = datetime.fromisoformat(read["expires_at"]) - ident.clock()
    assert timedelta(days=364) < year_end <= timedelta(days=365)

    listed = (await ident.ask("tokens", {"user_id": alice}, actor=alice))["items"]
    assert [t["token_id"] for t in listed] == [read["token_id"], full["token_id"]]
    assert set(listed[0]) == {"token_id", "name", "scope", "created_at", "expires_at", "expired"}
    assert listed[0]["name"] == "grafana" and listed[0]["expired"] is False
    assert "hp_" not in json.dumps(listed)
    assert (await ident.ask("tokens", {"user_id": alice}, actor=admin))["items"] == listed
    with pytest.raises(Forbidden):
        await ident.ask("tokens", {"user_id": admin}, actor=alice)

    for reply, scope in ((full, "full"), (read, "read")):
        who = await ident.ask("whoami", {"token": reply["token"]})
        assert who.pop("profile")["username"] == "Alice"
        assert who == {"user_id": alice, "username": "Alice", "is_admin": False, "scope": scope}
    everything = await dump(dsn)
    assert full["token"] not in everything and read["token"] not in everything
    assert "grafana" not in everything  # names are sealed with the user's key

    with pytest.raises(Forbidden):  # only its owner creates a user's token
        await ident.cmd(
            "create_token", {"user_id": alice, "name": "x", "scope": "full"}, actor=admin
        )
    with pytest.raises(Forbidden):  # alice may not revoke the admin's tokens
        await ident.cmd(
            "revoke_token", {"user_id": admin, "token_id": full["token_id"]}, actor=alice
        )
    with pytest.raises(NotFound):  # nor is a token found under another owner
        await ident.cmd(
            "revoke_token", {"user_id": admin, "token_id": full["token_id"]}, actor=admin
        )
    await ident.cmd("revoke_token", {"user_id": alice, "token_id": full["token_id"]}, actor=alice)
    with pytest.raises(Unauthorized):  # the very next request
        await ident.ask("whoami", {"token": full["token"]})
    with pytest.raises(NotFound):
        await ident.cmd(
            "revoke_token", {"user_id": alice, "token_id": full["token_id"]}, actor=alice
        )
    await ident.cmd("revoke_token", {"user_id": alice, "token_id": read["token_id"]}, actor=admin)
    with pytest.raises(Unauthorized):
        await ident.ask("whoami", {"token": read["token"]})
    assert (await ident.ask("tokens", {"user_id": alice}, actor=alice))["items"] == []
    for bad in ("hp_" + "x" * 43, "not-a-token", "hp_" + "y" * 600):
        with pytest.raises(Unauthorized):
            await ident.ask("whoami", {"token": bad})


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"scope": "admin"}, "scope"),
        ({"scope": None}, "scope"),
        ({"name": ""}, "name"),
        ({"name": "  "}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"name": "bad\nname"}, "name"),
        ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        ({"expires_at": "2099-01-01T00:00:00"}, "expires_at"),  # no zone
        ({"expires_at": "tomorrow"}, "expires_at"),
        ({"expires_at": 1893456000}, "expires_at"),
        ({"expires_at": None}, "expires_at"),  # every token expires
        ({"expires_at": "2099-01-01T00:00:00Z"}, "expires_at"),  # in more than a year
        ({"expires_in_days": 0}, "expires_in_days"),
        ({"expires_in_days": 367}, "expires_in_days"),
        ({"expires_in_days": 30, "expires_at": "2099-01-01T00:00:00Z"}, "expires_at"),
        ({"user_id": "nobody"}, "user_id"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_bad_token_input_names_the_field(
    ident: Identity, change: dict[str, Any], field: str
) -> None:
    _, alice = await with_alice(ident)
    s = await signed_in(ident)
    payload = {"user_id": alice, "name": "ci", "scope": "read", "session": s, **change}
    with pytest.raises(Invalid) as e:
        await ident.cmd("create_token", payload, actor=alice)
    assert e.value.field == field
    assert (await ident.ask("tokens", {"user_id": alice}, actor=alice))["items"] == []


async def test_tokens_expire(ident: Identity) -> None:
    _, alice = await with_alice(ident)
    soon = (ident.clock() + timedelta(seconds=2)).isoformat()
    t = await ident.cmd(
        "create_token",
        {
            "user_id": alice,
            "name": "short",
            "scope": "full",
            "expires_at": soon,
            "session": await signed_in(ident),
        },
        actor=alice,
    )
    assert (await ident.ask("whoami", {"token": t["token"]}))["user_id"] == alice
    ident.clock.advance(2.2)  # past the token's end, by the service's clock
    with pytest.raises(Unauthorized):
        await ident.ask("whoami", {"token": t["token"]})
    listed = (await ident.ask("tokens", {"user_id": alice}, actor=alice))["items"]
    assert [x["expired"] for x in listed] == [True]


async def test_tokens_of_a_disabled_or_deleted_user_are_refused(ident: Identity) -> None:
    admin, alice = await with_alice(ident)
    new = {"user_id": alice, "name": "ci", "scope": "full"}
    t = await ident.cmd("create_token", {**new, "session": await signed_in(ident)}, actor=alice)
    await ident.cmd("disable_user", {"user_id": alice}, actor=admin)
    with pytest.raises(Unauthorized):
        await ident.ask("whoami", {"token": t["token"]})
    await ident.cmd("enable_user", {"user_id": alice}, actor=admin)
    with pytest.raises(Unauthorized):  # disabling ended them, as it ends sessions
        await ident.ask("whoami", {"token": t["token"]})
    assert (await ident.ask("tokens", {"user_id": alice}, actor=alice))["items"] == []
    t = await ident.cmd("create_token", {**new, "session": await signed_in(ident)}, actor=alice)
    assert (await ident.ask("whoami", {"token": t["token"]}))["user_id"] == alice
    await ident.cmd("delete_user", {"user_id": alice}, actor=admin)
    with pytest.raises(Unauthorized):
        await ident.ask("whoami", {"token": t["token"]})
    with pytest.raises(NotFound):
        await ident.ask("tokens", {"user_id": alice}, actor=admin)


async def test_admin_tokens_carry_the_enrolment_flag(ident: Identity) -> None:
    admin, _ = await with_alice(ident)
    s = await signed_in(ident, ADMIN)
    t = await ident.cmd(
        "create_token",
        {"user_id": admin, "name": "ops", "scope": "read", "session": s},
        actor=admin,
    )
    await ident.cmd("set_mfa_policy", {"require_admin_totp": True}, actor=admin)
    who = await ident.ask("whoami", {"token": t["token"]})
    assert who["scope"] == "read" and who["totp_enrolment_required"] is True


# -- rebuilding -------------------------------------------------------------------------------


async def test_replay_keeps_second_factors_tokens_and_used_codes(ident: Identity, dsn: str) -> None:
    admin, alice = await with_alice(ident)
    secret, codes = await enrol(ident, alice)
    step = now_step(ident)
    assert "session" in await login(ident, ALICE, totp=code_for(secret, step))
    s = (await login(ident, ALICE, recovery_code=codes[0]))["session"]
    t = await ident.cmd(
        "create_token", {"user_id": alice, "name": "ci", "scope": "read", "session": s}, actor=alice
    )
    gone = await ident.cmd(
        "create_token",
        {"user_id": alice, "name": "old", "scope": "read", "session": s},
        actor=alice,
    )
    await ident.cmd("revoke_token", {"user_id": alice, "token_id": gone["token_id"]}, actor=alice)
    await ident.cmd("set_mfa_policy", {"require_admin_totp": True}, actor=admin)
    state = await ident.ask("totp_state", {"user_id": alice}, actor=alice)
    tokens = await ident.ask("tokens", {"user_id": alice}, actor=alice)

    await replay_by_name("identity", dsn)

    assert await ident.ask("totp_state", {"user_id": alice}, actor=alice) == state
    assert await ident.ask("tokens", {"user_id": alice}, actor=alice) == tokens
    assert await ident.ask("mfa_policy", {}) == {"require_admin_totp": True}
    assert (await ident.ask("whoami", {"token": t["token"]}))["scope"] == "read"
    with pytest.raises(Unauthorized):
        await ident.ask("whoami", {"token": gone["token"]})
    with pytest.raises(Unauthorized, match="wrong code"):  # still used up after the rebuild
        await login(ident, ALICE, totp=code_for(secret, step))
    with pytest.raises(Unauthorized, match="wrong code"):
        await login(ident, ALICE, recovery_code=codes[0])
