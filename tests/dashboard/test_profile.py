"""The profile in chromium: two-step sign-in enrolled with the QR page's secret, then asked for
at sign-in (a wrong code refused: back to the password step by itself, the username kept; then
a recovery code let in); a wrong current password named next to its field when changing the
password."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import time

import pytest
from playwright.async_api import expect

from tests.dashboard.browserkit import chromium, error_of, shot
from tests.dashboard.dashkit import PASSWORD, PlatformStarter

pytestmark = pytest.mark.timeout(240)


def totp_now(secret: str) -> str:
    """RFC 6238 (SHA-1, 30 s, 6 digits), as an authenticator app computes it."""
    key = base64.b32decode(secret.replace(" ", "").upper() + "=" * (-len(secret) % 8))
    mac = hmac.new(key, struct.pack(">Q", int(time.time()) // 30), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return f"{value % 1_000_000:06d}"


@pytest.mark.slow
async def test_totp_enrolment_and_sign_in_with_a_code(
    platform: PlatformStarter,
) -> None:
    async with platform() as ed:
        setup = ed.platform.identity.setup_body(
            {"username": "owner", "email": "owner@example.test", "password": PASSWORD}
        )
        assert (await ed.platform.client.call("POST", "/api/v1/setup", body=setup)).status == 201
        # no apps service runs here: the Apps page's GET /apps answers 503 (shown on the page)
        async with chromium(ed.direct_url, allow="status of 503") as browser:
            page = await browser.page()
            await page.goto("/#/profile")
            await page.get_by_label("Username").fill("owner")
            await page.get_by_label("Password").fill(PASSWORD)
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.get_by_role("heading", name="Two-step sign-in")).to_be_visible()

            # a wrong current password: the API's message next to that field
            await page.get_by_label("Current password").fill("not my password at all")
            await page.get_by_label("New password", exact=True).fill(PASSWORD + " two")
            await page.get_by_label("New password again").fill(PASSWORD + " two")
            await page.get_by_role("button", name="Change password").click()
            await expect(error_of(page, "Current password")).to_be_visible()

            # enrol: the QR code and its secret, a code from it, the recovery codes
            await page.get_by_role("button", name="Set up two-step sign-in").click()
            await expect(
                page.get_by_role("img", name="QR code of your authenticator secret")
            ).to_be_visible()
            secret = (await page.get_by_test_id("totp-secret").inner_text()).strip()
            await page.get_by_label("Code from the app").fill("000000")
            await page.get_by_role("button", name="Confirm").click()
            await expect(page.locator(".form-error, .field-error").first).to_be_visible()
            await page.get_by_label("Code from the app").fill(totp_now(secret))
            await page.get_by_role("button", name="Confirm").click()
            codes = page.get_by_role("list", name="Recovery codes").get_by_role("listitem")
            await expect(codes).to_have_count(10)
            await shot(page, "profile-recovery-codes")

            # a new browser signs in: the code step comes after the password
            other = await browser.page()
            await other.goto("/")
            await other.get_by_label("Username").fill("owner")
            await other.get_by_label("Password").fill(PASSWORD)
            await other.get_by_role("button", name="Sign in").click()
            code = other.get_by_label("Code from your authenticator app")
            await expect(code).to_be_visible()
            await code.fill("123456" if totp_now(secret) != "123456" else "654321")
            await other.get_by_role("button", name="Sign in").click()
            # a refused code ends that sign-in's ticket: the page goes back to the password
            # step by itself, the username kept, the password focused
            refused = other.locator(".form-error")
            await expect(refused).to_have_text("That code was not accepted. Sign in again.")
            await expect(other.get_by_label("Username")).to_have_value("owner")
            await expect(other.get_by_label("Password")).to_be_focused()
            await expect(other.get_by_label("Password")).to_have_value("")
            await shot(other, "login-code-refused")
            await other.get_by_label("Password").fill(PASSWORD)
            await other.get_by_role("button", name="Sign in").click()
            await other.get_by_role("button", name="Use a recovery code").click()
            first = (await codes.first.inner_text()).strip()
            await other.get_by_label("Recovery code").fill(first)
            await other.get_by_role("button", name="Sign in").click()
            await expect(other.get_by_role("navigation", name="Main")).to_be_visible()
