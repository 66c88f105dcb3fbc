"""The app store and an installed app's page in chromium, driven by an administrator against the
whole platform (apps on a real dockerd, the edge with nginx); each step checked on the page and
in the platform: the app's own URL through the edge, or the API.

- the store: search, the tag filter, an app's details with its changelog; installing 1.0.0;
- the app page: stop and start (its URL stops and starts answering), configure (a refused
  memory next to its field; 64 MiB and variables taken; the variables' names shown after),
  a snapshot, an update that waits for approval (1.2.0), the snapshot restored (1.0.0), an
  update that fails its health check and rolls back (2.0.0);
- a location already taken (the live check and the API's 409 next to Location), a clone that
  answers at its own URL, the log followed live, what a non-admin is told, the uninstall
  confirmed by typing the location (the URL refused afterwards).

The test catalog is the static website in 1.0.0, 1.0.1, 1.1.0, 1.2.0 (needs approval) and 2.0.0
(never healthy): tests/apps/appskit.py static_catalog.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import docker
import pytest
from playwright.async_api import Locator, Page, expect

from tests.dashboard.browserkit import (
    DESKTOP,
    PHONE,
    Chromium,
    chromium,
    field_error,
    goto,
    session_of,
    shot,
    sign_in,
)
from tests.dashboard.dashkit import INSTALL_TIMEOUT, OWNER, Edged, PlatformStarter
from tests.support.edge import edge_get, refused
from tests.support.waits import wait_until

pytestmark = pytest.mark.timeout(420)

MIB = 1024 * 1024
TASK_TIMEOUT = 120_000  # ms: an update builds its version's image (cached layers) and waits
EDGE_TIMEOUT = 30.0  # s: nginx picks up a changed app within a second or two
KIM_PASSWORD = "kim's own long passphrase"


@asynccontextmanager
async def admin_on(
    platform: PlatformStarter,
    *,
    docker_host: str,
) -> AsyncIterator[tuple[Edged, Chromium, Page]]:
    """The whole platform, a browser, and its owner signed in on the store."""
    async with (
        platform(
            docker_host=docker_host,
            # An update to 2.0.0 fails when its health check has not answered within the ready
            # timeout: 3 s rather than the kit's 30 keeps this file quick (the other versions,
            # busybox httpd, answer within milliseconds of their start).
            apps_extra={"HP_READY_TIMEOUT": "3"},
        ) as ed,
        chromium(ed.direct_url) as browser,
    ):
        a = await ed.platform.client.call(
            "POST", "/api/v1/setup", body=ed.platform.identity.setup_body(OWNER)
        )
        assert a.status == 201, a.body
        page = await browser.page()
        await page.goto("/#/store")
        await sign_in(page, OWNER["username"], OWNER["password"])
        yield ed, browser, page


async def app_api(ed: Edged, page: Page, app_id: str) -> dict[str, Any]:
    """GET /apps/{app_id} as the signed-in administrator of `page`."""
    session = await session_of(page.context)
    a = await ed.platform.client.call("GET", f"/api/v1/apps/{app_id}", session=session)
    assert a.status == 200, a.body
    return dict(a.body)


async def fetch(ed: Edged, location: str, path: str = "/") -> tuple[int, str]:
    """(status, body) of the app at `location` through the edge; status 0 when refused."""
    try:
        status, _, body = await edge_get(ed.https_port, f"{location}.localhost", path)
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
        return 0, ""
    return status, body


async def until_edge(ed: Edged, location: str, want: str, text: str = "") -> None:
    """Until the app at `location` answers 200 (with `text` in its page), or not 200 when
    `want` is "down", or is refused outright when `want` is "refused"."""

    async def seen() -> bool:
        if want == "refused":
            return await refused(ed.https_port, f"{location}.localhost")
        status, body = await fetch(ed, location)
        return status != 200 if want == "down" else status == 200 and text in body

    await wait_until(seen, EDGE_TIMEOUT, f"{ed.app_url(location)} to be {want} {text}", step=0.3)


def _running(docker_host: str, app_id: str) -> list[tuple[str, dict[str, str]]]:
    """(version, environment) of each running container of the app."""
    client = docker.DockerClient(base_url=docker_host)
    try:
        found = client.containers.list(filters={"label": f"homeport.app={app_id}"})
        return [
            (c.labels["homeport.version"], dict(e.split("=", 1) for e in c.attrs["Config"]["Env"]))
            for c in found
        ]
    finally:
        client.close()


async def until_running(docker_host: str, app_id: str, version: str) -> None:
    """Until the app's one running container is of `version` (the label the apps service
    gives it: its data, the page it serves, is kept across versions)."""

    async def seen() -> bool:
        found = await asyncio.to_thread(_running, docker_host, app_id)
        return [v for v, _ in found] == [version]

    await wait_until(seen, EDGE_TIMEOUT, f"the app's container to run {version}", step=0.5)


async def install(page: Page, dialog: Locator, location: str) -> str:
    """Fill the open install dialog for 1.0.0 at `location`, wait for it to be done, go to the
    app's page; its app id."""
    await dialog.get_by_label("Location").fill(location)
    await expect(dialog.get_by_text(f"{location}.localhost is free")).to_be_visible()
    await dialog.get_by_label("Version").select_option("1.0.0")
    await dialog.get_by_role("button", name="Install", exact=True).click()
    await expect(dialog.locator(".progress-text")).to_contain_text("done", timeout=INSTALL_TIMEOUT)
    await dialog.get_by_role("link", name="Go to the app").click()
    await expect(page).to_have_url(re.compile(r"#/apps/[0-9a-f-]{36}$"))
    return page.url.rsplit("/", 1)[-1]


def operation(page: Page, title: str) -> Locator:
    """The progress row of the latest operation the app page follows with this title."""
    return page.get_by_role("region", name="Operations").locator(".task", has_text=title).last


async def until_done(page: Page, title: str, outcome: str = "done") -> None:
    row = operation(page, title)
    await expect(row.locator(".progress-text")).to_contain_text(outcome, timeout=TASK_TIMEOUT)


def fact(page: Page, name: str) -> Locator:
    """The value of one of the app page's facts ("Version", "Memory", ...)."""
    facts = page.get_by_role("region", name="About this app")
    return facts.locator(f"dt:text-is('{name}') + dd")


@pytest.mark.slow
async def test_store_install_and_the_app_page_run_configure_update_restore(
    platform: PlatformStarter,
    docker_host: str,
) -> None:
    async with admin_on(
        platform,
        docker_host=docker_host,
    ) as (ed, _, page):
        # -- the store: search finds the app (and nothing for other words), the tag filter
        main = page.get_by_role("main")
        count = main.get_by_role("status").filter(has_text=re.compile(r"apps?\b"))
        await page.get_by_label("Search apps").fill("no such app anywhere")
        await expect(main.get_by_text("No app matches")).to_be_visible()
        await page.get_by_label("Search apps").fill("static")
        await expect(count).to_have_text("1 app match")
        await expect(main.get_by_role("heading", name="Static website")).to_be_visible()
        await page.get_by_label("Search apps").fill("")
        tags = page.get_by_role("group", name="Filter by tag")
        await tags.get_by_role("button", name="html").click()
        await expect(tags.get_by_role("button", name="html")).to_have_attribute(
            "aria-pressed", "true"
        )
        await expect(page).to_have_url(re.compile(r"#/store\?tag=html$"))
        await expect(count).to_have_text("1 app match")
        await page.get_by_label("Search apps").fill("no such app anywhere")
        await expect(main.get_by_text("No app matches")).to_be_visible()  # tag and words
        await page.get_by_label("Search apps").fill("")
        await tags.get_by_role("button", name="html").click()
        await expect(count).to_have_text("1 app")

        # -- the details page: facts and the changelog of every version
        await main.get_by_role("link", name="Details of Static website").click()
        await expect(page.get_by_role("heading", level=1, name="Static website")).to_be_visible()
        changelog = page.get_by_role("region", name="Changelog")
        for version, change in (("2.0.0", "broken on purpose"), ("1.2.0", "needs approval")):
            await expect(changelog.get_by_role("heading", name=version)).to_be_visible()
            await expect(changelog.get_by_text(change)).to_be_visible()
        await page.get_by_role("button", name="Install", exact=True).click()
        app_id = await install(page, page.get_by_role("dialog"), "site")

        # -- the app page; the app answers at its URL
        await expect(page.get_by_role("heading", level=1, name="Static website")).to_be_visible()
        await expect(fact(page, "Version")).to_have_text("1.0.0")
        await until_edge(ed, "site", "up", "version 1.0.0")
        await shot(page, "app-page")
        await page.set_viewport_size(PHONE)
        await shot(page, "app-page-phone")
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the app page scrolls sideways at phone size ({width})"
        await page.set_viewport_size(DESKTOP)

        # -- stop: the URL stops answering; start: it answers again
        await page.get_by_role("button", name="Stop", exact=True).click()
        await expect(page.get_by_role("button", name="Start", exact=True)).to_be_enabled()
        await expect(fact(page, "State")).to_contain_text("stopped")
        await until_edge(ed, "site", "down")
        assert (await app_api(ed, page, app_id))["run_state"] == "stopped"
        await page.get_by_role("button", name="Start", exact=True).click()
        await expect(page.get_by_role("button", name="Stop", exact=True)).to_be_enabled()
        await until_edge(ed, "site", "up", "version 1.0.0")

        # -- configure: memory the API refuses, named next to its field; then 64 MiB and two
        # variables; opened again, the variables' names show (not their values), and a new
        # value for one keeps the other
        await page.get_by_role("button", name="Configure").click()
        dialog = page.get_by_role("dialog", name="Configure site")
        await dialog.get_by_label("Memory (MiB)").fill("1")
        await dialog.get_by_role("button", name="Save").click()
        await expect(field_error(dialog, "Memory (MiB)")).to_contain_text("memory_bytes")
        await expect(dialog).to_be_visible()  # nothing was started
        await dialog.get_by_label("Memory (MiB)").fill("64")
        await dialog.get_by_label("Add variables").fill("GREETING=hello\nTOKEN=s3cret")
        await dialog.get_by_role("button", name="Save").click()
        await expect(dialog).to_be_hidden()
        await until_done(page, "Configuring site")
        await expect(fact(page, "Memory")).to_have_text("64 MiB")
        configured = await app_api(ed, page, app_id)
        assert configured["memory_bytes"] == 64 * MIB
        assert configured["env_names"] == ["GREETING", "TOKEN"]
        await page.get_by_role("button", name="Configure").click()
        await expect(dialog.get_by_label("GREETING", exact=True)).to_have_value("")
        await expect(dialog.get_by_label("TOKEN", exact=True)).to_be_visible()
        await expect(dialog.get_by_text("Leave a value empty to keep it")).to_be_visible()
        await shot(page, "app-configure-dialog")
        await dialog.get_by_label("GREETING", exact=True).fill("hello again")
        await dialog.get_by_role("button", name="Save").click()
        await expect(dialog).to_be_hidden()  # started: its row is the last one so titled
        await until_done(page, "Configuring site")
        assert (await app_api(ed, page, app_id))["env_names"] == ["GREETING", "TOKEN"]
        [(_, env)] = await asyncio.to_thread(_running, docker_host, app_id)
        assert env["GREETING"] == "hello again" and env["TOKEN"] == "s3cret"

        # -- a snapshot taken by hand, listed
        await page.get_by_role("button", name="Take snapshot now").click()
        await until_done(page, "Taking a snapshot of site")
        snapshots = page.get_by_role("region", name="Snapshots").locator("tbody tr")
        mine = snapshots.filter(has_text="taken by hand")
        await expect(mine).to_have_count(1)
        await expect(mine).to_contain_text("1.0.0")

        # -- update to 1.2.0: its changelog in the dialog; it waits for approval
        await page.get_by_role("button", name="Update", exact=True).click()
        dialog = page.get_by_role("dialog", name="Update site")
        await dialog.get_by_label("Version").select_option("1.2.0")
        changes = dialog.get_by_role("region", name="Changes since 1.0.0")
        for version in ("1.2.0", "1.1.0", "1.0.1"):
            await expect(changes.get_by_role("heading", name=version)).to_be_visible()
        await expect(changes.get_by_role("heading", name="2.0.0")).to_have_count(0)
        await expect(changes.get_by_text("needs approval")).to_be_visible()
        await shot(page, "app-update-dialog")
        await dialog.get_by_role("button", name="Update", exact=True).click()
        await expect(dialog).to_be_hidden()
        approve = page.get_by_role("button", name="Approve update")
        await expect(approve).to_be_visible(timeout=TASK_TIMEOUT)
        await expect(
            page.get_by_text("The update to 1.2.0 waits for your approval")
        ).to_be_visible()
        assert (await app_api(ed, page, app_id))["awaiting_approval"] is True
        await approve.click()
        await until_done(page, "Updating site to 1.2.0")
        await expect(fact(page, "Version")).to_have_text("1.2.0")
        await until_running(docker_host, app_id, "1.2.0")
        # the update keeps the app's data: the welcome page the install wrote still shows
        await until_edge(ed, "site", "up", "version 1.0.0")

        # -- restore the snapshot taken by hand: back to 1.0.0
        await mine.get_by_role("button", name=re.compile("^Restore")).click()
        dialog = page.get_by_role("dialog", name="Restore site")
        await expect(dialog).to_contain_text("version 1.0.0")
        await dialog.get_by_role("button", name="Restore", exact=True).click()
        await until_done(page, "Restoring site")
        await expect(fact(page, "Version")).to_have_text("1.0.0")
        await until_running(docker_host, app_id, "1.0.0")
        await until_edge(ed, "site", "up", "version 1.0.0")

        # -- update to 2.0.0, which never answers its health check: it fails and rolls back
        await page.get_by_role("button", name="Update", exact=True).click()
        dialog = page.get_by_role("dialog", name="Update site")
        await expect(dialog.get_by_label("Version")).to_have_value("2.0.0")
        await dialog.get_by_role("button", name="Update", exact=True).click()
        await until_done(page, "Updating site to 2.0.0", "failed")
        await expect(page.get_by_text("The last operation failed")).to_contain_text("rolled back")
        await page.evaluate("window.scrollTo(0, 0)")  # the sticky header at the top
        await shot(page, "app-update-failed")
        await expect(fact(page, "Version")).to_have_text("1.0.0")
        after = await app_api(ed, page, app_id)
        assert after["version"] == "1.0.0" and after["state"] == "installed", after
        await until_running(docker_host, app_id, "1.0.0")
        await until_edge(ed, "site", "up", "version 1.0.0")


@pytest.mark.slow
async def test_taken_location_clone_logs_non_admin_and_uninstall(
    platform: PlatformStarter,
    docker_host: str,
) -> None:
    async with admin_on(
        platform,
        docker_host=docker_host,
    ) as (ed, browser, page):
        await page.get_by_role("button", name="Install Static website").click()
        app_id = await install(page, page.get_by_role("dialog"), "site")
        await until_edge(ed, "site", "up", "version 1.0.0")

        session = await session_of(page.context)

        # -- a location already taken: the live check says so, and the API's 409 next to it
        await page.goto("/#/store")
        await page.get_by_role("button", name="Install Static website").click()
        dialog = page.get_by_role("dialog")
        await dialog.get_by_label("Location").fill("site")
        await expect(
            dialog.get_by_text("site.localhost is taken by Static website")
        ).to_be_visible()
        await dialog.get_by_role("button", name="Install", exact=True).click()
        await expect(field_error(dialog, "Location")).to_contain_text("taken by another app")
        await dialog.get_by_role("button", name="Close").click()

        # -- clone to site2: the copy answers at its own URL
        await page.goto(f"/#/apps/{app_id}")
        await page.get_by_role("button", name="Clone").click()
        dialog = page.get_by_role("dialog", name="Clone site")
        await dialog.get_by_label("Location").fill("site2")
        await expect(dialog.get_by_text("site2.localhost is free")).to_be_visible()
        await dialog.get_by_role("button", name="Clone", exact=True).click()
        await expect(dialog.locator(".progress-text")).to_contain_text("done", timeout=TASK_TIMEOUT)
        link = dialog.get_by_role("link", name=re.compile("^Open"))
        assert await link.get_attribute("href") == ed.app_url("site2").rstrip("/")
        apps = await ed.platform.client.call("GET", "/api/v1/apps", session=session)
        copy = next(a for a in apps.body["items"] if a["location"] == "site2")
        assert copy["clone_of"] == app_id and copy["version"] == "1.0.0"
        await until_edge(ed, "site2", "up", "version 1.0.0")
        await dialog.get_by_role("button", name="Close").click()

        # -- the log: a request's line shows, and a later one arrives without a reload
        logs = page.get_by_label("Log lines")
        for visit in ("/first-visit-from-the-test", "/second-visit-from-the-test"):
            await fetch(ed, "site", visit)
            await expect(logs).to_contain_text(visit, timeout=20_000)
        await expect(page.get_by_role("region", name="Logs").get_by_role("status")).to_have_text(
            "following"
        )

        # -- a non-admin who opens the app's page is told who manages apps, and nothing more
        kim = {"username": "kim", "email": "kim@example.test", "password": KIM_PASSWORD}
        created = await ed.platform.client.call("POST", "/api/v1/users", session=session, body=kim)
        assert created.status == 201, created.body
        other = await (await browser.context()).new_page()
        await other.goto(f"/#/apps/{app_id}")
        await sign_in(other, "kim", KIM_PASSWORD)
        await expect(other.get_by_text("Only administrators manage apps")).to_be_visible()
        for button in ("Stop", "Configure", "Update", "Clone", "Uninstall", "Take snapshot now"):
            await expect(other.get_by_role("button", name=button)).to_have_count(0)
        await other.close()

        # -- uninstall: the button waits for the location typed exactly
        await page.get_by_role("button", name="Uninstall").click()
        dialog = page.get_by_role("dialog", name="Uninstall site")
        confirm = dialog.get_by_role("button", name="Uninstall")
        await expect(confirm).to_be_disabled()
        await dialog.get_by_label("Type site to confirm").fill("sit")
        await expect(confirm).to_be_disabled()
        await dialog.get_by_label("Type site to confirm").fill("site ")
        await expect(confirm).to_be_disabled()
        await dialog.get_by_label("Type site to confirm").fill("site")
        await expect(confirm).to_be_enabled()
        await shot(page, "app-uninstall-dialog")
        await confirm.click()
        await expect(page).to_have_url(re.compile(r"#/apps$"))
        cards = page.get_by_role("main").locator("li.card")
        await expect(cards.filter(has_text="site2.localhost")).to_have_count(1)
        await expect(cards.filter(has_text=re.compile(r"\bsite\.localhost"))).to_have_count(
            0, timeout=TASK_TIMEOUT
        )
        await until_edge(ed, "site", "refused")
        await until_edge(ed, "site2", "up", "version 1.0.0")
        await goto(page, f"/#/apps/{app_id}")
        await expect(page.get_by_text("This app is not installed (any more)")).to_be_visible()
