"""The Backups page and an app's backups in chromium, against the whole platform with the real
backup service: a directory target (a wrong path named next to its field first), the key made
and downloaded (shown once), "Back up now" to 100 %, the backups listed, then the static app's
data changed and restored from its backup with the downloaded key file: the old page is back.
An S3 target (moto) is checked before it is kept, and its secret is never shown back; a user
who is not an administrator has no Backups page.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from playwright.async_api import Page, expect

from libs.contracts.backup import AGE_IDENTITY
from tests.apps.appskit import STATIC
from tests.dashboard.browserkit import (
    DESKTOP,
    PHONE,
    chromium,
    field_error,
    session_of,
    shot,
    sign_in,
    unnamed_controls,
)
from tests.dashboard.dashkit import OWNER, Edged, PlatformStarter
from tests.support.edge import edge_get
from tests.support.moto import MotoServer, run_moto
from tests.support.waits import wait_until

pytestmark = pytest.mark.timeout(480)

KIM_PASSWORD = "kim's own long passphrase"
TASK_TIMEOUT = 180_000  # ms: a first build of the static image, a backup, a restore


def _write_page(docker_host: str, app_id: str, text: str) -> None:
    """The site's front page written inside the app's container, as the app's user."""
    client = docker.DockerClient(base_url=docker_host)
    try:
        [c] = client.containers.list(filters={"label": f"homeport.app={app_id}"})
        r = c.exec_run(["sh", "-c", f"echo '{text}' > /app/data/www/index.html"], user="1000:1000")
        assert r.exit_code == 0, r.output
    finally:
        client.close()


async def _serves(ed: Edged, location: str, text: str) -> None:
    """Until the app at `location` answers 200 with `text`, through the edge."""

    async def seen() -> bool:
        try:
            status, _, body = await edge_get(ed.https_port, f"{location}.localhost", "/")
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            return False
        return status == 200 and text in body

    await wait_until(seen, 60, f"{location} to serve {text!r}", step=0.5)


async def _install(ed: Edged, page: Page, location: str) -> str:
    """The static app installed at `location` through the API as the signed-in owner."""
    session = await session_of(page.context)
    body = {"manifest_id": STATIC, "version": "1.0.0", "location": location}
    started = await ed.platform.client.call("POST", "/api/v1/apps", session=session, body=body)
    assert started.status == 202, started.body
    app_id = str(started.body["app_id"])

    async def installed() -> bool:
        a = await ed.platform.client.call("GET", f"/api/v1/apps/{app_id}", session=session)
        assert a.body.get("state") != "error", a.body
        return bool(a.body.get("state") == "installed")

    await wait_until(installed, TASK_TIMEOUT / 1000, f"{location} to be installed", step=1)
    return app_id


async def _fits_a_phone(page: Page, name: str) -> None:
    await page.set_viewport_size(PHONE)
    await shot(page, f"{name}-phone")
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"{name} scrolls sideways at phone size ({width})"
    await page.set_viewport_size(DESKTOP)


@pytest.mark.slow
async def test_set_up_back_up_now_and_restore_an_app_with_the_downloaded_key(
    platform: PlatformStarter, tmp_path: Path, docker_host: str
) -> None:
    target = tmp_path / "backup-disk"
    target.mkdir()
    async with (
        platform(docker_host=docker_host) as ed,  # with the backup service (conftest.py)
        chromium(ed.direct_url) as browser,
    ):
        a = await ed.platform.client.call(
            "POST", "/api/v1/setup", body=ed.platform.identity.setup_body(OWNER)
        )
        assert a.status == 201, a.body
        page = await browser.page()
        await page.goto("/#/apps")
        await sign_in(page, OWNER["username"], OWNER["password"])
        app_id = await _install(ed, page, "site")
        _write_page(docker_host, app_id, "the page as it was backed up")
        await _serves(ed, "site", "the page as it was backed up")

        # -- the Backups page from the menu; nothing to back up to yet
        await (
            page.get_by_role("navigation", name="Main").get_by_role("link", name="Backups").click()
        )
        await expect(page.get_by_role("heading", level=1, name="Backups")).to_be_visible()
        await expect(page.get_by_role("button", name="Back up now")).to_be_disabled()
        await expect(page.get_by_text("No backups yet.")).to_be_visible()
        assert await unnamed_controls(page) == []
        await shot(page, "backups-empty")
        await _fits_a_phone(page, "backups-empty")

        # -- a directory that does not exist: named next to the field, nothing kept
        where = page.get_by_role("form", name="Where backups go")
        await where.get_by_label("Directory").fill(str(tmp_path / "not-mounted" / "homeport"))
        await where.get_by_role("button", name="Check and save").click()
        await expect(field_error(where, "Directory")).to_be_visible()
        await shot(page, "backups-target-error")
        await where.get_by_label("Directory").fill(str(target))
        await where.get_by_role("button", name="Check and save").click()
        await expect(where.get_by_text("Checked and kept")).to_be_visible()
        await expect(page.get_by_text(f"Backups go to {target}")).to_be_visible()

        # -- the key: shown once, downloaded as a .txt file; "Done" only once it is stored
        await page.get_by_role("button", name="Generate the key").click()
        shown = page.get_by_role("region", name="Your backup key")
        await expect(shown).to_be_visible()
        identity = (await shown.get_by_test_id("backup-key").inner_text()).strip()
        assert re.fullmatch(AGE_IDENTITY, identity), identity
        async with page.expect_download() as info:
            await shown.get_by_role("button", name="Download").click()
        download = await info.value
        assert download.suggested_filename.endswith(".txt")
        key_file = tmp_path / "downloaded-key.txt"
        await download.save_as(key_file)
        assert identity in key_file.read_text() and "AGE-SECRET-KEY-1" in key_file.read_text()
        await shot(page, "backups-key-shown")
        await expect(shown.get_by_role("button", name="Done")).to_be_disabled()
        await shown.get_by_label("I have stored the key").check()
        await shown.get_by_role("button", name="Done").click()
        await expect(shown).to_be_hidden()
        assert identity not in await page.content()  # shown once: gone from the page

        # -- back up now: a progress bar to 100 %, then the platform and the app listed
        await page.get_by_role("button", name="Back up now").click()
        ops = page.get_by_role("region", name="Backup operations")
        await expect(ops.locator(".progress-text")).to_contain_text("done", timeout=TASK_TIMEOUT)
        await expect(ops.locator("progress")).to_have_attribute("value", "100")
        listed = page.locator("table.backups tbody tr")
        await expect(listed.filter(has_text="Platform")).to_have_count(1, timeout=20_000)
        await expect(listed.filter(has_text="site")).to_have_count(1)
        await shot(page, "backups-listed")
        await _fits_a_phone(page, "backups-listed")

        # -- the app's data changes; restored from its backup on the app page with the key file
        _write_page(docker_host, app_id, "a later change")
        await _serves(ed, "site", "a later change")
        await page.goto(f"/#/apps/{app_id}")
        section = page.get_by_role("region", name="Backups")
        # the app page asks for its backups once it has loaded the app (slow under load)
        try:
            await expect(section.locator("tbody tr")).to_have_count(1, timeout=20_000)
        except AssertionError:
            session = await session_of(page.context)
            answer = await ed.platform.client.call(
                "GET", f"/api/v1/apps/{app_id}/backups", session=session
            )
            raise AssertionError(
                f"the app page lists no backup: {await section.inner_text()!r};"
                f" the API answers {answer.status} {answer.body}"
            ) from None
        await section.get_by_role("button", name=re.compile(r"^Restore site of")).click()
        dialog = page.get_by_role("dialog")
        await dialog.get_by_label("Load the key file").set_input_files(str(key_file))
        await expect(dialog.get_by_label("Backup key")).to_have_value(identity)
        await shot(page, "app-backup-restore")
        await dialog.get_by_role("button", name="Restore", exact=True).click()
        await expect(dialog).to_be_hidden()
        operation = page.get_by_role("region", name="Operations").locator(".task").last
        await expect(operation.locator(".progress-text")).to_contain_text(
            "done", timeout=TASK_TIMEOUT
        )
        await _serves(ed, "site", "the page as it was backed up")
        await shot(page, "app-backups")


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    yield from run_moto()


@pytest.mark.slow
async def test_an_s3_target_is_checked_and_its_secret_never_shown(
    platform: PlatformStarter, moto: MotoServer
) -> None:
    bucket = f"hp-{uuid.uuid4().hex[:12]}"
    moto.client("s3").create_bucket(Bucket=bucket)
    async with (
        platform() as ed,  # no apps service (no Docker needed): the page's GET /apps is a 503
        chromium(ed.direct_url, allow="status of 503") as browser,
    ):
        a = await ed.platform.client.call(
            "POST", "/api/v1/setup", body=ed.platform.identity.setup_body(OWNER)
        )
        assert a.status == 201, a.body
        page = await browser.page()
        await page.goto("/#/backups")
        await sign_in(page, OWNER["username"], OWNER["password"])
        where = page.get_by_role("form", name="Where backups go")
        await where.get_by_label("Where").select_option("s3")
        await where.get_by_label("Endpoint URL").fill(moto.url)
        await where.get_by_label("Region").fill("us-east-1")
        await where.get_by_label("Bucket").fill(bucket)
        await where.get_by_label("Access key id").fill(moto.access_key_id)
        secret = where.get_by_label("Secret access key")
        await expect(secret).to_have_attribute("type", "password")

        # a wrong secret: the check fails, said on the form, nothing kept
        await secret.fill("not-" + moto.secret_access_key)
        await where.get_by_role("button", name="Check and save").click()
        await expect(where.get_by_role("alert")).to_contain_text("check")
        await expect(page.get_by_text("Backups have nowhere to go yet")).to_be_visible()
        await shot(page, "backups-s3-refused")

        # the right one: kept, and from then on shown as •••• only
        await secret.fill(moto.secret_access_key)
        await where.get_by_role("button", name="Check and save").click()
        await expect(where.get_by_text("Checked and kept")).to_be_visible()
        await expect(page.get_by_text(f"Backups go to the S3 bucket {bucket}")).to_be_visible()
        await expect(secret).to_have_value("")
        await expect(secret).to_have_attribute("placeholder", "••••")
        await page.reload()
        await expect(page.get_by_text(f"Backups go to the S3 bucket {bucket}")).to_be_visible()
        assert moto.secret_access_key not in await page.content()
        session = await session_of(page.context)
        shown = await ed.platform.client.call("GET", "/api/v1/backups/settings", session=session)
        assert shown.body["target"]["bucket"] == bucket
        assert moto.secret_access_key not in json.dumps(shown.body)
        await shot(page, "backups-s3-kept")

        # a user who is not an administrator has no Backups page
        kim = {"username": "kim", "email": "kim@example.test", "password": KIM_PASSWORD}
        made = await ed.platform.client.call("POST", "/api/v1/users", session=session, body=kim)
        assert made.status == 201, made.body
        other = await (await browser.context()).new_page()
        await other.goto("/#/backups")
        await sign_in(other, "kim", KIM_PASSWORD)
        await expect(other).to_have_url(re.compile(r"#/apps$"))
        menu = other.get_by_role("navigation", name="Main")
        await expect(menu.get_by_role("link", name="Apps")).to_be_visible()
        await expect(menu.get_by_role("link", name="Backups")).to_have_count(0)
        await other.close()
