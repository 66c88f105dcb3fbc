"""The System page in chromium, against the whole platform with a server install's layout and a
loopback release server: the running version, "Check now" finding a newer signed release and
its changelog, an altered manifest shown as refused, the nightly switch turning
`homeport update --scheduled` on (its refusal then in the last update and the activity log),
Debian's reboot request shown and gone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from cli.main import main
from tests.dashboard.browserkit import DESKTOP, PHONE, chromium, shot, sign_in, unnamed_controls
from tests.dashboard.dashkit import OWNER, PlatformStarter
from tests.support.installs import server_install
from tests.support.releases import serve_directory

pytestmark = pytest.mark.timeout(480)

REFUSED = "the release manifest's signature does not match the pinned key: refused"


async def _nav(page: Page, name: str) -> None:
    await page.get_by_role("navigation", name="Main").get_by_role("link", name=name).click()
    await expect(page.get_by_role("heading", level=1, name=name)).to_be_visible()


async def test_version_available_update_refusal_nightly_switch_and_reboot(
    platform: PlatformStarter, tmp_path: Path, docker_host: str, dsn: str
) -> None:
    install = server_install(tmp_path, dsn)
    scheduled = ["update", "--scheduled", "--prefix", str(install.layout.prefix)]
    with serve_directory(install.www) as url:
        install.layout.release_url_file.write_text(url + "\n")
        async with (
            platform(docker_host=docker_host, apps_extra=install.apps_env()) as ed,
            chromium(ed.direct_url) as browser,
        ):
            a = await ed.platform.client.call(
                "POST", "/api/v1/setup", body=ed.platform.identity.setup_body(OWNER)
            )
            assert a.status == 201, a.body
            page = await browser.page()
            await page.goto("/#/apps")
            await sign_in(page, OWNER["username"], OWNER["password"])

            # -- the version; the check at start found nothing newer
            await _nav(page, "System")
            await expect(
                page.get_by_role("heading", level=2, name="Homeport 1.0.0")
            ).to_be_visible()
            newest = page.get_by_text("Homeport 1.0.0 is the newest release.")
            await expect(newest).to_be_visible()
            await expect(page.get_by_text("No platform update has run")).to_be_visible()
            nightly = page.get_by_label("Install platform updates every night")
            await expect(nightly).not_to_be_checked()
            assert await unnamed_controls(page) == []

            # -- a newer release: "Check now" shows it and its changelog
            install.release("1.1.0")
            await page.get_by_role("button", name="Check now").click()
            panel = page.locator("[aria-label='Available update']")
            await expect(
                panel.get_by_role("heading", name="Homeport 1.1.0 is available")
            ).to_be_visible()
            await expect(panel.get_by_text("what 1.1.0 brings")).to_be_visible()
            await expect(panel.get_by_text("sudo homeport update")).to_be_visible()
            await shot(page, "system-available")

            # -- the manifest altered after signing: refused, nothing offered
            install.alter_manifest("1.1.0")
            await page.get_by_role("button", name="Check now").click()
            await expect(page.get_by_role("alert")).to_contain_text(REFUSED)
            await expect(panel).to_have_count(0)

            # -- the nightly switch: `homeport update --scheduled` does nothing while it is off
            assert await asyncio.to_thread(main, scheduled) == 0
            await nightly.click()  # checked once the server said so
            await expect(nightly).to_be_checked()
            # on, it asks the release URL, which is refused: the last update says so
            assert await asyncio.to_thread(main, scheduled) == 1
            await page.reload()
            await expect(
                page.get_by_text(f"Last update: platform update refused: {REFUSED}")
            ).to_be_visible()
            await expect(page.get_by_label("Install platform updates every night")).to_be_checked()
            # the CLI appended to the event store; the activity log gets it through the relay
            # and its projection: under load that may take longer than one page load
            refused = page.get_by_text(f"platform update refused: {REFUSED}")
            for _ in range(6):
                await _nav(page, "Activity")
                try:
                    await expect(refused).to_be_visible(timeout=2500)
                    break
                except AssertionError:
                    await _nav(page, "System")  # and back: the page loads the log again
            await expect(refused).to_be_visible()
            await expect(page.get_by_text("nightly platform updates: on")).to_be_visible()

            # -- Debian asks for a reboot, then no longer does
            install.reboot.write_text("*** System restart required ***\n")
            install.reboot.with_name("reboot-required.pkgs").write_text("linux-image-amd64\n")
            await _nav(page, "System")
            restart = page.get_by_role("heading", name="Restart required")
            await expect(restart).to_be_visible()
            await expect(page.get_by_text("Packages: linux-image-amd64")).to_be_visible()
            await page.set_viewport_size(PHONE)
            await shot(page, "system-phone")
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], f"the System page scrolls sideways ({width})"
            await page.set_viewport_size(DESKTOP)
            install.reboot.unlink()
            await page.reload()
            await expect(
                page.get_by_role("heading", level=2, name="Homeport 1.0.0")
            ).to_be_visible()
            await expect(restart).to_have_count(0)
