"""The Users, Groups and profile pages in chromium, driven as an administrator, each step checked
both on the page and in the platform's state through the API:

- users: added (a bad email refused next to its field), edited (the administrator role shows in
  their own navigation, and goes again on their next page load), disabled (their open session
  ends, their sign-in is refused) and enabled, a password-reset link used, deleted; the page by
  keyboard (Tab to "Invite user", Enter, Escape) and at phone size (the Menu button);
- groups: created (a bad name refused next to its field), members added and removed, renamed,
  deleted; with the apps service, the apps a group opens link to their pages;
- the profile: details, an API token that works as a Bearer token until revoked, and another
  session signed out from here.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.async_api import Locator, Page, expect

from tests.apps.appskit import STATIC
from tests.dashboard.browserkit import (
    DESKTOP,
    PHONE,
    Chromium,
    chromium,
    click_until_answered,
    field_error,
    session_of,
    shot,
    sign_in,
)
from tests.dashboard.dashkit import OWNER, Edged, PlatformStarter
from tests.gateway.apikit import Answer
from tests.support.waits import wait_until

pytestmark = pytest.mark.timeout(300)

DANA_PASSWORD = "dana's own long passphrase"
DANA_NEW_PASSWORD = "a brand new passphrase for dana"
REFUSED = "wrong username or password"  # the API's one answer to every refused sign-in
ENDED = 15_000  # ms: a page notices its session ended at its next API call (Apps polls every 4 s)
INSTALL_TIMEOUT = 180.0  # s: the first build of the static image on a cold dockerd


async def api(ed: Edged, method: str, path: str, session: str, body: Any = None) -> Answer:
    return await ed.platform.client.call(method, "/api/v1" + path, session=session, body=body)


async def users_by_name(ed: Edged, session: str) -> dict[str, dict[str, Any]]:
    a = await api(ed, "GET", "/users", session)
    assert a.status == 200, a.body
    return {u["username"]: u for u in a.body["items"]}


async def sign_in_refused(ed: Edged, username: str, password: str) -> bool:
    body = {"username": username, "password": password}
    return (await ed.platform.client.call("POST", "/api/v1/session", body=body)).status == 401


async def owner_page(ed: Edged, browser: Chromium, route: str) -> Page:
    """The owner (set up through the API) signed in on `route` in a new browser profile."""
    a = await ed.platform.client.call(
        "POST", "/api/v1/setup", body=ed.platform.identity.setup_body(OWNER)
    )
    assert a.status == 201, a.body
    page = await browser.page()
    await page.goto(route)
    await sign_in(page, OWNER["username"], OWNER["password"])
    return page


async def shots(page: Page, name: str) -> None:
    """`name` at desktop and `name`-phone at phone size, each from the top of the page (the
    sticky top bar would show halfway down a full-page screenshot taken while scrolled)."""
    for size, suffix in ((DESKTOP, ""), (PHONE, "-phone")):
        await page.set_viewport_size(size)
        await page.evaluate("window.scrollTo(0, 0)")
        await shot(page, name + suffix)
    await page.set_viewport_size(DESKTOP)


async def focus_by_tab(page: Page, target: Locator, most: int = 30) -> int:
    """Press Tab from the top of the page until `target` has the focus; how many presses."""
    for presses in range(1, most + 1):
        await page.keyboard.press("Tab")
        if await target.evaluate("el => el === document.activeElement"):
            return presses
    raise AssertionError(f"{most} presses of Tab never reached {target}")


@pytest.mark.slow
async def test_admin_adds_edits_disables_resets_and_deletes_a_user(
    platform: PlatformStarter,
) -> None:
    async with (
        platform() as ed,
        # no apps service runs here: the Apps page's GET /apps answers 503 (shown on the page)
        chromium(ed.direct_url, allow="status of 503") as browser,
    ):
        page = await owner_page(ed, browser, "/#/users")
        admin = await session_of(page.context)
        heading = page.get_by_role("heading", name="Users", level=1)
        await expect(heading).to_be_visible()
        table = page.get_by_role("table", name="Users")
        dana_row = table.get_by_role("row").filter(has_text="dana")
        status = page.get_by_role("status").filter(has_text=re.compile(r"\w"))

        # -- by keyboard, from the top of the page: Tab to "Invite user", Enter opens its
        # dialog with the focus inside, Escape closes it and gives the focus back
        await page.reload()
        await expect(heading).to_be_visible()
        invite = page.get_by_role("button", name="Invite user")
        assert await focus_by_tab(page, invite) <= 20
        await page.keyboard.press("Enter")
        dialog = page.get_by_role("dialog", name="Invite a user")
        await expect(dialog).to_be_visible()
        assert await dialog.evaluate("d => d.contains(document.activeElement)")
        await page.keyboard.press("Escape")
        await expect(dialog).to_be_hidden()
        await expect(invite).to_be_focused()

        # -- add a user: a bad email gets the API's own message next to "Email"
        bad = {"username": "dana", "email": "dana at example", "password": DANA_PASSWORD}
        refusal = await api(ed, "POST", "/users", admin, bad)
        assert refusal.status == 400 and refusal.body["field"] == "email", refusal.body
        await page.get_by_role("button", name="Add user").click()
        dialog = page.get_by_role("dialog", name="Add a user")
        await dialog.get_by_label("Username").fill("dana")
        await dialog.get_by_label("Email").fill(bad["email"])
        await dialog.get_by_label("Password", exact=True).fill(DANA_PASSWORD)
        await dialog.get_by_label("Password again").fill(DANA_PASSWORD)
        await dialog.get_by_role("button", name="Add user").click()
        await expect(field_error(dialog, "Email")).to_have_text(refusal.body["detail"])
        await expect(field_error(dialog, "Username")).to_have_count(0)
        assert "dana" not in await users_by_name(ed, admin)
        await dialog.get_by_label("Email").fill("dana@example.test")
        await dialog.get_by_role("button", name="Add user").click()
        await expect(dialog).to_be_hidden()
        await expect(status).to_have_text("dana is added.")
        await expect(dana_row).to_contain_text("dana@example.test")
        dana = (await users_by_name(ed, admin))["dana"]
        assert dana["email"] == "dana@example.test" and dana["is_admin"] is False
        await shots(page, "users-list")

        # -- edit: a display name and the administrator role, shown in the list
        await page.get_by_role("button", name="Edit dana").click()
        dialog = page.get_by_role("dialog", name="Edit dana")
        await dialog.get_by_label("Display name").fill("Dana Scully")
        await dialog.get_by_label("Administrator").check()
        await shots(page, "users-edit-dialog")
        await dialog.get_by_role("button", name="Save changes").click()
        await expect(dialog).to_be_hidden()
        await expect(status).to_have_text("Changes to dana are saved.")
        await expect(dana_row).to_contain_text("Dana Scully")
        await expect(dana_row.get_by_text("Administrator", exact=True)).to_be_visible()
        dana = (await users_by_name(ed, admin))["dana"]
        assert dana["display_name"] == "Dana Scully" and dana["is_admin"] is True

        # ... which their own browser shows as the administrator's navigation
        dana_ctx = await browser.context()
        other = await dana_ctx.new_page()
        await other.goto("/")
        await sign_in(other, "dana", DANA_PASSWORD)
        nav = other.get_by_role("navigation", name="Main")
        await expect(nav.get_by_role("link", name="Users")).to_be_visible()
        await expect(nav.get_by_role("link", name="Dana Scully")).to_be_visible()

        # ... and without the role, their next page load shows no administrator's navigation
        await page.get_by_role("button", name="Edit dana").click()
        dialog = page.get_by_role("dialog", name="Edit dana")
        await dialog.get_by_label("Administrator").uncheck()
        await dialog.get_by_role("button", name="Save changes").click()
        await expect(dialog).to_be_hidden()
        await expect(dana_row.get_by_text("Administrator", exact=True)).to_have_count(0)
        assert (await users_by_name(ed, admin))["dana"]["is_admin"] is False
        await other.reload()
        await expect(nav.get_by_role("link", name="Apps")).to_be_visible()
        for admin_only in ("Users", "Groups", "Domains", "Activity", "Graphs"):
            await expect(nav.get_by_role("link", name=admin_only)).to_have_count(0)

        # -- disable: their open session ends (their next API call lands them on the sign-in
        # page), their sign-in is refused; enabled again, they sign in
        await page.get_by_role("button", name="Disable dana").click()
        dialog = page.get_by_role("dialog", name="Disable dana?")
        await expect(dialog).to_contain_text("can no longer sign in")
        await dialog.get_by_role("button", name="Disable").click()
        await expect(dialog).to_be_hidden()
        await expect(status).to_have_text("dana is disabled.")
        await expect(dana_row.get_by_text("Disabled", exact=True)).to_be_visible()
        assert (await users_by_name(ed, admin))["dana"]["disabled"] is True
        signin = other.get_by_role("heading", name="Sign in to Homeport")
        await expect(signin).to_be_visible(timeout=ENDED)
        await expect(other.get_by_text("Your session ended. Sign in again.")).to_be_visible()
        await other.get_by_label("Username").fill("dana")
        await other.get_by_label("Password").fill(DANA_PASSWORD)
        await other.get_by_role("button", name="Sign in").click()
        await expect(other.get_by_role("alert")).to_have_text(REFUSED)
        assert await sign_in_refused(ed, "dana", DANA_PASSWORD)

        await page.get_by_role("button", name="Enable dana").click()
        await expect(status).to_have_text("dana is enabled again: they can sign in.")
        await expect(dana_row.get_by_text("Disabled", exact=True)).to_have_count(0)
        assert (await users_by_name(ed, admin))["dana"]["disabled"] is False
        await other.get_by_role("button", name="Sign in").click()
        await expect(nav).to_be_visible()

        # -- a password-reset link: opened in their browser, a new password, signed in with it
        await nav.get_by_role("button", name="Sign out").click()
        await expect(signin).to_be_visible()
        await page.get_by_role("button", name="Reset the password of dana").click()
        dialog = page.get_by_role("dialog", name="Reset the password of dana")
        await dialog.get_by_role("button", name="Create reset link").click()
        link_box = dialog.get_by_label("Password reset link")
        await expect(link_box).to_have_value(re.compile(r"#/reset/"))
        link = await link_box.input_value()
        assert link.startswith(f"{ed.direct_url}/#/reset/")
        await dialog.get_by_role("button", name="Done").click()
        await expect(dialog).to_be_hidden()
        await other.goto(link)
        await expect(other.get_by_role("heading", name="Choose a new password")).to_be_visible()
        await other.get_by_label("New password", exact=True).fill(DANA_NEW_PASSWORD)
        await other.get_by_label("New password again").fill(DANA_NEW_PASSWORD)
        await click_until_answered(
            other,
            other.get_by_role("button", name="Change password"),
            other.get_by_role("heading", name="Password changed"),
        )
        await other.get_by_role("link", name="Sign in").click()
        await sign_in(other, "dana", DANA_NEW_PASSWORD)
        assert await sign_in_refused(ed, "dana", DANA_PASSWORD)

        # -- delete, after a confirmation: gone from the list and the API, sign-in refused
        await page.get_by_role("button", name="Delete dana").click()
        dialog = page.get_by_role("dialog", name="Delete dana?")
        await expect(dialog).to_contain_text("This cannot be undone.")
        await dialog.get_by_role("button", name="Delete dana").click()
        await expect(dialog).to_be_hidden()
        await expect(status).to_have_text("dana is deleted.")
        await expect(dana_row).to_have_count(0)
        assert "dana" not in await users_by_name(ed, admin)
        await expect(signin).to_be_visible(timeout=ENDED)
        await other.get_by_label("Username").fill("dana")
        await other.get_by_label("Password").fill(DANA_NEW_PASSWORD)
        await other.get_by_role("button", name="Sign in").click()
        await expect(other.get_by_role("alert")).to_have_text(REFUSED)
        assert await sign_in_refused(ed, "dana", DANA_NEW_PASSWORD)

        # -- at phone size, the Menu button opens the navigation, and its links work
        await page.set_viewport_size(PHONE)
        menu = page.get_by_role("button", name="Menu")
        groups_link = page.get_by_role("navigation", name="Main").get_by_role("link", name="Groups")
        await expect(menu).to_have_attribute("aria-expanded", "false")
        await expect(groups_link).to_be_hidden()
        await menu.click()
        await expect(menu).to_have_attribute("aria-expanded", "true")
        await groups_link.click()
        await expect(page.get_by_role("heading", name="Groups", level=1)).to_be_visible()
        assert page.url.endswith("#/groups")
        await expect(menu).to_have_attribute("aria-expanded", "false")
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the groups page scrolls sideways ({width})"


async def test_admin_manages_groups_and_their_members(
    platform: PlatformStarter,
) -> None:
    async with (
        platform() as ed,
        # no apps service runs here: GET /apps answers 503, and the page says the apps are unknown
        chromium(ed.direct_url, allow="status of 503") as browser,
    ):
        page = await owner_page(ed, browser, "/#/groups")
        admin = await session_of(page.context)
        erin = {"username": "erin", "email": "erin@example.test", "password": DANA_PASSWORD}
        added = await api(ed, "POST", "/users", admin, erin)
        assert added.status == 201, added.body
        erin_id = added.body["user_id"]
        await expect(page.get_by_text("No groups yet.")).to_be_visible()
        status = page.get_by_role("status").filter(has_text=re.compile(r"\w"))

        # -- a new group: a bad name gets the API's own message next to "Name"
        refusal = await api(ed, "POST", "/groups", admin, {"name": "Bad Name!"})
        assert refusal.status == 400 and refusal.body["field"] == "name", refusal.body
        await page.get_by_role("button", name="New group").click()
        dialog = page.get_by_role("dialog", name="New group")
        await dialog.get_by_label("Name").fill("Bad Name!")
        await dialog.get_by_role("button", name="Create group").click()
        await expect(field_error(dialog, "Name")).to_have_text(refusal.body["detail"])
        assert (await api(ed, "GET", "/groups", admin)).body["items"] == []
        await dialog.get_by_label("Name").fill("friends")
        await dialog.get_by_role("button", name="Create group").click()
        dialog = page.get_by_role("dialog", name="Group friends")
        await expect(dialog.get_by_text("Nobody yet.")).to_be_visible()
        [group] = (await api(ed, "GET", "/groups", admin)).body["items"]
        assert group["name"] == "friends" and group["members"] == []
        group_path = f"/groups/{group['group_id']}"

        # -- a member added, then removed
        await dialog.get_by_label("Add member").select_option(label="erin")
        await dialog.get_by_role("button", name="Add", exact=True).click()
        remove = dialog.get_by_role("button", name="Remove erin from friends")
        await expect(remove).to_be_visible()
        await expect(dialog.get_by_role("status")).to_have_text("erin joined friends.")
        assert (await api(ed, "GET", group_path, admin)).body["members"] == [erin_id]
        await expect(dialog.get_by_role("heading", name="Apps this group opens")).to_be_visible()
        await expect(dialog.get_by_text("Which apps the groups open is unknown")).to_be_visible()
        await shots(page, "groups-dialog")
        await remove.click()
        await expect(dialog.get_by_text("Nobody yet.")).to_be_visible()
        await expect(dialog.get_by_role("status")).to_have_text("erin left friends.")
        assert (await api(ed, "GET", group_path, admin)).body["members"] == []

        # -- renamed
        await dialog.get_by_label("Name").fill("pals")
        await dialog.get_by_role("button", name="Rename").click()
        dialog = page.get_by_role("dialog", name="Group pals")
        await expect(dialog.get_by_role("status")).to_have_text("The group is now called pals.")
        assert (await api(ed, "GET", group_path, admin)).body["name"] == "pals"
        await page.keyboard.press("Escape")
        row = page.get_by_role("table", name="Groups").get_by_role("row").filter(has_text="pals")
        await expect(row).to_contain_text("Nobody")

        # -- deleted, after a confirmation
        await row.get_by_role("button", name="Delete pals").click()
        dialog = page.get_by_role("dialog", name="Delete the group pals?")
        await expect(dialog).to_contain_text("This cannot be undone.")
        await dialog.get_by_role("button", name="Delete pals").click()
        await expect(dialog).to_be_hidden()
        await expect(status).to_have_text("Group pals is deleted.")
        await expect(page.get_by_text("No groups yet.")).to_be_visible()
        assert (await api(ed, "GET", "/groups", admin)).body["items"] == []
        assert (await api(ed, "GET", group_path, admin)).status == 404


@pytest.mark.slow
async def test_a_group_lists_the_apps_it_opens(
    platform: PlatformStarter,
    docker_host: str,
) -> None:
    async with (
        platform(
            docker_host=docker_host,
        ) as ed,
        chromium(ed.direct_url) as browser,
    ):
        page = await owner_page(ed, browser, "/#/groups")
        admin = await session_of(page.context)
        family = await api(ed, "POST", "/groups", admin, {"name": "family"})
        others = await api(ed, "POST", "/groups", admin, {"name": "others"})
        assert family.status == others.status == 201, (family.body, others.body)
        body = {
            "manifest_id": STATIC,
            "version": "1.0.0",
            "location": "blog",
            "access": {"groups": [family.body["group_id"]]},
        }
        started = await api(ed, "POST", "/apps", admin, body)
        assert started.status == 202, started.body
        app_id, task_id = started.body["app_id"], started.body["task_id"]
        seen: dict[str, Any] = {}

        async def installed() -> bool:
            a = await api(ed, "GET", f"/tasks/{task_id}", admin)
            seen.update(status=a.status, body=a.body)
            return a.status == 200 and a.body["state"] != "running"

        await wait_until(installed, INSTALL_TIMEOUT, f"the install task {task_id}", step=0.5)
        assert seen["body"]["state"] == "succeeded", seen

        # the list: the app in the row of the group that opens it, not in the other's
        await page.reload()
        rows = page.get_by_role("table", name="Groups").get_by_role("row")
        blog = rows.filter(has_text="family").get_by_role("link", name="blog")
        await expect(blog).to_have_attribute("href", f"#/apps/{app_id}")
        await expect(rows.filter(has_text="others").get_by_role("link")).to_have_count(0)
        await shots(page, "groups-with-apps")

        # the group's dialog: its apps under "Apps this group opens", each a link to its page
        await page.get_by_role("button", name="Manage family").click()
        dialog = page.get_by_role("dialog", name="Group family")
        section = dialog.get_by_role("region", name="Apps this group opens")
        link = section.get_by_role("link", name="blog")
        await expect(link).to_have_attribute("href", f"#/apps/{app_id}")
        await link.click()
        await expect(page).to_have_url(re.compile(f"#/apps/{app_id}$"))
        await expect(page.get_by_role("dialog")).to_have_count(0)
        await expect(page.get_by_role("main").get_by_text(re.compile(r"^blog\."))).to_be_visible()


@pytest.mark.slow
async def test_profile_details_api_token_and_sessions(
    platform: PlatformStarter,
) -> None:
    async with (
        platform() as ed,
        # no apps service runs here: the Apps page's GET /apps answers 503 (shown on the page)
        chromium(ed.direct_url, allow="status of 503") as browser,
    ):
        page = await owner_page(ed, browser, "/#/profile")
        me = await session_of(page.context)
        await expect(page.get_by_role("heading", name="Your profile")).to_be_visible()
        nav = page.get_by_role("navigation", name="Main")

        # -- details: the display name saved, and shown in the top bar
        details = page.get_by_role("region", name="Your details")
        await details.get_by_label("Display name").fill("Olive Owner")
        await details.get_by_role("button", name="Save details").click()
        await expect(details.get_by_role("status")).to_have_text("Your details are saved.")
        await expect(nav.get_by_role("link", name="Olive Owner")).to_be_visible()
        assert (await api(ed, "GET", "/profile", me)).body["display_name"] == "Olive Owner"

        # -- an API token: shown once, works as a Bearer token, refused once revoked
        tokens = page.get_by_role("region", name="API tokens")
        await tokens.get_by_label("Name").fill("backup script")
        await tokens.get_by_label("Scope").select_option(label="Read only")
        await tokens.get_by_role("button", name="Create token").click()
        box = tokens.get_by_label("Your new token")
        await expect(box).to_have_value(re.compile(r"\S{20,}"))
        token = await box.input_value()
        table = tokens.get_by_role("table", name="Your API tokens")
        await expect(table.get_by_role("row").filter(has_text="backup script")).to_be_visible()
        await shots(page, "profile-tokens")
        a = await ed.platform.client.call("GET", "/api/v1/profile", token=token)
        assert a.status == 200 and a.body["username"] == "owner", a.body
        await tokens.get_by_role("button", name="I have copied it").click()
        await expect(box).to_have_count(0)
        await tokens.get_by_role("button", name="Revoke the token backup script").click()
        dialog = page.get_by_role("dialog", name="Revoke this token?")
        await dialog.get_by_role("button", name="Revoke").click()
        await expect(dialog).to_be_hidden()
        await expect(tokens.get_by_role("status")).to_have_text(
            "The token backup script is revoked."
        )
        await expect(tokens.get_by_text("You have no API tokens.")).to_be_visible()
        a = await ed.platform.client.call("GET", "/api/v1/profile", token=token)
        assert a.status == 401, a.body

        # -- sessions: another browser's session is listed; signed out from here, it ends
        other_ctx = await browser.context()
        other = await other_ctx.new_page()
        await other.goto("/")
        await sign_in(other, OWNER["username"], OWNER["password"])
        listed = await api(ed, "GET", "/profile/sessions", me)
        assert len(listed.body["items"]) == 2, listed.body
        await page.reload()
        sessions = page.get_by_role("table", name="Your sessions")
        await expect(sessions.get_by_role("row")).to_have_count(3)  # the head and two sessions
        await expect(sessions.get_by_text("This session")).to_have_count(1)
        sign_out = sessions.get_by_role("button", name=re.compile("^Sign out the session"))
        await expect(sign_out).to_have_count(1)
        await sign_out.click()
        await expect(sessions.get_by_role("row")).to_have_count(2)
        status = page.get_by_role("region", name="Sessions").get_by_role("status")
        await expect(status).to_contain_text("is signed out.")
        [left] = (await api(ed, "GET", "/profile/sessions", me)).body["items"]
        assert left["current"] is True
        signin = other.get_by_role("heading", name="Sign in to Homeport")
        await expect(signin).to_be_visible(timeout=ENDED)
        await expect(other.get_by_text("Your session ended. Sign in again.")).to_be_visible()
