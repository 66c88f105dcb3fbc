"""/api/v1/app-updates and /api/v1/apps/{app_id}/auto-update through the real gateway,
identity and apps services: administrators set the nightly window and an app's opt-out, see the
updates waiting for approval; others get 403; bad input is a 400 naming the field."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.apps.appskit import STATIC, apps_env, running_apps, static_catalog
from tests.gateway.apikit import Cast, Client, running_gateway
from tests.support.bus import relaying
from tests.support.waits import wait_until

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
async def api(
    monkeypatch: pytest.MonkeyPatch,
    cast: Cast,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    docker_host: str,
    uniq: str,
) -> AsyncIterator[Client]:
    """The real apps service (the static app in several versions), gateway and relay."""
    env = apps_env(
        dsn=dsn,
        nats_url=nats_url,
        tmp_path=tmp_path,
        docker_host=docker_host,
        prefix=f"v{uniq[:8]}",
        catalog=static_catalog(tmp_path / "catalog"),
        extra={"HP_READY_TIMEOUT": "10", "HP_TIME_ZONE": "Europe/Paris"},
    )
    async with (
        running_apps(monkeypatch, env),
        running_gateway(
            monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path
        ) as gateway,
        relaying(dsn, nats_url, uniq),
    ):
        yield gateway.client


WINDOW = "/api/v1/app-updates/settings"


async def test_window_and_opt_out_are_set_by_admins_with_bad_input_named(
    api: Client, cast: Cast
) -> None:
    root, alice = cast.token_root, cast.token_alice
    got = await api.call("GET", WINDOW, token=root)
    assert got.status == 200, got.body
    assert (got.body["enabled"], got.body["window_start"], got.body["window_end"]) == (
        True,
        "03:00",
        "05:00",
    )
    assert got.body["opted_out"] == [] and got.body["time_zone"] == "Europe/Paris"
    for method, path in (("GET", WINDOW), ("PUT", WINDOW), ("GET", "/api/v1/app-updates/pending")):
        body = {"enabled": False} if method == "PUT" else None
        assert (await api.call(method, path, token=alice, body=body)).status == 403, path

    for body, field in (
        ({"window_start": "25:00"}, "window_start"),
        ({"window_end": "4am"}, "window_end"),
        ({"enabled": "no"}, "enabled"),
        ({"window_start": "05:00"}, "window_end"),  # as long as the end: an empty window
        ({"sometimes": True}, "sometimes"),
    ):
        bad = await api.call("PUT", WINDOW, token=root, body=body)
        assert bad.status == 400, (body, bad.body)
        assert bad.problem["field"] == field, (body, bad.body)
    assert (await api.call("GET", WINDOW, token=root)).body["window_start"] == "03:00"

    put = await api.call(
        "PUT", WINDOW, token=root, body={"window_start": "22:30", "window_end": "01:15"}
    )
    assert put.status == 200, put.body
    assert (put.body["enabled"], put.body["window_start"], put.body["window_end"]) == (
        True,
        "22:30",
        "01:15",
    )

    started = await api.call(
        "POST",
        "/api/v1/apps",
        token=root,
        body={
            "manifest_id": STATIC,
            "version": "1.1.0",
            "location": "site",
            "access": {"all_users": True},
        },
    )
    assert started.status == 202, started.body
    app_id = started.body["app_id"]
    opt = f"/api/v1/apps/{app_id}/auto-update"
    assert (await api.call("PUT", opt, token=alice, body={"enabled": False})).status == 403
    bad = await api.call("PUT", opt, token=root, body={"enabled": "off"})
    assert bad.status == 400 and bad.problem["field"] == "enabled", bad.body
    missing = await api.call(
        "PUT",
        "/api/v1/apps/0190a0a0-0000-7000-8000-0000000000ff/auto-update",
        token=root,
        body={"enabled": False},
    )
    assert missing.status == 404, missing.body
    off = await api.call("PUT", opt, token=root, body={"enabled": False})
    assert off.status == 200 and off.body == {"app_id": app_id, "enabled": False}, off.body
    assert (await api.call("GET", WINDOW, token=root)).body["opted_out"] == [app_id]

    # 1.1.0 -> 2.0.0 passes 1.2.0, which needs approval: listed for the admin
    async def pending() -> list[tuple[str, str]]:
        got = await api.call("GET", "/api/v1/app-updates/pending", token=root)
        assert got.status == 200, got.body
        return [(p["app_id"], p["available_version"]) for p in got.body["items"]]

    async def listed() -> bool:
        return await pending() == [(app_id, "2.0.0")]

    await wait_until(listed, 60, "the app listed as waiting for approval")
    on = await api.call("PUT", opt, token=root, body={"enabled": True})
    assert on.status == 200 and on.body["enabled"] is True
    assert (await api.call("GET", WINDOW, token=root)).body["opted_out"] == []
