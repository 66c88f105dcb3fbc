"""Provider URLs and nameservers an admin enters may not lead to this server itself.

With the dns service's default settings, a PowerDNS api_url, a Route 53 endpoint_url or a
nameserver on loopback, link-local (metadata) or the unspecified address is refused as
invalid input naming the field, with nothing saved, and the same answer whether a port there
is open or closed. The test fixtures allow loopback (dns_env), as the test servers run there.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from libs.events.bus import Invalid
from services.dns.providers.reach import GuardedResolver, RefusedAddress
from tests.dns.dnskit import Dns, dns_env, pdns_provider, running_dns
from tests.support.moto import Route53Zone
from tests.support.pdns import PdnsServer, PdnsZone

pytestmark = pytest.mark.timeout(120)

REFUSED = "must not point at this server itself"


@pytest.fixture
async def strict_dns(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path, pdns: PdnsServer
) -> AsyncIterator[Dns]:
    """The dns service with its production default: no provider on loopback."""
    env = dns_env(
        dsn=dsn,
        nats_url=nats_url,
        tmp_path=tmp_path,
        extra={"HP_ALLOW_LOOPBACK_PROVIDERS": "false"},
    )
    async with running_dns(monkeypatch, env) as d:
        yield d


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def refusal(dns: Dns, zone: PdnsZone, **provider: object) -> Invalid:
    with pytest.raises(Invalid) as err:
        await dns.cmd(
            "add_domain",
            {
                "domain": zone.name,
                "provider": pdns_provider(zone, **provider),
                "server_ipv4": "192.0.2.10",
            },
        )
    return err.value


async def test_loopback_api_urls_are_refused_naming_the_field(
    strict_dns: Dns, pdns: PdnsServer, pdns_zone: PdnsZone
) -> None:
    closed = closed_port()
    open_ = pdns.api_port  # a real PowerDNS answers there
    said = {}
    for port in (open_, closed):
        e = await refusal(
            strict_dns, pdns_zone, api_url=f"http://127.0.0.1:{port}", nameservers=None
        )
        assert e.field == "provider.api_url", e
        assert REFUSED in e.message and "loopback" in e.message, e.message
        said[port] = e.message
    # an open port and a closed one cannot be told apart
    assert said[open_] == said[closed], said
    for url in (
        f"http://localhost:{open_}",
        f"http://LOCALHOST.:{open_}",
        f"http://app.localhost:{open_}",
        f"http://[::1]:{open_}",
        f"http://[::ffff:127.0.0.1]:{open_}",
        f"http://127.1:{open_}",
        f"http://0x7f.0.0.1:{open_}",
        f"http://2130706433:{open_}",
        f"http://0.0.0.0:{open_}",
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]:8081",
    ):
        e = await refusal(strict_dns, pdns_zone, api_url=url, nameservers=None)
        assert e.field == "provider.api_url", (url, e)
        assert REFUSED in e.message and "check api_url" in e.message, (url, e.message)
    assert await strict_dns.events(pdns_zone.name) == []
    assert (await strict_dns.ask("domains", {}))["items"] == []


async def test_loopback_nameservers_and_route53_endpoints_are_refused(
    strict_dns: Dns, pdns_zone: PdnsZone, route53_zone: Route53Zone
) -> None:
    e = await refusal(strict_dns, pdns_zone, api_url="http://192.0.2.1:8081")
    assert e.field == "provider.nameservers", e
    assert "loopback" in e.message
    moto = route53_zone.server
    with pytest.raises(Invalid) as err:
        await strict_dns.cmd(
            "add_domain",
            {
                "domain": route53_zone.name,
                "provider": {
                    "kind": "route53",
                    "access_key_id": moto.access_key_id,
                    "secret_access_key": moto.secret_access_key,
                    "hosted_zone_id": route53_zone.hosted_zone_id,
                    "endpoint_url": moto.url,
                },
            },
        )
    assert err.value.field == "provider.endpoint_url", err.value
    assert REFUSED in err.value.message
    assert await strict_dns.events(route53_zone.name) == []


async def test_names_resolving_to_loopback_are_refused_at_connect_time(
    pdns: PdnsServer,
) -> None:
    """What a name resolves to is checked when connecting (a later answer cannot slip by):
    `localhost` as resolved by the system, through the connector the providers use."""
    resolver = GuardedResolver("api_url")
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False)
    async with aiohttp.ClientSession(connector=connector) as http:
        with pytest.raises(aiohttp.ClientConnectorError) as err:
            await http.get(f"http://localhost:{pdns.api_port}/api/v1/servers")
    assert isinstance(err.value.os_error, RefusedAddress), err.value
    assert REFUSED in str(err.value.os_error)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://localhost:{pdns.api_port}/api/v1/servers") as r:
            assert r.status == 401  # the unguarded path: PowerDNS answers (no key sent)
