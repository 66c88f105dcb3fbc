"""Mail in chromium, against the real identity, dns (with the test PowerDNS) and mail services,
the mail servers off (HP_MAIL_SERVERS=false):

the Email page lists the domain Homeport manages with mail off; "Turn mail on" shows the records
the mail service answers (MX to mail.<domain>, SPF, DKIM under its selector, DMARC); an address
the API refuses gets its message next to "Address"; an alias to two accounts and a list to a
group are listed with whom they deliver to, as the API holds them; one is removed; a catch-all
is set; "Turn mail off" asks first. On the profile, a person sees their addresses, creates an app
password (shown once, the one the service keeps the hash of, copyable), sees it listed, and
revokes it after a confirmation.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any

import asyncpg
import pytest
from playwright.async_api import Locator, Page, expect

from tests.dashboard.browserkit import PHONE, Chromium, chromium, field_error, shot, sign_in
from tests.dashboard.dashkit import OWNER, Edged, PlatformStarter
from tests.dns.dnskit import pdns_provider
from tests.gateway.apikit import Answer
from tests.support.pdns import PdnsZone

pytestmark = pytest.mark.timeout(300)

KIM = {"username": "kim", "email": "kim@example.test", "password": "kim's long password 1"}
LEE = {"username": "lee", "email": "lee@example.test", "password": "lee's long password 2"}


async def api(ed: Edged, method: str, path: str, session: str, body: Any = None) -> Answer:
    return await ed.platform.client.call(method, "/api/v1" + path, session=session, body=body)


async def ok(ed: Edged, method: str, path: str, session: str, body: Any = None) -> Any:
    a = await api(ed, method, path, session, body)
    assert a.status in (200, 201, 204), (method, path, a.status, a.body)
    return a.body


async def login(ed: Edged, who: dict[str, str]) -> str:
    reply = await ed.platform.identity.login(who["username"], who["password"])
    return str(reply["session"])


async def world(ed: Edged, zone: PdnsZone) -> dict[str, str]:
    """The owner, kim and lee, the group family (kim), and `zone` managed on PowerDNS."""
    a = await ed.platform.client.call(
        "POST", "/api/v1/setup", body=ed.platform.identity.setup_body(OWNER)
    )
    assert a.status == 201, a.body
    admin = await login(ed, OWNER)
    kim = (await ok(ed, "POST", "/users", admin, KIM))["user_id"]
    lee = (await ok(ed, "POST", "/users", admin, LEE))["user_id"]
    family = (await ok(ed, "POST", "/groups", admin, {"name": "family"}))["group_id"]
    a = await api(ed, "PUT", f"/groups/{family}/members/{kim}", admin)
    assert a.status in (200, 204), a.body
    body = {"domain": zone.name, "provider": pdns_provider(zone), "server_ipv4": "192.0.2.10"}
    await ok(ed, "POST", "/domains", admin, body)
    return {"admin": admin, "kim": kim, "lee": lee, "family": family}


async def signed_in(browser: Chromium, route: str, who: dict[str, str]) -> Page:
    page = await browser.page()
    await page.goto(route)
    await sign_in(page, who["username"], who["password"])
    return page


async def snap(page: Page, name: str) -> None:
    """A screenshot from the top of the page (the sticky top bar would show halfway down)."""
    await page.evaluate("window.scrollTo(0, 0)")
    await shot(page, name)


def fact(scope: Locator, term: str) -> Locator:
    """The <dd> after the <dt> named `term` in a dl.facts."""
    return scope.locator("dt", has_text=re.compile(f"^{term}$")).locator(
        "xpath=following-sibling::dd[1]"
    )


async def wait_for(check: Any, what: str, timeout: float = 30.0) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.25)


@pytest.mark.slow
async def test_admin_turns_mail_on_sees_its_records_and_adds_an_alias_and_a_list(
    platform: PlatformStarter, pdns_zone: PdnsZone
) -> None:
    zone = pdns_zone.name
    async with platform(dns=True) as ed, chromium(ed.direct_url) as browser:
        w = await world(ed, pdns_zone)
        admin = w["admin"]
        page = await signed_in(browser, "/#/mail", OWNER)
        await expect(page.get_by_role("heading", name="Email", level=1)).to_be_visible()
        nav = page.get_by_role("navigation", name="Main")
        await expect(nav.get_by_role("link", name="Email")).to_have_attribute(
            "aria-current", "page"
        )
        item = page.get_by_role("article", name=zone)
        await expect(item.get_by_text("Mail off", exact=True)).to_be_visible()
        await expect(item.get_by_role("table")).to_have_count(0)
        servers = page.get_by_role("region", name="Mail servers")
        await expect(servers.get_by_text("Not running", exact=True)).to_be_visible()
        assert (await ok(ed, "GET", "/mail/domains", admin))["items"] == []

        # -- on: the records the mail service says the domain needs, on the page
        await item.get_by_role("button", name=f"Turn mail on for {zone}").click()
        await expect(item.get_by_text("Mail on", exact=True)).to_be_visible(timeout=30_000)
        view = await ok(ed, "GET", f"/mail/domains/{zone}", admin)
        assert view["enabled"] is True
        selector = view["selector"]
        records = item.get_by_role("table", name=f"DNS records for mail at {zone}")
        rows = records.get_by_role("row")
        # at once: the records the read model says (the mail host's address comes with the
        # sync, so four or five of them, by who was first)
        mx = rows.filter(has=page.get_by_role("cell", name="MX", exact=True))
        await expect(mx).to_have_count(1)

        # -- what DNS serves of each record, beside what Homeport wants: ✓ with words
        async def all_served() -> bool:
            view = await ok(ed, "GET", f"/mail/domains/{zone}", admin)
            return len(view["records"]) == 5 and all(r["ok"] for r in view["records"])

        await wait_for(all_served, "the records, the mail host's address with them, served")
        await page.reload()
        await expect(item.get_by_text("Mail on", exact=True)).to_be_visible()
        await expect(rows).to_have_count(1 + 5)  # the header and five records
        await expect(mx).to_contain_text(zone)
        await expect(mx).to_contain_text(f"10 mail.{zone}")
        dkim = rows.filter(has_text=f"{selector}._domainkey.{zone}")
        await expect(dkim).to_contain_text("TXT")
        public = next(r for r in view["records"] if r["name"].startswith(selector))["values"][0]
        assert public.startswith("v=DKIM1; k=rsa; p=")
        await expect(dkim).to_contain_text(public)
        await expect(rows.filter(has_text=f"_dmarc.{zone}")).to_contain_text("v=DMARC1")
        await expect(rows.filter(has_text="v=spf1 mx -all")).to_have_count(1)
        host = rows.filter(has=page.get_by_role("cell", name="A", exact=True))
        await expect(host).to_contain_text(f"mail.{zone}")
        await expect(host).to_contain_text("192.0.2.10")
        await snap(page, "mail-on")
        # the servers' state follows by itself: the domain and everyone's mailbox (servers off
        # here, so not running)
        await expect(fact(servers, "Domains with mail")).to_have_text(zone, timeout=20_000)
        await expect(fact(servers, "Mailboxes")).to_have_text("3")
        await expect(fact(servers, "Host name")).to_have_text(f"mail.{zone}")
        await expect(servers.get_by_text("Not running", exact=True)).to_be_visible()
        await expect(records.get_by_role("columnheader", name="Found")).to_be_visible()
        await item.get_by_role("button", name=f"Check DNS again for {zone}").click()
        await expect(mx.get_by_role("cell").last).to_have_text("✓ Served")
        await expect(records.get_by_text("✓ Served", exact=True)).to_have_count(5)

        # -- an address the API refuses: its message next to "Address", nothing recorded
        await item.get_by_label("Address", exact=True).fill("in+fo")
        await item.get_by_role("checkbox", name="kim", exact=True).check()
        await item.get_by_role("button", name="Add address").click()
        await expect(field_error(item, "Address")).to_be_visible()
        await expect(item.get_by_label("Address", exact=True)).to_have_attribute(
            "aria-invalid", "true"
        )
        await snap(page, "mail-address-refused")
        assert (await ok(ed, "GET", f"/mail/domains/{zone}", admin))["addresses"] == []

        # -- an alias to kim and lee
        await item.get_by_label("Address", exact=True).fill("info")
        await item.get_by_role("checkbox", name="lee", exact=True).check()
        await item.get_by_role("button", name="Add address").click()
        addresses = item.get_by_role("table", name=f"Extra addresses at {zone}")
        info = addresses.get_by_role("row").filter(has_text=f"info@{zone}")
        await expect(info).to_contain_text("Alias")
        await expect(info).to_contain_text("kim, lee")

        # -- a list to the group family
        await item.get_by_label("Address", exact=True).fill("family")
        await item.get_by_label("Kind").select_option("list")
        await item.get_by_label("Group").select_option(label="family")
        await item.get_by_role("button", name="Add address").click()
        fam = addresses.get_by_role("row").filter(has_text=f"family@{zone}")
        await expect(fam).to_contain_text("List")
        await expect(fam).to_contain_text("Members of family")
        view = await ok(ed, "GET", f"/mail/domains/{zone}", admin)
        held = {a["address"]: a for a in view["addresses"]}
        assert held[f"info@{zone}"]["kind"] == "alias"
        assert sorted(held[f"info@{zone}"]["user_ids"]) == sorted([w["kim"], w["lee"]])
        assert held[f"family@{zone}"]["kind"] == "list"
        assert held[f"family@{zone}"]["group_id"] == w["family"]
        await snap(page, "mail-addresses")

        # -- remove one
        await addresses.get_by_role("button", name=f"Remove info@{zone}").click()
        await expect(info).to_have_count(0)
        await expect(fam).to_be_visible()
        left = (await ok(ed, "GET", f"/mail/domains/{zone}", admin))["addresses"]
        assert [a["address"] for a in left] == [f"family@{zone}"]

        # -- a catch-all to kim
        await item.get_by_label("Catch-all mailbox").select_option(label="kim")
        await item.get_by_role("button", name="Save catch-all").click()
        said = item.get_by_role("status").filter(has_text="goes to kim")
        await expect(said).to_be_visible()
        assert (await ok(ed, "GET", f"/mail/domains/{zone}", admin))["catch_all"] == w["kim"]
        await page.set_viewport_size(PHONE)
        await snap(page, "mail-phone")
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the Email page scrolls sideways ({width})"
        await page.set_viewport_size({"width": 1280, "height": 800})

        # -- off: asked first (Cancel keeps it on), then off
        await item.get_by_role("button", name=f"Turn mail off for {zone}").click()
        confirm = page.get_by_role("dialog", name=f"Turn mail off for {zone}?")
        await confirm.get_by_role("button", name="Cancel").click()
        await expect(confirm).to_be_hidden()
        assert (await ok(ed, "GET", f"/mail/domains/{zone}", admin))["enabled"] is True
        await item.get_by_role("button", name=f"Turn mail off for {zone}").click()
        await confirm.get_by_role("button", name="Turn mail off").click()
        await expect(confirm).to_be_hidden()
        await expect(item.get_by_text("Mail off", exact=True)).to_be_visible()
        await expect(records).to_have_count(0)
        assert (await ok(ed, "GET", f"/mail/domains/{zone}", admin))["enabled"] is False


@pytest.mark.slow
async def test_a_person_creates_an_app_password_sees_it_once_and_revokes_it(
    platform: PlatformStarter, pdns_zone: PdnsZone, dsn: str
) -> None:
    zone = pdns_zone.name
    async with platform(dns=True) as ed, chromium(ed.direct_url) as browser:
        w = await world(ed, pdns_zone)
        await ok(ed, "POST", "/mail/domains", w["admin"], {"domain": zone})
        kim = await login(ed, KIM)

        async def has_mailbox() -> bool:
            return (await ok(ed, "GET", "/profile/mail", kim))["address"] == f"kim@{zone}"

        await wait_for(has_mailbox, "kim's mailbox")
        page = await signed_in(browser, "/#/profile", KIM)
        await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        nav = page.get_by_role("navigation", name="Main")
        await expect(nav.get_by_role("link", name="Domains")).to_have_count(0)
        await expect(nav.get_by_role("link", name="Email")).to_have_count(0)
        mail = page.get_by_role("region", name="Mail", exact=True)
        await expect(mail.get_by_role("list", name="Your mail addresses")).to_have_text(
            f"kim@{zone}"
        )
        await expect(mail.get_by_text("You have no app passwords.")).to_be_visible()

        # -- a label the API refuses (over 100 characters): its message next to the field
        await mail.get_by_label("What it is for").fill("x" * 101)
        await mail.get_by_role("button", name="Create app password").click()
        await expect(field_error(mail, "What it is for")).to_be_visible()
        assert (await ok(ed, "GET", "/profile/mail", kim))["app_passwords"] == []

        # -- created: shown once with a Copy button, listed
        await mail.get_by_label("What it is for").fill("phone")
        await mail.get_by_role("button", name="Create app password").click()
        shown = mail.get_by_label("Your new app password")
        await expect(shown).to_be_visible()
        await expect(mail.get_by_text("it is shown only this once")).to_be_visible()
        password = await shown.input_value()
        assert len(password) >= 16, password
        await mail.get_by_role("button", name="Copy").click()
        await expect(mail.get_by_text("Copied.")).to_be_visible()
        assert await page.evaluate("navigator.clipboard.readText()") == password
        table = mail.get_by_role("table", name="Your app passwords")
        row = table.get_by_role("row").filter(has_text="phone")
        await expect(row).to_contain_text("Never")
        await snap(page, "profile-mail-app-password")
        [listed] = (await ok(ed, "GET", "/profile/mail", kim))["app_passwords"]
        assert listed["label"] == "phone" and "password" not in listed
        # the password shown is the one the mail service keeps the hash of
        conn = await asyncpg.connect(dsn)
        try:
            kept = await conn.fetchval(
                "SELECT hash FROM mail.app_passwords WHERE password_id = $1",
                listed["password_id"],
            )
        finally:
            await conn.close()
        assert kept == hashlib.sha256(password.encode()).hexdigest()

        # -- shown only this once: gone when dismissed, and after a reload
        await mail.get_by_role("button", name="I have copied it").click()
        await expect(shown).to_have_count(0)
        assert password not in await page.content()
        await page.reload()
        await expect(row).to_be_visible()
        assert password not in await page.content()

        # -- revoked after a confirmation (Cancel keeps it)
        await row.get_by_role("button", name="Revoke the app password phone").click()
        confirm = page.get_by_role("dialog", name="Revoke this app password?")
        await confirm.get_by_role("button", name="Cancel").click()
        await expect(confirm).to_be_hidden()
        assert len((await ok(ed, "GET", "/profile/mail", kim))["app_passwords"]) == 1
        await row.get_by_role("button", name="Revoke the app password phone").click()
        await confirm.get_by_role("button", name="Revoke").click()
        await expect(confirm).to_be_hidden()
        await expect(row).to_have_count(0)
        await expect(mail.get_by_text("The app password phone is revoked.")).to_be_visible()
        assert (await ok(ed, "GET", "/profile/mail", kim))["app_passwords"] == []
