"""The dashboard journey a new owner takes, in Debian's chromium, against the whole platform
(identity, apps on a real dockerd, dns, certs, the gateway with nginx, the relay):

setup wizard → sign in → a group → install the static website for that group (the progress
bar reaches done) → the app opens at https://blog.localhost → invite a user → they join,
sign in and see only the app their group opens → the admin sees it all in the activity log.
Screenshots of every main page, at 1280x800 and at phone size, are kept as test artifacts; on
each, no sideways scrolling and every field, button and link has a name.
"""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Page, expect

from tests.dashboard.browserkit import (
    PHONE,
    chromium,
    click_until_answered,
    error_of,
    goto,
    shot,
    sign_in,
    unnamed_controls,
)
from tests.dashboard.dashkit import INSTALL_TIMEOUT, USER_PASSWORD, PlatformStarter

pytestmark = pytest.mark.timeout(420)

ADMIN_PASSWORD = "correct horse battery staple"


async def install(
    page: Page, location: str, *, group: str | None = None, person: str | None = None
) -> None:
    """Install version 1.0.0 of the static website at `location` through the store's dialog,
    for the members of `group` or for `person` only."""
    await goto(page, "/#/store")
    await page.get_by_role("button", name="Install Static website").click()
    dialog = page.get_by_role("dialog")
    await dialog.get_by_label("Location").fill(location)
    await expect(dialog.get_by_text(f"{location}.localhost is free")).to_be_visible()
    await dialog.get_by_label("Version").select_option("1.0.0")
    if group is not None:
        await dialog.get_by_label("Only members of these groups").check()
        await dialog.get_by_label(group, exact=True).check()
    elif person is not None:
        await dialog.get_by_label("Only these people").check()
        await dialog.get_by_label(person, exact=True).check()
    await dialog.get_by_role("button", name="Install", exact=True).click()
    progress = dialog.locator(".progress-text")
    await expect(progress).to_contain_text("done", timeout=INSTALL_TIMEOUT)
    await expect(dialog.locator("progress")).to_have_attribute("value", "100")


# Run in the admin's page (its session, same origin): groups made until the whole activity log
# ("everything") is over one page of the dashboard's, and until the log shows them.
_MORE_THAN_A_PAGE = """async () => {
  const count = async () =>
    (await (await fetch("/api/v1/activity?view=everything&limit=51")).json()).items.length;
  for (let i = await count(); i <= 50; i++) {
    const made = await fetch("/api/v1/groups", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name: `club${i}` }),
    });
    if (!made.ok) throw new Error(`POST /api/v1/groups answered ${made.status}`);
  }
  // the log is a projection: it shows the new groups a moment after they are made
  for (let waited = 0; (await count()) <= 50; waited += 100) {
    if (waited > 15000) throw new Error("the activity log did not reach 51 entries");
    await new Promise((done) => setTimeout(done, 100));
  }
}"""


@pytest.mark.slow
async def test_setup_install_invite_and_activity(
    platform: PlatformStarter,
    docker_host: str,
) -> None:
    async with (
        platform(
            docker_host=docker_host,
        ) as ed,
        chromium(ed.direct_url) as browser,
    ):
        admin = await browser.page()

        # -- the setup wizard: the first administrator, a domain refused, then skipped
        await goto(admin, f"/#/setup?token={ed.platform.identity.setup_token}")
        await admin.get_by_label("Username").fill("owner")
        await admin.get_by_label("Email").fill("owner@example.test")
        await admin.get_by_label("Password", exact=True).fill(ADMIN_PASSWORD)
        await admin.get_by_label("Password again").fill(ADMIN_PASSWORD)
        await shot(admin, "setup-1-administrator")
        await admin.get_by_role("button", name="Create administrator").click()
        await admin.get_by_label("Domain", exact=True).fill("not a domain")
        await admin.get_by_label("DNS provider").select_option("manual")
        await admin.get_by_role("button", name="Add and verify").click()
        await expect(error_of(admin, "Domain")).to_contain_text("domain")
        await shot(admin, "setup-2-domain")
        await admin.get_by_role("button", name="Skip for now").click()
        await admin.get_by_role("button", name="Open the dashboard").click()
        await expect(admin.get_by_role("navigation", name="Main")).to_be_visible()

        # -- sign out, sign in again
        await admin.get_by_role("button", name="Sign out").click()
        await sign_in(admin, "owner", ADMIN_PASSWORD)

        # -- a group for the family
        await goto(admin, "/#/groups")
        await admin.get_by_role("button", name="New group").click()
        await admin.get_by_role("dialog").get_by_label("Name").fill("family")
        await admin.get_by_role("dialog").get_by_role("button", name="Create group").click()
        await expect(admin.get_by_role("main").get_by_text("family").first).to_be_visible()

        # -- the store, the install dialog, the progress bar to done; the app opens
        await install(admin, "blog", group="family")
        await shot(admin, "install-done")
        link = admin.get_by_role("dialog").get_by_role("link", name=re.compile("^Open"))
        assert await link.get_attribute("href") == ed.app_url("blog").rstrip("/")
        await admin.keyboard.press("Escape")
        await install(admin, "private", person="owner")
        await admin.keyboard.press("Escape")
        # -- the edge asks who opens them: the owner signs in on my.localhost (this browser's
        # session is the gateway's own address's), comes back to the app meant for them, and
        # is refused the one meant for the family, which they are not in
        app_page = await admin.context.new_page()
        asked = app_page.get_by_text("Sign in to open the app you asked for")
        for attempt in range(4):  # the edge may not serve the new app's host for a moment yet
            await goto(app_page, ed.app_url("private"))
            try:
                await expect(asked).to_be_visible()
                break
            except AssertionError:
                if attempt == 3:
                    raise AssertionError(await app_page.content()) from None
        await app_page.get_by_label("Username").fill("owner")
        await app_page.get_by_label("Password").fill(ADMIN_PASSWORD)
        shown = app_page.get_by_text("version 1.0.0")
        await click_until_answered(app_page, app_page.get_by_role("button", name="Sign in"), shown)
        assert app_page.url.startswith(ed.app_url("private").rstrip("/")), app_page.url
        await goto(app_page, ed.app_url("blog"))
        await expect(app_page.get_by_text("403")).to_be_visible()
        await expect(app_page.get_by_text("version 1.0.0")).to_have_count(0)
        await app_page.close()

        # -- invite a user into the family group
        await goto(admin, "/#/users")
        await admin.get_by_role("button", name="Invite user").click()
        dialog = admin.get_by_role("dialog")
        await dialog.get_by_label("Email").fill("kim@example.test")
        await dialog.get_by_label("family", exact=True).check()
        await dialog.get_by_role("button", name="Create invitation link").click()
        link_box = dialog.get_by_label("Invitation link")
        await expect(link_box).to_have_value(re.compile(r"#/invite/"))
        invitation = await link_box.input_value()
        assert invitation.startswith(f"{ed.direct_url}/#/invite/")
        await admin.keyboard.press("Escape")

        # -- the invited user joins, signs in, and sees only the app the family group opens
        user_ctx = await browser.context()
        user = await user_ctx.new_page()
        await goto(user, invitation)
        await user.get_by_label("Your email (the one invited)").fill("kim@example.test")
        await user.get_by_label("Username").fill("kim")
        await user.get_by_label("Password", exact=True).fill(USER_PASSWORD)
        await user.get_by_label("Password again").fill(USER_PASSWORD)
        await user.get_by_role("button", name="Create my account").click()
        await user.get_by_role("link", name="Sign in").click()
        await sign_in(user, "kim", USER_PASSWORD)
        main = user.get_by_role("main")
        await expect(main.get_by_role("link", name=re.compile("^Open"))).to_have_count(1)
        await expect(main.get_by_text("blog", exact=False).first).to_be_visible()
        await expect(main.get_by_text("private")).to_have_count(0)
        nav = user.get_by_role("navigation", name="Main")
        for admin_only in ("Users", "Groups", "Domains", "Activity", "Graphs"):
            await expect(nav.get_by_role("link", name=admin_only)).to_have_count(0)
        await shot(user, "user-apps")
        await user.set_viewport_size(PHONE)
        await shot(user, "user-apps-phone")

        # -- the admin sees the journey in the activity log: filtered by type and by actor,
        # and the whole log (everything) by scrolling to its end
        await goto(admin, "/#/activity")
        log = admin.get_by_role("main")
        rows = log.locator("tbody tr")
        for kind in ("GroupCreated", "AppInstalled", "InvitationCreated", "InvitationAccepted"):
            await admin.get_by_label("Event type").fill(kind)
            await admin.get_by_role("button", name="Apply filters").click()
            await expect(rows.first).to_contain_text(kind)
            assert all(kind in text for text in await rows.all_inner_texts())
        await admin.get_by_role("button", name="Clear filters").click()
        await admin.get_by_label("Actor").fill("kim")
        await admin.get_by_role("button", name="Apply filters").click()
        await expect(rows.first).to_contain_text("kim")
        await admin.get_by_role("button", name="Clear filters").click()
        await expect(rows.first).to_be_visible()
        # the changes (the default view) are under a page here; everything, steps too, is made
        # longer than a page (the dashboard's 50 rows) whatever the journey recorded so far,
        # so that reaching its end takes a scroll: a few more groups, through the API
        await admin.evaluate(_MORE_THAN_A_PAGE)
        everything = admin.get_by_role("button", name="Everything")
        await everything.click()
        await expect(everything).to_have_attribute("aria-pressed", "true")
        await expect(admin.locator(".loading")).to_have_count(0)
        await expect(rows.first).to_be_visible()
        first_page = await rows.count()
        while not await log.get_by_text("No more activity").is_visible():
            await rows.last.scroll_into_view_if_needed()
            await admin.wait_for_timeout(200)
        assert await rows.count() > first_page
        await expect(log.get_by_text("GroupCreated").first).to_be_attached()

        # -- screenshots of every main page, desktop and phone
        pages = ["apps", "store", "store/org.homeport.static", "users", "groups", "domains", "mail"]
        pages += ["activity", "graphs", "profile"]
        for size, suffix in ((None, ""), (PHONE, "-phone")):
            if size is not None:
                await admin.set_viewport_size(size)
            for name in pages:
                await goto(admin, f"/#/{name}")
                await expect(admin.get_by_role("heading", level=1).first).to_be_visible()
                await expect(admin.locator(".loading")).to_have_count(0)  # its data is in
                await expect(admin.locator(".form-error")).to_have_count(0)
                await shot(admin, name.replace("/", "-") + suffix)
                width = await admin.evaluate("document.documentElement.scrollWidth")
                viewport = await admin.evaluate("window.innerWidth")
                assert width <= viewport, f"{name}{suffix} scrolls sideways ({width} > {viewport})"
                assert await unnamed_controls(admin) == [], f"{name}{suffix}: unlabelled controls"
