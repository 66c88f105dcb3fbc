"""Debian's chromium, headless, driven by Playwright; screenshots kept as test artifacts.

Every page a test opens is watched: a console error or an uncaught exception (a CSP violation
shows as one) fails the test when its browser closes, naming the messages.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from playwright.async_api import (
    Browser,
    BrowserContext,
    Locator,
    Page,
    ViewportSize,
    async_playwright,
    expect,
)
from playwright.async_api import Error as PlaywrightError

from tests.support.servers import need_server

__all__ = [
    "ARTIFACTS",
    "DESKTOP",
    "PHONE",
    "Chromium",
    "chromium",
    "error_of",
    "field_error",
    "goto",
    "session_of",
    "shot",
    "sign_in",
    "unnamed_controls",
]

CHROMIUM = os.environ.get("HP_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("HP_TEST_ARTIFACTS", "test-artifacts")) / "dashboard"
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}
# Without the background-networking flags chromium keeps calling Google's hosts, which this
# machine's closed network refuses (see the tool library's notes on chromium).
_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
]
# Not the page's faults: chromium logs every 4xx answer of the API (bad input is tested on
# purpose; the page shows it), event streams cut by a navigation, and requests chromium drops
# when dockerd adds or removes an app's network interfaces. A 5xx still counts.
_BENIGN = re.compile(
    r"status of 4\d\d|net::ERR_ABORTED|net::ERR_NETWORK_CHANGED|EventSource.*(aborted|interrupted)",
    re.I,
)


@dataclass
class Chromium:
    """One browser; `context()` opens an isolated profile (its own cookies) of a given size."""

    browser: Browser
    base_url: str
    allow: re.Pattern[str] | None = None
    problems: list[str] = field(default_factory=list)

    async def context(
        self, viewport: ViewportSize | None = None, *, base_url: str | None = None
    ) -> BrowserContext:
        ctx = await self.browser.new_context(
            base_url=base_url or self.base_url,
            viewport=viewport or DESKTOP,
            ignore_https_errors=True,  # the local domain's certificates are self-signed
            service_workers="block",
        )
        ctx.set_default_timeout(15_000)
        ctx.on("page", self.watch)
        return ctx

    async def page(self, viewport: ViewportSize | None = None) -> Page:
        ctx = await self.context(viewport)
        return await ctx.new_page()

    def watch(self, page: Page) -> None:
        def on_console(msg: object) -> None:
            kind = getattr(msg, "type", "")
            text = getattr(msg, "text", "")
            allowed = self.allow is not None and self.allow.search(text)
            if kind == "error" and not _BENIGN.search(text) and not allowed:
                self.problems.append(f"console error on {page.url}: {text}")

        page.on("console", on_console)
        page.on("pageerror", lambda e: self.problems.append(f"uncaught on {page.url}: {e}"))


def _chromium_binary() -> str | None:
    """HP_TEST_CHROMIUM if set, else Debian's /usr/bin/chromium or one on PATH; None if absent."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if "HP_TEST_CHROMIUM" in os.environ:
        return None
    return shutil.which("chromium")


@asynccontextmanager
async def chromium(base_url: str, *, allow: str | None = None) -> AsyncIterator[Chromium]:
    """A headless chromium for `base_url`; fails the test if any page logged an error (but
    those matching `allow`, which a test expects)."""
    binary = _chromium_binary()
    if binary is None:
        need_server("chromium", FileNotFoundError(CHROMIUM))
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=binary, args=_FLAGS, headless=True)
        kit = Chromium(browser, base_url, re.compile(allow) if allow else None)
        try:
            yield kit
        finally:
            for ctx in browser.contexts:
                await ctx.close()
            await browser.close()
    assert not kit.problems, "the dashboard logged errors:\n" + "\n".join(kit.problems)


async def shot(page: Page, name: str) -> Path:
    """A full-page screenshot kept under test-artifacts/dashboard/<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def goto(page: Page, url: str, *, tries: int = 10) -> None:
    """Open `url`, again when chromium drops it for a network change (dockerd at work) or nginx
    has not picked up a new vhost yet (a second at most)."""
    for attempt in range(tries):
        try:
            await page.goto(url)
            return
        except PlaywrightError as e:
            transient = "ERR_NETWORK_CHANGED" in str(e) or "UNRECOGNIZED_NAME" in str(e)
            if not transient or attempt == tries - 1:
                raise
            await asyncio.sleep(0.5)


_UNNAMED = """() => {
  const visible = (e) => e.offsetParent !== null || e.getClientRects().length > 0;
  const named = (e) =>
    (e.labels && e.labels.length > 0) ||
    e.getAttribute("aria-label") ||
    e.getAttribute("aria-labelledby");
  const fields = [...document.querySelectorAll("input, select, textarea")]
    .filter((e) => e.type !== "hidden" && visible(e) && !named(e));
  const controls = [...document.querySelectorAll("button, a[href]")]
    .filter((e) => visible(e))
    .filter((e) => !(
      e.textContent.trim() ||
      e.getAttribute("aria-label") ||
      e.querySelector("img[alt]:not([alt=''])")
    ));
  return [...fields, ...controls].map((e) => e.outerHTML.slice(0, 160));
}"""


async def unnamed_controls(page: Page) -> list[str]:
    """The visible form fields without a label and buttons or links without a name."""
    found: list[str] = await page.evaluate(_UNNAMED)
    return found


# -- on the dashboard's pages ------------------------------------------------------------------


async def click_until_answered(page: Page, button: Locator, answered: Locator) -> None:
    """Click `button` until `answered` shows. Chromium drops a request in flight when dockerd
    adds or removes an interface (ERR_NETWORK_CHANGED) and nginx may close a keep-alive
    connection while reloading; the page then says "Homeport did not answer" and the user
    clicks again, as they are told to (at most twice more)."""
    didnt = page.get_by_text("Homeport did not answer")
    # a sign-in (an argon2 check, then the app's page) may take more than expect()'s 5 s on a
    # loaded CI machine; a person waits that long too
    for _ in range(3):
        await button.click()
        await expect(answered.or_(didnt)).to_be_visible(timeout=20_000)
        if not await didnt.is_visible():
            break
    await expect(answered).to_be_visible(timeout=20_000)


async def sign_in(page: Page, username: str, password: str) -> None:
    await expect(page.get_by_role("heading", name="Sign in to Homeport")).to_be_visible()
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("navigation", name="Main")).to_be_visible()


def error_of(page: Page, label: str) -> Locator:
    """The error shown for the field labelled `label` (aria-describedby links them)."""
    field = page.get_by_label(label, exact=True)
    return page.locator(".field", has=field).locator(".field-error")


def field_error(scope: Page | Locator, label: str) -> Locator:
    """The error shown for the field labelled `label` inside `scope`."""
    # `has` takes a locator relative to the .field: one from the page, not from `scope`
    field = (scope if isinstance(scope, Page) else scope.page).get_by_label(label, exact=True)
    return scope.locator(".field", has=field).locator(".field-error")


async def session_of(ctx: BrowserContext) -> str:
    """The session cookie a browser context signed in with, for API calls as that user."""
    for c in await ctx.cookies():
        if c.get("name") == "__Host-hp_session":
            return str(c.get("value"))
    raise AssertionError("this browser context has no session cookie")
