"""The Email page's server-wide settings in chromium, against the real identity, dns (with the
test PowerDNS) and mail services, the mail servers off (HP_MAIL_SERVERS=false):

the Mailboxes table lists every account's mailbox, its usage "unknown" (no servers run here to
count it); a size limit the API refuses gets its message next to the field, one it takes shows
in the table and in the API, and is removed again. The API itself names bad quota input and
lists mailboxes to administrators only. The relay form says "Checking the relay…" while the API
tries the relay, and shows the API's error next to the field it names: Host for a closed port on
loopback, Password for a sign-in the relay refuses; a relay that takes the sign-in is kept
(its password never shown back) and removed. The block lists form names a bad line, saves,
and shows what is saved after a reload.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, Route, expect

from deploy.embedded import free_port
from tests.dashboard.browserkit import (
    DESKTOP,
    PHONE,
    Chromium,
    chromium,
    field_error,
    shot,
    sign_in,
)
from tests.dashboard.dashkit import OWNER, Edged, PlatformStarter
from tests.dns.dnskit import pdns_provider
from tests.gateway.apikit import Answer
from tests.support.pdns import PdnsZone
from tests.support.smart_host import smart_host

pytestmark = pytest.mark.timeout(300)

KIM = {"username": "kim", "email": "kim@example.test", "password": "kim's long password 1"}
RELAY_LOGIN, RELAY_PASSWORD = "me@relay.test", "the relay's password"


async def api(ed: Edged, method: str, path: str, session: str, body: Any = None) -> Answer:
    return await ed.platform.client.call(method, "/api/v1" + path, session=session, body=body)


async def ok(ed: Edged, method: str, path: str, session: str, body: Any = None) -> Any:
    a = await api(ed, method, path, session, body)
    assert a.status in (200, 201, 204), (method, path, a.status, a.body)
    return a.body


async def mail_on(ed: Edged, zone: PdnsZone) -> dict[str, str]:
    """The owner and kim; `zone` managed on PowerDNS with mail on, both mailboxes listed."""
    a = await ed.platform.client.call(
        "POST", "/api/v1/setup", body=ed.platform.identity.setup_body(OWNER)
    )
    assert a.status == 201, a.body
    admin = str((await ed.platform.identity.login(OWNER["username"], OWNER["password"]))["session"])
    kim = (await ok(ed, "POST", "/users", admin, KIM))["user_id"]
    body = {"domain": zone.name, "provider": pdns_provider(zone), "server_ipv4": "192.0.2.10"}
    await ok(ed, "POST", "/domains", admin, body)
    await ok(ed, "POST", "/mail/domains", admin, {"domain": zone.name})
    end = asyncio.get_running_loop().time() + 30
    while True:
        items = (await ok(ed, "GET", "/mail/mailboxes", admin))["items"]
        if {b["username"] for b in items} >= {"owner", "kim"}:
            break
        assert asyncio.get_running_loop().time() < end, f"the mailboxes never listed: {items}"
        await asyncio.sleep(0.25)
    kim_session = str(
        (await ed.platform.identity.login(KIM["username"], KIM["password"]))["session"]
    )
    return {"admin": admin, "kim": kim, "kim_session": kim_session}


async def signed_in(browser: Chromium, route: str) -> Page:
    page = await browser.page()
    await page.goto(route)
    await sign_in(page, OWNER["username"], OWNER["password"])
    return page


async def snap(page: Page, name: str) -> None:
    await page.evaluate("window.scrollTo(0, 0)")
    await shot(page, name)


async def quota_of(ed: Edged, admin: str, user_id: str) -> Any:
    items = (await ok(ed, "GET", "/mail/mailboxes", admin))["items"]
    return next(b for b in items if b["user_id"] == user_id)["quota_bytes"]


@pytest.mark.slow
async def test_admin_sets_and_removes_a_size_limit_in_the_mailboxes_table(
    platform: PlatformStarter, pdns_zone: PdnsZone
) -> None:
    zone = pdns_zone.name
    async with platform(dns=True) as ed, chromium(ed.direct_url) as browser:
        w = await mail_on(ed, pdns_zone)
        admin, kim = w["admin"], w["kim"]
        listed = {
            b["username"]: b for b in (await ok(ed, "GET", "/mail/mailboxes", admin))["items"]
        }
        assert listed["kim"]["address"] == f"kim@{zone}" and listed["kim"]["user_id"] == kim
        # no servers run here: what a mailbox holds is unknown, not zero
        assert listed["kim"]["used_bytes"] is None and listed["kim"]["quota_bytes"] is None

        # -- the API: bad input named, nothing changed; administrators only
        for bad in (1000, -1, "1 GB", 1 << 60, 1.5):
            a = await api(ed, "PUT", f"/mail/mailboxes/{kim}/quota", admin, {"quota_bytes": bad})
            assert (a.status, a.body.get("field")) == (400, "quota_bytes"), (bad, a.body)
        a = await api(ed, "PUT", f"/mail/mailboxes/{kim}/quota", admin, {})
        assert (a.status, a.body.get("field")) == (400, "quota_bytes"), a.body
        a = await api(ed, "PUT", "/mail/mailboxes/not-an-id/quota", admin, {"quota_bytes": None})
        assert (a.status, a.body.get("field")) == (400, "user_id"), a.body
        assert await quota_of(ed, admin, kim) is None
        for path in ("/mail/mailboxes", "/mail/dnsbl", "/mail/relay"):
            a = await api(ed, "GET", path, w["kim_session"])
            assert a.status == 403, (path, a.status, a.body)

        page = await signed_in(browser, "/#/mail")
        boxes = page.get_by_role("region", name="Mailboxes", exact=True)
        table = boxes.get_by_role("table", name="Mailboxes")
        await expect(table.get_by_role("row")).to_have_count(1 + 2)  # the header, owner, kim
        row = table.get_by_role("row").filter(has_text=f"kim@{zone}")
        await expect(row).to_contain_text("Usage unknown")
        await expect(row).to_contain_text("No limit")
        await expect(boxes.get_by_text("Usage is unknown while the mail servers")).to_be_visible()

        # -- a limit the API refuses (under 1 MB): its message next to the field
        amount = f"New size limit for kim@{zone}"
        await row.get_by_label(amount, exact=True).fill("0.5")
        await row.get_by_label(f"Unit for kim@{zone}", exact=True).select_option("MB")
        await row.get_by_role("button", name=f"Set limit for kim@{zone}").click()
        await expect(field_error(row, amount)).to_contain_text(
            "The size limit must be an integer from 1 MB to"
        )
        await expect(row.get_by_label(amount, exact=True)).to_have_attribute("aria-invalid", "true")
        assert await quota_of(ed, admin, kim) is None
        # and what is no number at all, before asking
        await row.get_by_label(amount, exact=True).fill("lots")
        await row.get_by_role("button", name=f"Set limit for kim@{zone}").click()
        await expect(field_error(row, amount)).to_have_text(
            "Give the size as a number, e.g. 500 or 1.5."
        )

        # -- 2 GB: in the table and in the API
        await row.get_by_label(amount, exact=True).fill("2")
        await row.get_by_label(f"Unit for kim@{zone}", exact=True).select_option("GB")
        await row.get_by_role("button", name=f"Set limit for kim@{zone}").click()
        await expect(boxes.get_by_role("status").first).to_contain_text(
            f"The size limit of kim@{zone} is now 2 GB."
        )
        await expect(row).to_contain_text("Now 2 GB")
        await expect(row).to_contain_text("Usage unknown (limit 2 GB)")
        await expect(field_error(row, amount)).to_have_count(0)
        assert await quota_of(ed, admin, kim) == 2 << 30
        owner = table.get_by_role("row").filter(has_text=f"owner@{zone}")
        await expect(owner).to_contain_text("No limit")
        await snap(page, "mail-mailboxes-quota")
        await page.set_viewport_size(PHONE)
        await row.scroll_into_view_if_needed()
        await shot(page, "mail-mailboxes-phone")
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the Email page scrolls sideways ({width})"
        await page.set_viewport_size(DESKTOP)

        # -- 1.5 GB, then removed
        await row.get_by_label(amount, exact=True).fill("1.5")
        await row.get_by_role("button", name=f"Set limit for kim@{zone}").click()
        await expect(row).to_contain_text("Now 1.5 GB")
        assert await quota_of(ed, admin, kim) == 3 << 29
        await row.get_by_role("button", name=f"Remove limit for kim@{zone}").click()
        await expect(boxes.get_by_role("status").first).to_contain_text(
            f"kim@{zone} has no size limit now."
        )
        await expect(row).to_contain_text("No limit")
        await expect(row.get_by_role("button", name=f"Remove limit for kim@{zone}")).to_have_count(
            0
        )
        assert await quota_of(ed, admin, kim) is None
        # after a reload, as the API holds it
        await page.reload()
        await expect(row).to_contain_text("No limit")


@pytest.mark.slow
async def test_relay_form_shows_the_check_and_its_error_and_block_lists_save(
    platform: PlatformStarter, pdns_zone: PdnsZone, tmp_path: Path
) -> None:
    async with (
        platform(dns=True) as ed,
        chromium(ed.direct_url) as browser,
        smart_host(tmp_path, (RELAY_LOGIN, RELAY_PASSWORD)) as smart,
    ):
        w = await mail_on(ed, pdns_zone)
        admin = w["admin"]
        page = await signed_in(browser, "/#/mail")
        relay = page.get_by_role("region", name="Outbound relay")
        await expect(
            relay.get_by_text("No relay: mail to other domains is delivered directly.")
        ).to_be_visible()

        # -- a closed port on loopback: "Checking the relay…", then the API's error at Host
        async def slowly(route: Route) -> None:
            if route.request.method == "PUT":
                await asyncio.sleep(1.5)  # long enough to see the check under way
            await route.continue_()

        # a host the API's schema refuses: its message, in words, at Host
        await relay.get_by_label("Host").fill("smtp example")
        await relay.get_by_role("button", name="Save relay").click()
        await expect(field_error(relay, "Host")).to_contain_text("The host has the wrong form")
        await page.route("**/api/v1/mail/relay", slowly)
        await relay.get_by_label("Host").fill("127.0.0.1")
        await relay.get_by_label("Port").fill(str(free_port()))
        await relay.get_by_label("Encryption").select_option("starttls")
        await relay.get_by_label("Username").fill(RELAY_LOGIN)
        await relay.get_by_label("Password", exact=True).fill("whatever it is")
        await relay.get_by_role("button", name="Save relay").click()
        await expect(relay.get_by_role("button", name="Checking the relay…")).to_be_disabled()
        await expect(
            relay.get_by_role("status").filter(has_text="Checking the relay…")
        ).to_be_visible()
        host_error = field_error(relay, "Host")
        await expect(host_error).to_contain_text("could not reach a mail server at 127.0.0.1")
        await expect(relay.get_by_label("Host")).to_have_attribute("aria-invalid", "true")
        await expect(relay.get_by_role("button", name="Save relay")).to_be_enabled()
        await snap(page, "mail-relay-unreachable")
        await page.unroute("**/api/v1/mail/relay")
        assert (await ok(ed, "GET", "/mail/relay", admin))["relay"] is None

        # -- a relay that answers but refuses the sign-in: the error at Password
        await relay.get_by_label("Port").fill(str(smart.port))
        await relay.get_by_label("Encryption").select_option("tls")
        await relay.get_by_label("Password", exact=True).fill("not the password")
        await relay.get_by_role("button", name="Save relay").click()
        await expect(field_error(relay, "Password")).to_contain_text("refused the sign-in")
        await expect(host_error).to_have_count(0)
        assert (await ok(ed, "GET", "/mail/relay", admin))["relay"] is None

        # -- the right password, and an SPF addition the API refuses: the error at its field
        await relay.get_by_label("Password", exact=True).fill(RELAY_PASSWORD)
        await relay.get_by_label("Add to the SPF record").fill("include:spf..relay.test")
        await relay.get_by_role("button", name="Save relay").click()
        spf_error = field_error(relay, "Add to the SPF record")
        await expect(spf_error).to_contain_text("The SPF addition has the wrong form")
        assert (await ok(ed, "GET", "/mail/relay", admin))["relay"] is None

        # -- then right: kept, said, the password never shown back
        await relay.get_by_label("Add to the SPF record").fill("  include:_spf.relay.test ")
        await relay.get_by_role("button", name="Save relay").click()
        await expect(relay.get_by_role("status").first).to_contain_text(
            "Saved: mail to other domains now leaves through 127.0.0.1."
        )
        await expect(
            relay.get_by_text(f"127.0.0.1:{smart.port} (TLS, signed in as {RELAY_LOGIN})")
        ).to_be_visible()
        held = (await ok(ed, "GET", "/mail/relay", admin))["relay"]
        assert held == {
            "host": "127.0.0.1",
            "port": smart.port,
            "tls": "tls",
            "username": RELAY_LOGIN,
            "spf": "include:_spf.relay.test",
        }
        await expect(relay.get_by_label("Password", exact=True)).to_have_value("")
        await expect(relay.get_by_text("A password is saved; it is never shown.")).to_be_visible()
        await page.reload()
        await expect(relay.get_by_label("Host")).to_have_value("127.0.0.1")
        await expect(relay.get_by_label("Username")).to_have_value(RELAY_LOGIN)
        await expect(relay.get_by_label("Add to the SPF record")).to_have_value(
            "include:_spf.relay.test"
        )
        await expect(relay.get_by_label("Password", exact=True)).to_have_value("")
        assert RELAY_PASSWORD not in await page.content()
        # saving again without the password asks for it (the relay is checked with it)
        await relay.get_by_role("button", name="Save relay").click()
        await expect(field_error(relay, "Password")).to_contain_text("Type the password again")

        # -- removed
        await relay.get_by_role("button", name="Remove relay").click()
        await expect(relay.get_by_role("status").first).to_contain_text("The relay is removed")
        await expect(
            relay.get_by_text("No relay: mail to other domains is delivered directly.")
        ).to_be_visible()
        assert (await ok(ed, "GET", "/mail/relay", admin))["relay"] is None

        # -- block lists: a bad line named, nothing saved
        lists = page.get_by_role("region", name="DNS block lists")
        zones = lists.get_by_label("Block lists")
        await expect(zones).to_have_value("")
        await zones.fill("zen.spamhaus.org\nNot a zone!")
        await lists.get_by_role("button", name="Save block lists").click()
        await expect(field_error(lists, "Block lists")).to_have_text(
            "Line 2 (not a zone!) has the wrong form: expected a DNS block list zone,"
            " e.g. zen.spamhaus.org"
        )
        assert (await ok(ed, "GET", "/mail/dnsbl", admin))["zones"] == []

        # -- saved (a repeat once), and there after a reload
        await zones.fill("zen.spamhaus.org\n\n bl.example.test \nzen.spamhaus.org")
        await lists.get_by_role("button", name="Save block lists").click()
        await expect(lists.get_by_role("status").first).to_contain_text(
            "Saved: 2 block lists in use."
        )
        assert (await ok(ed, "GET", "/mail/dnsbl", admin))["zones"] == [
            "zen.spamhaus.org",
            "bl.example.test",
        ]
        await snap(page, "mail-block-lists")
        await page.reload()
        await expect(zones).to_have_value("zen.spamhaus.org\nbl.example.test")

        # -- emptied
        await zones.fill("")
        await lists.get_by_role("button", name="Save block lists").click()
        await expect(lists.get_by_role("status").first).to_contain_text(
            "Saved: no block lists in use."
        )
        assert (await ok(ed, "GET", "/mail/dnsbl", admin))["zones"] == []
