"""Contract tests of the TxtPublisher port (`services.certs.acme_client.TxtPublisher`): what an
ACME order needs from whatever publishes its DNS-01 TXT values, run against every
implementation. There is one: `BusTxtPublisher`, through the real dns service to a real
PowerDNS zone (a name is "served" when the zone's authoritative server answers it over DNS).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest

from services.certs.acme_client import TxtPublisher
from services.certs.dns01 import BusTxtPublisher
from services.certs.errors import AcmeError
from services.dns.propagation import query
from tests.dns.dnskit import dns_env, pdns_provider, running_dns
from tests.support.bus import ActorBus
from tests.support.pdns import PdnsServer, PdnsZone

pytestmark = pytest.mark.timeout(120)


@dataclass
class Case:
    """One implementation over a fresh zone, and how to look at that zone around it."""

    publisher: TxtPublisher
    zone: PdnsZone
    # the same implementation with a 2 s deadline, and a name whose nameservers never answer
    impatient: TxtPublisher
    unseen: str

    async def served(self, name: str) -> tuple[str, ...]:
        """The TXT values the zone's authoritative server answers at `name`."""
        answer = await query(self.zone.nameservers[0], name, "TXT")
        assert answer.status in ("NOERROR", "NXDOMAIN"), answer.describe()
        return answer.values


def _closed_udp_port() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    return f"127.0.0.1:{port}"


@pytest.fixture(params=["dns-service"])
async def case(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    pdns: PdnsServer,
    pdns_zone: PdnsZone,
) -> AsyncIterator[Case]:
    assert request.param == "dns-service"
    env = dns_env(dsn=dsn, nats_url=nats_url, tmp_path=tmp_path)
    async with running_dns(monkeypatch, env) as dns:
        await dns.cmd(
            "add_domain", {"domain": pdns_zone.name, "provider": pdns_provider(pdns_zone)}
        )
        # a second domain in the same zone whose (made-up) nameserver never answers
        slow = f"slow.{pdns_zone.name}"
        provider = pdns_provider(pdns_zone, nameservers=[_closed_udp_port()])
        await dns.cmd("add_domain", {"domain": slow, "provider": provider})
        nc = await nats.connect(nats_url)
        try:
            bus = ActorBus(nc)
            yield Case(
                publisher=BusTxtPublisher(bus),
                zone=pdns_zone,
                impatient=BusTxtPublisher(bus, publish_timeout=2.0),
                unseen=f"_acme-challenge.blog.{slow}",
            )
        finally:
            await nc.close()


async def test_publish_returns_once_the_value_is_served(case: Case) -> None:
    name = f"_acme-challenge.{case.zone.name}"
    assert await case.served(name) == ()
    await case.publisher.publish(name, "token-1")
    assert await case.served(name) == ("token-1",)


async def test_values_at_one_name_coexist_and_go_one_by_one(case: Case) -> None:
    # a wildcard and its apex answer their challenges at the same TXT name
    name = f"_acme-challenge.{case.zone.name}"
    await case.publisher.publish(name, "token-apex")
    await case.publisher.publish(name, "token-wildcard")
    assert await case.served(name) == ("token-apex", "token-wildcard")
    await case.publisher.remove(name, "token-apex")
    assert await case.served(name) == ("token-wildcard",)
    await case.publisher.remove(name, "token-wildcard")
    assert await case.served(name) == ()


async def test_concurrent_publishes_are_each_served_when_they_return(case: Case) -> None:
    name = f"_acme-challenge.www.{case.zone.name}"
    values = [f"token-{i}" for i in range(3)]
    await asyncio.gather(*(case.publisher.publish(name, v) for v in values))
    assert await case.served(name) == tuple(values)
    await asyncio.gather(*(case.publisher.remove(name, v) for v in values))
    assert await case.served(name) == ()


async def test_removing_a_value_never_published_is_not_an_error(case: Case) -> None:
    name = f"_acme-challenge.{case.zone.name}"
    await case.publisher.remove(name, "never-published")  # nothing at the name at all
    await case.publisher.publish(name, "token-1")
    await case.publisher.remove(name, "never-published")  # another value is there
    assert await case.served(name) == ("token-1",)


async def test_a_name_in_no_zone_it_keeps_is_an_acme_error_naming_it(case: Case) -> None:
    name = "_acme-challenge.blog.elsewhere.test"
    with pytest.raises(AcmeError) as err:
        await case.publisher.publish(name, "token-1")
    assert err.value.code == "dns"
    assert name in err.value.message


async def test_a_record_it_did_not_create_is_refused_and_left_alone(case: Case) -> None:
    name = f"_acme-challenge.shop.{case.zone.name}"
    await case.zone.put(name, "TXT", ['"kept by hand"'])
    with pytest.raises(AcmeError) as err:
        await case.publisher.publish(name, "token-1")
    assert err.value.code == "dns"
    assert name in err.value.message
    assert await case.served(name) == ("kept by hand",)


async def test_a_value_not_served_in_time_is_a_timeout(case: Case) -> None:
    started = time.monotonic()
    with pytest.raises(AcmeError) as err:
        await case.impatient.publish(case.unseen, "token-1")
    assert err.value.code == "timeout"
    assert case.unseen in err.value.message
    assert time.monotonic() - started < 10
    await case.publisher.remove(case.unseen, "token-1")  # withdrawn as an order would
