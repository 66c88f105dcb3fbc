"""/api/v1/catalog and /api/v1/apps through the real gateway, identity and apps services.

Admins manage apps; a user lists only the apps their access list lets them open; bad input is
a 400 naming the field with nothing installed; progress streams as task events; logs as JSON
and as Server-Sent Events.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.apps.appskit import STATIC, apps_env, running_apps, static_catalog
from tests.events.relaykit import relaying, wait_until
from tests.gateway.apikit import Cast, Client, running_gateway

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
    env = apps_env(
        dsn=dsn,
        nats_url=nats_url,
        tmp_path=tmp_path,
        docker_host=docker_host,
        prefix=f"g{uniq[:8]}",
        catalog=static_catalog(tmp_path / "catalog"),
        extra={"HP_READY_TIMEOUT": "10"},
    )
    async with (
        running_apps(monkeypatch, env),
        running_gateway(
            monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path
        ) as gateway,
        relaying(dsn, nats_url, uniq),
    ):
        yield gateway.client


async def _task_events(client: Client, task_id: str, token: str) -> list[tuple[str, Any]]:
    """The task's Server-Sent Events until it ends."""
    url = f"{client.base}/api/v1/tasks/{task_id}/events"
    out: list[tuple[str, Any]] = []
    headers = {"Authorization": f"Bearer {token}"}
    async with client.http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(120)) as r:
        assert r.status == 200
        kind = ""
        async for raw in r.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                out.append((kind, json.loads(line[6:])))
    return out


async def test_admin_installs_with_progress_and_users_see_only_their_apps(
    api: Client, cast: Cast
) -> None:
    root, alice = cast.token_root, cast.token_alice
    found = await api.call("GET", "/api/v1/catalog?text=static", token=alice)
    assert found.status == 200, found.body
    assert [m["id"] for m in found.body["items"]] == [STATIC]
    detail = await api.call("GET", f"/api/v1/catalog/{STATIC}", token=alice)
    assert detail.body["versions"] == ["1.0.0", "1.0.1", "1.1.0", "1.2.0", "2.0.0"]

    group = await api.call("POST", "/api/v1/groups", token=root, body={"name": "family"})
    assert group.status == 201, group.body
    group_id = group.body["group_id"]
    body = {
        "manifest_id": STATIC,
        "version": "1.0.0",
        "location": "photos",
        "access": {"groups": [group_id]},
    }
    assert (await api.call("POST", "/api/v1/apps", token=alice, body=body)).status == 403
    started = await api.call("POST", "/api/v1/apps", token=root, body=body)
    assert started.status == 202, started.body
    steps = await _task_events(api, started.body["task_id"], root)
    assert steps[-1][0] == "succeeded", steps
    percents = [data["percent"] for kind, data in steps if kind == "progress"]
    assert percents and percents == sorted(percents)

    apps = await api.call("GET", "/api/v1/apps", token=root)
    assert [a["location"] for a in apps.body["items"]] == ["photos"]
    assert apps.body["items"][0]["state"] == "installed"
    assert (await api.call("GET", "/api/v1/apps", token=alice)).body["items"] == []
    joined = await api.call("PUT", f"/api/v1/groups/{group_id}/members/{cast.alice_id}", token=root)
    assert joined.status == 204
    mine = await api.call("GET", "/api/v1/apps", token=alice)
    assert [a["location"] for a in mine.body["items"]] == ["photos"]
    app_id = started.body["app_id"]
    assert (await api.call("GET", f"/api/v1/apps/{app_id}", token=alice)).status == 403
    assert (await api.call("POST", f"/api/v1/apps/{app_id}/stop", token=alice)).status == 403

    stopped = await api.call("POST", f"/api/v1/apps/{app_id}/stop", token=root)
    assert stopped.status == 200 and stopped.body["running"] is False
    one = await api.call("GET", f"/api/v1/apps/{app_id}", token=root)
    assert one.body["run_state"] == "stopped"


async def test_bad_input_is_a_400_naming_the_field_and_installs_nothing(
    api: Client, cast: Cast
) -> None:
    root = cast.token_root
    good = {"manifest_id": STATIC, "location": "site", "access": {"all_users": True}}
    for change, field in (
        ({"location": "Bad Label"}, "location"),
        ({"memory_bytes": 5}, "memory_bytes"),
        ({"env": {"HOMEPORT_X": "1"}}, "env.HOMEPORT_X"),
        ({"access": {"all_users": "yes"}}, "access.all_users"),
    ):
        a = await api.call("POST", "/api/v1/apps", token=root, body={**good, **change})
        assert a.status == 400, (change, a.body)
        assert a.problem["field"] == field, (change, a.body)
    missing = await api.call(
        "POST", "/api/v1/apps", token=root, body={**good, "manifest_id": "org.example.none"}
    )
    assert missing.status == 404, missing.body
    assert (await api.call("GET", "/api/v1/apps", token=root)).body["items"] == []


async def test_logs_as_json_and_followed_as_events(api: Client, cast: Cast) -> None:
    root = cast.token_root
    body = {"manifest_id": STATIC, "version": "1.0.0", "location": "logs", "access": {}}
    body["access"] = {"all_users": True}
    started = await api.call("POST", "/api/v1/apps", token=root, body=body)
    assert started.status == 202, started.body
    await _task_events(api, started.body["task_id"], root)
    app_id = started.body["app_id"]
    app = await api.call("GET", f"/api/v1/apps/{app_id}", token=root)
    port = app.body["container"]["port"]

    async def visit(path: str) -> None:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}"):
            pass

    await visit("/first-visit")

    async def logged() -> bool:
        a = await api.call("GET", f"/api/v1/apps/{app_id}/logs?tail=50", token=root)
        return any("first-visit" in line for line in a.body["lines"])

    await wait_until(logged, 10, "the first visit in the app's log")

    url = f"{api.base}/api/v1/apps/{app_id}/logs/stream?tail=5"
    headers = {"Authorization": f"Bearer {root}"}
    seen: list[str] = []
    async with api.http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(30)) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        await visit("/second-visit")
        async for raw in r.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if "second-visit" in seen[-1]:
                    break
    assert any("second-visit" in s for s in seen)
    await asyncio.sleep(0)
