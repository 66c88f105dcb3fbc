"""The dashboard at the server's own address while the platform has no domain of its own (the
installer's setup link names the address), every part real: the gateway running nginx, the
identity, dns and certs services, PowerDNS and Pebble.

Before a domain: https://127.0.0.1:<port>/ and https://[::1]:<port>/ (no SNI, as browsers send
none for an address) serve the dashboard with its security headers and the fallback
certificate; the setup wizard works through it with the setup token and is refused without it;
sign-in sets the `__Host-` cookie, which signs later requests in; the CSRF check holds there;
`/metrics`, `/healthz`, `/readyz` are refused; plain HTTP to the address is a 301 to https on
the same address; a DNS name no vhost has is still refused. After a domain is added, and once
`my.<domain>` has its certificate from the CA (Pebble), the address is refused again like any
unknown host and `my.<domain>` serves the dashboard. Also the rendered configuration of both
states (tests/edge/test_render.py has the rest of the renderer).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from deploy.embedded import free_port
from services.gateway.edge import EdgeModel, Vhost, render
from services.gateway.edge.render import ADDRESS_NAMES, DASHBOARD_CSP, HSTS
from tests.certs.certskit import certs_env, running_certs
from tests.dns.dnskit import dns_env, pdns_provider, running_dns
from tests.gateway.apikit import running_gateway
from tests.identity.kit import Identity
from tests.support.bus import relaying
from tests.support.edge import edge_get, refused
from tests.support.pdns import PdnsServer, PdnsZone, create_zone
from tests.support.pebble import PebbleServer, start_pebble
from tests.support.waits import wait_until

pytestmark = pytest.mark.timeout(300)

DOMAIN = "address.test"
MY = f"my.{DOMAIN}"
ADMIN = {"username": "owner", "email": "owner@example.test", "password": "a long passphrase, 2"}


@dataclass
class _Resolver:
    """What start_pebble needs of its DNS server: where it listens (here: the PowerDNS)."""

    dns_address: str


@dataclass
class World:
    identity: Identity
    dns: Any
    pebble: PebbleServer
    zone: PdnsZone
    http_port: int
    https_port: int
    gateway_port: int


@pytest.fixture
def pebble_via_pdns(pdns: PdnsServer, tmp_path: Path) -> Iterator[PebbleServer]:
    host, port = pdns.nameservers[0]
    server = start_pebble(tmp_path / "pebble", _Resolver(f"{host}:{port}"), nosleep=True)  # type: ignore[arg-type]
    yield server
    server.stop()


@pytest.fixture
async def world(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    tmp_root: Path,
    uniq: str,
    pdns: PdnsServer,
    pebble_via_pdns: PebbleServer,
    identity: Identity,
) -> AsyncIterator[World]:
    create_zone(pdns, DOMAIN)
    acme_dir = tmp_root / f"acme-{uniq}"  # nginx's workers read the tokens: not under tmp_path
    acme_dir.mkdir(mode=0o755)
    https_port = free_port()
    http_port = pebble_via_pdns.http_port  # where Pebble validates http-01: nginx
    shared = {"HP_ACME_DIR": str(acme_dir)}
    env_dns = dns_env(dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, extra=shared)
    env_certs = certs_env(
        dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, pebble=pebble_via_pdns, extra=shared
    )
    env_edge = {
        **shared,
        "HP_EDGE": "true",
        "HP_EDGE_DIR": str(tmp_path / "edge"),
        "HP_EDGE_HTTP_PORT": str(http_port),
        "HP_EDGE_HTTPS_PORT": str(https_port),
        "HP_EDGE_BIND": "127.0.0.1,::1",
        "HP_EDGE_INTERVAL": "300",  # the safety net: the edge follows the events here
    }
    try:
        async with (
            running_dns(monkeypatch, env_dns) as dns,
            running_certs(monkeypatch, env_certs),
            running_gateway(
                monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path, env=env_edge
            ) as gw,
            relaying(dsn, nats_url, uniq),
        ):
            yield World(
                identity,
                dns,
                pebble_via_pdns,
                PdnsZone(DOMAIN, pdns),
                http_port,
                https_port,
                gw.svc.port,
            )
    finally:
        pdns.api("DELETE", f"/api/v1/servers/localhost/zones/{DOMAIN}.")


def _browser() -> aiohttp.ClientSession:
    """A browser that accepted the self-signed certificate's warning; it keeps cookies of
    addresses (aiohttp's default jar drops them) and follows no redirect by itself."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=False),
        cookie_jar=aiohttp.CookieJar(unsafe=True),
    )


async def _call(
    browser: aiohttp.ClientSession, method: str, url: str, origin: str | None, body: Any = None
) -> tuple[int, Any, aiohttp.ClientResponse]:
    headers = {"Origin": origin} if origin else {}
    async with browser.request(
        method, url, json=body, headers=headers, allow_redirects=False
    ) as resp:
        text = await resp.text()
        try:
            data: Any = await resp.json(content_type=None) if text else None
        except ValueError:
            data = text
        return resp.status, data, resp


async def test_the_dashboard_at_the_address_until_the_domain_has_its_certificate(
    world: World,
) -> None:
    w = world
    token = w.identity.setup_token
    for address in ("127.0.0.1", "[::1]"):
        origin = f"https://{address}:{w.https_port}"
        async with _browser() as browser:
            # the page, with the dashboard's headers (as my.<domain> has them: the gateway's CSP
            # passes beside nginx's, the API's own is stricter)
            status, _, resp = await _call(browser, "GET", f"{origin}/", None)
            assert status == 200, (address, status)
            assert DASHBOARD_CSP in resp.headers.getall("Content-Security-Policy")
            assert resp.headers.getall("Strict-Transport-Security") == [HSTS]
            assert resp.headers.getall("X-Frame-Options") == ["DENY"]
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["Cross-Origin-Resource-Policy"] == "same-origin"
            assert resp.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
            for path in ("/metrics", "/healthz", "/readyz"):
                status, _, _ = await _call(browser, "GET", f"{origin}{path}", None)
                assert status == 404, (address, path, status)
            # the gateway's own port has them (nginx refused them above)
            async with browser.get(f"http://127.0.0.1:{w.gateway_port}/healthz") as direct:
                assert direct.status == 200
            if address != "127.0.0.1":
                continue  # set up once, through the IPv4 address; IPv6 signs in below
            setup_url = f"{origin}/api/v1/setup"
            status, problem, _ = await _call(browser, "POST", setup_url, origin, ADMIN)
            assert status in (400, 403) and "setup_token" in str(problem), problem
            wrong = {**ADMIN, "setup_token": token[::-1]}
            status, problem, _ = await _call(browser, "POST", setup_url, origin, wrong)
            assert status == 403 and "setup_token" in str(problem), problem
            status, _, _ = await _call(
                browser, "POST", setup_url, "https://evil.example", {**ADMIN, "setup_token": token}
            )
            assert status == 403  # CSRF: another origin
            status, made, _ = await _call(
                browser, "POST", setup_url, origin, {**ADMIN, "setup_token": token}
            )
            assert status == 201, made
        async with _browser() as browser:
            login = {"username": ADMIN["username"], "password": ADMIN["password"]}
            url = f"{origin}/api/v1/session"
            status, _, _ = await _call(
                browser, "POST", url, f"https://10.9.9.9:{w.https_port}", login
            )
            assert status == 403  # an address that is not this request's is another origin
            status, answer, resp = await _call(browser, "POST", url, origin, login)
            assert status == 200, (address, answer)
            cookie = resp.headers["Set-Cookie"]
            assert cookie.startswith("__Host-hp_session=") and "Secure" in cookie, cookie
            assert "Domain" not in cookie and "Path=/" in cookie, cookie
            status, profile, _ = await _call(browser, "GET", f"{origin}/api/v1/profile", None)
            assert status == 200 and profile["username"] == ADMIN["username"], profile
            # a change signed in by the cookie without an Origin is no browser's: refused
            status, _, _ = await _call(browser, "DELETE", url, None)
            assert status == 403
            status, _, _ = await _call(browser, "DELETE", url, origin)
            assert status == 204

    # plain HTTP to the address: to https on the same address
    async with _browser() as browser:
        status, _, resp = await _call(
            browser, "GET", f"http://127.0.0.1:{w.http_port}/some/where?x=1", None
        )
        assert status == 301
        assert resp.headers["Location"] == f"https://127.0.0.1:{w.https_port}/some/where?x=1"
    # a DNS name that is no vhost's (a name pointed here, DNS rebinding) is not the dashboard
    assert await refused(w.https_port, "rebind.example.test")
    assert await refused(w.https_port, "127.0.0.1.nip.example")
    status, _, _ = await edge_get(w.https_port, "my.localhost")  # the on-server way stays
    assert status == 200

    # a domain of its own: my.<domain> gets its record and certificate (Pebble over HTTP-01)
    provider = pdns_provider(w.zone)
    await w.dns.cmd(
        "add_domain", {"domain": DOMAIN, "provider": provider, "server_ipv4": "127.0.0.1"}
    )

    async def my_issued() -> bool:
        try:
            status, headers, _ = await edge_get(w.https_port, MY, cadata=w.pebble.root_pem)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            return False  # the self-signed fallback is not trusted: not issued yet
        return status == 200 and headers.get("content-security-policy") == DASHBOARD_CSP

    await wait_until(my_issued, 120, f"https://{MY}/ served with Pebble's certificate")

    async def address_refused() -> bool:
        return await refused(w.https_port, "127.0.0.1")

    await wait_until(address_refused, 20, "the address refused once the domain is served")
    async with _browser() as browser:
        with pytest.raises(aiohttp.ClientError):
            await _call(browser, "GET", f"https://[::1]:{w.https_port}/", None)
    status, _, _ = await edge_get(w.http_port, "127.0.0.1", tls=False)
    assert status == 0  # 444: closed without an answer
    status, headers, _ = await edge_get(w.http_port, MY, "/x", tls=False)
    assert status == 301 and headers["location"] == f"https://{MY}:{w.https_port}/x"


# -- the rendered configuration ---------------------------------------------------------------

ROOT = Path("/srv/hp")


def _model(address: str | None, *vhosts: Vhost, https_port: int = 443) -> EdgeModel:
    return EdgeModel(
        vhosts=vhosts,
        http_port=80,
        https_port=https_port,
        acme_dir=ROOT / "acme",
        default_cert=ROOT / "certs/default.pem",
        default_key=ROOT / "certs/default.key",
        log_dir=ROOT / "logs",
        pid_file=ROOT / "run/nginx.pid",
        temp_dir=ROOT / "temp",
        address=address,
    )


def _https_tail(conf: str, upstream: str, forwarded_host: str) -> list[str]:
    """The last HTTPS server block of `conf` from its body size on, names made neutral."""
    block = conf.rsplit("server {", 1)[1].split("client_max_body_size", 1)[1]
    block = block.replace(f"http://{upstream};", "http://UP;")
    return block.replace(f"X-Forwarded-Host {forwarded_host};", "X-Forwarded-Host H;").splitlines()


def test_the_address_servers_are_rendered_only_with_an_address() -> None:
    my = Vhost(MY, "dashboard", "127.0.0.1:7410", ROOT / "my.pem", ROOT / "my.key")
    local = Vhost(
        "my.localhost", "dashboard", "127.0.0.1:7410", ROOT / "l.pem", ROOT / "l.key", loopback=True
    )
    before = render(_model("127.0.0.1:7410", local))
    assert render(_model("127.0.0.1:7410", local)) == before  # deterministic
    default = before["default.conf"]
    assert "ssl_reject_handshake" not in default  # an address has no SNI
    assert f'server_name "{ADDRESS_NAMES}";' in default
    assert "proxy_pass http://hp-address;" in default
    assert "proxy_set_header X-Forwarded-Host $host;" in default  # 443: no port
    assert "return 301 https://$host$request_uri;" in default
    # the dashboard's server block at the address is my.<domain>'s but for its names
    mine = render(_model(None, my))[f"sites/{MY}.conf"]
    assert _https_tail(default, "hp-address", "$host") == _https_tail(
        mine, f"hp_{MY.replace('.', '_')}", MY
    )
    # once the domain has its certificate: the default servers refuse every unknown host
    after = render(_model(None, local, my))["default.conf"]
    assert "ssl_reject_handshake on;" in after
    assert "hp-address" not in after and ADDRESS_NAMES not in after
    # a high port is named in the redirect and the forwarded host
    high = render(_model("127.0.0.1:7410", https_port=8443))["default.conf"]
    assert "return 301 https://$host:8443$request_uri;" in high
    assert "proxy_set_header X-Forwarded-Host $host:8443;" in high


@pytest.mark.parametrize("upstream", ["127.0.0.1", "localhost:80", "127.0.0.1:80; evil", "::1:80"])
def test_an_address_upstream_that_is_not_ip_and_port_is_refused(upstream: str) -> None:
    with pytest.raises(ValueError, match="upstream"):
        _model(upstream)
