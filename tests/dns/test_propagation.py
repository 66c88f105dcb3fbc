"""Propagation checks against a real PowerDNS: the stdlib DNS client, NS discovery through
aiodns, and waiting on several servers of which some do not answer."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from services.dns.errors import DnsProviderError
from services.dns.propagation import find_nameservers, lookup, query, wait_for_record
from services.dns.providers.protocol import Record
from tests.support.pdns import PdnsServer, PdnsZone


def _dead_udp_port() -> tuple[str, int]:
    """A port nothing listens on: queries to it get ICMP port unreachable."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return ("127.0.0.1", int(s.getsockname()[1]))


async def test_query_reads_each_record_type(pdns_zone: PdnsZone) -> None:
    z = pdns_zone.name
    await pdns_zone.put(f"a.{z}", "A", ["192.0.2.1", "192.0.2.2"])
    await pdns_zone.put(f"a.{z}", "AAAA", ["2001:db8::1"])
    await pdns_zone.put(f"c.{z}", "CNAME", [f"a.{z}."])
    await pdns_zone.put(z, "MX", [f"10 mail.{z}."])
    await pdns_zone.put(z, "CAA", ['0 issue "letsencrypt.org"'])
    server = pdns_zone.nameservers[0]
    got = {
        t: (await query(server, n, t)).values
        for n, t in [
            (f"a.{z}", "A"),
            (f"a.{z}", "AAAA"),
            (f"c.{z}", "CNAME"),
            (z, "MX"),
            (z, "CAA"),
        ]
    }
    assert got == {
        "A": ("192.0.2.1", "192.0.2.2"),
        "AAAA": ("2001:db8::1",),
        "CNAME": (f"a.{z}",),
        "MX": (f"10 mail.{z}",),
        "CAA": ('0 issue "letsencrypt.org"',),
    }
    # an A query of a CNAME follows it inside the answer
    assert (await query(server, f"c.{z}", "A")).values == ("192.0.2.1", "192.0.2.2")
    nx = await query(server, f"nothing.{z}", "A")
    assert (nx.status, nx.values, nx.authoritative) == ("NXDOMAIN", (), True)
    assert await lookup(f"nothing.{z}", "A", pdns_zone.nameservers) is None
    assert await lookup(f"a.{z}", "AAAA", pdns_zone.nameservers) == Record(
        f"a.{z}", "AAAA", ("2001:db8::1",)
    )


async def test_query_of_a_dead_server_says_so() -> None:
    start = time.monotonic()
    answer = await query(_dead_udp_port(), "example.test", "A", 1.0)
    assert answer.status in ("unreachable", "timeout")
    assert time.monotonic() - start < 1.5


async def test_find_nameservers_through_a_resolver(pdns: PdnsServer, pdns_zone: PdnsZone) -> None:
    resolver = [f"127.0.0.1:{pdns.dns_port}"]
    found = await find_nameservers(f"deep.blog.{pdns_zone.name}", resolver=resolver, port=5353)
    assert found == [("127.0.0.1", 5353)]  # NS ns1.<zone>, whose A is 127.0.0.1
    with pytest.raises(DnsProviderError) as err:  # pdns refuses names it does not serve
        await find_nameservers("nothing-here.invalid", resolver=resolver)
    assert "nameservers of nothing-here.invalid failed (DNS server refused query)" in str(err.value)


async def test_wait_reports_progress_and_names_the_silent_server(pdns_zone: PdnsZone) -> None:
    rec = Record(f"blog.{pdns_zone.name}", "A", ("127.0.0.1",))
    dead = _dead_udp_port()
    servers = [*pdns_zone.nameservers, dead]
    said: list[str] = []

    async def progress(msg: str) -> None:
        said.append(msg)

    with pytest.raises(DnsProviderError) as err:
        await wait_for_record(rec, servers, 1.0, progress)
    msg = str(err.value)
    assert f"{dead[0]}:{dead[1]} did not answer" in msg
    assert "no such name (NXDOMAIN)" in msg  # the live server has no such record yet
    assert said == [f"0 of 2 nameservers answer blog.{pdns_zone.name} A 127.0.0.1"]

    # the record appears while we wait on the live server alone
    said.clear()

    async def create_later() -> None:
        await asyncio.sleep(0.3)
        await pdns_zone.put(rec.name, "A", ["127.0.0.1"])

    task = asyncio.create_task(create_later())
    try:
        await wait_for_record(rec, pdns_zone.nameservers, 5.0, progress)
    finally:
        await task
    assert said == [
        f"0 of 1 nameservers answer blog.{pdns_zone.name} A 127.0.0.1",
        f"1 of 1 nameservers answer blog.{pdns_zone.name} A 127.0.0.1",
    ]
