"""Contract tests of the DnsProvider port, run against PowerDNS (real pdns_server) and Route 53
(moto server); then what only some adapters do (propagation waits, manual, wildcard)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from libs.contracts.dns import CONTRACT, PROVIDER
from services.dns.errors import DnsProviderError, ForeignRecord, ProviderConfigError
from services.dns.propagation import query
from services.dns.providers.factory import (
    PROVIDER_FIELDS,
    make_provider,
    secret_fields,
)
from services.dns.providers.manual import ManualProvider
from services.dns.providers.powerdns import PowerDnsProvider
from services.dns.providers.protocol import DnsProvider, Record
from services.dns.providers.route53 import Route53Provider
from services.dns.providers.wildcard import WildcardProvider
from tests.support.moto import MotoServer, Route53Zone
from tests.support.pdns import PdnsServer, PdnsZone

# -- the adapters under contract ------------------------------------------------------------


@dataclass
class Case:
    """One adapter on a fresh zone, and how to reach that zone around the adapter."""

    provider: DnsProvider
    zone: str
    put_foreign: Callable[[str, str, list[str]], Any]  # name, type, zone-file values
    wrong_secret: Callable[[], DnsProvider]
    wrong_zone: Callable[[], DnsProvider]
    secret_field: str


@pytest.fixture(params=["powerdns", "route53"])
async def case(
    request: pytest.FixtureRequest,
    pdns: PdnsServer,  # both servers start before the leak checks look
    moto: MotoServer,
) -> AsyncIterator[Case]:
    made: list[DnsProvider] = []

    def keep(p: DnsProvider) -> DnsProvider:
        made.append(p)
        return p

    if request.param == "powerdns":
        z: PdnsZone = request.getfixturevalue("pdns_zone")
        cfg = {"api_url": z.api_url, "api_key": z.api_key, "zone": z.name}
        c = Case(
            provider=keep(make_provider("powerdns", cfg, allow_loopback=True)),
            zone=z.name,
            put_foreign=z.put,
            wrong_secret=lambda: keep(
                make_provider("powerdns", {**cfg, "api_key": "nope"}, allow_loopback=True)
            ),
            wrong_zone=lambda: keep(
                make_provider("powerdns", {**cfg, "zone": "absent.test"}, allow_loopback=True)
            ),
            secret_field="api_key",
        )
    else:
        r: Route53Zone = request.getfixturevalue("route53_zone")
        cfg = {
            "access_key_id": r.server.access_key_id,
            "secret_access_key": r.server.secret_access_key,
            "hosted_zone_id": r.hosted_zone_id,
            "zone": r.name,
            "endpoint_url": r.server.url,
        }

        async def put(name: str, type: str, values: list[str]) -> None:
            r.put(name, type, values)

        c = Case(
            provider=keep(make_provider("route53", cfg, allow_loopback=True)),
            zone=r.name,
            put_foreign=put,
            wrong_secret=lambda: keep(
                make_provider(
                    "route53", {**cfg, "secret_access_key": "wrong-secret"}, allow_loopback=True
                )
            ),
            wrong_zone=lambda: keep(
                make_provider(
                    "route53", {**cfg, "hosted_zone_id": "ZNOSUCHZONE000"}, allow_loopback=True
                )
            ),
            secret_field="secret_access_key",
        )
    yield c
    for p in made:
        await p.aclose()


async def test_upsert_then_get(case: Case) -> None:
    rec = Record(f"blog.{case.zone}", "A", ("127.0.0.1",), ttl=120)
    assert await case.provider.get(rec.name, "A") is None
    await case.provider.upsert(rec, owned=False)
    assert await case.provider.get(rec.name, "A") == rec
    assert await case.provider.get(rec.name.upper() + ".", "a") == rec


async def test_owned_upsert_replaces(case: Case) -> None:
    name = f"app.{case.zone}"
    await case.provider.upsert(Record(name, "A", ("127.0.0.1",)), owned=False)
    new = Record(name, "A", ("127.0.0.2", "127.0.0.3"), ttl=60)
    await case.provider.upsert(new, owned=True)
    assert await case.provider.get(name, "A") == new


async def test_foreign_record_is_refused_and_kept(case: Case) -> None:
    name = f"www.{case.zone}"
    await case.put_foreign(name, "A", ["192.0.2.7"])
    with pytest.raises(ForeignRecord) as err:
        await case.provider.upsert(Record(name, "A", ("127.0.0.1",)), owned=False)
    assert f"{name} A 192.0.2.7" in str(err.value)
    assert "not created by Homeport" in str(err.value)
    got = await case.provider.get(name, "A")
    assert got is not None and got.values == ("192.0.2.7",)


async def test_foreign_cname_blocks_even_an_owned_address(case: Case) -> None:
    name = f"shop.{case.zone}"
    await case.put_foreign(name, "CNAME", [f"elsewhere.{case.zone}."])
    with pytest.raises(ForeignRecord) as err:
        await case.provider.upsert(Record(name, "A", ("127.0.0.1",)), owned=True)
    assert f"{name} CNAME elsewhere.{case.zone}" in str(err.value)
    assert await case.provider.get(name, "A") is None


async def test_delete_is_idempotent(case: Case) -> None:
    rec = Record(f"gone.{case.zone}", "A", ("127.0.0.1",))
    await case.provider.delete(rec)  # never existed
    await case.provider.upsert(rec, owned=False)
    await case.provider.delete(rec)
    assert await case.provider.get(rec.name, "A") is None
    await case.provider.delete(rec)
    # the other records of the zone are untouched
    assert await case.provider.get(f"{case.zone}", "NS") is not None


TXT_VALUES = (
    'v=spf1 include:_spf.example.net "quoted words" -all',
    "back\\slash and  two spaces",
    "x" * 300,  # more than one 255-byte character-string
)


async def test_txt_values_round_trip(case: Case) -> None:
    rec = Record(f"_acme-challenge.{case.zone}", "TXT", TXT_VALUES, ttl=60)
    await case.provider.upsert(rec, owned=False)
    assert await case.provider.get(rec.name, "TXT") == rec


async def test_mx_and_cname_round_trip(case: Case) -> None:
    mx = Record(case.zone, "MX", (f"10 mail.{case.zone}",))
    cname = Record(f"docs.{case.zone}", "CNAME", (f"blog.{case.zone}",))
    await case.provider.upsert(mx, owned=False)
    await case.provider.upsert(cname, owned=False)
    assert await case.provider.get(case.zone, "MX") == mx
    assert await case.provider.get(cname.name, "CNAME") == cname


async def test_verify_passes_with_good_credentials(case: Case) -> None:
    await case.provider.verify()


async def test_verify_names_a_wrong_secret(case: Case) -> None:
    with pytest.raises(DnsProviderError) as err:
        await case.wrong_secret().verify()
    assert case.secret_field in str(err.value)
    assert "wrong-secret" not in str(err.value) and "nope" not in str(err.value)


async def test_verify_names_a_wrong_zone(case: Case) -> None:
    with pytest.raises(DnsProviderError) as err:
        await case.wrong_zone().verify()
    msg = str(err.value)
    assert "not found" in msg
    assert "absent.test" in msg or "ZNOSUCHZONE000" in msg


async def test_records_outside_the_zone_are_refused(case: Case) -> None:
    with pytest.raises(DnsProviderError, match="not in zone"):
        await case.provider.upsert(Record("blog.other.test", "A", ("127.0.0.1",)), owned=True)


# -- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "config", "field"),
    [
        ("bind", {"zone": "example.test"}, "kind"),
        ("powerdns", {"api_url": "http://127.0.0.1:1", "zone": "example.test"}, "api_key"),
        ("powerdns", {"api_url": "ftp://x", "api_key": "k", "zone": "example.test"}, "api_url"),
        ("powerdns", {"api_url": "http://h:1", "api_key": "k", "zone": "no spaces"}, "zone"),
        ("route53", {"access_key_id": "A", "zone": "example.test"}, "secret_access_key"),
        ("manual", {"zone": "example.test", "api_key": "k"}, "api_key"),
        ("manual", {"zone": "example.test", "nameservers": ["ns1.example:53"]}, "nameservers"),
        ("wildcard", {}, "zone"),
    ],
)
def test_make_provider_names_the_bad_field(kind: str, config: dict[str, Any], field: str) -> None:
    with pytest.raises(ProviderConfigError) as err:
        make_provider(kind, config)
    assert err.value.field == field
    assert field in str(err.value)


def test_secret_fields_are_marked() -> None:
    assert secret_fields("powerdns") == {"api_key"}
    assert secret_fields("route53") == {"secret_access_key"}
    assert secret_fields("manual") == set()
    assert set(PROVIDER_FIELDS) == {"powerdns", "route53", "manual", "wildcard"}


def test_the_contract_knows_every_setting_of_every_kind() -> None:
    """The wire contract lists each setting once for all kinds and the factory says which kind
    takes which: both name the same kinds and settings."""
    settings = {f.name for fields in PROVIDER_FIELDS.values() for f in fields}
    assert set(PROVIDER["properties"]) == {"kind", *settings}
    assert PROVIDER["properties"]["kind"]["enum"] == list(PROVIDER_FIELDS)
    assert CONTRACT.commands["add_domain"]["properties"]["provider"] == PROVIDER


def test_make_provider_builds_each_kind() -> None:
    zone = {"zone": "Example.Test."}
    built = [
        make_provider(
            "powerdns",
            {**zone, "api_url": "http://127.0.0.1:1", "api_key": "k"},
            allow_loopback=True,
        ),
        make_provider(
            "route53",
            {**zone, "access_key_id": "A", "secret_access_key": "s", "hosted_zone_id": "Z"},
        ),
        make_provider(
            "manual", {**zone, "nameservers": ["127.0.0.1:5300", "[::1]:53"]}, allow_loopback=True
        ),
        make_provider("wildcard", zone),
    ]
    assert [type(p) for p in built] == [
        PowerDnsProvider,
        Route53Provider,
        ManualProvider,
        WildcardProvider,
    ]
    assert {p.zone for p in built} == {"example.test"}
    assert "k" not in repr(built[0]) and "'s'" not in repr(built[1])


# -- PowerDNS: waiting on the real DNS port -------------------------------------------------


@pytest.fixture
async def powerdns(pdns_zone: PdnsZone) -> AsyncIterator[PowerDnsProvider]:
    p = PowerDnsProvider(
        pdns_zone.api_url,
        pdns_zone.api_key,
        pdns_zone.name,
        nameservers=pdns_zone.nameservers,
        allow_loopback=True,
    )
    yield p
    await p.aclose()


async def test_powerdns_wait_sees_the_record_on_the_dns_port(
    powerdns: PowerDnsProvider, pdns_zone: PdnsZone
) -> None:
    rec = Record(f"blog.{pdns_zone.name}", "A", ("127.0.0.1",))
    txt = Record(f"_acme-challenge.{pdns_zone.name}", "TXT", TXT_VALUES)
    await powerdns.upsert(rec, owned=False)
    await powerdns.upsert(txt, owned=False)
    said: list[str] = []

    async def progress(msg: str) -> None:
        said.append(msg)

    await powerdns.wait(rec, 5.0, progress)
    assert said == [f"1 of 1 nameservers answer blog.{pdns_zone.name} A 127.0.0.1"]
    await powerdns.wait(txt, 5.0)
    # what a resolver gets over the wire is the text we wrote (long value over TCP or not)
    answer = await query(pdns_zone.nameservers[0], txt.name, "TXT")
    assert answer.authoritative and answer.values == txt.values


async def test_powerdns_wait_gives_up_naming_the_server(
    powerdns: PowerDnsProvider, pdns_zone: PdnsZone
) -> None:
    rec = Record(f"never.{pdns_zone.name}", "A", ("127.0.0.1",))
    start = time.monotonic()
    with pytest.raises(DnsProviderError) as err:
        await powerdns.wait(rec, 1.0)
    took = time.monotonic() - start
    host, port = pdns_zone.nameservers[0]
    assert f"{host}:{port} answers no such name (NXDOMAIN)" in str(err.value)
    assert f"never.{pdns_zone.name} A 127.0.0.1" in str(err.value)
    assert 1.0 <= took < 4.0


async def test_powerdns_wait_notices_a_changed_value(
    powerdns: PowerDnsProvider, pdns_zone: PdnsZone
) -> None:
    name = f"moved.{pdns_zone.name}"
    await pdns_zone.put(name, "A", ["192.0.2.1"])
    with pytest.raises(DnsProviderError, match=r"answers 192\.0\.2\.1"):
        await powerdns.wait(Record(name, "A", ("127.0.0.1",)), 0.5)


# -- manual and wildcard: no writes, reading DNS --------------------------------------------


async def test_manual_refuses_writes_with_the_record_to_create(pdns_zone: PdnsZone) -> None:
    p = ManualProvider(pdns_zone.name, pdns_zone.nameservers)
    await p.verify()
    rec = Record(f"blog.{pdns_zone.name}", "TXT", ('say "hi"',), ttl=300)
    with pytest.raises(DnsProviderError) as err:
        await p.upsert(rec, owned=True)
    assert f'blog.{pdns_zone.name}. 300 IN TXT "say \\"hi\\""' in str(err.value)
    assert "by hand" in str(err.value)
    # the user does it; then the same upsert succeeds and get/wait read it from DNS
    await pdns_zone.put(rec.name, "TXT", ['"say \\"hi\\""'])
    await p.upsert(rec, owned=True)
    assert await p.get(rec.name, "TXT") == Record(rec.name, "TXT", rec.values)
    await p.wait(rec, 2.0)
    with pytest.raises(DnsProviderError, match="remove"):
        await p.delete(rec)
    await p.delete(Record(f"other.{pdns_zone.name}", "A", ("127.0.0.1",)))  # nothing there


async def test_manual_verify_names_a_zone_nobody_serves(pdns: PdnsServer) -> None:
    p = ManualProvider("not-served.test", pdns.nameservers)
    with pytest.raises(DnsProviderError) as err:
        await p.verify()
    assert "not-served.test" in str(err.value)
    assert f"127.0.0.1:{pdns.dns_port} answers REFUSED" in str(err.value)


async def test_wildcard_answers_addresses_and_refuses_the_rest(pdns_zone: PdnsZone) -> None:
    p = WildcardProvider(pdns_zone.name, pdns_zone.nameservers)
    with pytest.raises(DnsProviderError, match=rf"create \*\.{pdns_zone.name} A"):
        await p.verify()
    await pdns_zone.put(f"*.{pdns_zone.name}", "A", ["127.0.0.1"])
    await p.verify()
    blog = Record(f"blog.{pdns_zone.name}", "A", ("127.0.0.1",))
    await p.upsert(blog, owned=False)  # the wildcard answers it already
    await p.wait(blog, 2.0)
    await p.delete(blog)  # the wildcard stays
    with pytest.raises(DnsProviderError) as err:
        await p.upsert(Record(blog.name, "A", ("127.0.0.9",)), owned=False)
    assert "answers 127.0.0.1, not 127.0.0.9" in str(err.value)
    txt = Record(f"_acme-challenge.{pdns_zone.name}", "TXT", ("token-1",))
    with pytest.raises(DnsProviderError) as err:
        await p.upsert(txt, owned=True)
    assert f'_acme-challenge.{pdns_zone.name}. 300 IN TXT "token-1"' in str(err.value)
