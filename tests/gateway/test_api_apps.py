"""/api/v1/catalog and /api/v1/apps through the real gateway, identity and apps services.

Admins manage apps; a user lists only the apps their access list lets them open; bad input is
a 400 naming the field with nothing installed; progress streams as task events; logs as JSON
and as Server-Sent Events.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from services.gateway.api.security import API_CSP
from tests.apps.appskit import STATIC, apps_env, running_apps, static_catalog
from tests.gateway.apikit import SECURITY_HEADERS, Cast, Client, running_gateway
from tests.support.bus import relaying
from tests.support.waits import wait_until

pytestmark = pytest.mark.timeout(240)

PNG_APP = "org.example.png-icon"  # the static app with a PNG icon
PLAIN_APP = "org.example.plain"  # the static app without an icon
SVG_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"


@asynccontextmanager
async def serving(
    monkeypatch: pytest.MonkeyPatch,
    catalog: Path,
    *,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    docker_host: str,
    uniq: str,
) -> AsyncIterator[Client]:
    """The real apps service (with `catalog`), gateway and relay."""
    env = apps_env(
        dsn=dsn,
        nats_url=nats_url,
        tmp_path=tmp_path,
        docker_host=docker_host,
        prefix=f"g{uniq[:8]}",
        catalog=catalog,
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
    catalog = static_catalog(tmp_path / "catalog")
    async with serving(
        monkeypatch,
        catalog,
        dsn=dsn,
        nats_url=nats_url,
        tmp_path=tmp_path,
        docker_host=docker_host,
        uniq=uniq,
    ) as client:
        yield client


def png_1x1() -> bytes:
    """A valid one-pixel PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x10\x20\x30\xff")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def icons_catalog(dest: Path) -> Path:
    """The static app's catalog, plus a copy with a PNG icon and one without an icon."""
    static_catalog(dest)
    for app, icon in ((PNG_APP, "icon.png"), (PLAIN_APP, None)):
        d = dest / app / "1.0.0"
        shutil.copytree(dest / STATIC / "1.0.0", d)
        (d / "icon.svg").unlink()
        manifest = json.loads((d / "manifest.json").read_text())
        manifest.update({"id": app, "title": f"Copy {app}"})
        manifest.pop("icon")
        if icon is not None:
            (d / icon).write_bytes(png_1x1())
            manifest["icon"] = icon
        (d / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dest


@pytest.fixture
async def icons_api(
    monkeypatch: pytest.MonkeyPatch,
    token_cast: Cast,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    docker_host: str,
    uniq: str,
) -> AsyncIterator[Client]:
    catalog = icons_catalog(tmp_path / "catalog")
    async with serving(
        monkeypatch,
        catalog,
        dsn=dsn,
        nats_url=nats_url,
        tmp_path=tmp_path,
        docker_host=docker_host,
        uniq=uniq,
    ) as client:
        yield client


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
        "env": {"THEME": "dark", "API_KEY": "not-for-your-eyes"},
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

    # the variables' names (sorted), never their values; a change keeps the ones it does not name
    one = await api.call("GET", f"/api/v1/apps/{app_id}", token=root)
    assert one.body["env_names"] == ["API_KEY", "THEME"]
    assert "not-for-your-eyes" not in json.dumps(one.body)
    changed = await api.call(
        "PATCH",
        f"/api/v1/apps/{app_id}",
        token=root,
        body={"env": {"THEME": None, "LANG": "en"}},
    )
    assert changed.status == 202, changed.body
    assert (await _task_events(api, changed.body["task_id"], root))[-1][0] == "succeeded"
    one = await api.call("GET", f"/api/v1/apps/{app_id}", token=root)
    assert one.body["env_names"] == ["API_KEY", "LANG"]

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

    # from a cursor: only what came after it, and every line of a burst (tail=1 limits only
    # the first answer, never the lines that follow)
    last = await api.call("GET", f"/api/v1/apps/{app_id}/logs?tail=1", token=root)
    since = quote(last.body["cursor"], safe="")
    url = f"{api.base}/api/v1/apps/{app_id}/logs/stream?tail=1&since={since}"
    burst = [f"/burst-{i}" for i in range(5)]
    seen = []
    async with api.http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(30)) as r:
        assert r.status == 200
        await asyncio.gather(*(visit(path) for path in burst))
        async for raw in r.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if all(any(f"url:{path}" in s for s in seen) for path in burst):
                    break
    assert not any("visit" in s for s in seen), seen
    await asyncio.sleep(0)


async def test_catalog_icons_are_served_with_their_headers(
    icons_api: Client, token_cast: Cast, tmp_path: Path
) -> None:
    api, alice = icons_api, token_cast.token_alice
    index = json.loads((tmp_path / "apps" / "catalog" / "index.json").read_text())
    pinned = {(e["id"], e["version"]): e["iconSha256"] for e in index["entries"]}
    found = await api.call("GET", "/api/v1/catalog", token=alice)
    assert found.status == 200, found.body
    urls = {m["id"]: m.get("icon_url") for m in found.body["items"]}
    assert urls == {
        STATIC: f"/api/v1/catalog/{STATIC}/icon",
        PNG_APP: f"/api/v1/catalog/{PNG_APP}/icon",
        PLAIN_APP: None,
    }
    assert all("has_icon" not in m for m in found.body["items"])
    one = await api.call("GET", f"/api/v1/catalog/{STATIC}", token=alice)
    assert one.body["icon_url"] == urls[STATIC] and one.body["version"] == "2.0.0"
    old = await api.call("GET", f"/api/v1/catalog/{STATIC}?version=1.0.0", token=alice)
    assert old.body["icon_url"] == f"{urls[STATIC]}?version=1.0.0"

    # the latest version's icon: the bytes the signed index pins, as an SVG that runs nothing
    a = await api.call("GET", urls[STATIC], token=alice)
    assert a.status == 200, a.body
    svg = (tmp_path / "catalog" / STATIC / "2.0.0" / "icon.svg").read_bytes()
    digest = pinned[(STATIC, "2.0.0")]
    assert a.body == svg and hashlib.sha256(a.body).hexdigest() == digest
    assert a.headers["Content-Type"] == "image/svg+xml"
    assert a.headers["Content-Security-Policy"] == SVG_CSP
    assert a.headers["X-Content-Type-Options"] == "nosniff"
    assert a.headers["Cache-Control"] == "private, max-age=3600"
    assert a.headers["ETag"] == f'"{digest}"'
    for name, value in SECURITY_HEADERS.items():
        assert a.headers[name] == value, name
    assert "Set-Cookie" not in a.headers
    # revalidation: the same tag (or a weak one, or one of several) is 304 without a body
    for tag in (f'"{digest}"', f'"other", W/"{digest}"', "*"):
        again = await api.call("GET", urls[STATIC], token=alice, headers={"If-None-Match": tag})
        assert again.status == 304 and again.body == b"", tag
        assert again.headers["ETag"] == f'"{digest}"'
    changed = await api.call("GET", urls[STATIC], token=alice, headers={"If-None-Match": '"x"'})
    assert changed.status == 200 and changed.body == svg
    head = await api.call("HEAD", urls[STATIC], token=alice)
    assert head.status == 200 and head.body == b""
    assert head.headers["Content-Type"] == "image/svg+xml"
    pinned_old = await api.call("GET", old.body["icon_url"], token=alice)
    assert pinned_old.status == 200 and pinned_old.body == svg

    # a PNG: its own type, the API's CSP (no SVG to sandbox)
    a = await api.call("GET", urls[PNG_APP], token=alice)
    assert a.status == 200 and a.body == png_1x1()
    assert a.headers["Content-Type"] == "image/png"
    assert a.headers["Content-Security-Policy"] == API_CSP
    assert a.headers["ETag"] == f'"{pinned[(PNG_APP, "1.0.0")]}"'

    # refusals are problems, never cached
    for path, status, field in (
        ("/catalog/org.example.none/icon", 404, "manifest_id"),
        (f"/catalog/{PLAIN_APP}/icon", 404, "manifest_id"),
        (f"/catalog/{STATIC}/icon?version=9.9.9", 404, "manifest_id"),
        ("/catalog/Not_An_Id/icon", 400, "manifest_id"),
        (f"/catalog/{STATIC}/icon?size=64", 400, "size"),
    ):
        a = await api.call("GET", f"/api/v1{path}", token=alice)
        assert a.status == status and a.problem["field"] == field, (path, a.body)
        assert a.headers["Cache-Control"] == "no-store"
    assert (await api.call("GET", urls[STATIC])).status == 401

    # an icon changed after the catalog was signed is refused, not served
    (tmp_path / "catalog" / PNG_APP / "1.0.0" / "icon.png").write_bytes(b"\x89PNG altered")
    a = await api.call("GET", urls[PNG_APP], token=alice)
    assert a.status == 500 and a.problem["code"] == "internal"
    assert b"altered" not in json.dumps(a.body).encode()
