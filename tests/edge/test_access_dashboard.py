"""The dashboard's part of the edge's sign-in: an app sends the browser to
`my.<domain>/.homeport/signin?next=...`; without a session the gateway sends it on to the sign-in
page with `next` (tests/edge/test_access.py), and once signed in the page goes back there (and
only there)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from playwright.async_api import expect

from tests.dashboard.browserkit import chromium
from tests.dashboard.dashkit import PASSWORD, edged_platform

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


async def test_signing_in_goes_back_to_the_edge_sign_in_of_the_app(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> None:
    async with edged_platform(
        monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path
    ) as ed:
        setup = ed.platform.identity.setup_body(
            {"username": "owner", "email": "owner@example.test", "password": PASSWORD}
        )
        assert (await ed.platform.client.call("POST", "/api/v1/setup", body=setup)).status == 201
        back = "/.homeport/signin?next=" + quote("https://blog.localhost/page?a=1&b=2", safe="")
        # the gateway answers 400 at the end (blog.localhost is no app here): that page is ours
        async with chromium(ed.direct_url, allow="status of (503|400)") as browser:
            page = await browser.page()
            # where the gateway sends a browser without a session (tests/edge/test_access.py)
            login = "/#/login?next=" + quote(back, safe="")
            await page.goto(login)
            await expect(page.get_by_text("Sign in to open the app you asked for")).to_be_visible()
            await page.get_by_label("Username").fill("owner")
            await page.get_by_label("Password").fill(PASSWORD)
            await page.get_by_role("button", name="Sign in").click()
            await page.wait_for_url("**/.homeport/signin?**")
            url = urlsplit(page.url)
            assert f"{url.path}?{url.query}" == back
            await expect(page.get_by_text("not for an app of this server")).to_be_visible()

            # a `next` that is not the edge's sign-in is ignored: the dashboard opens
            await page.goto("/#/login?next=" + quote("https://evil.example/", safe=""))
            await page.get_by_role("button", name="Sign out").click()
            await page.goto("/#/login?next=" + quote("https://evil.example/", safe=""))
            await page.get_by_label("Username").fill("owner")
            await page.get_by_label("Password").fill(PASSWORD)
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.get_by_role("navigation", name="Main")).to_be_visible()
            assert urlsplit(page.url).path == "/"
