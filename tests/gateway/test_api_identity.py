"""Accounts through HTTP: setup, sign-in and sign-out with the session cookie, profiles, users.

The real identity service answers (the `identity` and `cast` fixtures of apikit.py). What a test
checks is what a user can see: the HTTP answers, the events on record in the store and
identity's own queries. Only a test that needs identity to break its contract serves a
responder of its own, labelled as fault injection.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from libs.events.bus import Bus, Unauthorized
from services.gateway.api import SESSION_COOKIE, Access, default_table
from services.gateway.api.handlers import identity as handlers
from services.gateway.api.openapi import openapi_document
from tests.gateway.apichecks import check_structure
from tests.gateway.apikit import ROOT, Answer, Cast, Client, events_in, root_token, serve_api
from tests.identity.kit import Identity

SESSION_HOURS = 12  # identity's HP_SESSION_MAX_SECONDS, by default
MAX_FAILURES = 3  # failed sign-ins from one address before it is refused (HP_SIGNIN_IP_LIMIT)
ADMIN = {"username": "admin", "email": "admin@example.com", "password": "correct horse battery"}
BOB = {"username": "bob", "email": "bob@example.com", "password": "bob's long password"}
EVIL = "https://evil.example"


@pytest.fixture
async def client(nc: NATS, identity: Identity) -> AsyncIterator[Client]:
    """The API in front of the real identity service (before setup, unless a cast is made)."""
    async with serve_api(nc) as c:
        yield c


async def signed_in(identity: Identity, session: str) -> str | None:
    """Whose session this is by identity's own account, or None once it has ended."""
    try:
        who = await identity.ask("whoami", {"session": session})
    except Unauthorized:
        return None
    return str(who["user_id"])


async def state(identity: Identity, dsn: str) -> tuple[Any, ...]:
    """What a change would show: every event on record, the users, whether setup is done."""
    return (
        await events_in(dsn),
        await identity.ask("users", {}),
        await identity.ask("setup_state", {}),
    )


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def set_cookies(a: Answer) -> list[str]:
    return a.headers.getall("Set-Cookie", [])


def attributes(raw: str) -> tuple[str, dict[str, str]]:
    """The `name=value` of a Set-Cookie line and its attributes (names lower-cased)."""
    first, *rest = (part.strip() for part in raw.split(";"))
    attrs: dict[str, str] = {}
    for part in rest:
        name, _, value = part.partition("=")
        assert name.lower() not in attrs, f"attribute {name} given twice in {raw}"
        attrs[name.lower()] = value
    return first, attrs


def check_session_cookie(raw: str, value: str, max_age: tuple[int, int]) -> None:
    first, attrs = attributes(raw)
    assert first == f"{SESSION_COOKIE}={value}"
    # exactly these attributes: no Domain (a __Host- cookie may not have one), no Expires
    assert set(attrs) == {"path", "secure", "httponly", "samesite", "max-age"}, raw
    assert attrs["path"] == "/" and attrs["secure"] == "" and attrs["httponly"] == ""
    assert attrs["samesite"] == "Lax"
    assert max_age[0] <= int(attrs["max-age"]) <= max_age[1], raw
    # and the standard parser reads it the same way
    parsed = SimpleCookie()
    parsed.load(raw)
    morsel = parsed[SESSION_COOKIE]
    assert morsel.value == value and morsel["path"] == "/" and morsel["samesite"] == "Lax"
    assert morsel["secure"] is True and morsel["httponly"] is True
    assert morsel["domain"] == "" and morsel["expires"] == ""


async def login(client: Client, username: str, password: str, **kw: Any) -> Answer:
    body = {"username": username, "password": password}
    return await client.call("POST", "/api/v1/session", body=body, **kw)


def cookie_of(a: Answer) -> str:
    (raw,) = set_cookies(a)
    morsel = SimpleCookie(raw)[SESSION_COOKIE]
    return morsel.value


# -- the whole path -------------------------------------------------------------------------


async def test_setup_login_profile_logout(client: Client, identity: Identity, dsn: str) -> None:
    a = await client.call("GET", "/api/v1/status")
    assert a.body["setup_done"] is False
    a = await client.call(
        "POST", "/api/v1/setup", body=identity.setup_body({**ADMIN, "display_name": "The Admin"})
    )
    assert a.status == 201, a.body
    admin_id = a.body["user_id"]
    assert a.body == {"user_id": admin_id} and uuid.UUID(admin_id)
    assert set_cookies(a) == []  # setup does not sign in
    a = await client.call("GET", "/api/v1/status")
    assert a.body["setup_done"] is True

    a = await login(client, "admin", ADMIN["password"])
    assert a.status == 200, a.body
    session = cookie_of(a)
    assert await signed_in(identity, session) == admin_id
    assert set(a.body) == {"user_id", "username", "is_admin", "expires_at"}
    assert a.body["user_id"] == admin_id and a.body["username"] == "admin"
    assert a.body["is_admin"] is True
    assert session not in str(a.body)
    lifetime = SESSION_HOURS * 3600
    (raw,) = set_cookies(a)
    check_session_cookie(raw, session, (lifetime - 5, lifetime))
    expires = datetime.fromisoformat(a.body["expires_at"])
    assert abs(expires - datetime.now(UTC) - timedelta(hours=SESSION_HOURS)) < timedelta(seconds=5)
    # the sign-in is on record: the admin's own act, from this address, under the request's id
    (started,) = of_type(await events_in(dsn), "SessionStarted")
    assert started["meta"]["actor"] == admin_id
    assert identity.address(started["meta"]["ip"]) == "127.0.0.1"  # sealed to its week
    assert started["meta"]["correlation_id"] == a.headers["X-Correlation-Id"]

    a = await client.call("GET", "/api/v1/profile", session=session)
    assert a.status == 200, a.body
    assert a.body == {
        "user_id": admin_id,
        "username": "admin",
        "email": "admin@example.com",
        "display_name": "The Admin",
        "is_admin": True,
        "disabled": False,
    }

    a = await client.call("DELETE", "/api/v1/session", session=session)
    assert a.status == 204 and a.body == b""
    (raw,) = set_cookies(a)
    check_session_cookie(raw, "", (0, 0))
    (ended,) = of_type(await events_in(dsn), "SessionEnded")
    assert ended["data"]["reason"] == "logout" and ended["meta"]["actor"] == admin_id
    assert ended["meta"]["correlation_id"] == a.headers["X-Correlation-Id"]
    assert await signed_in(identity, session) is None

    for method, path in (("GET", "/api/v1/profile"), ("DELETE", "/api/v1/session")):
        a = await client.call(method, path, session=session)
        assert a.status == 401 and a.problem["code"] == "unauthorized", (method, path)
    # a new sign-in is a new session
    a = await login(client, "admin", ADMIN["password"])
    assert a.status == 200 and cookie_of(a) != session


async def test_setup_only_once(client: Client, identity: Identity) -> None:
    a = await client.call("POST", "/api/v1/setup", body=identity.setup_body(ADMIN))
    assert a.status == 201
    again = {**ADMIN, "username": "other", "email": "other@example.com"}
    a = await client.call("POST", "/api/v1/setup", body=identity.setup_body(again))
    assert a.status == 409 and a.problem["code"] == "conflict"
    assert a.problem["status"] == 409 and "already done" in a.problem["detail"]
    users = await identity.ask("users", {})
    assert [u["username"] for u in users["items"]] == ["admin"]


async def test_identity_refusing_input_names_the_field(client: Client, identity: Identity) -> None:
    # within the route's schema, below identity's own policy
    body = identity.setup_body({**ADMIN, "password": "short"})
    a = await client.call("POST", "/api/v1/setup", body=body)
    assert a.status == 400 and a.problem["field"] == "password"


@pytest.mark.parametrize(
    ("path", "body", "bad"),
    [
        ("/setup", {"username": "admin", "email": "a@example.com"}, "password"),
        ("/setup", {**ADMIN, "username": "ad min"}, "username"),
        ("/setup", {**ADMIN, "is_admin": True}, "is_admin"),
        ("/setup", {**ADMIN, "email": "x@" + "e" * 260}, "email"),
        ("/setup", {**ADMIN, "display_name": "d" * 101}, "display_name"),
        ("/setup", {**ADMIN, "password": "p" * 257}, "password"),
        ("/setup", {**ADMIN, "username": 7}, "username"),
        ("/session", {"username": "admin"}, "password"),
        ("/session", {"username": "ad min", "password": "x" * 10}, "username"),
        ("/session", {"username": "admin", "password": "x" * 10, "remember": True}, "remember"),
        ("/session", {"username": "admin", "password": ""}, "password"),
        ("/users", {"username": "bob", "email": "bob@example.com"}, "password"),
        ("/users", {**BOB, "username": "bob smith"}, "username"),
        ("/users", {**BOB, "role": "admin"}, "role"),
        ("/users", {**BOB, "is_admin": "yes"}, "is_admin"),
    ],
)
async def test_bad_bodies_change_nothing(
    client: Client, identity: Identity, dsn: str, path: str, body: dict[str, Any], bad: str
) -> None:
    # /setup and /session before setup; /users as the administrator, by token
    token = await root_token(identity) if path == "/users" else None
    if path == "/setup":  # with the setup token: what is refused is the field named
        body = identity.setup_body(body)
    before = await state(identity, dsn)
    a = await client.call("POST", "/api/v1" + path, body=body, token=token)
    assert a.status == 400, a.body
    assert a.problem["code"] == "invalid" and a.problem["field"] == bad
    assert bad in a.problem["detail"]
    # nothing half-changed: no event, the same users, setup as it was
    assert await state(identity, dsn) == before
    assert set_cookies(a) == []


# -- signing in -----------------------------------------------------------------------------


async def test_login_refusals_do_not_say_which_part(
    client: Client, identity: Identity, dsn: str
) -> None:
    a = await client.call("POST", "/api/v1/setup", body=identity.setup_body(ADMIN))
    assert a.status == 201
    admin_id = a.body["user_id"]
    unknown = await login(client, "nobody", ADMIN["password"])
    wrong = await login(client, "admin", "not the password")
    bodies = []
    for a in (unknown, wrong):
        assert a.status == 401 and a.problem["code"] == "unauthorized"
        assert set_cookies(a) == []
        assert "field" not in a.problem
        bodies.append({k: v for k, v in a.problem.items() if k != "correlation_id"})
    assert bodies[0] == bodies[1]
    assert bodies[0]["detail"] == "wrong username or password"
    assert (await identity.ask("sessions", {"user_id": admin_id}))["items"] == []
    # both failures are on record, with the address they came from
    failed = of_type(await events_in(dsn), "LoginFailed")
    assert [(e["data"]["reason"], identity.address(e["data"]["ip"])) for e in failed] == [
        ("unknown_user", "127.0.0.1"),
        ("password", "127.0.0.1"),
    ]


@pytest.mark.parametrize(
    "identity_env", [{"HP_SIGNIN_IP_LIMIT": str(MAX_FAILURES)}], ids=["HP_SIGNIN_IP_LIMIT"]
)
async def test_an_address_refused_by_identity_is_403(
    client: Client, identity: Identity, identity_env: dict[str, str]
) -> None:
    a = await client.call("POST", "/api/v1/setup", body=identity.setup_body(ADMIN))
    assert a.status == 201
    admin_id = a.body["user_id"]
    for _ in range(MAX_FAILURES):
        assert (await login(client, "admin", "guess guess")).status == 401
    a = await login(client, "admin", ADMIN["password"])  # even the right password
    assert a.status == 403 and a.problem["code"] == "forbidden"
    assert set_cookies(a) == []
    # the limit is per address: identity heard the client's address from the proxy
    browser = {"X-Real-IP": "198.51.100.9", "User-Agent": "Mozilla/5.0 (X11; Linux) Test/1.0"}
    a = await login(client, "admin", ADMIN["password"], headers=browser)
    assert a.status == 200 and cookie_of(a)
    sessions = await identity.ask("sessions", {"user_id": admin_id})
    # the session list shows where and on what each session signed in
    assert [(s["ip"], s["user_agent"]) for s in sessions["items"]] == [
        ("198.51.100.9", "Mozilla/5.0 (X11; Linux) Test/1.0")
    ]


@pytest.mark.parametrize(
    "reply",
    [
        {"expires_at": "tomorrow"},
        {"expires_at": "2001-01-01T00:00:00+00:00"},
        {"expires_at": "2999-01-01T00:00:00+00:00", "session": "a;Domain=evil.example"},
        {"expires_at": "2999-01-01T00:00:00+00:00", "is_admin": "yes"},
    ],
)
async def test_a_login_reply_off_the_contract_sets_no_cookie(
    nc: NATS, reply: dict[str, Any]
) -> None:
    """Fault injection: an identity whose login answers off its contract, which the real
    service cannot be made to do. A responder of this test alone plays it; no identity runs."""
    expires = datetime.now(UTC) + timedelta(hours=SESSION_HOURS)
    faithful = {  # the shape of the real reply (services/identity/accounts.py start_session)
        "session": secrets.token_urlsafe(32),
        "session_id": str(uuid.uuid4()),
        "user_id": str(uuid.uuid4()),
        "username": "admin",
        "is_admin": True,
        "expires_at": expires.isoformat(),
        "idle_timeout_s": 1800,
    }
    answers = [faithful, {**faithful, **reply}]
    liar = Bus(nc, "identity")

    @liar.command("login")
    async def lying_login(payload: dict[str, Any]) -> Any:
        return answers.pop(0)

    await liar.start()
    try:
        async with serve_api(nc) as client:
            good = await login(client, "admin", ADMIN["password"])
            a = await login(client, "admin", ADMIN["password"])
    finally:
        await liar.stop(grace=1)
    assert good.status == 200 and cookie_of(good) == faithful["session"]  # the baseline holds
    assert a.status == 500 and a.problem["code"] == "internal"
    assert set_cookies(a) == [] and "evil" not in str(a.body)


async def test_login_from_another_origin_is_refused(client: Client, cast: Cast, dsn: str) -> None:
    before = await events_in(dsn)
    for headers in ({"Origin": EVIL}, {"Sec-Fetch-Site": "cross-site"}):
        a = await login(client, "root", ROOT["password"], headers=headers)
        assert a.status == 403 and a.problem["code"] == "forbidden", headers
        assert set_cookies(a) == []
        a = await client.call("POST", "/api/v1/setup", body=BOB, headers=headers)
        assert a.status == 403
    a = await client.call("DELETE", "/api/v1/session", session=cast.session_alice,
                          headers={"Origin": EVIL})  # fmt: skip
    assert a.status == 403
    # nothing happened: no event on record, alice is still signed in
    assert await events_in(dsn) == before
    assert await signed_in(cast.identity, cast.session_alice) == cast.alice_id
    # the same request from the dashboard's own origin signs in
    a = await login(client, "root", ROOT["password"], headers={"Origin": client.base})
    assert a.status == 200 and cookie_of(a)


async def test_signing_out_needs_the_session(client: Client, cast: Cast, dsn: str) -> None:
    a = await client.call("DELETE", "/api/v1/session")
    assert a.status == 401
    before = await events_in(dsn)
    a = await client.call("DELETE", "/api/v1/session", token=cast.token_alice)
    assert a.status == 400 and a.problem["code"] == "invalid" and "token" in a.problem["detail"]
    assert await events_in(dsn) == before
    assert await signed_in(cast.identity, cast.session_alice) == cast.alice_id
    a = await client.call("DELETE", "/api/v1/session", session=cast.session_alice)
    assert a.status == 204 and await signed_in(cast.identity, cast.session_alice) is None


# -- users ----------------------------------------------------------------------------------


async def test_admin_manages_users(client: Client, cast: Cast, dsn: str) -> None:
    root = cast.token_root
    a = await client.call("POST", "/api/v1/users", token=root, body=BOB)
    assert a.status == 201, a.body
    bob = a.body["user_id"]
    (created,) = [e for e in of_type(await events_in(dsn), "UserCreated")
                  if e["stream"] == f"user-{bob}"]  # fmt: skip
    assert created["meta"]["actor"] == cast.root_id
    a = await client.call("POST", "/api/v1/users", token=root, body=BOB)
    assert a.status == 409 and a.problem["field"] == "username"

    a = await client.call("GET", "/api/v1/users", token=root)
    assert a.status == 200
    assert [u["username"] for u in a.body["items"]] == ["root", "alice", "bob"]
    assert all("password_hash" not in u for u in a.body["items"])

    signed = await login(client, "bob", BOB["password"])
    assert signed.status == 200 and signed.body["is_admin"] is False
    session = cookie_of(signed)
    assert (await client.call("GET", "/api/v1/profile", session=session)).status == 200

    a = await client.call("POST", f"/api/v1/users/{bob}/disable", token=root)
    assert a.status == 204 and a.body == b""
    assert (await client.call("GET", "/api/v1/profile", session=session)).status == 401
    assert (await login(client, "bob", BOB["password"])).status == 401
    a = await client.call("GET", "/api/v1/users", token=root)
    assert next(u for u in a.body["items"] if u["user_id"] == bob)["disabled"] is True

    a = await client.call("POST", f"/api/v1/users/{bob}/enable", token=root)
    assert a.status == 204
    assert (await login(client, "bob", BOB["password"])).status == 200

    a = await client.call("DELETE", f"/api/v1/users/{bob.upper()}", token=root)
    assert a.status == 204
    a = await client.call("GET", "/api/v1/users", token=root)
    assert bob not in [u["user_id"] for u in a.body["items"]]
    a = await client.call("DELETE", f"/api/v1/users/{bob}", token=root)
    assert a.status == 404 and a.problem["code"] == "not_found"


async def test_admin_edits_a_user(client: Client, token_cast: Cast, dsn: str) -> None:
    root, alice = token_cast.token_root, token_cast.alice_id
    ident = token_cast.identity
    url = f"/api/v1/users/{alice}"

    async def listed(user_id: str) -> dict[str, Any]:
        a = await client.call("GET", "/api/v1/users", token=root)
        assert a.status == 200, a.body
        return dict(next(u for u in a.body["items"] if u["user_id"] == user_id))

    before = await listed(alice)
    assert before["totp_enabled"] is False and before["groups"] == []
    group = await ident.cmd("create_group", {"name": "family"}, actor=token_cast.root_id)
    await ident.cmd(
        "add_group_member",
        {"group_id": group["group_id"], "user_id": alice},
        actor=token_cast.root_id,
    )
    family = [{"group_id": group["group_id"], "name": "family"}]
    assert (await listed(alice))["groups"] == family

    a = await client.call("PATCH", url, token=root, body={"display_name": "Alice A."})
    assert a.status == 200, a.body
    assert a.body == {**before, "display_name": "Alice A.", "groups": family}
    assert a.body == await listed(alice)  # the same shape as the list's items
    upper = f"/api/v1/users/{alice.upper()}"
    a = await client.call("PATCH", upper, token=root, body={"email": "al@new.example"})
    assert a.status == 200 and a.body["email"] == "al@new.example", a.body
    assert (await ident.ask("profile", {"user_id": alice}))["email"] == "al@new.example"

    assert (await client.call("GET", "/api/v1/users", token=token_cast.token_alice)).status == 403
    a = await client.call("PATCH", url, token=root, body={"is_admin": True})
    assert a.status == 200 and a.body["is_admin"] is True, a.body
    assert (await client.call("GET", "/api/v1/users", token=token_cast.token_alice)).status == 200
    # several fields at once, display_name null clears it
    a = await client.call("PATCH", url, token=root, body={"is_admin": False, "display_name": None})
    assert a.status == 200, a.body
    assert a.body["is_admin"] is False and a.body["display_name"] is None
    assert a.body == {**before, "email": "al@new.example", "groups": family}
    assert (await client.call("GET", "/api/v1/users", token=token_cast.token_alice)).status == 403

    mine = [
        e
        for e in await events_in(dsn)
        if e["stream"] == f"user-{alice}" and e["type"] != "SessionStarted"  # the cast's
    ]
    kinds = [e["type"] for e in mine]
    assert kinds == ["UserCreated", "UserUpdated", "UserUpdated", "AdminChanged", "UserUpdated",
                     "AdminChanged"]  # fmt: skip
    assert all(e["meta"]["actor"] == token_cast.root_id for e in mine)
    assert all("al@new.example" not in str(e["data"]) for e in mine)  # sealed
    # the same values again change nothing: no event
    again = {"is_admin": False, "email": "al@new.example", "display_name": ""}
    a = await client.call("PATCH", url, token=root, body=again)
    assert a.status == 200 and a.body == await listed(alice)
    after = [
        e["type"]
        for e in await events_in(dsn)
        if e["stream"] == f"user-{alice}" and e["type"] != "SessionStarted"
    ]
    assert after == kinds


async def test_editing_a_user_refuses_bad_input_and_changes_nothing(
    client: Client, token_cast: Cast, dsn: str
) -> None:
    root, alice = token_cast.token_root, token_cast.alice_id
    url = f"/api/v1/users/{alice}"
    before = await state(token_cast.identity, dsn)
    for body, field in (
        ({"email": "not-an-email"}, "email"),
        ({"email": "x@" + "e" * 260}, "email"),
        ({"is_admin": "yes", "display_name": "Al"}, "is_admin"),
        ({"display_name": "d" * 101}, "display_name"),
        ({"display_name": "Al", "nickname": "al"}, "nickname"),
        ({"username": "al"}, "username"),
    ):
        a = await client.call("PATCH", url, token=root, body=body)
        assert a.status == 400 and a.problem["field"] == field, (body, a.body)
    # identity's own rules: a control character, an email another account has (whatever the
    # case), with is_admin in the same body: nothing half-changed
    a = await client.call("PATCH", url, token=root, body={"display_name": "A\x07"})
    assert a.status == 400 and a.problem["field"] == "display_name", a.body
    taken = {"email": ROOT["email"].upper(), "is_admin": True, "display_name": "Al"}
    a = await client.call("PATCH", url, token=root, body=taken)
    assert a.status == 409 and a.problem["field"] == "email", a.body
    unknown = f"/api/v1/users/{uuid.uuid4()}"
    a = await client.call("PATCH", unknown, token=root, body={"is_admin": True})
    assert a.status == 404 and a.problem["code"] == "not_found", a.body
    # the last enabled administrator keeps the role, even with other changes in the body
    own = f"/api/v1/users/{token_cast.root_id}"
    a = await client.call("PATCH", own, token=root, body={"is_admin": False, "display_name": "R"})
    assert a.status == 409 and a.problem["field"] == "is_admin", a.body
    assert "last" in a.problem["detail"]
    assert await state(token_cast.identity, dsn) == before

    # with another admin, still never one's own role; the other admin may take it
    assert (await client.call("PATCH", url, token=root, body={"is_admin": True})).status == 200
    a = await client.call("PATCH", own, token=root, body={"is_admin": False})
    assert a.status == 409 and a.problem["field"] == "is_admin", a.body
    assert "own" in a.problem["detail"]
    a = await client.call("PATCH", own, token=token_cast.token_alice, body={"is_admin": False})
    assert a.status == 200 and a.body["is_admin"] is False, a.body
    a = await client.call("PATCH", url, token=token_cast.token_alice, body={"is_admin": False})
    assert a.status == 409 and a.problem["field"] == "is_admin", a.body


async def test_a_bad_user_id_never_reaches_identity(
    client: Client, token_cast: Cast, dsn: str
) -> None:
    before = await state(token_cast.identity, dsn)
    # a UUID without its dashes identity would read as an id (and answer 404): the gateway
    # refuses it first
    for user_id in ("bob", "123", uuid.uuid4().hex, "x" * 36):
        for method, path in (
            ("POST", f"/api/v1/users/{user_id}/disable"),
            ("POST", f"/api/v1/users/{user_id}/enable"),
            ("DELETE", f"/api/v1/users/{user_id}"),
            ("PATCH", f"/api/v1/users/{user_id}"),
        ):
            body = {"is_admin": True} if method == "PATCH" else None
            a = await client.call(method, path, token=token_cast.token_root, body=body)
            assert a.status == 400 and a.problem["field"] == "user_id", (method, path)
    assert await state(token_cast.identity, dsn) == before


async def test_users_routes_are_for_admins(client: Client, cast: Cast, dsn: str) -> None:
    some = str(uuid.uuid4())
    calls: list[tuple[str, str, Any]] = [
        ("GET", "/api/v1/users", None),
        ("POST", "/api/v1/users", BOB),
        ("POST", f"/api/v1/users/{some}/disable", None),
        ("POST", f"/api/v1/users/{some}/enable", None),
        ("DELETE", f"/api/v1/users/{some}", None),
        ("DELETE", f"/api/v1/users/{cast.root_id}", None),
        ("PATCH", f"/api/v1/users/{cast.alice_id}", {"is_admin": True}),
        ("PATCH", f"/api/v1/users/{cast.root_id}", {"email": "mine@example.test"}),
    ]
    before = await state(cast.identity, dsn)
    for method, path, body in calls:
        for session, token in ((cast.session_alice, None), (None, cast.token_alice)):
            a = await client.call(method, path, body=body, session=session, token=token)
            assert a.status == 403 and a.problem["code"] == "forbidden", (method, path)
        a = await client.call(method, path, body=body)
        assert a.status == 401 and a.problem["code"] == "unauthorized", (method, path)
    assert await state(cast.identity, dsn) == before
    # a user routes: anonymous 401, any user allowed
    a = await client.call("GET", "/api/v1/profile")
    assert a.status == 401
    a = await client.call("GET", "/api/v1/profile", token=cast.token_alice)
    assert a.status == 200 and a.body["username"] == "alice"


# -- the declarations -----------------------------------------------------------------------

ROUTES = {
    ("POST", "/setup"): Access.anonymous,
    ("POST", "/session"): Access.anonymous,
    ("DELETE", "/session"): Access.user,
    ("GET", "/profile"): Access.user,
    ("PATCH", "/profile"): Access.user,
    ("POST", "/profile/password"): Access.user,
    ("GET", "/profile/sessions"): Access.user,
    ("DELETE", "/profile/sessions/{session_id}"): Access.user,
    ("GET", "/users"): Access.admin,
    ("POST", "/users"): Access.admin,
    ("PATCH", "/users/{user_id}"): Access.admin,
    ("POST", "/users/{user_id}/disable"): Access.admin,
    ("POST", "/users/{user_id}/enable"): Access.admin,
    ("DELETE", "/users/{user_id}"): Access.admin,
}


def test_routes_are_declared_as_intended() -> None:
    table = default_table()
    assert {(r.method, r.path): r.access for r in handlers.routes} == ROUTES
    for (method, path), access in ROUTES.items():
        route = table.find(method, path)
        assert route is not None and route.access is access, (method, path)
        if route.body is not None:
            assert route.body["additionalProperties"] is False


async def test_openapi_documents_every_identity_route(nc: NATS) -> None:
    async with serve_api(nc) as client:
        a = await client.call("GET", "/api/v1/openapi.json")
    doc = a.body
    table = default_table()
    check_structure(doc, table)
    assert doc == openapi_document(table, version=doc["info"]["version"], prefix="/api/v1")
    for method, path in ROUTES:
        op = doc["paths"][path][method.lower()]
        route = table.find(method, path)
        assert route is not None
        assert op["operationId"] == route.name and op["summary"] == route.summary
        assert op["x-homeport-access"] == route.access.value
        assert op["tags"] == ["identity"]
        if route.body is not None:
            assert op["requestBody"]["content"]["application/json"]["schema"] == route.body
        for status, schema in route.responses.items():
            answer = op["responses"][str(status)]
            if schema is None:
                assert "content" not in answer
            else:
                assert answer["content"]["application/json"]["schema"] == schema
    login_body = doc["paths"]["/session"]["post"]["requestBody"]["content"]["application/json"]
    assert login_body["schema"]["required"] == ["username", "password"]
    assert login_body["schema"]["properties"]["username"]["pattern"] == (
        "^[A-Za-z][A-Za-z0-9._-]{1,31}$"
    )
    session = doc["paths"]["/session"]["post"]["responses"]["200"]["content"]
    assert "session" not in session["application/json"]["schema"]["properties"]
    user_id = doc["paths"]["/users/{user_id}"]["delete"]["parameters"][0]
    assert user_id["in"] == "path" and user_id["schema"]["format"] == "uuid"
