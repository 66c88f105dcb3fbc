"""Groups, invitations and password resets over HTTP: the real gateway and the real identity
service, on one Postgres and one NATS, in this process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest

from services.gateway.api import SESSION_COOKIE
from services.identity import groups as groups_module
from services.identity.groups import INVITATION_REFUSED, RESET_REFUSED
from tests.gateway.apikit import Answer, Client, running_gateway
from tests.identity.kit import ADMIN, Identity, running_identity

pytestmark = pytest.mark.asyncio(loop_scope="function")

API = "/api/v1"
ALICE = {"username": "alice", "email": "alice@example.test", "password": "a long enough phrase"}
CAROL = {"username": "carol", "email": "carol@example.test", "password": "carol's own phrase"}
NO_GROUP = "00000000-0000-4000-8000-000000000000"


@dataclass
class Platform:
    identity: Identity
    client: Client
    admin: str  # the administrator's session
    alice: str  # a user's session
    alice_id: str

    async def call(self, method: str, path: str, **kw: Any) -> Answer:
        return await self.client.call(method, API + path, **kw)


async def sign_in(client: Client, username: str, password: str) -> str:
    a = await client.call(
        "POST", f"{API}/session", body={"username": username, "password": password}
    )
    assert a.status == 200, a.body
    return SimpleCookie(a.headers["Set-Cookie"])[SESSION_COOKIE].value


@asynccontextmanager
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
        assert (
            await client.call("POST", f"{API}/setup", body=ident.setup_body(ADMIN))
        ).status == 201
        admin = await sign_in(client, ADMIN["username"], ADMIN["password"])
        a = await client.call("POST", f"{API}/users", session=admin, body=dict(ALICE))
        assert a.status == 201, a.body
        alice = await sign_in(client, ALICE["username"], ALICE["password"])
        yield Platform(ident, client, admin, alice, a.body["user_id"])


@pytest.fixture
async def hp(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> AsyncIterator[Platform]:
    async with platform(monkeypatch, dsn, nats_url, uniq, tmp_path) as p:
        yield p


def until(iso: str) -> timedelta:
    return datetime.fromisoformat(iso) - datetime.now(UTC)


def bad(a: Answer, field: str, status: int = 400) -> None:
    assert a.status == status, (a.status, a.body)
    assert a.problem["field"] == field, a.body


# -- groups ---------------------------------------------------------------------------------------


async def test_groups_and_members(hp: Platform) -> None:
    admin = hp.admin
    a = await hp.call("POST", "/groups", session=admin, body={"name": "staff"})
    assert a.status == 201 and a.body["name"] == "staff" and a.body["members"] == []
    staff = a.body["group_id"]
    ops = (await hp.call("POST", "/groups", session=admin, body={"name": "ops"})).body["group_id"]
    for gid in (staff, ops):
        a = await hp.call("PUT", f"/groups/{gid}/members/{hp.alice_id}", session=admin)
        assert a.status == 204 and a.body == b""
    a = await hp.call("PUT", f"/groups/{staff}/members/{hp.alice_id}", session=admin)
    assert a.status == 204  # already a member: nothing changes
    a = await hp.call("GET", "/groups", session=admin)
    assert a.status == 200
    assert a.body == {
        "items": [
            {"group_id": ops, "name": "ops", "members": [hp.alice_id]},
            {"group_id": staff, "name": "staff", "members": [hp.alice_id]},
        ]
    }
    a = await hp.call("PATCH", f"/groups/{staff.upper()}", session=admin, body={"name": "people"})
    assert a.status == 200
    assert a.body == {"group_id": staff, "name": "people", "members": [hp.alice_id]}
    a = await hp.call("POST", "/groups", session=admin, body={"name": "people"})
    assert a.status == 409 and a.problem["field"] == "name"
    a = await hp.call("DELETE", f"/groups/{staff}/members/{hp.alice_id}", session=admin)
    assert a.status == 204
    a = await hp.call("DELETE", f"/groups/{staff}/members/{hp.alice_id}", session=admin)
    bad(a, "user_id", 404)
    a = await hp.call("GET", f"/groups/{staff}", session=admin)
    assert a.body == {"group_id": staff, "name": "people", "members": []}
    assert (await hp.call("DELETE", f"/groups/{ops}", session=admin)).status == 204
    bad(await hp.call("GET", f"/groups/{ops}", session=admin), "group_id", 404)
    bad(await hp.call("DELETE", f"/groups/{ops}", session=admin), "group_id", 404)


async def test_bad_group_input_names_the_field_and_changes_nothing(hp: Platform) -> None:
    admin = hp.admin
    staff = (await hp.call("POST", "/groups", session=admin, body={"name": "staff"})).body
    gid = staff["group_id"]
    before = (await hp.call("GET", "/groups", session=admin)).body
    for body, field in (
        ({"name": "Staff"}, "name"),
        ({"name": "x"}, "name"),
        ({"name": "a;b"}, "name"),
        ({"name": "a" * 33}, "name"),
        ({"name": 1}, "name"),
        ({}, "name"),
        ({"name": "fine", "owner": "me"}, "owner"),
    ):
        bad(await hp.call("POST", "/groups", session=admin, body=body), field)
        bad(await hp.call("PATCH", f"/groups/{gid}", session=admin, body=body), field)
    bad(await hp.call("GET", "/groups/not-a-uuid", session=admin), "group_id")
    bad(await hp.call("PUT", f"/groups/{gid}/members/alice", session=admin), "user_id")
    bad(await hp.call("PUT", f"/groups/{NO_GROUP}/members/{hp.alice_id}", session=admin),
        "group_id", 404)  # fmt: skip
    bad(await hp.call("PUT", f"/groups/{gid}/members/{NO_GROUP}", session=admin), "user_id", 404)
    assert (await hp.call("GET", "/groups", session=admin)).body == before


async def test_users_may_not_manage_groups_invitations_or_resets(hp: Platform) -> None:
    gid = (await hp.call("POST", "/groups", session=hp.admin, body={"name": "staff"})).body[
        "group_id"
    ]
    member = f"/groups/{gid}/members/{hp.alice_id}"
    calls: list[tuple[str, str, Any]] = [
        ("GET", "/groups", None),
        ("POST", "/groups", {"name": "mine"}),
        ("GET", f"/groups/{gid}", None),
        ("PATCH", f"/groups/{gid}", {"name": "mine"}),
        ("DELETE", f"/groups/{gid}", None),
        ("PUT", member, None),
        ("DELETE", member, None),
        ("GET", "/invitations", None),
        ("POST", "/invitations", {"email": "x@example.test"}),
        ("DELETE", f"/invitations/{NO_GROUP}", None),
        ("POST", f"/users/{hp.alice_id}/password-reset", None),
    ]
    for method, path, body in calls:
        a = await hp.call(method, path, session=hp.alice, body=body)
        assert a.status == 403 and a.problem["code"] == "forbidden", (method, path)
        a = await hp.call(method, path, body=body)
        assert a.status == 401, (method, path)
    a = await hp.call("GET", "/groups", session=hp.admin)
    assert a.body == {"items": [{"group_id": gid, "name": "staff", "members": []}]}
    assert (await hp.call("GET", "/invitations", session=hp.admin)).body == {"items": []}


async def test_deleting_a_user_removes_their_memberships(hp: Platform) -> None:
    gids = [
        (await hp.call("POST", "/groups", session=hp.admin, body={"name": n})).body["group_id"]
        for n in ("one", "two")
    ]
    for gid in gids:
        a = await hp.call("PUT", f"/groups/{gid}/members/{hp.alice_id}", session=hp.admin)
        assert a.status == 204
    assert (await hp.call("DELETE", f"/users/{hp.alice_id}", session=hp.admin)).status == 204
    a = await hp.call("GET", "/groups", session=hp.admin)
    assert [g["members"] for g in a.body["items"]] == [[], []]


# -- invitations ----------------------------------------------------------------------------------


async def test_invitation_is_for_its_recipient_and_used_once(hp: Platform) -> None:
    staff = (await hp.call("POST", "/groups", session=hp.admin, body={"name": "staff"})).body
    a = await hp.call(
        "POST",
        "/invitations",
        session=hp.admin,
        body={"email": CAROL["email"], "groups": [staff["group_id"]]},
    )
    assert a.status == 201, a.body
    inv = a.body
    assert set(inv) == {"invitation_id", "token", "expires_at", "emailed", "email_error"}
    # no notify service answers in this test: not emailed, and why; the link still works
    assert len(inv["token"]) == 43 and inv["emailed"] is False and inv["email_error"]
    assert timedelta(days=6, hours=23) < until(inv["expires_at"]) <= timedelta(days=7)
    listed = await hp.call("GET", "/invitations", session=hp.admin)
    assert [i["invitation_id"] for i in listed.body["items"]] == [inv["invitation_id"]]
    assert listed.body["items"][0]["email"] == CAROL["email"]
    assert inv["token"] not in str(listed.body)

    accept = {"token": inv["token"], **CAROL}
    wrong = await hp.call("POST", "/invitations/accept", body={**accept, "email": "m@example.test"})
    bad(wrong, "token")
    assert wrong.problem["detail"] == INVITATION_REFUSED
    # bad input on the right link: the field is named, the link stays usable
    bad(await hp.call("POST", "/invitations/accept", body={**accept, "password": "short"}),
        "password")  # fmt: skip
    bad(await hp.call("POST", "/invitations/accept", body={**accept, "username": "1x"}),
        "username")  # fmt: skip
    bad(await hp.call("POST", "/invitations/accept", body={**accept, "is_admin": True}),
        "is_admin")  # fmt: skip
    a = await hp.call("POST", "/invitations/accept", body=accept)
    assert a.status == 201, a.body
    carol = a.body["user_id"]
    again = await hp.call("POST", "/invitations/accept", body={**accept, "username": "carol2"})
    bad(again, "token")
    assert {k: again.problem[k] for k in ("status", "code", "detail", "field")} == {
        k: wrong.problem[k] for k in ("status", "code", "detail", "field")
    }
    session = await sign_in(hp.client, "carol", CAROL["password"])
    me = await hp.call("GET", "/profile", session=session)
    assert me.body["user_id"] == carol and me.body["is_admin"] is False
    a = await hp.call("GET", f"/groups/{staff['group_id']}", session=hp.admin)
    assert a.body["members"] == [carol]
    assert (await hp.call("GET", "/invitations", session=hp.admin)).body == {"items": []}


async def test_bad_invitations_are_refused_and_change_nothing(hp: Platform) -> None:
    for body, field, status in (
        ({"email": "not an email"}, "email", 400),
        ({}, "email", 400),
        ({"email": "c@example.test", "is_admin": "yes"}, "is_admin", 400),
        ({"email": "c@example.test", "groups": ["nope"]}, "groups.0", 400),
        ({"email": "c@example.test", "groups": [NO_GROUP]}, "groups.0", 404),
        ({"email": ALICE["email"]}, "email", 409),
    ):
        bad(await hp.call("POST", "/invitations", session=hp.admin, body=body), field, status)
    bad(await hp.call("DELETE", f"/invitations/{NO_GROUP}", session=hp.admin),
        "invitation_id", 404)  # fmt: skip
    bad(await hp.call("POST", "/invitations/accept", body={"token": "x"}), "email")
    assert (await hp.call("GET", "/invitations", session=hp.admin)).body == {"items": []}


async def test_revoked_and_expired_invitations_are_refused(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> None:
    monkeypatch.setattr(groups_module, "INVITATION_TTL", timedelta(seconds=1))
    async with platform(monkeypatch, dsn, nats_url, uniq, tmp_path) as hp:
        invite = {"email": CAROL["email"]}
        expired = (await hp.call("POST", "/invitations", session=hp.admin, body=invite)).body
        revoked = (await hp.call("POST", "/invitations", session=hp.admin, body=invite)).body
        a = await hp.call("DELETE", f"/invitations/{revoked['invitation_id']}", session=hp.admin)
        assert a.status == 204
        await asyncio.sleep(1.2)
        for inv in (expired, revoked):
            a = await hp.call("POST", "/invitations/accept", body={"token": inv["token"], **CAROL})
            bad(a, "token")
            assert a.problem["detail"] == INVITATION_REFUSED
        users = (await hp.call("GET", "/users", session=hp.admin)).body["items"]
        assert [u["username"] for u in users] == ["root", "alice"]


# -- password reset -------------------------------------------------------------------------------


async def test_password_reset_link(hp: Platform) -> None:
    a = await hp.call("POST", f"/users/{hp.alice_id}/password-reset", session=hp.admin)
    assert a.status == 201 and set(a.body) == {"token", "expires_at"}
    assert timedelta(minutes=59) < until(a.body["expires_at"]) <= timedelta(hours=1)
    token = a.body["token"]
    # asking answers the same for any email (the link goes nowhere until there is mail)
    known = await hp.call("POST", "/password-reset", body={"email": ALICE["email"]})
    unknown = await hp.call("POST", "/password-reset", body={"email": "who@example.test"})
    assert (known.status, known.body) == (unknown.status, unknown.body) == (202, b"")
    bad(await hp.call("POST", "/password-reset", body={"email": "nope"}), "email")
    complete = "/password-reset/complete"
    for body, field in (
        ({"token": token, "new_password": "short"}, "new_password"),
        ({"token": token, "new_password": "password123"}, "new_password"),
        ({"token": token}, "new_password"),
        ({"new_password": "a fine new phrase"}, "token"),
        ({"token": token, "new_password": "a fine new phrase", "x": 1}, "x"),
    ):
        bad(await hp.call("POST", complete, body=body), field)
    assert (await hp.call("GET", "/profile", session=hp.alice)).status == 200
    new = "a fine new phrase"
    a = await hp.call("POST", complete, body={"token": token, "new_password": new})
    assert a.status == 204, a.body
    assert (await hp.call("GET", "/profile", session=hp.alice)).status == 401  # sessions ended
    again = await hp.call("POST", complete, body={"token": token, "new_password": "another one!"})
    bad(again, "token")
    assert again.problem["detail"] == RESET_REFUSED
    await sign_in(hp.client, "alice", new)
    a = await hp.call("POST", "/session", body={"username": "alice", "password": "another one!"})
    assert a.status == 401


async def test_password_reset_link_expires(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> None:
    monkeypatch.setattr(groups_module, "RESET_TTL", timedelta(seconds=1))
    async with platform(monkeypatch, dsn, nats_url, uniq, tmp_path) as hp:
        a = await hp.call("POST", f"/users/{hp.alice_id}/password-reset", session=hp.admin)
        assert until(a.body["expires_at"]) <= timedelta(seconds=1)
        await asyncio.sleep(1.2)
        new = {"token": a.body["token"], "new_password": "a fine new phrase"}
        a = await hp.call("POST", "/password-reset/complete", body=new)
        bad(a, "token")
        assert a.problem["detail"] == RESET_REFUSED
        assert (await hp.call("GET", "/profile", session=hp.alice)).status == 200
