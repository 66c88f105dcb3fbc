"""Domains in chromium, against a real PowerDNS and the whole platform (dns and certs run only
with the apps service, so on the test dockerd):

the setup wizard's domain step refuses a wrong API key (the provider's message next to "API
key", nothing recorded), then verifies the PowerDNS zone; the Domains page lists it (provider,
the key shown as bullets, verified, the my.<domain> record Homeport keeps, which PowerDNS holds
too), "Verify now" answers verified. Certificates: listed with their expiry; an upload with a key
that is not the certificate's is refused next to "Private key (PEM)" with nothing recorded; the
right key lists it as uploaded with "expires in N days". "Remove" asks first, then the domain
and its record are gone.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from playwright.async_api import Page, expect

from libs.tls import self_signed_pem
from tests.dashboard.browserkit import PHONE, chromium, error_of, shot
from tests.dashboard.dashkit import PASSWORD, Edged, PlatformStarter
from tests.support.pdns import PdnsZone

pytestmark = pytest.mark.timeout(300)

REDACTED = "\u2022" * 4  # how the API shows a secret


async def admin_session(ed: Edged) -> str:
    """A session of the administrator the wizard made, for the test's own API calls."""
    reply = await ed.platform.identity.login("owner", PASSWORD)
    return str(reply["session"])


async def api_get(ed: Edged, session: str, path: str) -> Any:
    answer = await ed.platform.client.call("GET", f"/api/v1{path}", session=session)
    assert answer.status == 200, answer.body
    return answer.body


async def pdns_values(zone: PdnsZone, name: str, rtype: str) -> list[str]:
    """The values PowerDNS itself holds for `name`/`rtype` (through its API)."""
    listed = await asyncio.to_thread(
        zone.server.api, "GET", f"/api/v1/servers/localhost/zones/{zone.name}."
    )
    for rrset in listed["rrsets"]:
        if rrset["name"] == f"{name}." and rrset["type"] == rtype:
            return sorted(r["content"] for r in rrset["records"])
    return []


async def wait_for(check: Any, what: str, timeout: float = 30.0) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.25)


def fact(scope: Any, term: str) -> Any:
    """The <dd> after the <dt> named `term` in a dl.facts."""
    return scope.locator("dt", has_text=re.compile(f"^{term}$")).locator(
        "xpath=following-sibling::dd[1]"
    )


async def domain_step(page: Page, zone: PdnsZone, api_key: str) -> None:
    """Fill the wizard's domain form for `zone` with `api_key`, and send it."""
    host, port = zone.nameservers[0]
    await page.get_by_label("Domain", exact=True).fill(zone.name)
    await page.get_by_label("DNS provider").select_option("powerdns")
    await page.get_by_label("API address").fill(zone.api_url)
    await page.get_by_label("API key").fill(api_key)
    more = page.locator("details.more")
    if await more.get_attribute("open") is None:
        await more.locator("summary").click()
    await page.get_by_label("Zone").fill(zone.name)
    await page.get_by_label("Name servers to check").fill(f"{host}:{port}")
    await page.get_by_label("This server's IPv4 address").fill("127.0.0.1")
    await page.get_by_role("button", name="Add and verify").click()


@pytest.mark.slow
async def test_wizard_domain_on_powerdns_and_the_domains_page(
    platform: PlatformStarter,
    docker_host: str,
    pdns_zone: PdnsZone,
) -> None:
    zone = pdns_zone
    my = f"my.{zone.name}"
    async with (
        platform(
            docker_host=docker_host,
        ) as ed,
        chromium(ed.direct_url) as browser,
    ):
        page = await browser.page()
        await page.goto(f"/#/setup?token={ed.platform.identity.setup_token}")
        await page.get_by_label("Username").fill("owner")
        await page.get_by_label("Email").fill("owner@example.test")
        await page.get_by_label("Password", exact=True).fill(PASSWORD)
        await page.get_by_label("Password again").fill(PASSWORD)
        await page.get_by_role("button", name="Create administrator").click()
        await expect(page.get_by_role("heading", name="2. Your domain")).to_be_visible()
        session = await admin_session(ed)

        # -- a wrong API key: PowerDNS's refusal next to "API key", nothing recorded
        await domain_step(page, zone, "not-the-key")
        await expect(error_of(page, "API key")).to_contain_text("refused the API key")
        await expect(page.get_by_label("API key")).to_have_attribute("aria-invalid", "true")
        await expect(error_of(page, "Domain")).to_have_count(0)
        await shot(page, "domains-wizard-wrong-key")
        assert (await api_get(ed, session, "/domains"))["items"] == []

        # -- the right key: verified, the wizard says so
        await page.get_by_label("API key").fill(zone.api_key)
        await page.get_by_role("button", name="Add and verify").click()
        await expect(page.get_by_role("heading", name="Homeport is ready")).to_be_visible(
            timeout=30_000
        )
        await expect(page.get_by_text(f"{zone.name} is verified")).to_be_visible()
        await shot(page, "domains-wizard-verified")
        await page.get_by_role("button", name="Open the dashboard").click()
        await expect(page.get_by_role("navigation", name="Main")).to_be_visible()

        # -- the edge keeps my.<domain> pointed here: in PowerDNS itself
        async def my_record_in_pdns() -> bool:
            return await pdns_values(zone, my, "A") == ["127.0.0.1"]

        await wait_for(my_record_in_pdns, f"the A record of {my} in PowerDNS")

        # -- the Domains page: provider, key hidden, verified, the record kept
        await page.goto("/#/domains")
        item = page.get_by_role("article", name=zone.name)
        await expect(item).to_be_visible()
        await expect(fact(item, "DNS provider")).to_have_text("PowerDNS")
        await expect(fact(item, "API key")).to_have_text(REDACTED)
        await expect(fact(item, "Zone")).to_have_text(zone.name)
        await expect(item.get_by_text("Verified", exact=True)).to_be_visible()
        records = item.locator("details.more")
        await records.locator("summary").click()
        row = records.get_by_role("row").filter(has_text=my)
        await expect(row).to_contain_text("127.0.0.1")
        await expect(row).to_contain_text("dashboard")
        assert zone.api_key not in await page.content()

        # -- Verify now: verified again
        await item.get_by_role("button", name=f"Verify now {zone.name}").click()
        said = page.get_by_role("status").filter(has_text=f"{zone.name} verified.")
        await expect(said).to_be_visible()
        await expect(item.get_by_text("Verified", exact=True)).to_be_visible()
        listed = (await api_get(ed, session, "/domains"))["items"]
        assert [d["domain"] for d in listed] == [zone.name] and listed[0]["verified_at"]
        assert listed[0]["provider"]["api_key"] == REDACTED
        await shot(page, "domains-page")

        # -- certificates: my.<domain>'s is listed with its expiry (no CA answers here: the
        # self-signed stand-in serves it)
        certs = page.get_by_role("table", name="TLS certificates")

        async def my_certificate() -> bool:
            items = (await api_get(ed, session, "/certificates"))["items"]
            return any(c["primary"] == my and c["not_after"] for c in items)

        await wait_for(my_certificate, f"the certificate of {my}")
        await page.reload()
        mine = certs.get_by_role("row").filter(has_text=my)
        await expect(mine.get_by_text(re.compile(r"^expires in \d+ days?$"))).to_be_visible()

        # -- upload: a key that is not the certificate's is refused next to its field
        shop = f"shop.{zone.name}"
        chain, key = self_signed_pem([shop], days=90)
        _, other_key = self_signed_pem([shop], days=90)
        await page.get_by_role("button", name="Upload certificate").click()
        dialog = page.get_by_role("dialog", name="Upload certificate")
        await dialog.get_by_label("Host names").fill(shop)
        await dialog.get_by_label("Certificate chain (PEM)").fill(chain)
        await dialog.get_by_label("Private key (PEM)").fill(other_key)
        await dialog.get_by_role("button", name="Upload certificate").click()
        key_error = error_of(page, "Private key (PEM)")
        await expect(key_error).to_contain_text("does not belong to the certificate")
        await expect(error_of(page, "Certificate chain (PEM)")).to_have_count(0)
        await shot(page, "domains-upload-wrong-key")
        items = (await api_get(ed, session, "/certificates"))["items"]
        assert shop not in [c["primary"] for c in items]

        # -- the right key: listed as uploaded, with the days it has left
        await dialog.get_by_label("Private key (PEM)").fill(key)
        await dialog.get_by_role("button", name="Upload certificate").click()
        await expect(dialog).to_be_hidden()
        said = page.get_by_role("status").filter(has_text=f"Certificate for {shop} uploaded.")
        await expect(said).to_be_visible()
        items = (await api_get(ed, session, "/certificates"))["items"]
        uploaded = next(c for c in items if c["primary"] == shop)
        assert uploaded["kind"] == "custom" and uploaded["days_left"] in (89, 90)
        row = certs.get_by_role("row").filter(has_text=shop)
        await expect(row.get_by_role("cell", name="Uploaded")).to_be_visible()
        days = uploaded["days_left"]
        await expect(row.get_by_text(f"expires in {days} days", exact=True)).to_be_visible()
        await expect(row.get_by_role("button", name=re.compile("^Renew now"))).to_have_count(0)
        await shot(page, "domains-certificates")
        await page.set_viewport_size(PHONE)
        await shot(page, "domains-certificates-phone")
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the Domains page scrolls sideways ({width})"
        await page.set_viewport_size({"width": 1280, "height": 800})

        # -- Remove: asked first; then gone from the page, the API and PowerDNS
        await item.get_by_role("button", name=f"Remove {zone.name}").click()
        confirm = page.get_by_role("dialog", name=f"Remove {zone.name}?")
        await expect(confirm).to_be_visible()
        await shot(page, "domains-remove-confirm")
        assert len((await api_get(ed, session, "/domains"))["items"]) == 1  # not yet
        await confirm.get_by_role("button", name="Remove domain").click()
        await expect(confirm).to_be_hidden()
        await expect(item).to_have_count(0)
        said = page.get_by_role("status").filter(has_text=f"{zone.name} removed.")
        await expect(said).to_be_visible()
        await expect(page.get_by_text("No domain yet")).to_be_visible()
        assert (await api_get(ed, session, "/domains"))["items"] == []

        async def my_record_gone() -> bool:
            return await pdns_values(zone, my, "A") == []

        await wait_for(my_record_gone, f"the A record of {my} to go from PowerDNS")
