"""The identity journey through real HTTP, the real gateway, identity and relay:

setup -> login -> enrol TOTP -> log in with TOTP -> invite a user -> the user accepts and logs
in -> the admin disables them -> their next request is 401 -> the activity log shows each step
with actor and IP.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.kit import running_platform
from tests.gateway.apikit import Answer, Client
from tests.identity.kit import totp_at
from tests.support.waits import wait_until

ADMIN_IP = "198.51.100.10"
USER_IP = "203.0.113.20"
ADMIN = {"username": "admin", "email": "admin@example.test", "password": "admin's long passphrase"}
CAROL = {"username": "carol", "email": "carol@example.test", "password": "carol's own passphrase"}


def cookie(a: Answer) -> str:
    raw = a.headers["Set-Cookie"]
    assert raw.startswith("__Host-hp_session=") and "HttpOnly" in raw and "Secure" in raw
    return raw.split(";", 1)[0].split("=", 1)[1]


async def call(client: Client, method: str, path: str, ip: str, **kw: Any) -> Answer:
    return await client.call(method, "/api/v1" + path, headers={"X-Real-IP": ip}, **kw)


async def test_the_identity_journey(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> None:
    async with running_platform(
        monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path
    ) as p:
        c = p.client
        # setup, once
        a = await call(c, "POST", "/setup", ADMIN_IP, body=p.identity.setup_body(ADMIN))
        assert a.status == 201, a.body
        admin_id = a.body["user_id"]
        again = p.identity.setup_body(ADMIN)
        assert (await call(c, "POST", "/setup", ADMIN_IP, body=again)).status == 409

        # login
        login = {"username": "admin", "password": ADMIN["password"]}
        a = await call(c, "POST", "/session", ADMIN_IP, body=login)
        assert a.status == 200, a.body
        admin = cookie(a)

        # enrol TOTP: secret + otpauth URI, confirmed with a code, 10 recovery codes
        a = await call(c, "POST", "/profile/totp", ADMIN_IP, session=admin)
        assert a.status == 200, a.body
        secret = a.body["secret"]
        assert a.body["otpauth_uri"].startswith("otpauth://totp/")
        a = await call(
            c, "POST", "/profile/totp/confirm", ADMIN_IP, session=admin,
            body={"code": totp_at(secret, time.time())},
        )  # fmt: skip
        assert a.status == 200, a.body
        assert len(a.body["recovery_codes"]) == 10

        # log in with TOTP: the password step gives a ticket and no cookie, the code a session
        a = await call(c, "POST", "/session", ADMIN_IP, body=login)
        assert a.status == 200 and a.body.get("totp_required") is True, a.body
        assert "Set-Cookie" not in a.headers
        ticket = a.body["ticket"]
        wrong = await call(
            c, "POST", "/session/totp", ADMIN_IP, body={"ticket": ticket, "code": "000000"}
        )
        assert wrong.status == 401 and "Set-Cookie" not in wrong.headers
        a = await call(c, "POST", "/session", ADMIN_IP, body=login)
        ticket = a.body["ticket"]
        a = await call(
            c,
            "POST",
            "/session/totp",
            ADMIN_IP,
            body={"ticket": ticket, "code": totp_at(secret, time.time() + 30)},
        )  # fmt: skip  (the next step: within the ±1 step of drift, and not used before)
        assert a.status == 200, a.body
        admin = cookie(a)
        assert (await call(c, "GET", "/profile", ADMIN_IP, session=admin)).body["is_admin"]

        # invite carol; the invitation is bound to her email and works once
        a = await call(
            c, "POST", "/invitations", ADMIN_IP, session=admin, body={"email": CAROL["email"]}
        )
        assert a.status == 201, a.body
        token = a.body["token"]
        accept = {"token": token, **CAROL}
        a = await call(
            c, "POST", "/invitations/accept", USER_IP,
            body={**accept, "email": "mallory@example.test"},
        )  # fmt: skip
        assert a.status == 400 and a.problem["field"] == "token"
        a = await call(c, "POST", "/invitations/accept", USER_IP, body=accept)
        assert a.status == 201, a.body
        carol_id = a.body["user_id"]
        again = await call(
            c, "POST", "/invitations/accept", USER_IP,
            body={**accept, "username": "carol2"},
        )  # fmt: skip
        assert again.status == 400

        # carol signs in and sees her profile, not the users
        a = await call(
            c, "POST", "/session", USER_IP,
            body={"username": "carol", "password": CAROL["password"]},
        )  # fmt: skip
        assert a.status == 200, a.body
        carol = cookie(a)
        a = await call(c, "GET", "/profile", USER_IP, session=carol)
        assert a.status == 200 and a.body["user_id"] == carol_id and not a.body["is_admin"]
        assert (await call(c, "GET", "/users", USER_IP, session=carol)).status == 403

        # the admin disables her: her very next request is 401
        a = await call(c, "POST", f"/users/{carol_id}/disable", ADMIN_IP, session=admin)
        assert a.status == 204, a.body
        a = await call(c, "GET", "/profile", USER_IP, session=carol)
        assert a.status == 401 and a.problem["code"] == "unauthorized"

        # the activity log shows each step, with who did it and from where
        want = [
            ("PlatformSetUp", admin_id, ADMIN_IP),
            ("UserCreated", admin_id, ADMIN_IP),
            ("SessionStarted", admin_id, ADMIN_IP),
            ("TotpEnrolmentStarted", admin_id, ADMIN_IP),
            ("TotpEnabled", admin_id, ADMIN_IP),
            ("LoginFailed", "anonymous", ADMIN_IP),  # the wrong code
            ("InvitationCreated", admin_id, ADMIN_IP),
            ("InvitationAccepted", carol_id, USER_IP),
            ("UserCreated", carol_id, USER_IP),
            ("SessionStarted", carol_id, USER_IP),
            ("UserDisabled", admin_id, ADMIN_IP),
        ]
        seen: list[dict[str, Any]] = []

        async def logged() -> bool:
            a = await call(c, "GET", "/activity?limit=200&view=everything", ADMIN_IP, session=admin)
            assert a.status == 200, a.body
            seen[:] = list(reversed(a.body["items"]))
            return all(
                any(i["type"] == t and i["actor"] == actor and i["ip"] == ip for i in seen)
                for t, actor, ip in want
            )

        try:
            await wait_until(logged, 20, "every step in the activity log")
        except AssertionError:
            raise AssertionError([(i["type"], i["actor"], i["ip"]) for i in seen]) from None
        text = str(seen)
        for secret_value in (ADMIN["password"], CAROL["password"], token, secret, admin, carol):
            assert secret_value not in text  # no secret reaches the activity log
        assert CAROL["email"] not in text and ADMIN["email"] not in text
