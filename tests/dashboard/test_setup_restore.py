"""The setup wizard offers "Restore from a backup": the target and key are checked (errors next
to the field), the backup named, then "Restore" waits for the platform; a restore the stack
could not do is said, with nothing changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.async_api import expect

from services.backup.repo import new_identity
from tests.dashboard.browserkit import chromium, error_of, shot
from tests.dashboard.dashkit import PlatformStarter
from tests.gateway.test_api_setup_restore import platform_backup

pytestmark = pytest.mark.timeout(240)


async def test_the_wizard_checks_a_backup_and_asks_for_the_restore(
    platform: PlatformStarter, tmp_path: Path
) -> None:
    backups = tmp_path / "backups"
    key, _ = await platform_backup(backups)
    async with platform() as ed, chromium(ed.direct_url) as browser:
        page = await browser.page()
        await page.goto(f"/#/setup?token={ed.platform.identity.setup_token}")
        await expect(page.get_by_role("button", name="Create administrator")).to_be_visible()
        await page.get_by_role("button", name="Restore from a backup").click()
        await expect(page.get_by_role("heading", name="Restore from a backup")).to_be_visible()

        # a directory without backups: said under Directory
        await page.get_by_label("Directory").fill(str(tmp_path / "nothing"))
        await page.get_by_label("Backup key").fill(key)
        await page.get_by_role("button", name="Check").click()
        await expect(error_of(page, "Directory")).to_be_visible()
        # a key that opens nothing: said under the key
        await page.get_by_label("Directory").fill(str(backups))
        await page.get_by_label("Backup key").fill(new_identity()[0])
        await page.get_by_role("button", name="Check").click()
        await expect(error_of(page, "Backup key")).to_contain_text("does not open")
        # the right key, pasted from a key file's text: the backup is named
        await page.get_by_label("Backup key").fill(f"# created: now\n{key.lower()}\n")
        await page.get_by_role("button", name="Check").click()
        await expect(page.get_by_role("status")).to_contain_text("with 2 apps")
        await shot(page, "setup-restore-checked")
        assert not (tmp_path / "restore-request.json").exists()

        await page.get_by_role("button", name="Restore", exact=True).click()
        await expect(page.get_by_role("heading", name="Restoring…")).to_be_visible()
        request = tmp_path / "restore-request.json"
        assert json.loads(request.read_text())["identity"] == key
        # the stack took the request and could not restore: the wizard says so
        request.unlink()
        (tmp_path / "restore-failed.json").write_text(json.dumps({"message": "it went away"}))
        await expect(page.get_by_role("alert")).to_contain_text("nothing changed: it went away")
        await expect(page.get_by_role("button", name="Check")).to_be_visible()

        await page.get_by_role("button", name="Back", exact=True).click()
        await expect(page.get_by_role("button", name="Create administrator")).to_be_visible()
