"""The dns service over its bus, against a real PowerDNS (one fresh zone per test).

Domains are verified before anything is recorded and their provider secrets are sealed; records
Homeport creates are owned (replaced and removed at will), records it did not create are never
touched; ACME TXT values coexist; a domain is removed only when the apps service says no app
uses it, and then only Homeport's records go.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from nats.aio.msg import Msg

from libs.events.bus import Conflict, Invalid, NotFound, Unavailable
from services.dns.propagation import query
from tests.dns.dnskit import Dns, dns_env, pdns_provider, running_dns
from tests.support.pdns import PdnsServer, PdnsZone

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def dns(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path, pdns: PdnsServer
) -> AsyncIterator[Dns]:
    async with running_dns(
        monkeypatch, dns_env(dsn=dsn, nats_url=nats_url, tmp_path=tmp_path)
    ) as d:
        yield d


async def served(zone: PdnsZone, name: str, type: str) -> tuple[str, ...]:
    """What the zone's nameserver answers for name/type, asked over DNS."""
    answer = await query(zone.nameservers[0], name, type)
    assert answer.status in ("NOERROR", "NXDOMAIN"), answer.describe()
    return answer.values


@asynccontextmanager
async def apps_stand_in(
    nats_url: str, items: Sequence[dict[str, Any]], seen: list[dict[str, Any]]
) -> AsyncIterator[None]:
    """A STAND-IN for the apps service's `apps` query (the real one needs dockerd and a
    catalog): answers `items` and keeps each request in `seen`."""
    nc = await nats.connect(nats_url)

    async def answer(msg: Msg) -> None:
        seen.append(json.loads(msg.data))
        await msg.respond(json.dumps({"ok": True, "result": {"items": list(items)}}).encode())

    try:
        await nc.subscribe("hp.qry.apps.apps.*", queue="hp.apps", cb=answer)
        await nc.flush()
        yield
    finally:
        await nc.close()


async def add(dns: Dns, zone: PdnsZone) -> dict[str, Any]:
    reply: dict[str, Any] = await dns.cmd(
        "add_domain",
        {"domain": zone.name, "provider": pdns_provider(zone), "server_ipv4": "192.0.2.10"},
    )
    return reply


# -- domains ----------------------------------------------------------------------------------


async def test_a_powerdns_domain_is_verified_sealed_and_shown_redacted(
    dns: Dns, pdns_zone: PdnsZone, dsn: str
) -> None:
    view = await add(dns, pdns_zone)
    assert view["domain"] == pdns_zone.name
    assert view["provider"]["kind"] == "powerdns"
    assert view["provider"]["api_key"] == "••••"
    assert view["provider"]["api_url"] == pdns_zone.api_url
    assert view["provider"]["zone"] == pdns_zone.name
    assert view["server_ipv4"] == "192.0.2.10" and view["server_ipv6"] is None
    assert view["verified_at"] is not None and view["verify_error"] is None
    assert view["records"] == []
    assert pdns_zone.api_key not in json.dumps(view)

    assert [t for t, _ in await dns.events(pdns_zone.name)] == ["DomainAdded", "DomainVerified"]
    conn = await asyncpg.connect(dsn)
    try:
        raw = await conn.fetch("SELECT data::text, meta::text FROM events.events")
        model = await conn.fetch("SELECT provider::text FROM dns.domains")
    finally:
        await conn.close()
    assert raw and all(pdns_zone.api_key not in r["data"] + r["meta"] for r in raw)
    assert pdns_zone.api_key not in model[0]["provider"]
    added = (await dns.events(pdns_zone.name))[0][1]
    assert added["provider"]["api_key"].startswith("hp:sealed:v1:s.")

    assert await dns.ask("domains", {}) == {"items": [view]}
    assert await dns.ask("domain", {"domain": pdns_zone.name}) == view
    # the sealed key works: verifying again reaches PowerDNS with it
    again = await dns.cmd("verify_domain", {"domain": pdns_zone.name})
    assert again["verify_error"] is None and again["verified_at"] >= view["verified_at"]
    assert [t for t, _ in await dns.events(pdns_zone.name)][-1] == "DomainVerified"


async def test_bad_provider_settings_are_refused_and_nothing_is_recorded(
    dns: Dns, pdns_zone: PdnsZone
) -> None:
    domain = pdns_zone.name

    async def refused(payload: dict[str, Any]) -> Invalid:
        with pytest.raises(Invalid) as err:
            await dns.cmd("add_domain", payload)
        return err.value

    wrong_key = await refused({"domain": domain, "provider": pdns_provider(pdns_zone, api_key="x")})
    assert wrong_key.field == "provider.api_key"
    assert "api_key" in wrong_key.message and "nothing was saved" in wrong_key.message
    bad_kind = await refused({"domain": domain, "provider": {"kind": "bind"}})
    assert bad_kind.field == "provider.kind"
    unknown = await refused({"domain": domain, "provider": pdns_provider(pdns_zone, user="u")})
    assert unknown.field == "provider.user"
    no_url = await refused(
        {"domain": domain, "provider": pdns_provider(pdns_zone, api_url="ftp://x")}
    )
    assert no_url.field == "provider.api_url"
    other_zone = await refused(
        {"domain": domain, "provider": pdns_provider(pdns_zone, zone="other.test")}
    )
    assert other_zone.field == "provider.zone"
    upper = await refused({"domain": domain.upper(), "provider": pdns_provider(pdns_zone)})
    assert upper.field == "domain"
    v6 = await refused(
        {"domain": domain, "provider": pdns_provider(pdns_zone), "server_ipv4": "::1"}
    )
    assert v6.field == "server_ipv4"

    assert await dns.events(domain) == []
    assert await dns.ask("domains", {}) == {"items": []}
    with pytest.raises(NotFound):
        await dns.ask("domain", {"domain": domain})

    await add(dns, pdns_zone)
    with pytest.raises(Conflict) as dup:
        await add(dns, pdns_zone)
    assert dup.value.field == "domain" and "already added" in dup.value.message


# -- records ----------------------------------------------------------------------------------


async def test_records_are_owned_replaced_and_foreign_ones_left_alone(
    dns: Dns, pdns_zone: PdnsZone
) -> None:
    z = pdns_zone.name
    await add(dns, pdns_zone)
    blog = f"blog.{z}"
    record = {"name": blog, "type": "A", "values": ["127.0.0.1"], "owner": "app-1"}
    answer = await dns.cmd("set_record", record)
    assert answer == {"domain": z, "name": blog, "type": "A", "values": ["127.0.0.1"]}
    assert await served(pdns_zone, blog, "A") == ("127.0.0.1",)
    await dns.cmd("set_record", record)  # again: nothing changes
    await dns.cmd("set_record", {**record, "values": ["127.0.0.3", "127.0.0.2"], "ttl": 60})
    assert await served(pdns_zone, blog, "A") == ("127.0.0.2", "127.0.0.3")
    kinds = [t for t, _ in await dns.events(z)]
    assert kinds.count("DnsRecordSet") == 2

    www = f"www.{z}"
    await pdns_zone.put(www, "A", ["192.0.2.7"])
    with pytest.raises(Conflict) as err:
        await dns.cmd("set_record", {**record, "name": www})
    assert err.value.field == "name"
    assert f"{www} A 192.0.2.7" in err.value.message
    assert await served(pdns_zone, www, "A") == ("192.0.2.7",)
    with pytest.raises(NotFound):
        await dns.cmd("remove_record", {"name": www, "type": "A", "owner": "app-1"})
    assert await served(pdns_zone, www, "A") == ("192.0.2.7",)

    with pytest.raises(NotFound) as outside:
        await dns.cmd("set_record", {**record, "name": "blog.elsewhere.test"})
    assert outside.value.field == "name" and "blog.elsewhere.test" in outside.value.message
    with pytest.raises(Invalid) as bad:
        await dns.cmd("set_record", {**record, "type": "NS"})
    assert bad.value.field == "type"

    view = await dns.ask("domain", {"domain": z})
    assert view["records"] == [
        {"name": blog, "type": "A", "values": ["127.0.0.2", "127.0.0.3"], "owner": "app-1"}
    ]
    with pytest.raises(Conflict) as theirs:
        await dns.cmd("remove_record", {"name": blog, "type": "A", "owner": "app-2"})
    assert theirs.value.field == "owner"
    await dns.cmd("remove_record", {"name": blog, "type": "A", "owner": "app-1"})
    assert await served(pdns_zone, blog, "A") == ()
    assert await served(pdns_zone, www, "A") == ("192.0.2.7",)
    assert (await dns.ask("domain", {"domain": z}))["records"] == []


async def test_wait_record_answers_once_served_and_names_the_server_otherwise(
    dns: Dns, pdns_zone: PdnsZone
) -> None:
    await add(dns, pdns_zone)
    name = f"app.{pdns_zone.name}"
    await dns.cmd("set_record", {"name": name, "type": "A", "values": ["127.0.0.9"], "owner": "e"})
    ok = await dns.cmd(
        "wait_record", {"name": name, "type": "A", "values": ["127.0.0.9"], "deadline_s": 5}
    )
    assert ok == {"ok": True}
    with pytest.raises(Unavailable) as err:
        await dns.cmd(
            "wait_record", {"name": name, "type": "A", "values": ["127.0.0.8"], "deadline_s": 1}
        )
    host, port = pdns_zone.nameservers[0]
    assert f"{host}:{port}" in err.value.message and "127.0.0.9" in err.value.message
    with pytest.raises(Invalid) as long:
        await dns.cmd(
            "wait_record", {"name": name, "type": "A", "values": ["1.1.1.1"], "deadline_s": 601}
        )
    assert long.value.field == "deadline_s"


async def test_acme_txt_values_coexist_and_go_one_by_one(dns: Dns, pdns_zone: PdnsZone) -> None:
    await add(dns, pdns_zone)
    name = f"_acme-challenge.{pdns_zone.name}"
    await dns.cmd("publish_txt", {"name": name, "value": "token-apex"})
    assert await served(pdns_zone, name, "TXT") == ("token-apex",)
    # wildcard and another order at once: each answers once its value is served
    await asyncio.gather(
        dns.cmd("publish_txt", {"name": name, "value": "token-wildcard"}),
        dns.cmd("publish_txt", {"name": name, "value": "token-www"}),
    )
    assert await served(pdns_zone, name, "TXT") == ("token-apex", "token-wildcard", "token-www")

    await dns.cmd("remove_txt", {"name": name, "value": "token-apex"})
    assert await served(pdns_zone, name, "TXT") == ("token-wildcard", "token-www")
    await dns.cmd("remove_txt", {"name": name, "value": "token-apex"})  # gone already: fine
    await dns.cmd("remove_txt", {"name": name, "value": "token-www"})
    await dns.cmd("remove_txt", {"name": name, "value": "token-wildcard"})
    assert await served(pdns_zone, name, "TXT") == ()
    assert (await dns.ask("domain", {"domain": pdns_zone.name}))["records"] == []

    spf = f"mail.{pdns_zone.name}"
    await pdns_zone.put(spf, "TXT", ['"v=spf1 -all"'])
    with pytest.raises(Conflict) as err:
        await dns.cmd("publish_txt", {"name": spf, "value": "x"})
    assert spf in err.value.message
    assert await served(pdns_zone, spf, "TXT") == ("v=spf1 -all",)


# -- removal ----------------------------------------------------------------------------------


async def test_a_domain_is_removed_only_when_no_app_uses_it(
    dns: Dns, pdns_zone: PdnsZone, nats_url: str
) -> None:
    z = pdns_zone.name
    await add(dns, pdns_zone)
    ours = f"blog.{z}"
    theirs = f"www.{z}"
    await dns.cmd("set_record", {"name": ours, "type": "A", "values": ["127.0.0.1"], "owner": "a"})
    await pdns_zone.put(theirs, "A", ["192.0.2.7"])

    with pytest.raises(Unavailable) as silent:  # no apps service answers
        await dns.cmd("remove_domain", {"domain": z})
    assert "apps service" in silent.value.message and "stays" in silent.value.message
    assert (await dns.ask("domain", {"domain": z}))["domain"] == z

    seen: list[dict[str, Any]] = []
    blog_app = {"app_id": "a1", "location": "blog", "domain": z, "state": "installed"}
    async with apps_stand_in(nats_url, [blog_app], seen):
        with pytest.raises(Conflict) as used:
            await dns.cmd("remove_domain", {"domain": z})
    assert f"blog.{z}" in used.value.message
    assert seen[0]["actor"] == "system" and seen[0]["payload"] == {}
    assert await served(pdns_zone, ours, "A") == ("127.0.0.1",)

    elsewhere = {**blog_app, "domain": "other.test"}
    async with apps_stand_in(nats_url, [elsewhere], seen):
        await dns.cmd("remove_domain", {"domain": z})
    assert await served(pdns_zone, ours, "A") == ()
    assert await served(pdns_zone, theirs, "A") == ("192.0.2.7",)
    kinds = [t for t, _ in await dns.events(z)]
    assert kinds[-2:] == ["DnsRecordRemoved", "DomainRemoved"]
    with pytest.raises(NotFound):
        await dns.ask("domain", {"domain": z})
    assert await dns.ask("domains", {}) == {"items": []}
    with pytest.raises(NotFound):
        await dns.cmd("remove_domain", {"domain": z})

    again = await add(dns, pdns_zone)  # the same domain can come back
    assert again["verified_at"] is not None and again["records"] == []
