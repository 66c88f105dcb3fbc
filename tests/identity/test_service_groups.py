"""Groups, invitations and password-reset links over the real bus, Postgres and keyring."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from libs.events.bus import BusError, Conflict, Forbidden, Invalid, NotFound, Unauthorized
from libs.events.projection import replay_by_name
from libs.events.sealing import KeyDestroyed, Keyring
from services.identity import groups as groups_module
from services.identity.groups import INVITATION_REFUSED, RESET_REFUSED
from tests.identity.kit import Identity, running_identity

pytestmark = pytest.mark.asyncio(loop_scope="function")

ALICE = {"username": "alice", "email": "alice@example.test", "password": "a long enough phrase"}
BOB = {"username": "bob", "email": "bob@example.test", "password": "bob's long password"}
CAROL = {"username": "carol", "email": "Carol@Example.test", "password": "carol's own phrase"}
_NOBODY = "00000000-0000-4000-8000-000000000000"  # no group has this id


@pytest.fixture
async def ident(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path
) -> AsyncIterator[Identity]:
    async with running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path) as i:
        yield i


async def people(ident: Identity) -> tuple[str, str, str]:
    """(admin, alice, bob): an administrator and two users."""
    admin = await ident.set_up()
    alice = (await ident.cmd("create_user", dict(ALICE), actor=admin))["user_id"]
    bob = (await ident.cmd("create_user", dict(BOB), actor=admin))["user_id"]
    return admin, str(alice), str(bob)


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def dump(dsn: str) -> str:
    """Every event and every identity row, as text."""
    rows = await fetch(dsn, "SELECT type, data, meta FROM events.events")
    text = json.dumps([dict(r) for r in rows], default=str)
    for table in ("users", "groups", "group_members", "invitations", "password_resets"):
        text += str([dict(r) for r in await fetch(dsn, f"SELECT * FROM identity.{table}")])
    return text


def refusal(e: pytest.ExceptionInfo[BusError]) -> tuple[str, str, str | None]:
    return (e.value.code, str(e.value), e.value.field)


def within(iso: str, delta: timedelta) -> bool:
    left = datetime.fromisoformat(iso) - datetime.now(UTC)
    return delta - timedelta(minutes=1) < left <= delta


# -- groups ---------------------------------------------------------------------------------------


async def test_groups_and_their_members(ident: Identity) -> None:
    admin, alice, bob = await people(ident)
    staff = await ident.cmd("create_group", {"name": "staff"}, actor=admin)
    assert staff["name"] == "staff" and staff["members"] == []
    ops = await ident.cmd("create_group", {"name": "ops-team_2"}, actor=admin)
    sid, oid = staff["group_id"], ops["group_id"]
    for group, user in ((sid, alice), (sid, bob), (oid, alice), (sid, alice)):  # once is enough
        await ident.cmd("add_group_member", {"group_id": group, "user_id": user}, actor=admin)
    listed = await ident.ask("groups", {})
    assert listed == {
        "items": [
            {"group_id": oid, "name": "ops-team_2", "members": [alice]},
            {"group_id": sid, "name": "staff", "members": [alice, bob]},
        ]
    }
    renamed = await ident.cmd("rename_group", {"group_id": sid, "name": "people"}, actor=admin)
    assert renamed == {"group_id": sid, "name": "people", "members": [alice, bob]}
    await ident.cmd("remove_group_member", {"group_id": sid, "user_id": alice}, actor=admin)
    assert (await ident.ask("group", {"group_id": sid}))["members"] == [bob]
    with pytest.raises(NotFound) as nf:
        await ident.cmd("remove_group_member", {"group_id": sid, "user_id": alice}, actor=admin)
    assert nf.value.field == "user_id"
    await ident.cmd("delete_group", {"group_id": oid}, actor=admin)
    with pytest.raises(NotFound) as nf:
        await ident.ask("group", {"group_id": oid})
    assert nf.value.field == "group_id"
    assert [g["name"] for g in (await ident.ask("groups", {}))["items"]] == ["people"]
    # the name of a deleted group is free again
    again = await ident.cmd("create_group", {"name": "ops-team_2"}, actor=admin)
    assert again["group_id"] != oid and again["members"] == []


async def test_group_names_are_unique_and_checked(ident: Identity) -> None:
    admin, alice, _ = await people(ident)
    staff = await ident.cmd("create_group", {"name": "staff"}, actor=admin)
    other = await ident.cmd("create_group", {"name": "other"}, actor=admin)
    with pytest.raises(Conflict) as c:
        await ident.cmd("create_group", {"name": "staff"}, actor=admin)
    assert c.value.field == "name"
    with pytest.raises(Conflict) as c:
        await ident.cmd(
            "rename_group", {"group_id": other["group_id"], "name": "staff"}, actor=admin
        )
    assert c.value.field == "name"
    before = await ident.ask("groups", {})
    for bad, field in (
        ({"name": "Staff"}, "name"),
        ({"name": "a"}, "name"),
        ({"name": "1abc"}, "name"),
        ({"name": "x; rm -rf /"}, "name"),
        ({"name": "a" * 33}, "name"),
        ({"name": 7}, "name"),
        ({}, "name"),
        ({"name": "fine", "colour": "red"}, "colour"),
    ):
        with pytest.raises(Invalid) as e:
            await ident.cmd("create_group", bad, actor=admin)
        assert e.value.field == field, bad
    for bad, field in (
        ({"group_id": "nope", "user_id": alice}, "group_id"),
        ({"group_id": staff["group_id"], "user_id": "nope"}, "user_id"),
    ):
        with pytest.raises(Invalid) as e:
            await ident.cmd("add_group_member", bad, actor=admin)
        assert e.value.field == field
    with pytest.raises(NotFound) as nf:
        await ident.cmd(
            "add_group_member",
            {"group_id": staff["group_id"], "user_id": "00000000-0000-4000-8000-000000000000"},
            actor=admin,
        )
    assert nf.value.field == "user_id"
    assert await ident.ask("groups", {}) == before


async def test_only_admins_change_groups(ident: Identity) -> None:
    admin, alice, _bob = await people(ident)
    staff = (await ident.cmd("create_group", {"name": "staff"}, actor=admin))["group_id"]
    member = {"group_id": staff, "user_id": alice}
    for actor in (alice, "anonymous"):
        for verb, payload in (
            ("create_group", {"name": "mine"}),
            ("rename_group", {"group_id": staff, "name": "mine"}),
            ("delete_group", {"group_id": staff}),
            ("add_group_member", member),
            ("remove_group_member", member),
        ):
            with pytest.raises(Forbidden):
                await ident.cmd(verb, payload, actor=actor)
            if "group_id" in payload:  # forbidden before not_found: a non-admin learns nothing
                with pytest.raises(Forbidden):
                    await ident.cmd(verb, {**payload, "group_id": _NOBODY}, actor=actor)
    assert await ident.ask("groups", {}) == {
        "items": [{"group_id": staff, "name": "staff", "members": []}]
    }


async def test_deleting_a_user_removes_their_memberships(ident: Identity, dsn: str) -> None:
    admin, alice, bob = await people(ident)
    ids = [
        (await ident.cmd("create_group", {"name": name}, actor=admin))["group_id"]
        for name in ("one", "two")
    ]
    for gid in ids:
        for user in (alice, bob):
            await ident.cmd("add_group_member", {"group_id": gid, "user_id": user}, actor=admin)
    reset = await ident.cmd("create_password_reset", {"user_id": alice}, actor=admin)
    await ident.cmd("delete_user", {"user_id": alice}, actor=admin)
    assert [g["members"] for g in (await ident.ask("groups", {}))["items"]] == [[bob], [bob]]
    assert await fetch(dsn, "SELECT 1 FROM identity.group_members WHERE user_id = $1", alice) == []
    with pytest.raises(Invalid) as e:  # the deleted user's reset link went with them
        await ident.cmd("reset_password", {"token": reset["token"], "new_password": "x" * 20})
    assert str(e.value) == RESET_REFUSED
    with pytest.raises(NotFound):
        await ident.cmd("add_group_member", {"group_id": ids[0], "user_id": alice}, actor=admin)


# -- invitations ----------------------------------------------------------------------------------


async def test_invitation_creates_the_user_once_for_the_invited_email(
    ident: Identity, dsn: str
) -> None:
    admin, alice, _ = await people(ident)
    staff = (await ident.cmd("create_group", {"name": "staff"}, actor=admin))["group_id"]
    inv = await ident.cmd(
        "invite", {"email": "carol@example.test", "groups": [staff, staff]}, actor=admin
    )
    assert len(inv["token"]) == 43  # 256 random bits, base64url
    assert within(inv["expires_at"], timedelta(days=7))
    pending = await ident.ask("invitations", {}, actor=admin)
    assert pending["items"] == [
        {
            "invitation_id": inv["invitation_id"],
            "email": "carol@example.test",
            "is_admin": False,
            "groups": [staff],
            "created_at": pending["items"][0]["created_at"],
            "expires_at": inv["expires_at"],
        }
    ]
    assert inv["token"] not in json.dumps(pending)
    with pytest.raises(Forbidden):
        await ident.ask("invitations", {}, actor=alice)

    accept = {"token": inv["token"], **CAROL}
    refusals = []
    # someone else holding the link, with their own email
    with pytest.raises(Invalid) as e:
        await ident.cmd("accept_invitation", {**accept, "email": "mallory@example.test"})
    refusals.append(refusal(e))
    assert len(await fetch(dsn, "SELECT 1 FROM identity.users")) == 3
    # the invited email, written differently, is the invited email
    carol = (await ident.cmd("accept_invitation", accept, actor="anonymous"))["user_id"]
    profile = await ident.ask("profile", {"user_id": carol})
    assert profile["username"] == "carol" and profile["is_admin"] is False
    assert (await ident.login("carol", CAROL["password"]))["user_id"] == carol
    assert (await ident.ask("group", {"group_id": staff}))["members"] == [carol]
    # a second use, even with other names
    with pytest.raises(Invalid) as e:
        await ident.cmd("accept_invitation", {**accept, "username": "carol2"})
    refusals.append(refusal(e))
    assert refusals == [("invalid", INVITATION_REFUSED, "token")] * 2
    assert (await ident.ask("invitations", {}, actor=admin))["items"] == []
    created = await fetch(
        dsn,
        "SELECT data, meta FROM events.events WHERE type = 'UserCreated' AND data->>'user_id' = $1",
        carol,
    )
    assert json.loads(created[0]["data"])["via"] == "invitation"
    # the token only as a hash; the invited email only sealed, and its key destroyed
    text = await dump(dsn)
    assert inv["token"] not in text and "carol@example.test" not in text.lower()
    sealed = await fetch(dsn, "SELECT data FROM events.events WHERE type = 'InvitationCreated'")
    with Keyring.open(ident.keyring_path) as kr, pytest.raises(KeyDestroyed):
        kr.unseal(json.loads(sealed[0]["data"])["email"])


async def test_revoked_unknown_and_expired_invitations_get_one_answer(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path
) -> None:
    monkeypatch.setattr(groups_module, "INVITATION_TTL", timedelta(seconds=1))
    async with running_identity(
        monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path
    ) as ident:
        admin, _, _ = await people(ident)
        expired = await ident.cmd("invite", {"email": "carol@example.test"}, actor=admin)
        assert within(expired["expires_at"], timedelta(seconds=1))
        revoked = await ident.cmd("invite", {"email": "carol@example.test"}, actor=admin)
        await ident.cmd(
            "revoke_invitation", {"invitation_id": revoked["invitation_id"]}, actor=admin
        )
        with pytest.raises(NotFound):  # revoked twice
            await ident.cmd(
                "revoke_invitation", {"invitation_id": revoked["invitation_id"]}, actor=admin
            )
        ident.clock.advance(1.2)  # past the invitation's end, by the service's clock
        refusals = []
        for token in (expired["token"], revoked["token"], "x" * 43):  # the last never issued
            with pytest.raises(Invalid) as e:
                await ident.cmd("accept_invitation", {"token": token, **CAROL})
            refusals.append(refusal(e))
        assert refusals == [("invalid", INVITATION_REFUSED, "token")] * 3
        assert (await ident.ask("invitations", {}, actor=admin))["items"] == []
        # the next invitation prunes the expired one; both emails' keys are destroyed
        await ident.cmd("invite", {"email": "dave@example.test"}, actor=admin)
        left = await fetch(dsn, "SELECT invitation_id::text AS id FROM identity.invitations")
        assert expired["invitation_id"] not in [r["id"] for r in left] and len(left) == 1
        rows = await fetch(
            dsn,
            "SELECT data FROM events.events WHERE type = 'InvitationCreated' ORDER BY position",
        )
        with Keyring.open(ident.keyring_path) as kr:
            for row in rows[:2]:
                with pytest.raises(KeyDestroyed):
                    kr.unseal(json.loads(row["data"])["email"])
            assert kr.unseal_str(json.loads(rows[2]["data"])["email"]) == "dave@example.test"
        assert len(await fetch(dsn, "SELECT 1 FROM identity.users")) == 3


async def test_bad_invitations_are_refused_and_change_nothing(ident: Identity, dsn: str) -> None:
    admin, alice, _ = await people(ident)
    staff = (await ident.cmd("create_group", {"name": "staff"}, actor=admin))["group_id"]
    before = await fetch(dsn, "SELECT count(*) AS n FROM events.events")
    for payload, error, field in (
        ({"email": "not-an-email"}, Invalid, "email"),
        ({}, Invalid, "email"),
        ({"email": "c@example.test", "is_admin": "yes"}, Invalid, "is_admin"),
        ({"email": "c@example.test", "groups": staff}, Invalid, "groups"),
        ({"email": "c@example.test", "groups": [staff, "nope"]}, Invalid, "groups.1"),
        (
            {"email": "c@example.test", "groups": ["00000000-0000-4000-8000-000000000000"]},
            NotFound,
            "groups.0",
        ),
        ({"email": "ALICE@example.test"}, Conflict, "email"),  # already has an account
        ({"email": "c@example.test", "token": "mine"}, Invalid, "token"),
    ):
        with pytest.raises(error) as e:
            await ident.cmd("invite", payload, actor=admin)
        assert e.value.field == field, payload
    for actor in (alice, "anonymous"):
        with pytest.raises(Forbidden):
            await ident.cmd("invite", {"email": "c@example.test"}, actor=actor)
    inv = await ident.cmd("invite", {"email": "c@example.test"}, actor=admin)
    for actor in (alice, "anonymous"):
        with pytest.raises(Forbidden):
            await ident.cmd(
                "revoke_invitation", {"invitation_id": inv["invitation_id"]}, actor=actor
            )
    after = await fetch(dsn, "SELECT count(*) AS n FROM events.events")
    assert after[0]["n"] == before[0]["n"] + 1  # the one good invitation
    # a bad account on a good link names its field and leaves the link usable
    good = {"token": inv["token"], **CAROL, "email": "c@example.test"}
    for change, field in (
        ({"password": "short"}, "password"),
        ({"password": "password123"}, "password"),
        ({"username": "1abc"}, "username"),
        ({"display_name": "bad\x00name"}, "display_name"),
        ({"is_admin": True}, "is_admin"),
    ):
        with pytest.raises(Invalid) as e:
            await ident.cmd("accept_invitation", {**good, **change})
        assert e.value.field == field, change
    with pytest.raises(Conflict) as c:
        await ident.cmd("accept_invitation", {**good, "username": "ALICE"})
    assert c.value.field == "username"
    assert len(await fetch(dsn, "SELECT 1 FROM identity.users")) == 3
    carol = (await ident.cmd("accept_invitation", good))["user_id"]
    assert (await ident.ask("profile", {"user_id": carol}))["email"] == "c@example.test"


async def test_an_admin_invitation_and_concurrent_accepts(ident: Identity) -> None:
    admin, _, _ = await people(ident)
    inv = await ident.cmd("invite", {"email": "carol@example.test", "is_admin": True}, actor=admin)
    tries = [
        ident.cmd(
            "accept_invitation",
            {"token": inv["token"], **CAROL, "username": f"carol{i}"},
        )
        for i in range(4)
    ]
    results = await asyncio.gather(*tries, return_exceptions=True)
    made = [r for r in results if isinstance(r, dict)]
    assert len(made) == 1, results
    assert all(isinstance(r, Invalid | Conflict) for r in results if not isinstance(r, dict))
    assert (await ident.ask("profile", {"user_id": made[0]["user_id"]}))["is_admin"] is True
    users = (await ident.ask("users", {}))["items"]
    assert sum(u["username"].startswith("carol") for u in users) == 1


# -- password reset -------------------------------------------------------------------------------


async def test_reset_link_is_single_use_and_ends_every_session(ident: Identity, dsn: str) -> None:
    admin, alice, _bob = await people(ident)
    sessions = [(await ident.login("alice", ALICE["password"]))["session"] for _ in range(2)]
    link = await ident.cmd("create_password_reset", {"user_id": alice}, actor=admin)
    assert len(link["token"]) == 43 and within(link["expires_at"], timedelta(hours=1))
    other = await ident.cmd("create_password_reset", {"user_id": alice}, actor=admin)
    # a bad new password names the field and leaves the link usable
    for bad in ("short", "password123", "alice@example.test", 12345678):
        with pytest.raises(Invalid) as e:
            await ident.cmd("reset_password", {"token": link["token"], "new_password": bad})
        assert e.value.field == "new_password", bad
    with pytest.raises(Invalid) as e:
        await ident.cmd("reset_password", {"token": link["token"]})
    assert e.value.field == "new_password"
    assert (await ident.ask("whoami", {"session": sessions[0]}))["user_id"] == alice
    new = "a brand new phrase"
    assert await ident.cmd("reset_password", {"token": link["token"], "new_password": new}) == {}
    for s in sessions:
        with pytest.raises(Unauthorized):
            await ident.ask("whoami", {"session": s})
    with pytest.raises(Unauthorized):
        await ident.login("alice", ALICE["password"])
    assert (await ident.login("alice", new))["user_id"] == alice
    refusals = []
    for token in (link["token"], other["token"], "x" * 43):  # used; voided by the use; unknown
        with pytest.raises(Invalid) as e:
            await ident.cmd("reset_password", {"token": token, "new_password": "yet another one"})
        refusals.append(refusal(e))
    assert refusals == [("invalid", RESET_REFUSED, "token")] * 3
    assert (await ident.login("alice", new))["user_id"] == alice
    text = await dump(dsn)
    assert link["token"] not in text and new not in text


async def test_only_admins_create_reset_links(ident: Identity) -> None:
    admin, alice, bob = await people(ident)
    for actor in (alice, "anonymous"):
        with pytest.raises(Forbidden):
            await ident.cmd("create_password_reset", {"user_id": bob}, actor=actor)
    with pytest.raises(NotFound):
        await ident.cmd(
            "create_password_reset",
            {"user_id": "00000000-0000-4000-8000-000000000000"},
            actor=admin,
        )
    with pytest.raises(Invalid) as e:
        await ident.cmd("create_password_reset", {"user_id": "bob"}, actor=admin)
    assert e.value.field == "user_id"


async def test_asking_for_a_reset_answers_the_same_for_any_email(ident: Identity, dsn: str) -> None:
    _admin, alice, _ = await people(ident)
    for email in ("ALICE@example.test", "nobody@example.test"):
        reply = await ident.cmd("request_password_reset", {"email": email}, actor="anonymous")
        assert reply == {}
    rows = await fetch(
        dsn,
        "SELECT data FROM events.events WHERE type = 'PasswordResetRequested' ORDER BY position",
    )
    data = [json.loads(r["data"]) for r in rows]
    # only the account's email appends an event (test_credentials_end.py: the limits)
    assert [(d["user_id"], d["by_admin"]) for d in data] == [(alice, False)]
    assert "nobody" not in str(await dump(dsn))
    with pytest.raises(Invalid) as e:
        await ident.cmd("request_password_reset", {"email": "nope"}, actor="anonymous")
    assert e.value.field == "email"


async def test_reset_links_expire(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path
) -> None:
    monkeypatch.setattr(groups_module, "RESET_TTL", timedelta(seconds=1))
    async with running_identity(
        monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path
    ) as ident:
        admin, alice, _ = await people(ident)
        link = await ident.cmd("create_password_reset", {"user_id": alice}, actor=admin)
        ident.clock.advance(1.2)  # past the link's end, by the service's clock
        with pytest.raises(Invalid) as e:
            await ident.cmd(
                "reset_password", {"token": link["token"], "new_password": "a brand new phrase"}
            )
        assert refusal(e) == ("invalid", RESET_REFUSED, "token")
        assert (await ident.login("alice", ALICE["password"]))["user_id"] == alice


# -- rebuild --------------------------------------------------------------------------------------


async def test_replay_rebuilds_groups_and_invitations(ident: Identity, dsn: str) -> None:
    admin, alice, bob = await people(ident)
    staff = (await ident.cmd("create_group", {"name": "staff"}, actor=admin))["group_id"]
    ops = (await ident.cmd("create_group", {"name": "ops"}, actor=admin))["group_id"]
    await ident.cmd("rename_group", {"group_id": ops, "name": "ops2"}, actor=admin)
    await ident.cmd("create_group", {"name": "ops"}, actor=admin)
    for user in (alice, bob):
        await ident.cmd("add_group_member", {"group_id": staff, "user_id": user}, actor=admin)
    await ident.cmd("delete_user", {"user_id": bob}, actor=admin)
    await ident.cmd("invite", {"email": "carol@example.test", "groups": [staff]}, actor=admin)
    link = await ident.cmd("create_password_reset", {"user_id": alice}, actor=admin)
    groups_before = await ident.ask("groups", {})
    invitations_before = await ident.ask("invitations", {}, actor=admin)
    assert await replay_by_name("identity", dsn) > 10
    assert await ident.ask("groups", {}) == groups_before
    assert await ident.ask("invitations", {}, actor=admin) == invitations_before
    new = "a brand new phrase"
    await ident.cmd("reset_password", {"token": link["token"], "new_password": new})
    assert (await ident.login("alice", new))["user_id"] == alice
