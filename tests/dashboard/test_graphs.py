"""The Graphs page in chromium, with the whole platform sampling every second and a static app
running: the Memory, CPU and Disk charts render (a uPlot canvas, named for screen readers by
the latest values, which are those of the API's last points), "Memory per app" has a series
named by the app's location; another time range asks the API again and still renders; at phone
width the charts fit. A user who is not an administrator sees no Graphs in the navigation and
#/graphs sends them to their apps.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from playwright.async_api import Page, Response, expect

from tests.apps.appskit import STATIC
from tests.dashboard.browserkit import PHONE, chromium, shot, sign_in
from tests.dashboard.dashkit import INSTALL_TIMEOUT, PASSWORD, USER_PASSWORD, Edged, PlatformStarter

pytestmark = pytest.mark.timeout(300)

LOCATION = "notes"
UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
BYTES = r"([\d.]+) (B|KiB|MiB|GiB|TiB)"


def parse_bytes(number: str, unit: str) -> float:
    return float(number) * UNITS[unit]


def last_value(body: dict[str, Any], metric: str) -> float:
    series = next(s for s in body["series"] if s["metric"] == metric and "app_id" not in s)
    assert series["points"], f"no {metric} samples"
    return float(series["points"][-1][1])


def near(shown: float, value: float, share: float) -> bool:
    """`shown` (rounded for the page) is `value` within `share` of it."""
    return abs(shown - value) <= share * max(abs(value), 1.0)


async def until(check: Any, what: str, timeout: float) -> Any:
    end = asyncio.get_running_loop().time() + timeout
    while True:
        found = await check()
        if found:
            return found
        assert asyncio.get_running_loop().time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.5)


async def set_up(ed: Edged) -> str:
    """The administrator (through the API), a user, and the static app installed at LOCATION;
    answers the administrator's session once the app's memory is in the metrics history."""
    client, ident = ed.platform.client, ed.platform.identity
    setup = ident.setup_body(
        {"username": "owner", "email": "owner@example.test", "password": PASSWORD}
    )
    created = await client.call("POST", "/api/v1/setup", body=setup)
    assert created.status == 201, created.body
    admin_id = created.body["user_id"]
    session = str((await ident.login("owner", PASSWORD))["session"])
    kim = {"username": "kim", "email": "kim@example.test", "password": USER_PASSWORD}
    await ident.cmd("create_user", kim, actor=admin_id)
    body = {
        "manifest_id": STATIC,
        "version": "1.0.0",
        "location": LOCATION,
        "access": {"all_users": True},
    }
    started = await client.call("POST", "/api/v1/apps", session=session, body=body)
    assert started.status == 202, started.body
    task = f"/api/v1/tasks/{started.body['task_id']}"

    async def installed() -> Any:
        answer = await client.call("GET", task, session=session)
        return answer.status == 200 and answer.body["state"] != "running" and answer.body

    end = await until(installed, "the install", INSTALL_TIMEOUT / 1000)
    assert end["state"] == "succeeded", end

    async def app_sampled() -> bool:
        answer = await client.call("GET", "/api/v1/metrics/history?range=1h", session=session)
        assert answer.status == 200, answer.body
        return any(
            s["metric"] == "app_memory_bytes" and s.get("location") == LOCATION and s["points"]
            for s in answer.body["series"]
        )

    await until(app_sampled, f"the memory of {LOCATION} in the metrics history", 60)
    return session


async def values_differ(page: Page, body: dict[str, Any], when: str) -> str | None:
    """Why the charts' names do not state the last points of `body` (None: they do)."""
    memory, cpu, disk = [
        await page.get_by_role("img", name=re.compile(f"^{title}: ")).get_attribute("aria-label")
        for title in ("Memory", "CPU", "Disk")
    ]
    for metric, label in (("memory", memory), ("disk", disk)):
        found = re.fullmatch(rf"\w+: {BYTES} of {BYTES} used \({when}\)", label or "")
        if not found:
            return f"{metric}: {label!r}"
        used = last_value(body, f"system_{metric}_used_bytes")
        total = last_value(body, f"system_{metric}_total_bytes")
        if not near(parse_bytes(*found.group(1, 2)), used, 0.05):
            return f"{label!r} but the API's last point is {used:.0f} B used"
        if not near(parse_bytes(*found.group(3, 4)), total, 0.05):
            return f"{label!r} but the API's last point is {total:.0f} B in all"
    busy = re.fullmatch(rf"CPU: (\d+)% busy \({when}\)", cpu or "")
    ratio = last_value(body, "system_cpu_busy_ratio")
    if not busy or abs(int(busy.group(1)) - 100 * ratio) > 0.5:
        return f"{cpu!r} but the API's last point is {ratio:.3f} busy"
    return None


async def check_latest_values(page: Page, answers: list[Response], when: str) -> None:
    """The charts' names state the last points of the history the page got, as rounded for
    people (its newest answer: the page refreshes every 30 s, so a mismatch is read again)."""
    for title in ("Memory", "CPU", "Disk"):
        chart = page.get_by_role("img", name=re.compile(f"^{title}: "))
        await expect(chart).to_have_attribute("aria-label", re.compile(rf"\({when}\)$"))
    problem = None
    for _ in range(3):
        problem = await values_differ(page, await answers[-1].json(), when)
        if problem is None:
            return
        await page.wait_for_timeout(1000)
    raise AssertionError(problem)


@pytest.mark.slow
async def test_graphs_render_the_history_and_only_admins_see_them(
    platform: PlatformStarter,
    docker_host: str,
) -> None:
    async with platform(
        docker_host=docker_host,
    ) as ed:
        session = await set_up(ed)
        async with chromium(ed.direct_url) as browser:
            page = await browser.page()
            answers: list[Response] = []
            page.on(
                "response",
                lambda r: answers.append(r) if "/api/v1/metrics/history" in r.url else None,
            )
            await page.goto("/#/graphs")
            await sign_in(page, "owner", PASSWORD)
            await expect(page.get_by_role("heading", name="Graphs", level=1)).to_be_visible()

            # -- the three system charts and the apps' one: a canvas each, named by the values
            for title in ("Memory", "CPU", "Disk", "Memory per app"):
                region = page.get_by_role("region", name=title, exact=True)
                await expect(region.locator(".chart-plot canvas")).to_have_count(1)
            await check_latest_values(page, answers, "last hour")
            apps = page.get_by_role("region", name="Memory per app", exact=True)
            await expect(apps.get_by_role("img")).to_have_attribute(
                "aria-label", re.compile(rf"^Memory per app: {LOCATION} {BYTES}")
            )
            await expect(
                apps.locator(".u-legend .u-series").filter(has_text=LOCATION)
            ).to_be_visible()
            await shot(page, "graphs-admin-1h")

            # the API answers the same (a later point may have come in: within reason)
            direct = await ed.platform.client.call(
                "GET", "/api/v1/metrics/history?range=1h", session=session
            )
            assert direct.status == 200, direct.body
            shown = await answers[-1].json()
            for metric in ("system_memory_total_bytes", "system_disk_total_bytes"):
                assert near(last_value(direct.body, metric), last_value(shown, metric), 0.01)
            used = "system_memory_used_bytes"
            assert near(last_value(direct.body, used), last_value(shown, used), 0.5)

            # -- another range: asked again, drawn again
            async with page.expect_request(
                lambda r: "/api/v1/metrics/history" in r.url and "range=6h" in r.url
            ):
                await page.get_by_label("Time range").select_option("6h")
            await check_latest_values(page, answers, "last 6 hours")
            for title in ("Memory", "CPU", "Disk", "Memory per app"):
                region = page.get_by_role("region", name=title, exact=True)
                await expect(region.locator(".chart-plot canvas")).to_have_count(1)
            assert "range=6h" in answers[-1].url
            await shot(page, "graphs-admin-6h")

            # -- at phone width the charts follow the screen: no sideways scroll
            await page.set_viewport_size(PHONE)
            await page.wait_for_function(
                """() => [...document.querySelectorAll('.chart-plot canvas')].every(
                    (c) => c.getBoundingClientRect().right <= window.innerWidth)"""
            )
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], f"the Graphs page scrolls sideways ({width})"
            await shot(page, "graphs-admin-phone")

            # -- not an administrator: no Graphs, and #/graphs leads to the apps
            user = await browser.page()
            await user.goto("/")
            await sign_in(user, "kim", USER_PASSWORD)
            nav = user.get_by_role("navigation", name="Main")
            await expect(nav.get_by_role("link", name="Apps")).to_be_visible()
            await expect(nav.get_by_role("link", name="Graphs")).to_have_count(0)
            await user.goto("/#/graphs")
            await expect(user).to_have_url(re.compile(r"#/apps$"))
            await expect(user.get_by_role("heading", name="Graphs")).to_have_count(0)
            await shot(user, "graphs-user-sent-to-apps")
