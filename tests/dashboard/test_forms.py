"""Bad input in the dashboard's forms shows the API's own message next to the field at fault,
and nothing is half-done: the wizard stays where it was until the input is right."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from tests.dashboard.browserkit import chromium, error_of, shot
from tests.dashboard.dashkit import PASSWORD, PlatformStarter

pytestmark = pytest.mark.timeout(240)


async def test_setup_and_sign_in_forms_show_field_errors(
    platform: PlatformStarter,
) -> None:
    async with (
        platform() as ed,
        # no apps service runs here: the Apps page's GET /apps answers 503 (shown on the page)
        chromium(ed.direct_url, allow="status of 503") as browser,
    ):
        page = await browser.page()
        await page.goto(f"/#/setup?token={ed.platform.identity.setup_token}")
        await expect(page.get_by_role("heading", name="Set up Homeport")).to_be_visible()

        # a username the API refuses: its message under Username, the others untouched
        await page.get_by_label("Username").fill("9lives")
        await page.get_by_label("Email").fill("admin@example.test")
        await page.get_by_label("Password", exact=True).fill(PASSWORD)
        await page.get_by_label("Password again").fill(PASSWORD)
        await page.get_by_role("button", name="Create administrator").click()
        await expect(error_of(page, "Username")).to_contain_text("username")
        await expect(page.get_by_label("Username")).to_have_attribute("aria-invalid", "true")
        await expect(error_of(page, "Email")).to_have_count(0)
        await shot(page, "forms-setup-username-error")

        # a common password: identity's policy answer under Password
        await page.get_by_label("Username").fill("admin")
        await page.get_by_label("Password", exact=True).fill("password123")
        await page.get_by_label("Password again").fill("password123")
        await page.get_by_role("button", name="Create administrator").click()
        await expect(error_of(page, "Password")).to_contain_text("password")
        status = await ed.platform.client.call("GET", "/api/v1/status")
        assert status.body["setup_done"] is False  # nothing half-done

        # the two passwords differ: caught before anything is sent
        await page.get_by_label("Password", exact=True).fill(PASSWORD)
        await page.get_by_label("Password again").fill(PASSWORD + "!")
        await page.get_by_role("button", name="Create administrator").click()
        await expect(error_of(page, "Password again")).to_contain_text("differ")

        await page.get_by_label("Password again").fill(PASSWORD)
        await page.get_by_role("button", name="Create administrator").click()
        await expect(page.get_by_role("heading", name="2. Your domain")).to_be_visible()
        await page.get_by_role("button", name="Skip for now").click()
        await page.get_by_role("button", name="Open the dashboard").click()
        await expect(page.get_by_role("navigation", name="Main")).to_be_visible()

        # signed out, a wrong password is refused with the API's one message for every refusal
        await page.get_by_role("button", name="Sign out").click()
        await expect(page.get_by_role("heading", name="Sign in to Homeport")).to_be_visible()
        await page.get_by_label("Username").fill("admin")
        await page.get_by_label("Password").fill("wrong password here")
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.locator(".form-error")).to_be_visible()
        await shot(page, "forms-login-refused")
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("navigation", name="Main")).to_be_visible()
