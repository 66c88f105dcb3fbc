"""A user's own account over real HTTP: profile changes, password change, own sessions."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.kit import running_platform
from tests.gateway.apikit import Answer

ADMIN = {"username": "admin", "email": "admin@example.test", "password": "admin's long passphrase"}
DORA = {"username": "dora", "email": "dora@example.test", "password": "dora's long passphrase"}


def cookie(a: Answer) -> str:
    return a.headers["Set-Cookie"].split(";", 1)[0].split("=", 1)[1]


async def test_profile_password_and_own_sessions(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> None:
    async with running_platform(
        monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path
    ) as p:
        c = p.client
        assert (
            await c.call("POST", "/api/v1/setup", body=p.identity.setup_body(ADMIN))
        ).status == 201

        async def login(who: dict[str, str], password: str | None = None) -> Answer:
            body = {"username": who["username"], "password": password or who["password"]}
            return await c.call("POST", "/api/v1/session", body=body)

        admin = cookie(await login(ADMIN))
        a = await c.call("POST", "/api/v1/users", session=admin, body=DORA)
        assert a.status == 201
        dora_id = a.body["user_id"]
        laptop = cookie(await login(DORA))
        phone = cookie(await login(DORA))

        # profile: only what is sent changes; a taken email is 409 naming the field
        a = await c.call("PATCH", "/api/v1/profile", session=laptop, body={"display_name": "Dora"})
        assert a.status == 200 and a.body["display_name"] == "Dora", a.body
        assert a.body["email"] == DORA["email"]
        a = await c.call(
            "PATCH", "/api/v1/profile", session=laptop, body={"email": ADMIN["email"].upper()}
        )
        assert a.status == 409 and a.problem["field"] == "email"
        a = await c.call("PATCH", "/api/v1/profile", session=laptop, body={"display_name": None})
        assert a.status == 200 and a.body["display_name"] is None
        a = await c.call("PATCH", "/api/v1/profile", session=laptop, body={"email": "nope"})
        assert a.status == 400 and a.problem["field"] == "email"

        # own sessions: listed with the current one marked; another user's is not found
        a = await c.call("GET", "/api/v1/profile/sessions", session=laptop)
        assert a.status == 200 and len(a.body["items"]) == 2
        mine = {i["current"]: i["session_id"] for i in a.body["items"]}
        admins = await c.call("GET", "/api/v1/profile/sessions", session=admin)
        admin_session = admins.body["items"][0]["session_id"]
        a = await c.call("DELETE", f"/api/v1/profile/sessions/{admin_session}", session=laptop)
        assert a.status == 404
        assert (await c.call("GET", "/api/v1/profile", session=admin)).status == 200
        a = await c.call("DELETE", f"/api/v1/profile/sessions/{mine[False]}", session=laptop)
        assert a.status == 204
        assert (await c.call("GET", "/api/v1/profile", session=phone)).status == 401
        phone = cookie(await login(DORA))

        # password change: the current one is asked; other sessions end, this one stays
        new = "dora's brand new passphrase"
        a = await c.call(
            "POST", "/api/v1/profile/password", session=laptop,
            body={"current_password": "not it at all", "new_password": new},
        )  # fmt: skip
        assert a.status == 400 and a.problem["field"] == "current_password"
        a = await c.call(
            "POST", "/api/v1/profile/password", session=laptop,
            body={"current_password": DORA["password"], "new_password": "password1"},
        )  # fmt: skip
        assert a.status == 400 and a.problem["field"] == "new_password"
        a = await c.call(
            "POST", "/api/v1/profile/password", session=laptop,
            body={"current_password": DORA["password"], "new_password": new},
        )  # fmt: skip
        assert a.status == 204, a.body
        assert (await c.call("GET", "/api/v1/profile", session=laptop)).status == 200
        assert (await c.call("GET", "/api/v1/profile", session=phone)).status == 401
        assert (await login(DORA)).status == 401
        assert (await login(DORA, new)).body["user_id"] == dora_id
