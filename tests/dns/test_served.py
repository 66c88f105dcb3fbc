"""The dns service's `served` query against a real PowerDNS: what the zone's authoritative
nameservers answer for each record, in the form Homeport writes it; a record not there has no
values; a nameserver that does not answer is an error text within seconds, never a hang; bad
input is refused naming the field."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from libs.events.bus import BusClient, Invalid
from libs.events.context import Context
from libs.events.nats_access import HARNESS
from tests.dns.dnskit import Dns, dns_env, pdns_provider, running_dns
from tests.support.pdns import PdnsServer, PdnsZone, create_zone

pytestmark = pytest.mark.timeout(120)

SYSTEM = Context("system", "served-test", None, None)


@pytest.fixture
async def dns(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path, pdns: PdnsServer
) -> AsyncIterator[Dns]:
    async with running_dns(
        monkeypatch, dns_env(dsn=dsn, nats_url=nats_url, tmp_path=tmp_path)
    ) as d:
        yield d


@pytest.fixture
def silent() -> Iterator[str]:
    """A loopback UDP port that takes queries and never answers: a dead nameserver."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


async def served(dns: Dns, *records: tuple[str, str]) -> list[dict[str, Any]]:
    reply = await dns.ask("served", {"records": [{"name": n, "type": t} for n, t in records]})
    answers: list[dict[str, Any]] = reply["records"]
    assert [(a["name"], a["type"]) for a in answers] == [
        (n.lower().rstrip("."), t.upper()) for n, t in records
    ]
    return answers


async def test_it_answers_what_the_nameservers_serve_as_homeport_writes_it(
    dns: Dns, pdns_zone: PdnsZone
) -> None:
    z = pdns_zone.name
    await dns.cmd("add_domain", {"domain": z, "provider": pdns_provider(pdns_zone)})
    long_text = "v=DKIM1; k=rsa; p=" + "A" * 400  # longer than one TXT string: split in two
    written = [
        {"name": z, "type": "MX", "values": [f"10 Mail.{z}."]},
        {"name": z, "type": "TXT", "values": ["v=spf1 mx -all"]},
        {"name": f"hp1._domainkey.{z}", "type": "TXT", "values": [long_text]},
        {"name": f"mail.{z}", "type": "A", "values": ["192.0.2.10", "192.0.2.11"]},
        {"name": f"mail.{z}", "type": "AAAA", "values": ["2001:DB8:0:0::1"]},
    ]
    canonical = {}
    for r in written:
        answer = await dns.cmd("set_record", {**r, "owner": "mail"})
        canonical[(answer["name"], answer["type"])] = answer["values"]
    # one written by someone else, straight into PowerDNS: it is served all the same
    await pdns_zone.put(f"other.{z}", "TXT", ['"made" " by hand"'])

    answers = await served(
        dns,
        (z, "MX"),
        (z, "TXT"),
        (f"HP1._domainkey.{z}.", "TXT"),
        (f"mail.{z}", "A"),
        (f"mail.{z}", "aaaa"),
        (f"other.{z}", "TXT"),
        (f"nothing.{z}", "TXT"),  # no such name
        (f"mail.{z}", "MX"),  # the name, not the type
    )
    got = {(a["name"], a["type"]): a for a in answers}
    for key, values in canonical.items():
        assert got[key]["values"] == values, key
        assert got[key]["error"] is None, got[key]
    assert got[(z, "MX")]["values"] == [f"10 mail.{z}"]
    assert got[(f"hp1._domainkey.{z}", "TXT")]["values"] == [long_text]
    assert got[(f"mail.{z}", "A")]["values"] == ["192.0.2.10", "192.0.2.11"]
    assert got[(f"mail.{z}", "AAAA")]["values"] == ["2001:db8::1"]
    assert got[(f"other.{z}", "TXT")] == {
        "name": f"other.{z}",
        "type": "TXT",
        "values": ["made by hand"],
        "error": None,
    }
    assert got[(f"nothing.{z}", "TXT")]["values"] == []
    assert got[(f"nothing.{z}", "TXT")]["error"] is None
    assert got[(f"mail.{z}", "MX")]["values"] == []

    # changed at PowerDNS behind Homeport's back: the new value is what is served
    await pdns_zone.put(z, "MX", [f"20 elsewhere.{z}."])
    [mx] = await served(dns, (z, "MX"))
    assert mx["values"] == [f"20 elsewhere.{z}"] and mx["error"] is None

    # a name no managed domain holds: unknown, said why; the rest still answered
    unmanaged, spf = await served(dns, ("www.not-managed.test", "A"), (z, "TXT"))
    assert unmanaged["values"] is None
    assert "no domain Homeport manages holds www.not-managed.test" in unmanaged["error"]
    assert spf["values"] == ["v=spf1 mx -all"]


async def test_a_dead_nameserver_is_an_error_within_seconds_not_a_hang(
    dns: Dns, pdns_zone: PdnsZone, silent: str
) -> None:
    z = pdns_zone.name
    host, port = pdns_zone.nameservers[0]
    live = f"{host}:{port}"
    await dns.cmd(
        "add_domain",
        {"domain": z, "provider": pdns_provider(pdns_zone, nameservers=[live, silent])},
    )
    await dns.cmd("set_record", {"name": z, "type": "MX", "values": [f"10 mail.{z}"], "owner": "t"})
    records = [(z, "MX"), *((f"r{i}.{z}", "A") for i in range(19))]  # 20: all asked at once
    began = time.monotonic()
    answers = await served(dns, *records)
    took = time.monotonic() - began
    assert took < 5, f"20 records with a dead nameserver took {took:.1f} s"
    # the live server's answer, and the dead one named
    assert answers[0]["values"] == [f"10 mail.{z}"]
    assert f"{silent} did not answer (timeout)" in answers[0]["error"]
    assert all(a["values"] == [] and silent in a["error"] for a in answers[1:])

    # only the dead one: values unknown, the error says so
    other = f"d{z}"  # a second managed domain in no zone we serve
    other_zone = PdnsZone(other, pdns_zone.server)
    create_zone(pdns_zone.server, other)
    try:
        await dns.cmd(
            "add_domain",
            {"domain": other, "provider": pdns_provider(other_zone, nameservers=[silent])},
        )
        began = time.monotonic()
        [dead] = await served(dns, (other, "MX"))
        assert time.monotonic() - began < 5
        assert dead["values"] is None
        assert dead["error"] == f"no nameserver answered: {silent} did not answer (timeout)"
    finally:
        pdns_zone.server.api("DELETE", f"/api/v1/servers/localhost/zones/{other}.")


@pytest.mark.parametrize(
    ("records", "field"),
    [
        ([{"name": "a\x00b.example.test", "type": "A"}], "records.0.name"),
        (
            [{"name": "ok.example.test", "type": "A"}, {"name": "x..y.test", "type": "A"}],
            "records.1.name",
        ),
        ([{"name": "-bad.example.test", "type": "A"}], "records.0.name"),
        ([{"name": "ok.example.test", "type": "NS"}], "records.0.type"),
        ([{"name": "ok.example.test", "type": "A\x00"}], "records.0.type"),
        ([{"name": "ok.example.test"}], "records.0.type"),
        ([{"name": "ok.example.test", "type": "A", "values": ["1.2.3.4"]}], "records.0.values"),
        ([{"name": f"r{i}.example.test", "type": "A"} for i in range(21)], "records"),
        ([], "records"),
    ],
)
async def test_bad_input_is_refused_naming_the_field(
    dns: Dns, nats_url: str, records: list[dict[str, Any]], field: str
) -> None:
    nc = await nats.connect(nats_url)
    try:
        # the service's own checks: this client sends what its contract would refuse
        unchecked = BusClient(nc, sender=HARNESS, contracts={})
        with pytest.raises(Invalid) as e:
            await unchecked.query("dns", "served", {"records": records}, ctx=SYSTEM, timeout=10)
    finally:
        await nc.close()
    assert e.value.field == field, e.value.message
    assert e.value.code == "invalid"
