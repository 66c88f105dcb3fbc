"""Who can open an app, enforced at the edge, through a real nginx: the gateway's sign-in
(services/gateway/edge/signin.py) served on a real port with the real identity service behind
it, nginx asking it about every request to an app signed in at the edge.

blog.example.test is open to alice (and, later, a group's members) and signed in at the edge;
wiki.example.test has no sign-in at the edge (open to everyone, or an LDAP app's own login);
my.example.test is the dashboard (the gateway). The upstream app echoes what it was sent."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from deploy.embedded import free_port
from services.gateway.api.auth import BusAuthenticator
from services.gateway.api.principals import CachingAuthenticator, IdentityChanges, PrincipalCache
from services.gateway.edge import Nginx
from services.gateway.edge.signin import (
    CookieBox,
    EdgeAccess,
    EdgeSignIn,
    OneTimeCodes,
    Rule,
    add_edge_signin,
)
from tests.edge.accesskit import People, make_people
from tests.identity.kit import Identity, running_identity
from tests.support.bus import ActorBus, connect
from tests.support.nginx import (
    BLOG,
    MY,
    Edge,
    Pki,
    Upstream,
    build_model,
    decode,
    nginx_binary,
    session,
)
from tests.support.waits import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

WIKI = "wiki.example.test"
EDGE_COOKIE = "__Host-hp_edge"


@dataclass
class Scene:
    edge: Edge
    cast: People
    access: EdgeAccess
    http: aiohttp.ClientSession

    def url(self, host: str, path: str = "/") -> str:
        return self.edge.url(host, path)

    async def get(
        self, url: str, *, cookies: dict[str, str] | None = None, **headers: str
    ) -> tuple[int, dict[str, str], bytes, SimpleCookie]:
        """One GET, redirects not followed: (status, headers, body, cookies it sets)."""
        h = dict(headers)
        if cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        async with self.http.get(url, headers=h, allow_redirects=False) as r:
            body = await r.read()
            jar: SimpleCookie = SimpleCookie()
            for line in r.headers.getall("Set-Cookie", []):
                jar.load(line)
            return r.status, dict(r.headers), body, jar

    async def sign_in(self, session: str, path: str = "/") -> str:
        """The browser's way in: app -> my.<domain> (signed in there) -> callback -> cookie."""
        status, headers, _, _ = await self.get(self.url(BLOG, path))
        assert status == 302, status
        status, headers, _, _ = await self.get(
            headers["Location"], cookies={"__Host-hp_session": session}
        )
        assert status == 302, status
        callback = headers["Location"]
        status, headers, _, jar = await self.get(callback)
        assert status == 302, (status, callback)
        return jar[EDGE_COOKIE].value


@contextlib.asynccontextmanager
async def gateway_signin(signin: EdgeSignIn) -> AsyncIterator[str]:
    """The gateway's edge sign-in routes on a real loopback port: its address."""
    app = web.Application()
    add_edge_signin(app, signin)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def identity(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path
) -> AsyncIterator[Identity]:
    async with running_identity(
        monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path
    ) as ident:
        yield ident


@pytest.fixture
async def scene(
    identity: Identity, nats_url: str, edge_root: Path, pki: Pki, upstream: Upstream
) -> AsyncIterator[Scene]:
    cast = await make_people(identity)
    nc = await connect(nats_url)
    bus = ActorBus(nc)
    cache = PrincipalCache(1.0)
    auth = CachingAuthenticator(BusAuthenticator(lambda: bus), cache)
    nginx = Nginx(edge_root / "nginx", binary=nginx_binary())
    model = build_model(nginx, edge_root, pki, ())
    access = EdgeAccess()
    access.replace({BLOG: Rule(frozenset({cast.alice_id}), frozenset())})
    signin = EdgeSignIn(access, auth, lambda: bus, model.https_port)
    try:
        async with (
            IdentityChanges(cache, nc).following(),
            gateway_signin(signin) as gateway,
            session(pki, cookie_jar=aiohttp.DummyCookieJar()) as http,
        ):
            edge = Edge(nginx, model, pki, upstream, model.acme_dir)
            edge.model = edge.with_vhosts(
                edge.vhost(BLOG, auth=gateway),
                edge.vhost(WIKI),
                replace(edge.vhost(MY, "dashboard"), upstream=gateway),
            )
            await nginx.apply(edge.model)
            await nginx.start()
            try:
                yield Scene(edge, cast, access, http)
            finally:
                await nginx.stop()
    finally:
        await nc.close()


async def test_anonymous_is_sent_to_sign_in_and_comes_back_to_the_page(scene: Scene) -> None:
    page = "/notes/today?a=1&b=2"
    status, headers, _, _ = await scene.get(scene.url(BLOG, page), **{"X-Homeport-User": "alice"})
    assert status == 302  # the forged header does not get anyone in
    signin = headers["Location"]
    port = scene.edge.https_port
    assert signin == (
        f"https://{MY}:{port}/.homeport/signin?next="
        + quote(f"https://{BLOG}:{port}{page}", safe="")
    )
    # not signed in at my.<domain> either: the dashboard's sign-in page, which comes back
    status, headers, _, _ = await scene.get(signin)
    assert status == 302
    login = headers["Location"]
    assert login.startswith("/#/login?next=") and login.count("?") == 1  # the router splits on ?
    back = urlsplit(unquote(login.removeprefix("/#/login?next=")))
    assert back.path == "/.homeport/signin"
    assert parse_qs(back.query)["next"] == [f"https://{BLOG}:{port}{page}"]
    # signed in there: a one-time code for the app's own host
    status, headers, _, _ = await scene.get(
        signin, cookies={"__Host-hp_session": scene.cast.session_alice}
    )
    assert status == 302
    callback = urlsplit(headers["Location"])
    assert (callback.hostname, callback.port, callback.path) == (BLOG, port, "/.homeport/callback")
    assert parse_qs(callback.query)["next"] == [page]
    status, headers, _, jar = await scene.get(headers["Location"])
    assert status == 302 and headers["Location"] == page
    cookie = jar[EDGE_COOKIE]
    assert cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "Lax"
    assert cookie["path"] == "/" and not cookie["domain"]
    # the code was good once
    again, _, body, _ = await scene.get(scene.url(BLOG, callback.path + "?" + callback.query))
    assert again == 400 and b"expired or was already used" in body

    status, _, body, _ = await scene.get(
        scene.url(BLOG, page),
        cookies={"theme": "dark", EDGE_COOKIE: cookie.value, "lang": "en"},
        **{"X-Homeport-User": "root", "X-Homeport-Email": "root@example.test"},
    )
    assert status == 200
    seen = decode(body)
    assert seen["path"] == page
    assert seen["headers"]["x-homeport-user"] == "alice"  # nginx's, not the client's
    assert seen["headers"]["x-homeport-email"] == "alice@example.test"
    assert EDGE_COOKIE not in seen["headers"]["cookie"]  # the app never sees it
    assert "theme=dark" in seen["headers"]["cookie"] and "lang=en" in seen["headers"]["cookie"]

    # sign-out on the app's host clears it
    status, _, _, jar = await scene.get(
        scene.url(BLOG, "/.homeport/signout"), cookies={EDGE_COOKIE: cookie.value}
    )
    assert status == 200
    assert jar[EDGE_COOKIE].value == "" and jar[EDGE_COOKIE]["max-age"] == "0"


async def test_a_user_outside_the_list_is_refused_until_a_group_lets_them_in(
    scene: Scene,
) -> None:
    cookie = await scene.sign_in(scene.cast.session_bob)
    status, _, body, _ = await scene.get(scene.url(BLOG), cookies={EDGE_COOKIE: cookie})
    assert status == 403 and b"x-homeport-user" not in body
    ident, root = scene.cast.identity, scene.cast.root_id
    group = (await ident.cmd("create_group", {"name": "readers"}, actor=root))["group_id"]
    await ident.cmd(
        "add_group_member", {"group_id": group, "user_id": scene.cast.bob_id}, actor=root
    )
    scene.access.replace(
        {BLOG: Rule(frozenset({scene.cast.alice_id}), frozenset({group}))}
    )  # as the edge's next round reads the app's list

    async def let_in() -> bool:
        status, _, _, _ = await scene.get(scene.url(BLOG), cookies={EDGE_COOKIE: cookie})
        return status == 200

    await wait_until(let_in, 5, "bob let in as a member of the app's group")


async def test_a_disabled_users_cookie_stops_working_within_seconds(scene: Scene) -> None:
    cookie = await scene.sign_in(scene.cast.session_alice)
    status, _, _, _ = await scene.get(scene.url(BLOG), cookies={EDGE_COOKIE: cookie})
    assert status == 200
    await scene.cast.identity.cmd(
        "disable_user", {"user_id": scene.cast.alice_id}, actor=scene.cast.root_id
    )

    async def sent_to_sign_in() -> bool:
        status, _, _, _ = await scene.get(scene.url(BLOG), cookies={EDGE_COOKIE: cookie})
        return status == 302

    await wait_until(sent_to_sign_in, 2, "the disabled user's cookie refused")


async def test_the_cookie_is_bound_to_its_host_and_forgeries_are_refused(scene: Scene) -> None:
    cookie = await scene.sign_in(scene.cast.session_alice)
    other = CookieBox()  # another key: what an app or an old gateway could have made
    for forged in (
        other.seal(scene.cast.session_alice, BLOG),
        cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB"),
        scene.cast.session_alice,  # the session itself is not an edge cookie
        "",
    ):
        status, _, _, _ = await scene.get(scene.url(BLOG), cookies={EDGE_COOKIE: forged})
        assert status == 302, forged
    # a code for one host is no good on another
    codes = OneTimeCodes()
    assert codes.take(codes.issue("s", WIKI), BLOG) is None
    box = CookieBox(b"k" * 32)
    assert box.open(box.seal("s", BLOG), WIKI) is None
    assert box.open(box.seal("s", BLOG), BLOG) == "s"
    assert box.open(box.seal("s", BLOG, seconds=-1), BLOG) is None


async def test_forged_user_headers_never_reach_an_app_signed_in_or_not(scene: Scene) -> None:
    forged = {"X-Homeport-User": "root", "X-Homeport-Email": "root@example.test"}
    status, _, body, _ = await scene.get(scene.url(WIKI, "/"), **forged)
    assert status == 200
    seen = decode(body)["headers"]
    assert "x-homeport-user" not in seen and "x-homeport-email" not in seen


async def test_the_edges_own_paths_are_not_the_apps_and_not_the_clients(scene: Scene) -> None:
    for host, path in (
        (BLOG, "/.homeport/auth"),  # nginx's internal subrequest
        (BLOG, "/.homeport/check"),
        (BLOG, "/.homeport/anything"),
        (WIKI, "/.homeport/callback?code=x"),
        (MY, "/.homeport/check"),
    ):
        status, _, body, _ = await scene.get(scene.url(host, path))
        assert status == 404, (host, path, status, body[:200])
    # a sign-in link for a host that is not an app of this edge is refused
    for target in (f"https://{WIKI}:{scene.edge.https_port}/", "https://evil.test/", "/x"):
        status, _, body, _ = await scene.get(
            scene.url(MY, "/.homeport/signin?next=" + quote(target, safe="")),
            cookies={"__Host-hp_session": scene.cast.session_alice},
        )
        assert status == 400, target


async def test_internals_answer_only_on_the_loopback_service_port(edge: Edge) -> None:
    """The dashboard's upstream (the echo app here) would answer; nginx does not ask it."""
    async with session(edge.pki) as http:
        for path in ("/metrics", "/healthz", "/readyz", "/metrics?x=1", "/%6detrics", "//readyz"):
            async with http.get(URL(edge.url(MY, path), encoded=True)) as r:
                assert r.status == 404, path
        async with http.get(edge.url(MY, "/api/v1/status")) as r:
            assert r.status == 200
        async with http.get(edge.url(BLOG, "/metrics")) as r:  # an app's own paths are its own
            assert r.status == 200


async def _handshake(address: str, port: int, host: str) -> bool:
    """Whether a TLS handshake for `host` at address:port succeeds."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(address, port, ssl=ctx, server_hostname=host), 5
        )
    except (OSError, ssl.SSLError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return True


async def test_local_domain_vhosts_listen_on_loopback_only(edge: Edge) -> None:
    """bind 127.0.0.1 and 127.0.0.2 (another address of this machine): my.localhost is served
    on 127.0.0.1 only; other hosts and the refusal of unknown ones on both."""
    local = replace(edge.vhost(MY, "dashboard"), host="my.localhost", loopback=True)
    model = replace(edge.with_vhosts(edge.vhost(BLOG), local), bind=("127.0.0.1", "127.0.0.2"))
    await edge.nginx.apply(model)
    port = model.https_port
    assert await _handshake("127.0.0.1", port, "my.localhost")
    assert not await _handshake("127.0.0.2", port, "my.localhost")
    assert await _handshake("127.0.0.2", port, BLOG)
    assert await _handshake("127.0.0.1", port, BLOG)
    assert not await _handshake("127.0.0.1", port, "unknown.example.test")
    assert not await _handshake("127.0.0.2", port, "unknown.example.test")
