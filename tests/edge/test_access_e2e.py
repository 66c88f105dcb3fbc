"""Who can open an app, end to end: the real apps, identity and gateway services, the gateway
running nginx for the local domain. A static website (signed in at the edge: it has no login of
its own) limited to alice sends anonymous visitors to sign in at my.localhost, lets alice in,
refuses bob, and opens to everyone once its list says everyone; the gateway's internals do not
answer through nginx."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from deploy.embedded import free_ports
from tests.apps.appskit import STATIC, Apps, apps_env, running_apps, static_catalog
from tests.edge.accesskit import People, make_people
from tests.gateway.apikit import running_gateway
from tests.identity.kit import running_identity
from tests.support.bus import relaying
from tests.support.nginx import LoopbackResolver
from tests.support.waits import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

EDGE_COOKIE = "__Host-hp_edge"


@dataclass
class Stack:
    apps: Apps
    cast: People
    https_port: int
    http: aiohttp.ClientSession

    def url(self, host: str, path: str = "/") -> str:
        return f"https://{host}:{self.https_port}{path}"

    async def get(
        self, url: str, cookies: dict[str, str] | None = None
    ) -> tuple[int, Any, str, SimpleCookie]:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in (cookies or {}).items())}
        async with self.http.get(url, headers=headers, allow_redirects=False) as r:
            jar: SimpleCookie = SimpleCookie()
            for line in r.headers.getall("Set-Cookie", []):
                jar.load(line)
            return r.status, r.headers, await r.text(), jar


@pytest.fixture
async def stack(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    docker_host: str,
    uniq: str,
) -> AsyncIterator[Stack]:
    http_port, https_port = free_ports(2)
    env = apps_env(
        dsn=dsn,
        nats_url=nats_url,
        tmp_path=tmp_path / "apps",
        docker_host=docker_host,
        prefix=f"a{uniq[:8]}",
        catalog=static_catalog(tmp_path / "catalog"),
        extra={"HP_EDGE_HTTPS_PORT": str(https_port)},
    )
    edge_env = {
        "HP_EDGE": "true",
        "HP_EDGE_DIR": str(tmp_path / "edge"),
        "HP_EDGE_HTTP_PORT": str(http_port),
        "HP_EDGE_HTTPS_PORT": str(https_port),
        "HP_EDGE_BIND": "127.0.0.1",
        "HP_EDGE_INTERVAL": "300",
        "HP_ACME_DIR": str(tmp_path / "acme"),
    }
    (tmp_path / "apps").mkdir()
    (tmp_path / "identity").mkdir()
    (tmp_path / "gateway").mkdir()
    connector = aiohttp.TCPConnector(ssl=False, resolver=LoopbackResolver())
    async with (
        running_identity(
            monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path / "identity"
        ) as identity,
        running_apps(monkeypatch, env) as apps,
        running_gateway(
            monkeypatch,
            dsn=dsn,
            nats_url=nats_url,
            uniq=uniq,
            tmp_path=tmp_path / "gateway",
            env=edge_env,
        ),
        relaying(dsn, nats_url, uniq),
        aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as http,
    ):
        cast = await make_people(identity)
        yield Stack(apps, cast, https_port, http)


async def test_a_static_site_limited_to_one_user(stack: Stack) -> None:
    reply = await stack.apps.cmd(
        "install",
        {
            "manifest_id": STATIC,
            "version": "1.0.0",
            "location": "site",
            "access": {"all_users": False, "user_ids": [stack.cast.alice_id]},
        },
    )
    assert (await stack.apps.wait_task(reply["task_id"]))["type"] == "TaskSucceeded"
    site = "site.localhost"

    status, headers, body, _ = await stack.get(stack.url(site, "/"))
    assert status == 302, body  # today: 200 and the page
    signin = headers["Location"]
    assert signin.startswith(f"https://my.localhost:{stack.https_port}/.homeport/signin?next=")

    async def cookie_of(session: str) -> str:
        status, headers, _, _ = await stack.get(signin, {"__Host-hp_session": session})
        assert status == 302
        status, headers, _, jar = await stack.get(headers["Location"])
        assert status == 302 and headers["Location"] == "/"
        return jar[EDGE_COOKIE].value

    alice = await cookie_of(stack.cast.session_alice)
    status, _, body, _ = await stack.get(stack.url(site), {EDGE_COOKIE: alice})
    assert status == 200 and "version 1.0.0" in body
    bob = await cookie_of(stack.cast.session_bob)
    status, _, body, _ = await stack.get(stack.url(site), {EDGE_COOKIE: bob})
    assert status == 403 and "version 1.0.0" not in body

    # the gateway's internals answer on its loopback port, never through nginx
    for path in ("/metrics", "/healthz", "/readyz"):
        status, _, body, _ = await stack.get(stack.url("my.localhost", path))
        assert status == 404, (path, body[:200])

    # once the list says everyone, the site is public again
    reply = await stack.apps.cmd(
        "configure", {"app_id": reply["app_id"], "access": {"all_users": True}}
    )
    assert (await stack.apps.wait_task(reply["task_id"]))["type"] == "TaskSucceeded"

    async def public() -> bool:
        status, _, body, _ = await stack.get(stack.url(site))
        return status == 200 and "version 1.0.0" in body

    await wait_until(public, 20, "the site open to anonymous visitors")
