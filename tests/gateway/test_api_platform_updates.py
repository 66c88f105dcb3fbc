"""/api/v1/platform/updates through the real gateway, identity and apps services: the running
version, a newer signed release from a loopback release server with its changelog, an altered
manifest refused, the last update from `homeport update`'s events (also in the activity log),
the nightly switch and its effect on `homeport update --scheduled`, Debian's reboot flag."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cli.main import main
from deploy.update_events import EventLog
from services.apps import platform_events as pev
from tests.apps.appskit import apps_env, running_apps, static_catalog
from tests.gateway.apikit import Cast, Client, running_gateway
from tests.support.bus import relaying
from tests.support.installs import Install, server_install
from tests.support.releases import serve_directory
from tests.support.waits import wait_until

pytestmark = pytest.mark.timeout(240)

URL = "/api/v1/platform/updates"


@pytest.fixture
async def server(
    monkeypatch: pytest.MonkeyPatch,
    cast: Cast,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    docker_host: str,
    uniq: str,
) -> AsyncIterator[tuple[Client, Install]]:
    """1.0.0 installed under tmp_path (its /etc/homeport names a loopback release server that
    has 1.0.0), the apps service reading that install, the gateway and the relay."""
    install = server_install(tmp_path, dsn)
    env = apps_env(
        dsn=dsn,
        nats_url=nats_url,
        tmp_path=tmp_path,
        docker_host=docker_host,
        prefix=f"u{uniq[:8]}",
        catalog=static_catalog(tmp_path / "catalog"),
        extra=install.apps_env(),
    )
    with serve_directory(install.www) as url:
        install.layout.release_url_file.write_text(url + "\n")
        async with (
            running_apps(monkeypatch, env),
            running_gateway(
                monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path
            ) as gateway,
            relaying(dsn, nats_url, uniq),
        ):
            yield gateway.client, install


async def _get(api: Client, cast: Cast) -> dict[str, Any]:
    got = await api.call("GET", URL, token=cast.token_root)
    assert got.status == 200, got.body
    body: dict[str, Any] = got.body
    return body


async def test_the_version_a_newer_release_its_changelog_and_an_altered_one_refused(
    server: tuple[Client, Install], cast: Cast
) -> None:
    api, s = server
    for method, path in (("GET", URL), ("POST", f"{URL}/check"), ("PUT", f"{URL}/settings")):
        body = {"enabled": True} if method == "PUT" else None
        got = await api.call(method, path, token=cast.token_alice, body=body)
        assert got.status == 403, (path, got.body)

    async def checked() -> bool:
        return (await _get(api, cast))["checked_at"] is not None

    await wait_until(checked, 30, "the check at start")
    first = await _get(api, cast)
    assert (first["version"], first["server_install"]) == ("1.0.0", True)
    assert first["available"] is None and first["check_error"] is None
    assert first["auto_update"] is False and first["last_update"] is None
    assert (first["reboot_required"], first["reboot_packages"]) == (False, [])

    s.release("1.1.0")
    got = await api.call("POST", f"{URL}/check", token=cast.token_root)
    assert got.status == 200, got.body
    assert got.body["available"]["version"] == "1.1.0"
    assert got.body["available"]["changelog"] == "what 1.1.0 brings\n"
    assert got.body["checked_at"] > first["checked_at"]

    s.alter_manifest("1.1.0")
    got = await api.call("POST", f"{URL}/check", token=cast.token_root)
    assert got.body["available"] is None
    assert "signature does not match the pinned key: refused" in got.body["check_error"]

    s.layout.release_url_file.unlink()  # `homeport up`: no server install, nothing to check
    got = await api.call("POST", f"{URL}/check", token=cast.token_root)
    assert got.status == 200 and got.body["server_install"] is False, got.body


async def test_update_events_reboot_flag_and_the_nightly_switch(
    server: tuple[Client, Install], cast: Cast, capsys: pytest.CaptureFixture[str]
) -> None:
    api, s = server
    log = EventLog.from_env_file(s.layout.env_file, pytest.fail)
    for event in (
        pev.PlatformUpdateStarted(from_version="1.0.0", to_version="1.1.0"),
        pev.PlatformUpdateRolledBack(
            from_version="1.0.0", to_version="1.1.0", step="health", reason="unhealthy: apps"
        ),
    ):
        await asyncio.to_thread(log.record, event)  # as `homeport update` does
    last = (await _get(api, cast))["last_update"]
    assert last["outcome"] == "rolled_back" and last["to_version"] == "1.1.0"
    sentence = (
        "platform update to 1.1.0 failed at health and was rolled back: 1.0.0 is running"
        " (unhealthy: apps)"
    )
    assert last["summary"] == sentence

    async def in_activity() -> bool:
        got = await api.call("GET", "/api/v1/activity?limit=5", token=cast.token_root)
        return [i["summary"] for i in got.body["items"]][:2] == [
            sentence,
            "platform update from 1.0.0 to 1.1.0 started",
        ]

    await wait_until(in_activity, 30, "the update's sentences in the activity log")

    s.reboot.write_text("*** System restart required ***\n")
    s.reboot.with_name("reboot-required.pkgs").write_text("linux-image-amd64\nlibc6\nlibc6\n")
    now = await _get(api, cast)
    assert (now["reboot_required"], now["reboot_packages"]) == (
        True,
        ["linux-image-amd64", "libc6"],
    )
    s.reboot.unlink()
    assert (await _get(api, cast))["reboot_required"] is False

    settings = f"{URL}/settings"
    for body, field in (
        ({"enabled": "yes"}, "enabled"),
        ({}, "enabled"),
        ({"enabled": True, "x": 1}, "x"),
    ):
        bad = await api.call("PUT", settings, token=cast.token_root, body=body)
        assert bad.status == 400 and bad.problem["field"] == field, (body, bad.body)
    scheduled = ["update", "--scheduled", "--prefix", str(s.layout.prefix)]
    capsys.readouterr()
    assert await asyncio.to_thread(main, scheduled) == 0
    assert "nightly platform updates are off" in capsys.readouterr().out
    on = await api.call("PUT", settings, token=cast.token_root, body={"enabled": True})
    assert on.status == 200 and on.body["auto_update"] is True, on.body
    assert await asyncio.to_thread(main, scheduled) == 0  # on: it asks the release URL
    assert capsys.readouterr().out == "1.0.0 is the newest release: nothing to update\n"
    off = await api.call("PUT", settings, token=cast.token_root, body={"enabled": False})
    assert off.status == 200 and off.body["auto_update"] is False, off.body
    assert await asyncio.to_thread(main, scheduled) == 0
    assert "nightly platform updates are off" in capsys.readouterr().out

    async def switched() -> bool:
        got = await api.call("GET", "/api/v1/activity?limit=2", token=cast.token_root)
        return [i["summary"] for i in got.body["items"]] == [
            "nightly platform updates: off",
            "nightly platform updates: on",
        ]

    await wait_until(switched, 30, "the nightly switch in the activity log")
