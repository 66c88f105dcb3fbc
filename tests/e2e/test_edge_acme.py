"""The edge issue's journey, every part real: domain example.test on PowerDNS, Pebble resolving
through that PowerDNS, nginx run by the gateway, the dns, certs and apps services.

Install the static app at `blog`: its A record appears in PowerDNS, Pebble issues its
certificate over HTTP-01 (served by nginx from the certs service's token files), and
https://blog.example.test answers the app's page with a chain Pebble's root verifies, HSTS and
the security headers; plain HTTP is a 301; an unknown host and TLS 1.1 are refused. Move the app
to `journal`: new vhost and certificate, DNS record moved, the old vhost and record gone. A
wildcard certificate for *.example.test over DNS-01 (TXT records through the dns service).
The apps service owns an app host's record and certificate; the edge follows the events (its
safety-net poll is 300 s here) and serves what certs has for the host.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.embedded import free_port
from services.dns.propagation import query
from tests.apps.appskit import STATIC, Apps, apps_env, running_apps, static_catalog
from tests.certs.certskit import Certs, certs_env, running_certs
from tests.dns.dnskit import Dns, dns_env, running_dns
from tests.gateway.apikit import running_gateway
from tests.support.bus import relaying
from tests.support.edge import edge_get, refused
from tests.support.pdns import PdnsServer, PdnsZone, create_zone
from tests.support.pebble import PebbleServer, start_pebble
from tests.support.waits import wait_until

pytestmark = pytest.mark.timeout(400)

DOMAIN = "example.test"


@dataclass
class _Resolver:
    """What start_pebble needs of its DNS server: where it listens (here: the PowerDNS)."""

    dns_address: str


@dataclass
class World:
    apps: Apps
    dns: Dns
    certs: Certs
    pebble: PebbleServer
    pdns: PdnsServer
    http_port: int
    https_port: int


@pytest.fixture
def pebble_via_pdns(pdns: PdnsServer, tmp_path: Path) -> AsyncIterator[PebbleServer]:
    host, port = pdns.nameservers[0]
    server = start_pebble(tmp_path / "pebble", _Resolver(f"{host}:{port}"), nosleep=True)  # type: ignore[arg-type]
    yield server  # type: ignore[misc]
    server.stop()


@pytest.fixture
async def world(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    tmp_root: Path,
    docker_host: str,
    uniq: str,
    pdns: PdnsServer,
    pebble_via_pdns: PebbleServer,
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
    env_apps = apps_env(
        dsn=dsn,
        nats_url=nats_url,
        tmp_path=tmp_path,
        docker_host=docker_host,
        prefix=f"w{uniq[:8]}",
        catalog=static_catalog(tmp_path / "catalog"),
        extra={"HP_EDGE_HTTPS_PORT": str(https_port)},  # the port apps' addresses name
    )
    env_edge = {
        **shared,
        "HP_EDGE": "true",
        "HP_EDGE_DIR": str(tmp_path / "edge"),
        "HP_EDGE_HTTP_PORT": str(http_port),
        "HP_EDGE_HTTPS_PORT": str(https_port),
        "HP_EDGE_BIND": "127.0.0.1",
        "HP_EDGE_INTERVAL": "300",  # the safety net: the edge follows the events here
    }
    try:
        async with (
            running_dns(monkeypatch, env_dns) as dns,
            running_certs(monkeypatch, env_certs) as certs,
            running_apps(monkeypatch, env_apps) as apps,
            running_gateway(
                monkeypatch,
                dsn=dsn,
                nats_url=nats_url,
                uniq=uniq,
                tmp_path=tmp_path,
                env=env_edge,
            ),
            relaying(dsn, nats_url, uniq),
        ):
            yield World(apps, dns, certs, pebble_via_pdns, pdns, http_port, https_port)
    finally:
        pdns.api("DELETE", f"/api/v1/servers/localhost/zones/{DOMAIN}.")


async def _get(
    w: World, host: str, path: str = "/", *, tls: bool = True
) -> tuple[int, dict[str, str], str]:
    """GET through nginx as a client that resolves `host` here and trusts only Pebble's root."""
    port = w.https_port if tls else w.http_port
    return await edge_get(port, host, path, tls=tls, cadata=w.pebble.root_pem)


async def _a_record(w: World, name: str) -> list[str]:
    answer = await query(w.pdns.nameservers[0], name, "A")
    return sorted(answer.values) if answer.values else []


async def _served_with_acme(w: World, host: str) -> bool:
    try:
        status, _, body = await _get(w, host)
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
        return False  # the self-signed fallback is not trusted: not yet issued
    return status == 200 and "version 1.0.0" in body


async def _refused(w: World, host: str) -> bool:
    return await refused(w.https_port, host, cadata=w.pebble.root_pem)


async def _tls_1_1_refused(w: World, host: str) -> bool:
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"127.0.0.1:{w.https_port}", "-servername", host,
        "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", "-brief",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 15)
    return proc.returncode != 0 and "Protocol version: TLSv1.1" not in out.decode(errors="replace")


async def test_install_move_and_wildcard_over_real_dns_acme_and_nginx(world: World) -> None:
    w = world
    host, port = w.pdns.nameservers[0]
    domain = await w.dns.cmd(
        "add_domain",
        {
            "domain": DOMAIN,
            "provider": {
                "kind": "powerdns",
                "api_url": w.pdns.api_url,
                "api_key": w.pdns.api_key,
                "zone": DOMAIN,
                "nameservers": [f"{host}:{port}"],
            },
            "server_ipv4": "127.0.0.1",
        },
    )
    assert domain["verified_at"]

    # a name that already has a record Homeport did not create: the install fails naming it,
    # and the record stays as it was
    await PdnsZone(DOMAIN, w.pdns).put(f"taken.{DOMAIN}", "A", ["192.0.2.7"])
    reply = await w.apps.cmd(
        "install",
        {
            "manifest_id": STATIC,
            "version": "1.0.0",
            "location": "taken",
            "domain": DOMAIN,
            "access": {"all_users": True},
        },
    )
    end = await w.apps.wait_task(reply["task_id"])
    assert end["type"] == "TaskFailed" and end["code"] == "dns_conflict", end
    assert f"taken.{DOMAIN}" in end["message"] and "192.0.2.7" in end["message"]
    assert await _a_record(w, f"taken.{DOMAIN}") == ["192.0.2.7"]
    assert (await w.apps.app(reply["app_id"]))["state"] == "error"
    assert not w.apps.docker.containers.list(
        all=True, filters={"label": f"homeport.app={reply['app_id']}"}
    )  # it stopped before anything was built or run

    reply = await w.apps.cmd(
        "install",
        {
            "manifest_id": STATIC,
            "version": "1.0.0",
            "location": "blog",
            "domain": DOMAIN,
            "access": {"all_users": True},
        },
    )
    end = await w.apps.wait_task(reply["task_id"])
    assert end["type"] == "TaskSucceeded"
    app_id = reply["app_id"]

    blog = f"blog.{DOMAIN}"
    # said once nginx serves the host (with the fallback certificate until Pebble's is issued)
    assert f"installed at https://{blog}:{w.https_port}" in end["message"], end
    try:
        await wait_until(
            lambda: _served_with_acme(w, blog), 120, f"{blog} with Pebble's certificate"
        )
    except AssertionError as e:
        listed = await w.certs.bus.query("certs", "certificates", {}, timeout=10)
        raise AssertionError(f"{e}; certificates: {listed}") from None
    assert await _a_record(w, blog) == ["127.0.0.1"]
    _, headers, _ = await _get(w, blog)
    assert headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "strict-origin-when-cross-origin"
    status, headers, _ = await _get(w, blog, "/x?y=1", tls=False)
    assert status == 301 and headers["location"] == f"https://{blog}:{w.https_port}/x?y=1"
    assert await _refused(w, f"nobody.{DOMAIN}")
    assert await _tls_1_1_refused(w, blog)
    listed = await w.certs.bus.query("certs", "certificates", {}, timeout=10)
    mine = [c for c in listed["items"] if c["primary"] == blog]
    assert mine and mine[0]["kind"] == "acme" and mine[0]["days_left"] > 30

    # move the app: new vhost, certificate and record; the old ones are gone
    journal = f"journal.{DOMAIN}"
    reply = await w.apps.cmd("configure", {"app_id": app_id, "location": "journal"})
    assert (await w.apps.wait_task(reply["task_id"]))["type"] == "TaskSucceeded"
    await wait_until(lambda: _served_with_acme(w, journal), 120, f"{journal} with its certificate")
    assert await _a_record(w, journal) == ["127.0.0.1"]
    await wait_until(lambda: _refused(w, blog), 30, f"{blog}'s vhost to go")

    async def blog_record_gone() -> bool:
        return await _a_record(w, blog) == []

    await wait_until(blog_record_gone, 30, f"{blog}'s A record to go")

    # a wildcard certificate over DNS-01: TXT records through the dns service into PowerDNS
    ensure = await w.certs.bus.command(
        "certs",
        "ensure",
        {"names": [f"*.{DOMAIN}", DOMAIN], "challenge": "dns-01"},
        timeout=30,
    )
    assert ensure["task_id"]
    end = await w.apps.wait_task(ensure["task_id"], 200)
    assert end["type"] == "TaskSucceeded", end
    files = await w.certs.bus.query("certs", "files", {"host": f"anything.{DOMAIN}"}, timeout=10)
    assert files["kind"] == "acme"
    chain = Path(files["cert"]).read_text()
    from services.certs.certificates import inspect

    assert f"*.{DOMAIN}" in inspect(chain).names
    txt = await query(w.pdns.nameservers[0], f"_acme-challenge.{DOMAIN}", "TXT")
    assert not txt.values  # the challenge records are cleaned up
