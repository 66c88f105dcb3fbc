"""Shared pieces of the API tests (no tests here; their fixtures are in conftest.py): the real
identity service with the people of the tests (`cast`), the API served on a real port, and the
real gateway (`build()`) running in this process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy
from nats.aio.client import Client as NATS

from libs.contracts.schema import array, integer, nullable, obj, string
from libs.events.bus import BusClient, Unavailable, error_from_wire
from libs.service.runner import Service
from services.gateway.api import (
    API_APP,
    Access,
    ApiConfig,
    BusAuthenticator,
    Call,
    Reply,
    Routes,
    RouteTable,
    build_api,
    default_table,
    mount_api,
)
from tests.identity.kit import ADMIN, Identity
from tests.support.bus import ActorBus
from tests.support.serving import serving

SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}

# -- the real identity service and the people of the tests -----------------------------------

ROOT = ADMIN  # the administrator of setup (username root)
ALICE = {"username": "alice", "email": "alice@example.test", "password": "alice's long phrase"}
BOB = {"username": "bob", "email": "bob@example.test", "password": "bob's own long phrase"}
CAST_IP = "192.0.2.10"  # where the cast was made from: their events and sign-ins carry it
SCOPES = ("full", "read")


@dataclass(frozen=True)
class Cast:
    """The people of the API tests, made for real by the identity service: root (the
    administrator of setup), alice (a user) and, when asked for, bob (another user). Root and
    alice have API tokens of scope full and read; each person has a session unless the cast
    was made without them. A missing one fails the test that asks for it, naming the knob."""

    identity: Identity
    ids: Mapping[str, str]  # username -> user id
    sessions: Mapping[str, str]  # username -> session secret
    tokens: Mapping[str, str]  # "root", "root_read", "alice", "alice_read" -> token

    @property
    def root_id(self) -> str:
        return self.ids["root"]

    @property
    def alice_id(self) -> str:
        return self.ids["alice"]

    @property
    def bob_id(self) -> str:
        return self._of(self.ids, "bob", "bob=True")

    @property
    def session_root(self) -> str:
        return self._of(self.sessions, "root", "sessions=True")

    @property
    def session_alice(self) -> str:
        return self._of(self.sessions, "alice", "sessions=True")

    @property
    def session_bob(self) -> str:
        return self._of(self.sessions, "bob", "bob=True, sessions=True")

    @property
    def token_root(self) -> str:
        return self.tokens["root"]

    @property
    def token_root_read(self) -> str:
        return self.tokens["root_read"]

    @property
    def token_alice(self) -> str:
        return self.tokens["alice"]

    @property
    def token_alice_read(self) -> str:
        return self.tokens["alice_read"]

    @staticmethod
    def _of(made: Mapping[str, str], who: str, ask: str) -> str:
        assert who in made, f"this cast was made without it: make_cast(..., {ask})"
        return made[who]


async def make_cast(ident: Identity, *, bob: bool = False, sessions: bool = True) -> Cast:
    """Set up `ident` with root, create alice (and bob), sign each in once from CAST_IP, and
    give root and alice a full and a read token (a token needs a recent sign-in); the cast
    has the sessions unless `sessions` is false.

    Argon2 is the cost (about 0.15 s a hash or a verification): one per account made and one
    per session, overlapped where the order allows."""
    root_id = await ident.set_up()

    async def sign_in(who: dict[str, str]) -> tuple[str, str]:
        reply = await ident.login(who["username"], who["password"], ip=CAST_IP)
        return who["username"], str(reply["session"])

    async def create(who: dict[str, str]) -> tuple[str, str]:
        reply = await ident.cmd("create_user", dict(who), actor=root_id, ip=CAST_IP)
        return who["username"], str(reply["user_id"])

    async def token(username: str, scope: str) -> tuple[str, str]:
        # creating a token needs a recent sign-in: the session of one
        user_id = ids[username]
        payload = {"user_id": user_id, "name": f"tests {scope}", "scope": scope}
        payload["session"] = made[username]
        reply = await ident.cmd("create_token", payload, actor=user_id, ip=CAST_IP)
        return username + ("_read" if scope == "read" else ""), str(reply["token"])

    people = [ALICE, BOB] if bob else [ALICE]
    ids = {"root": root_id}
    made: dict[str, str] = {}

    async def make_people() -> None:
        ids.update(await asyncio.gather(*map(create, people)))

    async def sign_in_all(who: list[dict[str, str]]) -> None:
        made.update(await asyncio.gather(*map(sign_in, who)))

    # root signs in while the others are made; then they sign in, then the tokens are made
    await asyncio.gather(make_people(), sign_in_all([ROOT]))
    await sign_in_all(people if sessions else [ALICE])
    tokens = await asyncio.gather(
        *(token(who, scope) for who in ("root", "alice") for scope in SCOPES)
    )
    signed = made if sessions else {}
    return Cast(ident, ids=ids, sessions=signed, tokens=dict(tokens))


async def root_token(ident: Identity) -> str:
    """Set up `ident` with root alone and give him a full token (made in a session, as a
    token needs a recent sign-in), for tests that only need to get past authentication (an
    administrator is a user too)."""
    root_id = await ident.set_up()
    session = (await ident.login(ROOT["username"], ROOT["password"], ip=CAST_IP))["session"]
    payload = {"user_id": root_id, "name": "tests full", "scope": "full", "session": session}
    reply = await ident.cmd("create_token", payload, actor=root_id, ip=CAST_IP)
    return str(reply["token"])


async def events_in(dsn: str) -> list[dict[str, Any]]:
    """Every event in the store (type, stream, data, meta), oldest first."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT type, stream, data::text, meta::text FROM events.events ORDER BY position"
        )
    finally:
        await conn.close()
    return [
        {
            "type": r["type"],
            "stream": r["stream"],
            "data": json.loads(r["data"]),
            "meta": json.loads(r["meta"]),
        }
        for r in rows
    ]


class Connections:
    """The Backend of an API served in a test: a real NATS connection, a real pool if any."""

    def __init__(self, nc: NATS, pool: asyncpg.Pool | None = None) -> None:
        self._client = ActorBus(nc)
        self._pool = pool

    def bus(self) -> BusClient:
        return self._client

    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise Unavailable("no database in this test")
        return self._pool


@dataclass
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: Any  # parsed JSON for JSON answers, else bytes

    @property
    def problem(self) -> dict[str, Any]:
        assert self.headers.get("Content-Type", "").startswith("application/problem+json"), (
            self.status,
            self.headers.get("Content-Type"),
            self.body,
        )
        assert isinstance(self.body, dict)
        return self.body


@dataclass
class Client:
    """Requests to a served gateway, with credentials chosen per call."""

    base: str
    http: aiohttp.ClientSession

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        session: str | None = None,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        data: Any = None,
    ) -> Answer:
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        if session is not None:
            h["Cookie"] = f"__Host-hp_session={session}"
            if "Origin" not in h:  # what a browser sends; a cookie alone may not change state
                h.setdefault("Sec-Fetch-Site", "same-origin")
        if body is not None:
            data = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        async with self.http.request(method, self.base + path, headers=h, data=data) as r:
            raw = await r.read()
            ctype = r.headers.get("Content-Type", "")
            parsed: Any = raw
            if raw and ("json" in ctype):
                parsed = json.loads(raw)
            return Answer(r.status, r.headers, parsed)


@asynccontextmanager
async def serve_api(
    nc: NATS,
    *,
    table: RouteTable | None = None,
    pool: asyncpg.Pool | None = None,
    config: ApiConfig | None = None,
    api_hook: Any = None,
) -> AsyncIterator[Client]:
    """The API (default table unless given) mounted like the gateway does, on a real port.

    Answers are checked against their declared schemas. `api_hook(api)` runs before mounting.
    """
    backend = Connections(nc, pool)
    api = build_api(
        table or default_table(),
        backend=backend,
        authenticator=BusAuthenticator(backend.bus),
        config=config,
        check_responses=True,
    )
    if api_hook is not None:
        api_hook(api)
    root = web.Application()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="dashboard")

    root.router.add_get("/", page)
    mount_api(root, api)
    runner = web.AppRunner(root, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as http:
            yield Client(f"http://127.0.0.1:{port}", http)
    finally:
        await runner.cleanup()


def api_app_of(root: web.Application) -> web.Application:
    """The API application mounted in `root`."""
    return root[API_APP]


@dataclass
class Gateway:
    svc: Service
    client: Client


@asynccontextmanager
async def running_gateway(
    monkeypatch: pytest.MonkeyPatch,
    *,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[Gateway]:
    """The real gateway (services.gateway.__main__.build) serving in this process."""
    from services.gateway.__main__ import build

    for name in ("HP_PUBLIC_ORIGIN", "HP_CORS_ORIGINS", "HP_HTTP_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = {
        "HP_DATABASE_URL": dsn,
        "HP_NATS_URL": nats_url,
        "HP_EVENTS_STREAM": f"EV_{uniq}",
        "HP_EVENTS_PREFIX": f"t{uniq}.evt",
        "HP_KEYRING": str(tmp_path / "keyring.json"),
        "HP_DATA_DIR": str(tmp_path),
        "HP_DRAIN_SECONDS": "1",
        **(env or {}),
    }
    async with (
        serving(monkeypatch, build, settings, "the gateway", ready_within=30) as svc,
        aiohttp.ClientSession() as http,
    ):
        yield Gateway(svc, Client(f"http://127.0.0.1:{svc.port}", http))


def backup_env(
    *, dsn: str, nats_url: str, uniq: str, tmp_path: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The backup service's settings beside a gateway of `running_gateway` (the same keyring,
    data dir, events stream, and the apps service's folder of `tests/apps/appskit.apps_env`)."""
    return {
        "HP_DATABASE_URL": dsn,
        "HP_NATS_URL": nats_url,
        "HP_EVENTS_STREAM": f"EV_{uniq}",
        "HP_EVENTS_PREFIX": f"t{uniq}.evt",
        "HP_KEYRING": str(tmp_path / "keyring.json"),
        "HP_DATA_DIR": str(tmp_path),
        "HP_DRAIN_SECONDS": "1",
        "HP_HTTP_PORT": "0",
        "HP_BACKUP_DIR": str(tmp_path / "backup"),
        "HP_APPS_DIR": str(tmp_path / "apps"),
        "HP_CERTS_DIR": str(tmp_path / "certs"),
        "HP_SCHEDULE_LOOP": "false",
        "HP_TARGET_RETRIES": "0",
        "HP_ALLOW_LOOPBACK_TARGETS": "true",  # moto listens on loopback
        **(extra or {}),
    }


@asynccontextmanager
async def running_backup(
    monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]
) -> AsyncIterator[Service]:
    """The real backup service (services.backup.__main__.build) in this process, ready."""
    from services.backup.__main__ import build

    async with serving(monkeypatch, build, env, "backup", ready_within=30) as svc:
        yield svc


# -- routes that exist only in tests ---------------------------------------------------------

extra_routes = Routes("test")

ECHO_BODY = obj(
    {
        "name": string(minLength=1, maxLength=20),
        "tags": array(string(pattern="^[a-z]+$"), maxItems=3),
        "size": integer(minimum=0, maximum=10),
        "meta": obj({"colour": string(enum=["red", "blue"])}),
    },
    required=["name"],
)
ECHO_REPLY = obj(
    {
        "body": obj({}, additional=True),
        "actor": string(),
        "user": string(),
        "via": string(enum=["session", "token"]),
        "ip": nullable(string()),
    },
    required=["body", "actor", "user", "via", "ip"],
)
THING = obj({"thing_id": string()}, required=["thing_id"])
THING_PATH = obj({"thing_id": string(pattern="^[a-z]{1,20}$")}, required=["thing_id"])
ANY = {"type": "object"}


@extra_routes.post(
    "/echo", access=Access.user, summary="Echo a body", body=ECHO_BODY, responses={200: ECHO_REPLY}
)
async def echo(call: Call) -> Any:
    return {
        "body": call.body,
        "actor": call.context.actor,
        "user": call.user.username,
        "via": call.user.via.value,
        "ip": call.context.ip,
    }


@extra_routes.get("/me", access=Access.user, summary="The caller", responses={200: ANY})
async def me(call: Call) -> Any:
    return {"user_id": call.user.user_id, "scope": call.user.scope.value}


async def owns_thing(call: Call) -> bool:
    return bool(call.path["thing_id"] == call.user.username)


@extra_routes.get(
    "/things/{thing_id}",
    access=Access.user,
    owner=owns_thing,
    path_params=THING_PATH,
    summary="One thing of its owner",
    responses={200: THING},
)
async def get_thing(call: Call) -> Any:
    return {"thing_id": call.path["thing_id"]}


@extra_routes.delete(
    "/things/{thing_id}",
    access=Access.admin,
    path_params=THING_PATH,
    summary="Delete a thing",
    responses={204: None},
)
async def delete_thing(call: Call) -> Any:
    return Reply(status=204)


@extra_routes.get(
    "/fail/{code}",
    access=Access.anonymous,
    path_params=obj({"code": string()}, required=["code"]),
    summary="Raise the bus error of a code",
    responses={200: ANY},
)
async def fail(call: Call) -> Any:
    code = call.path["code"]
    if code == "crash":
        raise RuntimeError("secret internals: password=hunter2")
    field = "name" if code in ("invalid", "conflict") else None
    raise error_from_wire({"code": code, "message": f"message of {code}", "field": field})


@extra_routes.get(
    "/ask/{service}",
    access=Access.anonymous,
    path_params=obj({"service": string(pattern="^[a-z]+$")}, required=["service"]),
    summary="Ask a query of another service",
    responses={200: ANY},
)
async def ask(call: Call) -> Any:
    return await call.ask(call.path["service"], "thing", {"n": 1}, timeout=0.5)


@extra_routes.get(
    "/sneaky", access=Access.admin, summary="A GET that tries a command", responses={200: ANY}
)
async def sneaky(call: Call) -> Any:
    return await call.command("things", "change", {})


@extra_routes.post(
    "/small",
    access=Access.anonymous,
    summary="A tiny body",
    body=obj({"x": string()}),
    max_body=32,
    responses={201: ANY},
)
async def small(call: Call) -> Any:
    return Reply({"got": call.body}, status=201, headers={"Location": "/api/v1/small/1"})


@extra_routes.post("/poke", access=Access.admin, summary="No body at all", responses={204: None})
async def poke(call: Call) -> Any:
    return Reply(status=204)


@extra_routes.get(
    "/wrong", access=Access.anonymous, summary="Answers off its schema", responses={200: THING}
)
async def wrong(call: Call) -> Any:
    return {"thing_id": 42}


def extended_table() -> RouteTable:
    """The production table plus the test-only routes."""
    return default_table().extended(*extra_routes)
