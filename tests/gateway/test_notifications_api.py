"""/api/v1/notifications and /api/v1/alerts through the API (the route table, its dispatcher,
answers checked against their schemas), the real identity service and the real notify service,
with the relay carrying the events notify follows:

administrators only (anonymous 401, a user 403, a read-only token may only look); an app that
ran out of memory (its events appended as the apps service writes them) opens an alert that
shows in the list, newest first and paged, in the bell's unread count and among the open
alerts; marked read one at a time and all at once; preferences kept per administrator with
push URLs never shown back in clear (null keeps them); a test notification pushed to a webhook
receiver on loopback; bad input answered 400 naming the field, with nothing changed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from nats.aio.client import Client as NATS

from libs.contracts.notify import CATEGORIES
from libs.events.store import PostgresEventStore
from services.apps import events as apps_ev
from tests.gateway.apikit import Answer, Cast, Client, serve_api
from tests.support.bus import relaying
from tests.support.notify import notify_env, running_notify
from tests.support.waits import wait_until

pytestmark = pytest.mark.timeout(180)

SECRET = "s3cr3t-t0ken-of-the-hook"


@pytest.fixture
async def notify(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> AsyncIterator[None]:
    (tmp_path / "notify").mkdir()
    extra = {
        # this machine's own disk and memory are not what these tests are about
        "HP_NOTIFY_DISK_PATHS": str(tmp_path),
        "HP_NOTIFY_DISK_WARNING": "100",
        "HP_NOTIFY_DISK_CRITICAL": "100",
        "HP_NOTIFY_MEMORY_AVAILABLE": "0.001",
        "HP_NOTIFY_MEMORY_PSI": "100",
    }
    env = notify_env(
        dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path / "notify", extra=extra
    )
    async with relaying(dsn, nats_url, uniq), running_notify(monkeypatch, env):
        yield


@pytest.fixture
async def api(nc: NATS, cast: Cast, notify: None) -> AsyncIterator[Client]:
    async with serve_api(nc) as client:
        yield client


@dataclass
class Receiver:
    """A webhook receiver on loopback: what apprise's json:// posts to it."""

    port: int
    got: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    holder: list[Receiver] = []

    async def hook(request: web.Request) -> web.Response:
        holder[0].got.append({"path": request.path, "body": json.loads(await request.read())})
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/{tail:.*}", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        holder.append(Receiver(runner.addresses[0][1]))
        yield holder[0]
    finally:
        await runner.cleanup()


async def call(api: Client, method: str, path: str, token: str, body: Any = None) -> Answer:
    return await api.call(method, "/api/v1" + path, token=token, body=body)


async def ok(api: Client, method: str, path: str, token: str, body: Any = None) -> Any:
    a = await call(api, method, path, token, body)
    assert a.status == 200, (method, path, a.status, a.body)
    return a.body


def refused(a: Answer, status: int, field: str | None = None) -> dict[str, Any]:
    assert a.status == status, (a.status, a.body)
    problem = a.problem
    if field is not None:
        assert problem.get("field") == field, problem
    return problem


async def out_of_memory(store: PostgresEventStore, location: str) -> str:
    """An app installed at <location>.example.org that the kernel then stopped for its memory,
    as the apps service records it; its alert's title."""
    app_id = str(uuid.uuid4())
    task = str(uuid.uuid4())
    stream = apps_ev.app_stream(app_id)
    await store.append(
        stream,
        [
            apps_ev.AppInstallRequested(
                app_id=app_id,
                manifest_id="org.example.static",
                version="1.0.0",
                location=location,
                domain="example.org",
                access={"all_users": True, "groups": [], "user_ids": []},
                memory_bytes=1 << 27,
                env={},
                task_id=task,
            ),
            apps_ev.AppInstalled(app_id=app_id, task_id=task, version="1.0.0"),
        ],
        0,
    )
    await store.append(stream, [apps_ev.AppOutOfMemory(app_id=app_id, memory_bytes=1 << 27)], 2)
    return f"org.example.static at {location}.example.org ran out of memory"


async def listed(api: Client, token: str, title: str) -> dict[str, Any]:
    """The notification titled `title`, once notify has it."""
    found: dict[str, Any] = {}

    async def there() -> bool:
        page = await ok(api, "GET", "/notifications?limit=200", token)
        found.update(next((n for n in page["items"] if n["title"] == title), {}))
        return bool(found)

    await wait_until(there, 20, f"notification {title!r}")
    return found


ROUTES = (
    ("GET", "/notifications", None),
    ("GET", "/notifications/unread", None),
    ("POST", "/notifications/read", {"all": True}),
    ("GET", "/alerts", None),
    ("GET", "/notifications/preferences", None),
    ("PUT", "/notifications/preferences", {"email": [], "push": [], "push_urls": []}),
    ("POST", "/notifications/test", {"email": False, "push": True}),
)


async def test_only_administrators_have_a_notification_centre(api: Client, cast: Cast) -> None:
    for method, path, body in ROUTES:
        anonymous = await api.call(method, "/api/v1" + path, body=body)
        assert anonymous.status == 401, (path, anonymous.body)
        refused(await call(api, method, path, cast.token_alice, body), 403)
        read_only = await call(api, method, path, cast.token_root_read, body)
        assert read_only.status == (200 if method == "GET" else 403), (path, read_only.body)
    # nothing was changed by any of them: root's preferences are still the defaults
    prefs = await ok(api, "GET", "/notifications/preferences", cast.token_root)
    assert sorted(prefs["email"]) == sorted(CATEGORIES) and prefs["push_urls"] == []


async def test_an_alert_is_listed_counted_and_marked_read(
    api: Client, cast: Cast, store: PostgresEventStore
) -> None:
    root = cast.token_root
    first = await out_of_memory(store, "blog")
    one = await listed(api, root, first)
    second = await out_of_memory(store, "wiki")  # strictly after: newest first is its place
    two = await listed(api, root, second)
    assert one["kind"] == "opened" and one["category"] == "apps"
    assert one["severity"] == "warning" and one["open"] is True and one["read"] is False
    assert "memory limit" in one["detail"]

    # the bell's count, the list's count and the open alerts agree
    unread = (await ok(api, "GET", "/notifications/unread", root))["unread"]
    page = await ok(api, "GET", "/notifications", root)
    assert unread == page["unread"] >= 2
    titles = [n["title"] for n in page["items"]]
    assert titles.index(second) < titles.index(first), "newest first"
    alerts = (await ok(api, "GET", "/alerts", root))["items"]
    assert {first, second} <= {a["title"] for a in alerts if a["open"]}

    # a page at a time, newest first
    pages: list[str] = []
    cursor = ""
    while True:
        got = await ok(api, "GET", f"/notifications?limit=1{cursor}", root)
        assert len(got["items"]) <= 1
        pages += [n["id"] for n in got["items"]]
        if got["next_cursor"] is None:
            break
        cursor = f"&cursor={got['next_cursor']}"
    assert pages == [n["id"] for n in page["items"]]

    # one marked read: the count drops by one, it no longer shows among the unread ones
    after = await ok(api, "POST", "/notifications/read", root, {"ids": [two["id"]]})
    assert after["unread"] == unread - 1
    assert (await ok(api, "GET", "/notifications/unread", root))["unread"] == unread - 1
    only_unread = await ok(api, "GET", "/notifications?unread=true", root)
    assert two["id"] not in [n["id"] for n in only_unread["items"]]
    assert one["id"] in [n["id"] for n in only_unread["items"]]
    # root's read-only token is root: his marks are its marks
    assert (await ok(api, "GET", "/notifications/unread", cast.token_root_read))["unread"] == (
        unread - 1
    )

    # bad input: a 400 naming the field, and nothing is marked
    refused(await call(api, "POST", "/notifications/read", root, {}), 400, "ids")
    refused(await call(api, "POST", "/notifications/read", root, {"ids": ["nope"]}), 400, "ids.0")
    bad = {"ids": [], "all": "yes"}
    refused(await call(api, "POST", "/notifications/read", root, bad), 400, "all")
    for query, name in (
        ("cursor=bm90LWEtY3Vyc29y", "cursor"),
        ("cursor=" + "A" * 65, "cursor"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("unread=maybe", "unread"),
    ):
        refused(await call(api, "GET", f"/notifications?{query}", root), 400, name)
    assert (await ok(api, "GET", "/notifications/unread", root))["unread"] == unread - 1

    # all of them read: the bell shows nothing
    assert (await ok(api, "POST", "/notifications/read", root, {"all": True}))["unread"] == 0
    assert (await ok(api, "GET", "/notifications/unread", root))["unread"] == 0
    listed_now = (await ok(api, "GET", "/notifications", root))["items"]
    assert listed_now and all(n["read"] for n in listed_now)


async def test_preferences_round_trip_with_push_urls_masked(
    api: Client, cast: Cast, receiver: Receiver
) -> None:
    root = cast.token_root
    url = f"json://127.0.0.1:{receiver.port}/hook/{SECRET}"
    body = {"email": ["apps", "security"], "push": ["apps"], "push_urls": [url]}
    saved = await ok(api, "PUT", "/notifications/preferences", root, body)
    assert saved["email"] == ["apps", "security"] and saved["push"] == ["apps"]
    [shown] = saved["push_urls"]
    assert shown.startswith("json://127.0.0.1") and SECRET not in json.dumps(saved)
    again = await ok(api, "GET", "/notifications/preferences", root)
    assert again == saved

    # null keeps the URLs set before
    kept = await ok(
        api,
        "PUT",
        "/notifications/preferences",
        root,
        {"email": [], "push": ["apps", "system"], "push_urls": None},
    )
    assert kept["email"] == [] and kept["push"] == ["apps", "system"]
    assert kept["push_urls"] == [shown]

    # a test notification reaches the webhook, and says so
    tested = await ok(api, "POST", "/notifications/test", root, {"email": False, "push": True})
    assert tested["pushed"] == 1 and tested["errors"] == [] and tested["mailed"] is False
    [hit] = receiver.got
    assert hit["path"] == f"/hook/{SECRET}"
    assert hit["body"]["title"].startswith("Test notification from")

    # bad input: a 400 naming the field, and nothing changes
    for bad, name in (
        ({"email": ["bogus"], "push": []}, "email.0"),
        ({"email": []}, "push"),
        ({"email": [], "push": [], "push_urls": ["file:///etc/passwd"]}, "push_urls.0"),
        ({"email": [], "push": [], "push_urls": [url, "json://169.254.169.254/x"]}, "push_urls.1"),
        ({"email": [], "push": [], "push_urls": [url, url]}, "push_urls"),
        ({"email": [], "push": [], "push_urls": ["x" * 2001]}, "push_urls.0"),
        ({"email": [], "push": [], "push_urls": [url] * 11}, "push_urls"),
        ({"email": [], "push": [], "volume": 11}, "volume"),
    ):
        problem = refused(await call(api, "PUT", "/notifications/preferences", root, bad), 400)
        assert problem["field"] == name, (bad, problem)
        assert SECRET not in json.dumps(problem)
    assert await ok(api, "GET", "/notifications/preferences", root) == kept

    # another administrator's choices are theirs: alice is none, so she has none at all
    refused(await call(api, "GET", "/notifications/preferences", cast.token_alice), 403)

    # an empty list removes the URLs
    cleared = await ok(
        api, "PUT", "/notifications/preferences", root, {"email": [], "push": [], "push_urls": []}
    )
    assert cleared["push_urls"] == []
    tested = await ok(api, "POST", "/notifications/test", root, {"email": False, "push": True})
    assert tested["pushed"] == 0 and len(receiver.got) == 1
