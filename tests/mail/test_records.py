"""The mail domain view says, for each DNS record mail needs, what the domain's nameservers
actually serve (`found`), whether that is what Homeport wants (`ok`) and, if not, why
(`error`): against the real identity, dns and mail services and the test PowerDNS, whose
records a test changes behind Homeport's back. Nameservers that do not answer, or a dns
service that is down, make `found` unknown with the reason; the view is answered all the same.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from libs.events.context import Context
from tests.support.mail import World, mail_world, running_mail
from tests.support.pdns import PdnsZone, create_zone

pytestmark = pytest.mark.timeout(180)

SYSTEM = Context("system", "mail-records-test", None, None)
KEPT = 2.0  # HP_MAIL_FOUND_CACHE here: what DNS serves is kept this long for the view


@pytest.fixture
async def world(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path, pdns_zone: PdnsZone
) -> AsyncIterator[World]:
    async with mail_world(
        monkeypatch,
        dsn=dsn,
        nats_url=nats_url,
        tmp_path=tmp_path,
        zone=pdns_zone,
        env={"HP_MAIL_FOUND_CACHE": str(KEPT)},
    ) as w:
        yield w


@pytest.fixture
def silent() -> Iterator[str]:
    """A loopback UDP port that takes queries and never answers: a dead nameserver."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


async def records(w: World, domain: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The domain view's records by (name, type), as an administrator sees them."""
    view = await w.mail.ask("domain", {"domain": domain}, actor=w.admin, admin=True)
    return {(r["name"], r["type"]): r for r in view["records"]}


async def until(
    check: Callable[[], Awaitable[dict[tuple[str, str], dict[str, Any]]]],
    good: Callable[[dict[tuple[str, str], dict[str, Any]]], bool],
    what: str,
    within: float = 20,
) -> dict[tuple[str, str], dict[str, Any]]:
    end = time.monotonic() + within
    while True:
        seen = await check()
        if good(seen):
            return seen
        assert time.monotonic() < end, f"{what}: still {seen}"
        await asyncio.sleep(0.3)


def patch(zone: PdnsZone, rrset: dict[str, Any]) -> None:
    """Change the zone straight through PowerDNS's API, behind Homeport's back."""
    zone.server.api("PATCH", f"/api/v1/servers/localhost/zones/{zone.name}.", {"rrsets": [rrset]})


async def test_each_record_shows_what_dns_serves_and_a_change_behind_homeports_back(
    world: World,
) -> None:
    w, d = world, world.domain
    await w.mail.cmd("enable_domain", {"domain": d})
    status = await w.mail.ask("status", {"wait": True})
    assert status["last_error"] is None and status["record_errors"] == []

    # every record mail needs is served as Homeport wrote it
    seen = await records(w, d)
    assert set(seen) >= {(d, "MX"), (d, "TXT"), (f"_dmarc.{d}", "TXT"), (f"mail.{d}", "A")}
    assert len(seen) == 5
    for key, r in seen.items():
        assert r["ok"] is True, (key, r)
        assert sorted(r["found"]) == sorted(r["values"]) and r["error"] is None, (key, r)
    assert seen[(d, "MX")]["found"] == [f"10 mail.{d}"]
    dkim = next(r for (n, _), r in seen.items() if "._domainkey." in n)
    assert dkim["found"][0].startswith("v=DKIM1; k=rsa; p=") and len(dkim["found"][0]) > 300

    # the MX changed at PowerDNS by someone else: kept a moment, then shown as it is
    patch(
        w.zone,
        {
            "name": f"{d}.",
            "type": "MX",
            "ttl": 60,
            "changetype": "REPLACE",
            "records": [{"content": f"20 elsewhere.{d}.", "disabled": False}],
        },
    )
    began = time.monotonic()
    again = await records(w, d)
    if time.monotonic() - began < KEPT / 2:  # asked well within the time it is kept
        assert again[(d, "MX")]["ok"] is True, "asked again at once, DNS was asked again"
    seen = await until(
        lambda: records(w, d), lambda s: not s[(d, "MX")]["ok"], "the changed MX shown"
    )
    mx = seen[(d, "MX")]
    assert mx["values"] == [f"10 mail.{d}"]  # what Homeport wants, unchanged
    assert mx["found"] == [f"20 elsewhere.{d}"]
    assert mx["error"] == "the nameservers serve other values"
    assert all(r["ok"] for k, r in seen.items() if k != (d, "MX"))

    # DMARC removed at PowerDNS: not served
    patch(w.zone, {"name": f"_dmarc.{d}.", "type": "TXT", "changetype": "DELETE"})
    seen = await until(
        lambda: records(w, d), lambda s: not s[(f"_dmarc.{d}", "TXT")]["ok"], "DMARC gone"
    )
    dmarc = seen[(f"_dmarc.{d}", "TXT")]
    assert dmarc["found"] == [] and dmarc["error"] == "not served by the domain's nameservers"

    # the list of domains stays as it was: no DNS look-ups for it
    [listed] = (await w.mail.ask("domains", {}))["items"]
    assert all("found" not in r for r in listed["records"])


async def test_nameservers_that_do_not_answer_leave_found_unknown_and_the_view_answers(
    world: World, silent: str
) -> None:
    w = world
    await w.mail.cmd("enable_domain", {"domain": w.domain})
    # a second domain whose nameserver is dead (its records are written through the API)
    other = f"x{w.domain}"
    create_zone(w.zone.server, other)
    try:
        provider = {
            "kind": "powerdns",
            "api_url": w.zone.api_url,
            "api_key": w.zone.api_key,
            "zone": other,
            "nameservers": [silent],
        }
        await w.mail.bus.command(
            "dns", "add_domain", {"domain": other, "provider": provider}, ctx=SYSTEM, timeout=30
        )
        await w.mail.cmd("enable_domain", {"domain": other})
        await w.mail.ask("status", {"wait": True})
        began = time.monotonic()
        seen = await records(w, other)
        took = time.monotonic() - began
        assert took < 5, f"the view took {took:.1f} s"
        assert len(seen) == 4
        for r in seen.values():
            assert r["found"] is None and r["ok"] is False, r
            assert r["error"] == f"no nameserver answered: {silent} did not answer (timeout)"
        # the primary domain, on live nameservers, is checked all the same
        assert all(r["ok"] for r in (await records(w, w.domain)).values())
    finally:
        w.zone.server.api("DELETE", f"/api/v1/servers/localhost/zones/{other}.")


async def test_a_dns_service_that_is_down_leaves_found_unknown_and_the_view_answers(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path, pdns_zone: PdnsZone
) -> None:
    from tests.dns.dnskit import dns_env, pdns_provider, running_dns

    dns_stack = AsyncExitStack()
    dns = await dns_stack.enter_async_context(
        running_dns(monkeypatch, dns_env(dsn=dsn, nats_url=nats_url, tmp_path=tmp_path / "dns"))
    )
    try:
        await dns.cmd(
            "add_domain", {"domain": pdns_zone.name, "provider": pdns_provider(pdns_zone)}
        )
        async with running_mail(
            monkeypatch,
            dsn=dsn,
            nats_url=nats_url,
            tmp_path=tmp_path / "mail",
            env={"HP_MAIL_FOUND_CACHE": "0"},
        ) as mail:
            await mail.cmd("enable_domain", {"domain": pdns_zone.name})
            up = await mail.ask("domain", {"domain": pdns_zone.name})
            assert up["records"] and all(r["found"] is not None for r in up["records"])
            await dns_stack.aclose()  # dns stops; mail goes on
            began = time.monotonic()
            down = await mail.ask("domain", {"domain": pdns_zone.name})
            assert time.monotonic() - began < 5
            assert [(r["name"], r["type"]) for r in down["records"]] == [
                (r["name"], r["type"]) for r in up["records"]
            ]
            for r in down["records"]:
                assert r["found"] is None and r["ok"] is False, r
                assert r["error"].startswith("DNS could not be asked: "), r
                assert "dns service is running" in r["error"], r
    finally:
        await dns_stack.aclose()
