"""The Activity page in chromium reads as sentences with names (issue 19): people, groups,
sign-ins with their address and browser, a deleted user as "a deleted user"; the changes view by
default and everything at a click; the filters shown exported as CSV and JSON downloads."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, expect

from libs.events import context
from libs.events.envelope import NewEvent
from libs.events.store import PostgresEventStore
from services.gateway import queries
from tests.dashboard.browserkit import (
    DESKTOP,
    PHONE,
    chromium,
    goto,
    session_of,
    shot,
    sign_in,
    unnamed_controls,
)
from tests.dashboard.dashkit import OWNER, Edged, PlatformStarter
from tests.gateway.apikit import Answer

pytestmark = pytest.mark.timeout(300)

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
KIM = {"username": "kim", "email": "kim@example.test", "password": "kim's own long phrase"}
LEE = {"username": "lee", "email": "lee@example.test", "password": "lee's own long phrase"}
KIM_IP = "203.0.113.7"
TASK = "0190f5c4-7d7e-7c4a-9a55-2d0c7d6a9e11"
STEP = "copying the files (40 %)"
CHANGES = (
    "owner created a user account for kim",
    "owner created the group family",
    "owner added kim to family",
    "owner invited someone",
    f"kim signed in from {KIM_IP} (Firefox)",
    f"a deleted user signed in from {KIM_IP} (Chrome)",  # lee, since deleted
    "owner deleted a user account",
)


async def api(ed: Edged, method: str, path: str, session: str, body: Any = None) -> Answer:
    a = await ed.platform.client.call(method, "/api/v1" + path, session=session, body=body)
    assert a.status < 300, (method, path, a.status, a.body)
    return a


async def what_people_do(ed: Edged, admin: str, dsn: str) -> None:
    """People added, grouped, invited, signed in from a browser (one then deleted); and a task
    step, which only the everything view shows."""
    ids = {}
    for who in (KIM, LEE):
        ids[who["username"]] = (await api(ed, "POST", "/users", admin, who)).body["user_id"]
    group = (await api(ed, "POST", "/groups", admin, {"name": "family"})).body["group_id"]
    await api(ed, "PUT", f"/groups/{group}/members/{ids['kim']}", admin)
    await api(ed, "POST", "/invitations", admin, {"email": "sam@example.test"})
    for who, agent in ((KIM, FIREFOX), (LEE, CHROME)):
        body = {"username": who["username"], "password": who["password"]}
        signed = await ed.platform.client.call(
            "POST",
            "/api/v1/session",
            body=body,
            headers={"User-Agent": agent, "X-Real-IP": KIM_IP},
        )
        assert signed.status == 200, signed.body
    await api(ed, "DELETE", f"/users/{ids['lee']}", admin)
    store = await PostgresEventStore.open(dsn, max_size=1)
    try:
        with context.use(context.Context(actor="system")):
            await store.append(
                f"task-{TASK}",
                [NewEvent("TaskProgressed", {"task_id": TASK, "percent": 40,
                                             "message": "copying the files"})],
            )  # fmt: skip
    finally:
        await store.close()


async def shows_all(page: Page) -> None:
    """The page shows every line of CHANGES: the projection follows the relay, so a page
    loaded too soon is loaded again (a person presses reload too)."""
    main = page.get_by_role("main")
    for _ in range(20):
        if await main.get_by_text(CHANGES[-1], exact=True).count():
            break
        await page.wait_for_timeout(500)
        await page.reload()
    for line in CHANGES:
        await expect(main.get_by_text(line, exact=True)).to_be_visible()


async def download(page: Page, name: str) -> tuple[str, str]:
    """The file a click on the link `name` downloads: its suggested name and its text."""
    async with page.expect_download() as info:
        await page.get_by_role("link", name=name).click()
    got = await info.value
    path = await got.path()
    return got.suggested_filename, Path(path).read_text(encoding="utf-8")


@pytest.mark.slow
async def test_activity_reads_as_sentences_switches_views_and_exports(
    platform: PlatformStarter, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        platform() as ed,
        # no apps service runs here: the Apps page's GET /apps answers 503 (shown on the page)
        chromium(ed.direct_url, allow="status of 503") as browser,
    ):
        a = await ed.platform.client.call(
            "POST", "/api/v1/setup", body=ed.platform.identity.setup_body(OWNER)
        )
        assert a.status == 201, a.body
        page = await browser.page()
        await goto(page, "/#/activity")
        await sign_in(page, OWNER["username"], OWNER["password"])
        admin = await session_of(page.context)
        await what_people_do(ed, admin, dsn)
        await goto(page, "/#/activity")
        await expect(page.get_by_role("heading", name="Activity", level=1)).to_be_visible()

        # -- the changes view (the default): sentences with names; no task step
        changes = page.get_by_role("button", name="Changes")
        everything = page.get_by_role("button", name="Everything")
        await expect(changes).to_have_attribute("aria-pressed", "true")
        await shows_all(page)
        rows = page.get_by_role("table", name="Activity, newest first").locator("tbody tr")
        kim_row = rows.filter(has_text=f"kim signed in from {KIM_IP} (Firefox)")
        await expect(kim_row).to_contain_text("SessionStarted")  # the type, for the curious
        await expect(kim_row.locator("td[data-label='By']")).to_have_text("kim")
        await expect(kim_row.locator("td[data-label='From']")).to_have_text(f"{KIM_IP} (Firefox)")
        await expect(page.get_by_text(STEP)).to_have_count(0)
        await expect(page.get_by_text("lee")).to_have_count(0)  # deleted: the name is gone
        await shot(page, "activity-changes")

        # -- everything: the task's step too
        await everything.click()
        await expect(everything).to_have_attribute("aria-pressed", "true")
        await expect(changes).to_have_attribute("aria-pressed", "false")
        await expect(page.get_by_text(STEP, exact=True)).to_be_visible()
        await expect(page.get_by_text(CHANGES[2], exact=True)).to_be_visible()

        # -- export what is shown: CSV and JSON files, with the same sentences
        filename, text = await download(page, "Export CSV")
        assert filename.startswith("homeport-activity-") and filename.endswith(".csv")
        rows_out = list(csv.DictReader(io.StringIO(text)))
        sentences = [r["sentence"] for r in rows_out]
        assert set(CHANGES) <= set(sentences) and STEP in sentences, sentences
        kim = next(r for r in rows_out if r["sentence"] == CHANGES[4])
        assert (kim["actor_name"], kim["ip"], kim["browser"]) == ("kim", KIM_IP, "Firefox")
        filename, text = await download(page, "Export JSON")
        assert filename.endswith(".json")
        items = json.loads(text)["items"]
        assert [i["sentence"] for i in items] == sentences

        # -- a range too big for one file: refused at the click, nothing downloads
        bound = queries.EXPORT_MAX_ROWS
        monkeypatch.setattr(queries, "EXPORT_MAX_ROWS", 3)
        await page.get_by_role("link", name="Export CSV").click()
        await expect(page.get_by_role("alert")).to_contain_text(
            "Too many events match these filters for one file"
        )
        monkeypatch.setattr(queries, "EXPORT_MAX_ROWS", bound)

        # -- the switch back, at phone size: nothing sideways, every control named
        await changes.click()
        await expect(page.get_by_text(STEP)).to_have_count(0)
        for size, suffix in ((DESKTOP, ""), (PHONE, "-phone")):
            await page.set_viewport_size(size)
            await expect(page.get_by_text(CHANGES[2], exact=True)).to_be_visible()
            await shot(page, "activity" + suffix)
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= size["width"], f"the Activity page scrolls sideways ({width})"
            assert await unnamed_controls(page) == []
