"""The bell and the Notifications page in chromium, against the real identity, gateway (with its
edge) and notify services:

an app that ran out of memory (its events appended as the apps service writes them) opens an
alert; the administrator sees the bell with the unread count, opens the page from it, reads the
alert (title, detail, severity, open, when), marks one read by clicking it and then all read,
and the bell's count follows. Preferences: the email and push choices per kind and a push URL
are saved and shown after a reload, the URL masked (never in clear); a URL apprise may not
reach is refused at the field naming its line; a test notification reaches a webhook receiver
on loopback and the page says so. A user without admin rights has no bell and never asks for it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import Page, expect

from libs.events.store import PostgresEventStore
from services.apps import events as apps_ev
from tests.dashboard.browserkit import (
    DESKTOP,
    PHONE,
    Chromium,
    chromium,
    field_error,
    session_of,
    shot,
    sign_in,
)
from tests.dashboard.dashkit import OWNER, Edged, edged_platform
from tests.gateway.apikit import Answer
from tests.support.waits import wait_until

pytestmark = pytest.mark.timeout(300)

NO_APPS = "status of 503"  # no apps service here: the apps list answers 503
USER = {"username": "dana", "email": "dana@example.test", "password": "dana's long password 9"}
SECRET = "s3cr3t-t0ken-of-the-hook"


@pytest.fixture
async def ed(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> AsyncIterator[Edged]:
    # this machine's own disk and memory are not what this test is about
    for name, value in {
        "HP_NOTIFY_DISK_PATHS": str(tmp_path),
        "HP_NOTIFY_DISK_WARNING": "100",
        "HP_NOTIFY_DISK_CRITICAL": "100",
        "HP_NOTIFY_MEMORY_AVAILABLE": "0.001",
        "HP_NOTIFY_MEMORY_PSI": "100",
    }.items():
        monkeypatch.setenv(name, value)
    async with edged_platform(
        monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path
    ) as platform:
        yield platform


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[PostgresEventStore]:
    s = await PostgresEventStore.open(dsn, max_size=2)
    yield s
    await s.close()


@pytest.fixture
async def hooks() -> AsyncIterator[tuple[int, list[dict[str, Any]]]]:
    """A webhook receiver on loopback: its port, and what apprise's json:// posted to it."""
    got: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append({"path": request.path, "body": json.loads(await request.read())})
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/{tail:.*}", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield runner.addresses[0][1], got
    finally:
        await runner.cleanup()


async def api(ed: Edged, method: str, path: str, session: str, body: Any = None) -> Answer:
    return await ed.platform.client.call(method, "/api/v1" + path, session=session, body=body)


async def ok(ed: Edged, method: str, path: str, session: str, body: Any = None) -> Any:
    a = await api(ed, method, path, session, body)
    assert a.status in (200, 201, 204), (method, path, a.status, a.body)
    return a.body


async def set_up(ed: Edged) -> None:
    a = await ed.platform.client.call(
        "POST", "/api/v1/setup", body=ed.platform.identity.setup_body(OWNER)
    )
    assert a.status == 201, a.body


async def out_of_memory(ed: Edged, store: PostgresEventStore, admin: str, location: str) -> str:
    """An app at <location>.example.org the kernel stopped for its memory, as the apps service
    records it; its alert's title, once notify lists it."""
    app_id, task = str(uuid.uuid4()), str(uuid.uuid4())
    stream = apps_ev.app_stream(app_id)
    request = apps_ev.AppInstallRequested(
        app_id=app_id,
        manifest_id="org.example.static",
        version="1.0.0",
        location=location,
        domain="example.org",
        access={"all_users": True, "groups": [], "user_ids": []},
        memory_bytes=1 << 27,
        env={},
        task_id=task,
    )
    installed = apps_ev.AppInstalled(app_id=app_id, task_id=task, version="1.0.0")
    await store.append(stream, [request, installed], 0)
    await store.append(stream, [apps_ev.AppOutOfMemory(app_id=app_id, memory_bytes=1 << 27)], 2)
    title = f"org.example.static at {location}.example.org ran out of memory"

    async def listed() -> bool:
        page = await ok(ed, "GET", "/notifications?limit=200", admin)
        return any(n["title"] == title for n in page["items"])

    await wait_until(listed, 20, f"notification {title!r}")
    return title


async def signed_in(browser: Chromium, who: dict[str, str], where: str) -> Page:
    page = await (await browser.context()).new_page()
    await page.goto(where)
    await sign_in(page, who["username"], who["password"])
    return page


def bell(page: Page) -> Any:
    return page.get_by_role("banner").get_by_role("link", name=re.compile(r"^Notifications"))


@pytest.mark.slow
async def test_the_bell_counts_an_alert_the_page_shows_it_and_marks_it_read(
    ed: Edged, store: PostgresEventStore
) -> None:
    async with chromium(ed.direct_url, allow=NO_APPS) as browser:
        await set_up(ed)
        # the owner's first sign-in is this browser's (a later one from another browser would
        # be a notice of its own: a sign-in from a new place); the API is called as it
        page = await signed_in(browser, OWNER, "/#/users")
        admin = await session_of(page.context)
        await ok(ed, "POST", "/users", admin, USER)
        await expect(bell(page)).to_have_accessible_name("Notifications")
        await expect(page.locator(".bell-count")).to_have_count(0)

        # -- alerts come: the bell shows their count when the window regains focus
        first = await out_of_memory(ed, store, admin, "blog")
        second = await out_of_memory(ed, store, admin, "wiki")
        unread = (await ok(ed, "GET", "/notifications/unread", admin))["unread"]
        assert unread == 2
        await page.evaluate("window.dispatchEvent(new Event('focus'))")
        await expect(bell(page)).to_have_accessible_name("Notifications, 2 unread")
        await expect(page.locator(".bell-count")).to_have_text("2")

        # -- the page, from the bell: the alert readable, newest first, unread
        await bell(page).click()
        await expect(page.get_by_role("heading", name="Notifications", level=1)).to_be_visible()
        await expect(bell(page)).to_have_attribute("aria-current", "page")
        listing = page.get_by_role("list", name="Notifications, newest first")
        item = listing.get_by_role("listitem").filter(has_text=first)
        await expect(item).to_contain_text("The kernel stopped it for using all its memory")
        await expect(item).to_contain_text("Warning")
        await expect(item).to_contain_text("Open")
        await expect(item).to_contain_text("Apps")
        await expect(item.locator("time")).to_have_text(re.compile(r"just now|ago$"))
        await expect(item).to_have_class(re.compile(r"\bunread\b"))
        titles = [
            " ".join(t.split()) for t in await listing.locator(".note-title").all_inner_texts()
        ]
        assert [t for t in titles if "ran out of memory" in t] == [
            f"Unread: {second}",
            f"Unread: {first}",
        ]
        alerts = page.get_by_role("list", name="Open alerts")
        await expect(alerts).to_contain_text(first)
        await expect(alerts).to_contain_text(second)
        await shot(page, "notifications")
        # on a phone the bell stays in the header, outside the folded menu
        await page.set_viewport_size(PHONE)
        await expect(bell(page)).to_be_visible()
        await expect(page.get_by_role("navigation", name="Main")).to_be_hidden()
        await shot(page, "notifications-phone")
        await page.set_viewport_size(DESKTOP)

        # -- one marked read by clicking it: its styling and the bell follow
        await item.click()
        await expect(item).not_to_have_class(re.compile(r"\bunread\b"))
        await expect(item.get_by_role("button", name=re.compile("^Mark read"))).to_have_count(0)
        await expect(bell(page)).to_have_accessible_name(f"Notifications, {unread - 1} unread")
        assert (await ok(ed, "GET", "/notifications/unread", admin))["unread"] == unread - 1

        # -- all of them: the bell's count goes
        await page.get_by_role("button", name="Mark all read").click()
        await expect(page.get_by_text("Every notification is marked read.")).to_be_visible()
        await expect(bell(page)).to_have_accessible_name("Notifications")
        await expect(page.locator(".bell-count")).to_have_count(0)
        await expect(listing.locator(".note.unread")).to_have_count(0)
        assert (await ok(ed, "GET", "/notifications/unread", admin))["unread"] == 0
        # and so after a reload
        await page.reload()
        await expect(page.get_by_text("Nothing unread.")).to_be_visible()
        await expect(bell(page)).to_have_accessible_name("Notifications")

        # -- not for users: no bell, and never a question for its count
        asked: list[str] = []
        user_page = await (await browser.context()).new_page()
        user_page.on("request", lambda r: asked.append(r.url))
        await user_page.goto("/#/notifications")
        await sign_in(user_page, USER["username"], USER["password"])
        await expect(user_page.get_by_role("heading", name="Notifications")).to_have_count(0)
        await expect(bell(user_page)).to_have_count(0)
        await user_page.wait_for_timeout(500)
        assert not [u for u in asked if "/notifications" in u.split("#")[0]], asked


@pytest.mark.slow
async def test_preferences_are_saved_shown_masked_and_a_test_is_pushed(
    ed: Edged, hooks: tuple[int, list[dict[str, Any]]]
) -> None:
    port, got = hooks
    url = f"json://127.0.0.1:{port}/hook/{SECRET}"
    async with chromium(ed.direct_url, allow=NO_APPS) as browser:
        await set_up(ed)
        page = await signed_in(browser, OWNER, "/#/notifications")
        admin = await session_of(page.context)
        prefs = page.get_by_role("region", name="What comes to you")
        # everything comes by email and push until chosen otherwise; no push URLs yet
        for kind in ("Apps", "Certificates", "Backups", "System", "Updates", "Security"):
            await expect(prefs.get_by_label(f"{kind} by email")).to_be_checked()
            await expect(prefs.get_by_label(f"{kind} by push")).to_be_checked()
        await expect(prefs.get_by_text("No push URLs yet.")).to_be_visible()

        # -- a URL apprise may not reach: refused at the field, naming its line; nothing kept
        await prefs.get_by_label("Updates by email").uncheck()
        await prefs.get_by_label("Push URLs", exact=True).fill(
            f"{url}\n\njson://169.254.169.254/latest"
        )
        await prefs.get_by_role("button", name="Save preferences").click()
        await expect(field_error(prefs, "Push URLs")).to_contain_text("Line 3")
        assert (await ok(ed, "GET", "/notifications/preferences", admin))["push_urls"] == []

        # -- saved: shown after a reload, the URL masked
        await prefs.get_by_label("Push URLs", exact=True).fill(url)
        await prefs.get_by_label("Backups by push").uncheck()
        await prefs.get_by_role("button", name="Save preferences").click()
        await expect(prefs.get_by_text("Saved:")).to_be_visible()
        saved = await ok(ed, "GET", "/notifications/preferences", admin)
        assert "updates" not in saved["email"] and "backups" not in saved["push"]
        assert "backups" in saved["email"] and "updates" in saved["push"]
        [masked] = saved["push_urls"]
        assert SECRET not in masked

        await page.reload()
        prefs = page.get_by_role("region", name="What comes to you")
        await expect(prefs.get_by_label("Updates by email")).not_to_be_checked()
        await expect(prefs.get_by_label("Backups by push")).not_to_be_checked()
        await expect(prefs.get_by_label("Backups by email")).to_be_checked()
        await expect(prefs.get_by_role("list", name="Your push URLs")).to_have_text(masked)
        await expect(prefs.get_by_label("Replace these push URLs")).not_to_be_checked()
        assert SECRET not in await page.content()
        await shot(page, "notifications-preferences")

        # -- kept as they are when only the choices change ("replace" unticked)
        await prefs.get_by_label("Updates by email").check()
        await prefs.get_by_role("button", name="Save preferences").click()
        await expect(prefs.get_by_text("Saved:")).to_be_visible()
        again = await ok(ed, "GET", "/notifications/preferences", admin)
        assert again["push_urls"] == [masked] and "updates" in again["email"]

        # -- a test notification, by push only: the receiver gets it, the page says so
        await prefs.get_by_label("By email", exact=True).uncheck()
        await prefs.get_by_role("button", name="Send a test notification").click()
        await expect(prefs.get_by_text("Push: 1 URL took it.")).to_be_visible()
        assert [g["path"] for g in got] == [f"/hook/{SECRET}"]
        assert got[0]["body"]["title"].startswith("Test notification from")
