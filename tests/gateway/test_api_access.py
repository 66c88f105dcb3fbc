"""Authorization is decided in one place from the route table; every served route is walked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from nats.aio.client import Client as NATS

from libs.contracts.schema import obj, string
from libs.events.bus import Bus
from libs.events.context import Context
from services.gateway.api import (
    Access,
    BusAuthenticator,
    Credentials,
    Route,
    Routes,
    RouteTable,
    Via,
    default_table,
)
from tests.gateway.apichecks import WRONG, walk
from tests.gateway.apikit import (
    ANY,
    Cast,
    api_app_of,
    extended_table,
    running_gateway,
    serve_api,
)
from tests.identity.kit import running_identity


async def test_walk_every_route_of_the_running_gateway(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
    cast: Cast,
) -> None:
    """The production wiring (services.gateway.__main__.build), every route it serves."""
    async with running_gateway(
        monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path
    ) as gw:
        api = api_app_of(gw.svc.http_app)
        counts = await walk(gw.client, api, cast)
    # anonymous: GET and HEAD of /status and /openapi.json, POST /setup, POST /session;
    # user: DELETE /session, GET and HEAD of /profile, /tasks/{task_id} and its /events;
    # admin: GET and HEAD of /activity, /activity/export and /users, POST /users,
    # PATCH /users/{user_id},
    # POST /users/{user_id}/disable and /enable, DELETE /users/{user_id}
    # groups.py: anonymous 3 (accept an invitation, ask for and complete a reset); admin 14
    # (GET and HEAD of /groups, /groups/{group_id}, /invitations; 8 changes)
    # security.py: anonymous 1 (POST /session/totp); user 9 (GET and HEAD of /profile/totp and
    # /profile/tokens, POST /profile/totp, its /confirm and /disable, POST /profile/tokens,
    # DELETE /profile/tokens/{token_id}); admin 3 (GET, HEAD and PUT /settings/mfa)
    # identity.py, own account: user 5 (PATCH /profile, POST /profile/password, GET and HEAD
    # of /profile/sessions, DELETE /profile/sessions/{session_id})
    # apps.py: user 8 (GET and HEAD of /catalog, /catalog/{manifest_id} and its /icon, /apps);
    # admin 20 (GET and HEAD of /apps/{app_id}, its /snapshots, /logs and /logs/stream;
    # POST /apps; PATCH and DELETE /apps/{app_id}; POST start, stop, restart, update,
    # update/approve, snapshots, restore, clone, repair); domains.py: admin 7 (GET and HEAD
    # of /domains and /domains/{domain}, POST /domains and its /verify, DELETE
    # /domains/{domain});
    # certificates.py: admin 4 (GET and HEAD /certificates, POST /certificates and
    # /certificates/{primary}/renew); metrics.py: admin 2 (GET and HEAD /metrics/history)
    # backups.py: admin 15 (GET and HEAD of /backups/settings, /backups and
    # /apps/{app_id}/backups; PUT /backups/target, /schedule and /retention; POST
    # /backups/key, /backups, /backups/prune and a backup's /restore, /clone and /verify)
    # setup_restore.py: anonymous 3 (GET, HEAD and POST /setup/restore)
    # app_updates.py: admin 6 (GET, HEAD and PUT /app-updates/settings, GET and HEAD
    # /app-updates/pending, PUT /apps/{app_id}/auto-update)
    # platform_updates.py: admin 4 (GET and HEAD /platform/updates, POST its /check, PUT its
    # /settings)
    # mail.py: user 6 (GET and HEAD /profile/mail, POST /profile/mail/app-passwords, DELETE
    # one, PUT and DELETE /profile/mail/forwarding); admin 26 (GET and HEAD of /mail/domains,
    # /mail/domains/{domain}, /mail/mailboxes, /mail/mailboxes/{user_id} and /mail/status;
    # POST /mail/domains, DELETE a domain, PUT its /catch-all, POST its /dkim/rotate, PUT and
    # DELETE an address, PUT a mailbox's /quota, PUT and DELETE its /forwarding; GET, HEAD and
    # PUT /mail/dnsbl; GET, HEAD, PUT and DELETE /mail/relay)
    # firewall.py: admin 14 (GET and HEAD of /firewall, /firewall/allowlists/{scope},
    # /firewall/blocklist and /apps/{app_id}/firewall; PUT an allow list, POST its /confirm,
    # PUT /firewall/blocklist, POST its /add and /remove, PUT /apps/{app_id}/internet)
    # notifications.py: admin 11 (GET and HEAD of /notifications, its /unread and /preferences
    # and /alerts; POST /notifications/read and /test, PUT /notifications/preferences)
    assert counts == {
        "anonymous": 6 + 3 + 1 + 3,
        "user": 7 + 9 + 5 + 8 + 6,
        "admin": 11 + 14 + 3 + 20 + 7 + 4 + 2 + 15 + 6 + 4 + 26 + 14 + 11,
    }


async def test_walk_every_kind_of_route(nc: NATS, cast: Cast) -> None:
    """The same walk over user, owner, admin, POST and DELETE routes (test-only routes)."""
    holder: list[web.Application] = []
    async with serve_api(nc, table=extended_table(), api_hook=holder.append) as client:
        counts = await walk(client, holder[0], cast)
    assert counts["user"] >= 4 and counts["admin"] >= 5 and counts["anonymous"] >= 8


async def test_a_route_added_around_the_table_is_refused_and_found(nc: NATS, cast: Cast) -> None:
    ran: list[str] = []

    async def sneaky(request: web.Request) -> web.Response:
        ran.append(request.path)
        return web.json_response({"secret": "admin things"})

    holder: list[web.Application] = []

    def add_behind_the_tables_back(api: web.Application) -> None:
        api.router.add_get("/backdoor", sneaky)
        holder.append(api)

    async with serve_api(nc, api_hook=add_behind_the_tables_back) as client:
        for creds in ({}, {"token": cast.token_root}):
            a = await client.call("GET", "/api/v1/backdoor", **creds)
            assert a.status == 500 and a.problem["code"] == "internal"
            assert "admin things" not in str(a.body)
        assert ran == []
        with pytest.raises(AssertionError, match=r"without a route-table entry.*backdoor"):
            await walk(client, holder[0], cast)


async def test_admin_user_and_owner_decisions(nc: NATS, cast: Cast) -> None:
    async with serve_api(nc, table=extended_table()) as client:
        # the owner check: alice may see her thing, not bob's; an admin may see both
        ok = await client.call("GET", "/api/v1/things/alice", session=cast.session_alice)
        assert ok.status == 200 and ok.body == {"thing_id": "alice"}
        no = await client.call("GET", "/api/v1/things/bob", token=cast.token_alice)
        assert no.status == 403 and no.problem["code"] == "forbidden"
        for thing in ("alice", "bob"):
            a = await client.call("GET", f"/api/v1/things/{thing}", session=cast.session_root)
            assert a.status == 200
        # path parameters are validated after authorization, before the owner check
        a = await client.call("GET", "/api/v1/things/BOB", token=cast.token_alice)
        assert a.status == 400 and a.problem["field"] == "thing_id"
        a = await client.call("GET", "/api/v1/things/BOB")
        assert a.status == 401
        # DELETE is admin-only
        a = await client.call("DELETE", "/api/v1/things/alice", token=cast.token_alice)
        assert a.status == 403
        a = await client.call("DELETE", "/api/v1/things/alice", token=cast.token_root)
        assert a.status == 204 and a.body == b""
        # the handler sees who called, as actor, and how
        echo = {"name": "x"}
        a = await client.call("POST", "/api/v1/echo", session=cast.session_alice, body=echo)
        assert a.status == 200, a.body
        assert a.body["actor"] == cast.alice_id and a.body["user"] == "alice"
        assert a.body["via"] == "session" and a.body["ip"] == "127.0.0.1"
        a = await client.call("POST", "/api/v1/echo", token=cast.token_alice, body=echo)
        assert a.body["via"] == "token"
        # X-Real-IP is believed from a proxy on loopback (nginx), and only if it is an address
        for real, ip in (("198.51.100.7", "198.51.100.7"), ("not-an-ip", "127.0.0.1")):
            a = await client.call(
                "POST", "/api/v1/echo", token=cast.token_alice, body=echo,
                headers={"X-Real-IP": real},
            )  # fmt: skip
            assert a.body["ip"] == ip
        # the header wins over the cookie
        a = await client.call(
            "GET", "/api/v1/me", token=cast.token_root, session=cast.session_alice
        )
        assert a.body == {"user_id": cast.root_id, "scope": "full"}


async def test_read_only_tokens_may_only_read(nc: NATS, cast: Cast) -> None:
    alice_read, root_read = cast.token_alice_read, cast.token_root_read
    async with serve_api(nc, table=extended_table()) as client:
        a = await client.call("GET", "/api/v1/me", token=alice_read)
        assert a.status == 200 and a.body == {"user_id": cast.alice_id, "scope": "read"}
        a = await client.call("HEAD", "/api/v1/activity", token=root_read)
        assert a.status != 403
        for method, path, body in (
            ("POST", "/api/v1/echo", {"name": "x"}),
            ("POST", "/api/v1/poke", None),
            ("DELETE", "/api/v1/things/alice", None),
        ):
            for token in (alice_read, root_read):
                a = await client.call(method, path, token=token, body=body)
                if token == alice_read and path != "/api/v1/echo":
                    assert a.status == 403  # not an admin, whatever the scope
                else:
                    assert a.status == 403 and "read-only" in a.problem["detail"], (path, a.body)
        a = await client.call("POST", "/api/v1/poke", token=cast.token_root)
        assert a.status == 204


async def test_bad_credentials_and_identity_trouble(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path, nc: NATS
) -> None:
    malformed = (
        {"Authorization": "Basic YWxpY2U6cGFzc3dvcmQ="},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer two words"},
        {"Authorization": f"Bearer {'x' * 600}"},
        {"Cookie": "__Host-hp_session=caf\u00e9"},
    )
    async with serve_api(nc, table=extended_table()) as client:
        # identity is not running: who the caller is cannot be decided
        a = await client.call("GET", "/api/v1/me", token=WRONG)
        assert a.status == 503 and a.problem["code"] == "unavailable"
        # without credentials nothing needs asking
        a = await client.call("GET", "/api/v1/me")
        assert a.status == 401
        # malformed credentials never reach identity: refused while it is away
        for headers in malformed:
            a = await client.call("GET", "/api/v1/me", headers=headers)
            assert a.status == 401, headers
            assert a.problem["code"] == "unauthorized"
        async with running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path):
            for headers in malformed:
                a = await client.call("GET", "/api/v1/me", headers=headers)
                assert a.status == 401 and a.problem["code"] == "unauthorized", headers
            a = await client.call("GET", "/api/v1/me", token=WRONG)
            assert a.status == 401
            assert 'error="invalid_token"' in a.headers["WWW-Authenticate"]

        # Fault injection: an identity whose whoami answers off the contract (the real service
        # cannot be made to). A reply that is not a principal is an internal error, not a login.
        liar = Bus(nc, "identity")

        @liar.query("whoami")
        async def whoami(payload: dict[str, Any]) -> Any:
            return {"user_id": "u-x", "username": "x", "is_admin": "yes", "scope": "full"}

        await liar.start()
        try:
            a = await client.call("GET", "/api/v1/me", token="hp_" + "q" * 43)
        finally:
            await liar.stop(grace=1)
        assert a.status == 500 and a.problem["code"] == "internal"
        assert "is_admin" not in a.problem["detail"]


async def test_bus_authenticator_contract(nc: NATS, cast: Cast) -> None:
    from libs.events.bus import BusClient

    auth = BusAuthenticator(lambda: BusClient(nc, sender="gateway"))
    ctx = Context(actor="anonymous", correlation_id="c-1", ip="192.0.2.1")
    p = await auth.authenticate(Credentials(Via.session, cast.session_root), ctx)
    assert p is not None and (p.user_id, p.username, p.is_admin) == (cast.root_id, "root", True)
    assert p.scope.value == "full" and p.via is Via.session
    p = await auth.authenticate(Credentials(Via.token, cast.token_alice_read), ctx)
    assert p is not None and p.scope.value == "read" and p.via is Via.token
    assert (p.user_id, p.username, p.is_admin) == (cast.alice_id, "alice", False)
    assert await auth.authenticate(Credentials(Via.token, WRONG), ctx) is None
    assert await auth.authenticate(Credentials(Via.token, malformed=True), ctx) is None
    assert cast.token_alice not in repr(Credentials(Via.token, cast.token_alice))


async def dummy(call: Any) -> Any:
    return {}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "GET", "path": "/x", "summary": "s"}, "access"),
        ({"method": "GET", "path": "/x", "access": "admin", "summary": "s"}, "Access"),
        ({"method": "TRACE", "path": "/x", "access": Access.user, "summary": "s"}, "method"),
        ({"method": "GET", "path": "x", "access": Access.user, "summary": "s"}, "path"),
        ({"method": "GET", "path": "/x/{id:\\d+}", "access": Access.user, "summary": "s"}, "path"),
        ({"method": "GET", "path": "/x", "access": Access.user, "summary": " "}, "summary"),
        (
            {"method": "GET", "path": "/x", "access": Access.user, "summary": "s", "body": ANY},
            "body",
        ),
        (
            {
                "method": "GET",
                "path": "/x",
                "access": Access.admin,
                "summary": "s",
                "owner": dummy,
            },
            "ownership",
        ),
        (
            {"method": "GET", "path": "/x/{id}", "access": Access.user, "summary": "s"},
            "path_params",
        ),
        (
            {
                "method": "GET",
                "path": "/x",
                "access": Access.user,
                "summary": "s",
                "query": obj({"n": {"type": "integer", "minimun": 1}}),
            },
            "minimun",
        ),
        (
            {
                "method": "GET",
                "path": "/x",
                "access": Access.user,
                "summary": "s",
                "query": obj({"n": {"type": "array"}}),
            },
            "parameter n",
        ),
        (
            {
                "method": "GET",
                "path": "/x",
                "access": Access.user,
                "summary": "s",
                "responses": {302: None},
            },
            "2xx",
        ),
    ],
)
def test_declarations_are_checked(kwargs: dict[str, Any], message: str) -> None:
    declared = {"handler": dummy, "responses": {200: ANY}, **kwargs}
    with pytest.raises((TypeError, ValueError), match=message):
        Route(**declared)


def test_table_refuses_duplicates_and_shadows() -> None:
    routes = Routes("t")
    routes.get("/a/{x}", access=Access.user, summary="a", responses={200: ANY},
               path_params=obj({"x": string()}, required=["x"]))(dummy)  # fmt: skip

    async def other(call: Any) -> Any:
        return {}

    routes.get("/a/{y}", access=Access.user, summary="b", responses={200: ANY},
               path_params=obj({"y": string()}, required=["y"]))(other)  # fmt: skip
    with pytest.raises(ValueError, match="shadows"):
        RouteTable(routes)
    twice = list(default_table())
    with pytest.raises(ValueError, match="declared twice"):
        RouteTable([*twice, twice[0]])
