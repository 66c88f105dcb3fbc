"""The Firewall page in chromium, against the real identity, gateway (with its edge) and
firewall services (HP_FIREWALL_APPLY=false: the host's packet filter is left alone):

the administrator opens Firewall from the navigation and sees what is open (SSH, the web ports)
and to whom; imports a small block list and sees its count and entries, unblocks one; sets an
SSH allow list, with the API's refusal of a bad line shown at the field naming the line. Seen
from another address (the browser's requests carry X-Real-IP as nginx sets it), a change is on
trial: a banner counts down to its undoing and "Keep these rules" keeps it; a change that
leaves the administrator's own address out is said so, and is undone by itself at the deadline.
A user without admin rights has no Firewall page.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, expect

from tests.dashboard.browserkit import Chromium, chromium, field_error, shot, sign_in
from tests.dashboard.dashkit import OWNER, Edged, edged_platform
from tests.gateway.apikit import Answer
from tests.support.edge import edge_get
from tests.support.firewall import firewall_env, running_firewall
from tests.support.waits import wait_until

pytestmark = pytest.mark.timeout(300)

TRIAL_SECONDS = 5  # the firewall's trial of a change made from afar (60 s in production)
REMOTE = "198.51.100.7"
NO_APPS = "status of 503"
USER = {"username": "dana", "email": "dana@example.test", "password": "dana's long password 9"}


@pytest.fixture
def firewalled(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> Any:
    @asynccontextmanager
    async def start() -> AsyncIterator[Edged]:
        async with edged_platform(
            monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path
        ) as ed:
            extra = {"HP_FIREWALL_TRIAL_SECONDS": str(TRIAL_SECONDS)}
            env = firewall_env(
                dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path, extra=extra
            )
            async with running_firewall(monkeypatch, env):
                yield ed

    return start


async def api(ed: Edged, method: str, path: str, session: str, body: Any = None) -> Answer:
    return await ed.platform.client.call(method, "/api/v1" + path, session=session, body=body)


async def ok(ed: Edged, method: str, path: str, session: str, body: Any = None) -> Any:
    a = await api(ed, method, path, session, body)
    assert a.status in (200, 201, 204), (method, path, a.status, a.body)
    return a.body


async def set_up(ed: Edged) -> str:
    a = await ed.platform.client.call(
        "POST", "/api/v1/setup", body=ed.platform.identity.setup_body(OWNER)
    )
    assert a.status == 201, a.body
    admin = str((await ed.platform.identity.login(OWNER["username"], OWNER["password"]))["session"])
    await ok(ed, "POST", "/users", admin, USER)
    return admin


def refused_by_nginx(ed: Edged, source: str, status: int) -> Callable[[], Awaitable[bool]]:
    """Whether the dashboard through nginx answers `status` to a client at `source`."""

    async def check() -> bool:
        got, _, _ = await edge_get(ed.https_port, "my.localhost", "/", source=source)
        return got == status

    return check


async def signed_in(browser: Chromium, who: dict[str, str], ip: str | None = None) -> Page:
    ctx = await browser.context()
    if ip is not None:  # what nginx tells the gateway of a browser elsewhere
        await ctx.set_extra_http_headers({"X-Real-IP": ip})
    page = await ctx.new_page()
    await page.goto("/#/firewall")
    await sign_in(page, who["username"], who["password"])
    return page


@pytest.mark.slow
async def test_admin_sees_what_is_open_imports_a_block_list_and_sets_ssh(firewalled: Any) -> None:
    # no apps service here: the apps list (app names, a user's apps page) answers 503
    async with firewalled() as ed, chromium(ed.direct_url, allow=NO_APPS) as browser:
        admin = await set_up(ed)
        page = await signed_in(browser, OWNER)
        await expect(page.get_by_role("heading", name="Firewall", level=1)).to_be_visible()
        nav = page.get_by_role("navigation", name="Main")
        await expect(nav.get_by_role("link", name="Firewall")).to_have_attribute(
            "aria-current", "page"
        )
        await expect(page.get_by_text("does not apply them")).to_be_visible()

        # -- what is open, and to whom
        open_ports = page.get_by_role("table", name="Open ports")
        ssh_row = open_ports.get_by_role("row").filter(has_text="SSH")
        await expect(ssh_row).to_contain_text("22")
        await expect(ssh_row).to_contain_text("Everyone")
        await expect(open_ports.get_by_role("row").filter(has_text="443")).to_contain_text("Web")
        await expect(page.get_by_text("No address is banned.")).to_be_visible()

        # -- a small block list imported, its count and entries shown
        blocks = page.get_by_role("region", name="Block list")
        await expect(blocks.locator(".block-count")).to_have_text("0")
        await blocks.get_by_label("Addresses to block").fill(
            "# a few\n203.0.113.5\n198.51.100.0/24 ; a net\n2001:db8::/48\n"
        )
        await blocks.get_by_role("button", name="Import").click()
        await expect(blocks.get_by_text("the list holds 3")).to_be_visible()
        await expect(blocks.locator(".block-count")).to_have_text("3")
        listed = blocks.get_by_role("table", name="Blocked addresses")
        await expect(listed.get_by_role("row")).to_have_count(1 + 3)
        await expect(listed).to_contain_text("198.51.100.0/24")
        assert (await ok(ed, "GET", "/firewall/blocklist", admin))["total"] == 3
        await shot(page, "firewall-blocklist")
        # a bad line is refused at the field, naming it; nothing changes
        await blocks.get_by_label("Addresses to block").fill("192.0.2.1\nnot an address\n")
        await blocks.get_by_label("What to do with it").select_option(label="Add to the block list")
        await blocks.get_by_role("button", name="Import").click()
        await expect(field_error(blocks, "Addresses to block")).to_contain_text("line 2")
        assert (await ok(ed, "GET", "/firewall/blocklist", admin))["total"] == 3
        # one unblocked
        await listed.get_by_role("button", name="Unblock 203.0.113.5/32").click()
        await expect(blocks.locator(".block-count")).to_have_text("2")
        await expect(listed.get_by_role("row")).to_have_count(1 + 2)

        # -- the SSH allow list: a bad line at the field, then saved (from this machine: for good)
        allow = page.get_by_role("form", name="SSH")
        await allow.get_by_label("Addresses that may reach SSH").fill("203.0.113.0/24\n10.0.0.0/33")
        await allow.get_by_role("button", name="Save SSH allow list").click()
        error = field_error(allow, "Addresses that may reach SSH")
        await expect(error).to_contain_text("Line 2")
        assert (await ok(ed, "GET", "/firewall/allowlists/ssh", admin))["cidrs"] == []
        await allow.get_by_label("Addresses that may reach SSH").fill("203.0.113.0/24\n192.0.2.9")
        await allow.get_by_role("button", name="Save SSH allow list").click()
        await expect(allow.get_by_text("Saved: only the listed addresses")).to_be_visible()
        await expect(ssh_row).to_contain_text("192.0.2.9/32, 203.0.113.0/24")
        shown = await ok(ed, "GET", "/firewall/allowlists/ssh", admin)
        assert shown == {"scope": "ssh", "cidrs": ["192.0.2.9/32", "203.0.113.0/24"], "trial": None}
        await shot(page, "firewall")

        # -- not for users
        user = await signed_in(browser, USER)
        await expect(user.get_by_role("heading", name="Firewall", level=1)).to_have_count(0)
        nav = user.get_by_role("navigation", name="Main")
        await expect(nav.get_by_role("link", name="Firewall")).to_have_count(0)


@pytest.mark.slow
async def test_a_change_from_afar_is_on_trial_kept_or_undone_by_itself(firewalled: Any) -> None:
    # no apps service here: the apps list (app names, a user's apps page) answers 503
    async with firewalled() as ed, chromium(ed.direct_url, allow=NO_APPS) as browser:
        admin = await set_up(ed)
        page = await signed_in(browser, OWNER, ip=REMOTE)

        # -- SSH from afar: on trial, a countdown, kept from the new rules
        ssh = page.get_by_role("form", name="SSH")
        await ssh.get_by_label("Addresses that may reach SSH").fill("198.51.100.0/24")
        await ssh.get_by_role("button", name="Save SSH allow list").click()
        banner = ssh.get_by_role("status").filter(has_text="on trial")
        await expect(banner).to_contain_text("will be undone by themselves in")
        await expect(banner).to_contain_text("unless you confirm from the new rules")
        first = int(await banner.locator(".countdown").inner_text())
        assert 0 < first <= TRIAL_SECONDS
        await expect(banner.locator(".countdown")).not_to_have_text(str(first), timeout=3000)
        await shot(page, "firewall-trial")
        await banner.get_by_role("button", name="Keep these rules for SSH").click()
        await expect(ssh.get_by_text("Kept: the new rules for SSH stay.")).to_be_visible()
        await expect(banner).to_have_count(0)
        await asyncio.sleep(TRIAL_SECONDS + 1)  # past the deadline: still in force
        shown = await ok(ed, "GET", "/firewall/allowlists/ssh", admin)
        assert shown == {"scope": "ssh", "cidrs": ["198.51.100.0/24"], "trial": None}

        # -- the dashboard from afar, leaving this address out: said so, then undone by itself
        dash = page.get_by_role("form", name="Dashboard")
        await expect(dash.get_by_text("127.0.0.1 and ::1) is always let in")).to_be_visible()
        await dash.get_by_label("Addresses that may reach the dashboard").fill("192.0.2.0/24")
        await dash.get_by_role("button", name="Save the dashboard allow list").click()
        banner = dash.get_by_role("status").filter(has_text="on trial")
        await expect(banner).to_contain_text(f"Your address ({REMOTE}) is not in the new list")
        on_trial = await ok(ed, "GET", "/firewall/allowlists/dashboard", admin)
        assert on_trial["cidrs"] == ["192.0.2.0/24"] and on_trial["trial"]
        # the edge follows the list at once: nginx refuses another address, never this machine
        await wait_until(refused_by_nginx(ed, "127.0.0.2", 403), 5, "nginx refusing 127.0.0.2")
        assert (await edge_get(ed.https_port, "my.localhost", "/", source="127.0.0.1"))[0] == 200
        await expect(
            dash.get_by_text("the previous rules for the dashboard are back")
        ).to_be_visible(timeout=(TRIAL_SECONDS + 5) * 1000)
        field = dash.get_by_label("Addresses that may reach the dashboard")
        await expect(field).to_have_value("", timeout=10_000)

        async def undone() -> bool:
            view = await ok(ed, "GET", "/firewall/allowlists/dashboard", admin)
            return view["trial"] is None and view["cidrs"] == []

        assert await undone()
        # ... and lets everyone in again once it is undone
        await wait_until(refused_by_nginx(ed, "127.0.0.2", 200), 5, "nginx letting 127.0.0.2 in")
