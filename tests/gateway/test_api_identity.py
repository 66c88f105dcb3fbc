"""Accounts through HTTP: setup, sign-in and sign-out with the session cookie, profiles, users.

Identity is a stand-in on the real bus that keeps the contract of `hp.cmd.identity.*` and
`hp.qry.identity.*`, and raises its errors as the real service does.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from libs.events import context
from libs.events.bus import Bus, Conflict, Forbidden, Invalid, NotFound, Unauthorized
from libs.events.context import Context
from services.gateway.api import SESSION_COOKIE, Access, default_table
from services.gateway.api.handlers import identity as handlers
from services.gateway.api.openapi import openapi_document
from tests.events.relaykit import connect
from tests.gateway.apikit import (
    ROOT,
    SESSION_ALICE,
    TOKEN_ALICE,
    TOKEN_ROOT,
    Answer,
    Client,
    Identity,
    serve_api,
    serve_identity,
)
from tests.gateway.test_api_openapi import check_structure

SESSION_HOURS = 12
IDLE_TIMEOUT_S = 1800
MAX_FAILURES = 5  # failed logins from one address before it is refused
ADMIN = {"username": "admin", "email": "admin@example.com", "password": "correct horse battery"}
BOB = {"username": "bob", "email": "bob@example.com", "password": "bob's long password"}
EVIL = "https://evil.example"


@dataclass
class Accounts(Identity):
    """The identity contract over a dict of users (whoami and setup_state from Identity)."""

    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    passwords: dict[str, str] = field(default_factory=dict)
    failures: dict[str | None, int] = field(default_factory=dict)
    seen: list[tuple[str, dict[str, Any], Context]] = field(default_factory=list)
    login_reply: dict[str, Any] | None = None  # replaces a successful login's reply

    def __post_init__(self) -> None:
        fixed: tuple[dict[str, Any], ...] = (
            {"user_id": "u-alice", "username": "alice", "is_admin": False},
            ROOT,
        )
        for who in fixed:
            self.users[who["user_id"]] = {
                **who,
                "email": f"{who['username']}@example.com",
                "display_name": None,
                "disabled": False,
            }

    def commands(self) -> list[str]:
        return [name for name, _, _ in self.seen if name.startswith("cmd.")]

    def _new_user(self, payload: dict[str, Any], is_admin: bool) -> str:
        allowed = {"username", "email", "password", "display_name", "is_admin"}
        for name in ("username", "email", "password"):
            if not isinstance(payload.get(name), str):
                raise Invalid(f"{name} is required", field=name)
        unknown = sorted(set(payload) - allowed)
        if unknown:
            raise Invalid(f"unknown field {unknown[0]!r}", field=unknown[0])
        if not 8 <= len(payload["password"]) <= 256:
            raise Invalid("password must be 8 to 256 characters", field="password")
        for name in ("username", "email"):
            if any(u[name].lower() == payload[name].lower() for u in self.users.values()):
                raise Conflict(f"{name} {payload[name]} is taken", field=name)
        user_id = str(uuid.uuid4())
        self.users[user_id] = {
            "user_id": user_id,
            "username": payload["username"],
            "email": payload["email"],
            "display_name": payload.get("display_name"),
            "is_admin": is_admin,
            "disabled": False,
        }
        self.passwords[user_id] = payload["password"]
        return user_id

    def _user(self, payload: dict[str, Any]) -> dict[str, Any]:
        user = self.users.get(payload.get("user_id", ""))
        if user is None:
            raise NotFound(f"no user {payload.get('user_id')}", field="user_id")
        return user

    def _admin(self) -> None:
        actor = self.users.get(context.current().actor)
        if actor is None or not actor["is_admin"] or actor["disabled"]:
            raise Forbidden("only an administrator may manage users")

    def _end_sessions(self, user_id: str) -> None:
        for sid in [s for s, who in self.sessions.items() if who["user_id"] == user_id]:
            del self.sessions[sid]

    def register(self, bus: Bus) -> None:
        super().register(bus)

        def record(name: str, payload: dict[str, Any]) -> None:
            self.seen.append((name, payload, context.current()))

        @bus.command("setup")
        async def setup(payload: dict[str, Any]) -> Any:
            record("cmd.setup", payload)
            if self.setup_done:
                raise Conflict("setup is already done: sign in as an administrator")
            if "is_admin" in payload:
                raise Invalid("unknown field 'is_admin'", field="is_admin")
            user_id = self._new_user(payload, is_admin=True)
            self.setup_done = True
            return {"user_id": user_id}

        @bus.command("login")
        async def login(payload: dict[str, Any]) -> Any:
            record("cmd.login", payload)
            ip = context.current().ip
            if self.failures.get(ip, 0) >= MAX_FAILURES:
                raise Forbidden("too many failed sign-ins from this address: try again later")
            user = next(
                (u for u in self.users.values() if u["username"] == payload.get("username")),
                None,
            )
            if (
                user is None
                or user["disabled"]
                or not secrets.compare_digest(
                    self.passwords.get(user["user_id"], "").encode(),
                    str(payload.get("password", "")).encode(),
                )
            ):
                self.failures[ip] = self.failures.get(ip, 0) + 1
                raise Unauthorized("wrong username or password")
            session = secrets.token_urlsafe(32)
            who = {k: user[k] for k in ("user_id", "username", "is_admin")}
            self.sessions[session] = {**who, "scope": "full"}
            expires = datetime.now(UTC) + timedelta(hours=SESSION_HOURS)
            if self.login_reply is not None:
                return {"session": session, **who, **self.login_reply}
            return {
                "session": session,
                **who,
                "expires_at": expires.isoformat(),
                "idle_timeout_s": IDLE_TIMEOUT_S,
            }

        @bus.command("logout")
        async def logout(payload: dict[str, Any]) -> Any:
            record("cmd.logout", payload)
            self.sessions.pop(payload["session"], None)
            return {}

        @bus.command("create_user")
        async def create_user(payload: dict[str, Any]) -> Any:
            record("cmd.create_user", payload)
            self._admin()
            return {"user_id": self._new_user(payload, bool(payload.get("is_admin", False)))}

        @bus.command("disable_user")
        async def disable_user(payload: dict[str, Any]) -> Any:
            record("cmd.disable_user", payload)
            self._admin()
            self._user(payload)["disabled"] = True
            self._end_sessions(payload["user_id"])
            return {}

        @bus.command("enable_user")
        async def enable_user(payload: dict[str, Any]) -> Any:
            record("cmd.enable_user", payload)
            self._admin()
            self._user(payload)["disabled"] = False
            return {}

        @bus.command("delete_user")
        async def delete_user(payload: dict[str, Any]) -> Any:
            record("cmd.delete_user", payload)
            self._admin()
            user = self._user(payload)
            self._end_sessions(user["user_id"])
            del self.users[user["user_id"]]
            return {}

        @bus.query("profile")
        async def profile(payload: dict[str, Any]) -> Any:
            record("qry.profile", payload)
            # a field the API must not pass on
            return {**self._user(payload), "password_hash": "$argon2id$secret"}

        @bus.query("users")
        async def users(payload: dict[str, Any]) -> Any:
            record("qry.users", payload)
            return {"items": list(self.users.values())}


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    conn = await connect(nats_url)
    yield conn
    await conn.close()


@pytest.fixture
async def accounts(nc: NATS) -> AsyncIterator[Accounts]:
    async with serve_identity(nc, Accounts()) as ident:
        assert isinstance(ident, Accounts)
        yield ident


@pytest.fixture
async def client(nc: NATS, accounts: Accounts) -> AsyncIterator[Client]:
    async with serve_api(nc) as c:
        yield c


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


async def test_setup_login_profile_logout(client: Client, accounts: Accounts) -> None:
    a = await client.call("GET", "/api/v1/status")
    assert a.body["setup_done"] is False
    a = await client.call("POST", "/api/v1/setup", body={**ADMIN, "display_name": "The Admin"})
    assert a.status == 201, a.body
    admin_id = a.body["user_id"]
    assert a.body == {"user_id": admin_id} and uuid.UUID(admin_id)
    assert set_cookies(a) == []  # setup does not sign in
    a = await client.call("GET", "/api/v1/status")
    assert a.body["setup_done"] is True

    a = await login(client, "admin", ADMIN["password"])
    assert a.status == 200, a.body
    session = cookie_of(a)
    assert accounts.sessions[session]["user_id"] == admin_id
    assert set(a.body) == {"user_id", "username", "is_admin", "expires_at"}
    assert a.body["user_id"] == admin_id and a.body["username"] == "admin"
    assert a.body["is_admin"] is True
    assert session not in str(a.body)
    lifetime = SESSION_HOURS * 3600
    (raw,) = set_cookies(a)
    check_session_cookie(raw, session, (lifetime - 5, lifetime))
    expires = datetime.fromisoformat(a.body["expires_at"])
    assert abs(expires - datetime.now(UTC) - timedelta(hours=SESSION_HOURS)) < timedelta(seconds=5)
    # identity heard who asked: nobody yet, from this address, under the request's id
    name, payload, ctx = accounts.seen[-1]
    assert (name, payload) == ("cmd.login", {"username": "admin", "password": ADMIN["password"]})
    assert ctx.actor == "anonymous" and ctx.ip == "127.0.0.1"
    assert ctx.correlation_id == a.headers["X-Correlation-Id"]

    a = await client.call("GET", "/api/v1/profile", session=session)
    assert a.status == 200, a.body
    assert a.body == {
        "user_id": admin_id,
        "username": "admin",
        "email": "admin@example.com",
        "display_name": "The Admin",
        "is_admin": True,
        "disabled": False,
    }  # and not the password hash identity also sent
    assert accounts.seen[-1][1] == {"user_id": admin_id}
    assert accounts.seen[-1][2].actor == admin_id

    a = await client.call("DELETE", "/api/v1/session", session=session)
    assert a.status == 204 and a.body == b""
    (raw,) = set_cookies(a)
    check_session_cookie(raw, "", (0, 0))
    name, payload, ctx = accounts.seen[-1]
    assert (name, payload, ctx.actor) == ("cmd.logout", {"session": session}, admin_id)
    assert session not in accounts.sessions

    for method, path in (("GET", "/api/v1/profile"), ("DELETE", "/api/v1/session")):
        a = await client.call(method, path, session=session)
        assert a.status == 401 and a.problem["code"] == "unauthorized", (method, path)
    # a new sign-in is a new session
    a = await login(client, "admin", ADMIN["password"])
    assert a.status == 200 and cookie_of(a) != session


async def test_setup_only_once(client: Client, accounts: Accounts) -> None:
    a = await client.call("POST", "/api/v1/setup", body=ADMIN)
    assert a.status == 201
    again = {**ADMIN, "username": "other", "email": "other@example.com"}
    a = await client.call("POST", "/api/v1/setup", body=again)
    assert a.status == 409 and a.problem["code"] == "conflict"
    assert a.problem["status"] == 409 and "already done" in a.problem["detail"]
    assert [u["username"] for u in accounts.users.values()] == ["alice", "root", "admin"]


async def test_identity_refusing_input_names_the_field(client: Client) -> None:
    # within the route's schema, below identity's own policy
    a = await client.call("POST", "/api/v1/setup", body={**ADMIN, "password": "short"})
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
    client: Client, accounts: Accounts, path: str, body: dict[str, Any], bad: str
) -> None:
    a = await client.call("POST", "/api/v1" + path, body=body, token=TOKEN_ROOT)
    assert a.status == 400, a.body
    assert a.problem["code"] == "invalid" and a.problem["field"] == bad
    assert bad in a.problem["detail"]
    assert accounts.commands() == []  # identity was never asked: nothing half-changed
    assert accounts.setup_done is False and len(accounts.users) == 2
    assert set_cookies(a) == []


# -- signing in -----------------------------------------------------------------------------


async def test_login_refusals_do_not_say_which_part(client: Client, accounts: Accounts) -> None:
    assert (await client.call("POST", "/api/v1/setup", body=ADMIN)).status == 201
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
    assert len(accounts.sessions) == 2  # only the fixed ones of alice and root


async def test_an_address_refused_by_identity_is_403(client: Client, accounts: Accounts) -> None:
    assert (await client.call("POST", "/api/v1/setup", body=ADMIN)).status == 201
    for _ in range(MAX_FAILURES):
        assert (await login(client, "admin", "guess guess")).status == 401
    a = await login(client, "admin", ADMIN["password"])  # even the right password
    assert a.status == 403 and a.problem["code"] == "forbidden"
    assert set_cookies(a) == []
    # the limit is per address: identity heard the client's address from the proxy
    a = await login(client, "admin", ADMIN["password"], headers={"X-Real-IP": "198.51.100.9"})
    assert a.status == 200 and cookie_of(a)
    assert accounts.seen[-1][2].ip == "198.51.100.9"


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
    client: Client, accounts: Accounts, reply: dict[str, Any]
) -> None:
    assert (await client.call("POST", "/api/v1/setup", body=ADMIN)).status == 201
    accounts.login_reply = reply
    a = await login(client, "admin", ADMIN["password"])
    assert a.status == 500 and a.problem["code"] == "internal"
    assert set_cookies(a) == [] and "evil" not in str(a.body)


async def test_login_from_another_origin_is_refused(client: Client, accounts: Accounts) -> None:
    assert (await client.call("POST", "/api/v1/setup", body=ADMIN)).status == 201
    n = len(accounts.seen)
    for headers in ({"Origin": EVIL}, {"Sec-Fetch-Site": "cross-site"}):
        a = await login(client, "admin", ADMIN["password"], headers=headers)
        assert a.status == 403 and a.problem["code"] == "forbidden", headers
        assert set_cookies(a) == []
        a = await client.call("POST", "/api/v1/setup", body=BOB, headers=headers)
        assert a.status == 403
    a = await client.call("DELETE", "/api/v1/session", session=SESSION_ALICE,
                          headers={"Origin": EVIL})  # fmt: skip
    assert a.status == 403
    assert len(accounts.seen) == n and SESSION_ALICE in accounts.sessions
    # the same request from the dashboard's own origin signs in
    a = await login(client, "admin", ADMIN["password"], headers={"Origin": client.base})
    assert a.status == 200 and cookie_of(a)


async def test_signing_out_needs_the_session(client: Client, accounts: Accounts) -> None:
    a = await client.call("DELETE", "/api/v1/session")
    assert a.status == 401
    a = await client.call("DELETE", "/api/v1/session", token=TOKEN_ALICE)
    assert a.status == 400 and a.problem["code"] == "invalid" and "token" in a.problem["detail"]
    assert accounts.commands() == []
    a = await client.call("DELETE", "/api/v1/session", session=SESSION_ALICE)
    assert a.status == 204 and SESSION_ALICE not in accounts.sessions


# -- users ----------------------------------------------------------------------------------


async def test_admin_manages_users(client: Client, accounts: Accounts) -> None:
    a = await client.call("POST", "/api/v1/users", token=TOKEN_ROOT, body=BOB)
    assert a.status == 201, a.body
    bob = a.body["user_id"]
    assert accounts.seen[-1][2].actor == ROOT["user_id"]
    a = await client.call("POST", "/api/v1/users", token=TOKEN_ROOT, body=BOB)
    assert a.status == 409 and a.problem["field"] == "username"

    a = await client.call("GET", "/api/v1/users", token=TOKEN_ROOT)
    assert a.status == 200
    assert [u["username"] for u in a.body["items"]] == ["alice", "root", "bob"]
    assert all("password_hash" not in u for u in a.body["items"])

    signed_in = await login(client, "bob", BOB["password"])
    assert signed_in.status == 200 and signed_in.body["is_admin"] is False
    session = cookie_of(signed_in)
    assert (await client.call("GET", "/api/v1/profile", session=session)).status == 200

    a = await client.call("POST", f"/api/v1/users/{bob}/disable", token=TOKEN_ROOT)
    assert a.status == 204 and a.body == b""
    assert (await client.call("GET", "/api/v1/profile", session=session)).status == 401
    assert (await login(client, "bob", BOB["password"])).status == 401
    a = await client.call("GET", "/api/v1/users", token=TOKEN_ROOT)
    assert next(u for u in a.body["items"] if u["user_id"] == bob)["disabled"] is True

    a = await client.call("POST", f"/api/v1/users/{bob}/enable", token=TOKEN_ROOT)
    assert a.status == 204
    assert (await login(client, "bob", BOB["password"])).status == 200

    a = await client.call("DELETE", f"/api/v1/users/{bob.upper()}", token=TOKEN_ROOT)
    assert a.status == 204
    assert bob not in accounts.users
    a = await client.call("DELETE", f"/api/v1/users/{bob}", token=TOKEN_ROOT)
    assert a.status == 404 and a.problem["code"] == "not_found"
    assert accounts.seen[-1][1] == {"user_id": bob}


async def test_a_bad_user_id_never_reaches_identity(client: Client, accounts: Accounts) -> None:
    for user_id in ("bob", "123", uuid.uuid4().hex, "x" * 36):
        for method, path in (
            ("POST", f"/api/v1/users/{user_id}/disable"),
            ("POST", f"/api/v1/users/{user_id}/enable"),
            ("DELETE", f"/api/v1/users/{user_id}"),
        ):
            a = await client.call(method, path, token=TOKEN_ROOT)
            assert a.status == 400 and a.problem["field"] == "user_id", (method, path)
    assert accounts.commands() == []


async def test_users_routes_are_for_admins(client: Client, accounts: Accounts) -> None:
    some = str(uuid.uuid4())
    calls: list[tuple[str, str, Any]] = [
        ("GET", "/api/v1/users", None),
        ("POST", "/api/v1/users", BOB),
        ("POST", f"/api/v1/users/{some}/disable", None),
        ("POST", f"/api/v1/users/{some}/enable", None),
        ("DELETE", f"/api/v1/users/{some}", None),
        ("DELETE", "/api/v1/users/u-root", None),
    ]
    for method, path, body in calls:
        for session, token in ((SESSION_ALICE, None), (None, TOKEN_ALICE)):
            a = await client.call(method, path, body=body, session=session, token=token)
            assert a.status == 403 and a.problem["code"] == "forbidden", (method, path)
        a = await client.call(method, path, body=body)
        assert a.status == 401 and a.problem["code"] == "unauthorized", (method, path)
    assert [n for n, _, _ in accounts.seen] == []
    # a user routes: anonymous 401, any user allowed
    a = await client.call("GET", "/api/v1/profile")
    assert a.status == 401
    a = await client.call("GET", "/api/v1/profile", token=TOKEN_ALICE)
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


async def test_openapi_documents_every_identity_route(client: Client) -> None:
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
