"""Push through apprise (services/notify/push.py): real apprise against a webhook receiver on
127.0.0.1 that this module starts; what it received is what a person's service would show."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from services.notify.push import PushResult, check_url, masked, push, url_id

SECRET = "s3cr3t-T0ken-9f27c1"  # in every URL's path or password: must never show


@dataclass
class Received:
    path: str
    content_type: str
    body: bytes
    form: dict[str, str] = field(default_factory=dict)


@dataclass
class Receiver:
    port: int
    got: list[Received]
    release: asyncio.Event

    def url(self, scheme: str, path: str) -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver: /ok/... answers 200, /fail/... 500, /moved/... a redirect to
    /ok/..., /slow/... waits until the test ends; every request it read is in `got`."""
    got: list[Received] = []
    release = asyncio.Event()

    async def hook(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        form: dict[str, str] = {}
        if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = {k: str(v) for k, v in (await request.post()).items()}
        got.append(Received(request.path, request.content_type, body, form))
        first = request.path.split("/")[1]
        if first == "fail":
            return web.Response(status=500, text="receiver broke")
        if first == "moved":
            raise web.HTTPFound("/ok/after-redirect")
        if first == "slow":
            await asyncio.wait_for(release.wait(), 10)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hook)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Receiver(port, got, release)
    finally:
        release.set()
        await runner.cleanup()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_json_webhook_gets_title_body_and_kind(receiver: Receiver) -> None:
    url = receiver.url("json", f"/ok/{SECRET}")
    results = await push([url], "Disk almost full", "/srv is at 91 %", kind="warning", timeout=5)
    assert results == [PushResult(url_id(url), True, None)]
    [got] = receiver.got
    assert got.path == f"/ok/{SECRET}"
    assert got.content_type == "application/json"
    payload = json.loads(got.body)
    assert payload["title"] == "Disk almost full"
    assert payload["message"] == "/srv is at 91 %"
    assert payload["type"] == "warning"


async def test_form_webhook_gets_title_and_body(receiver: Receiver) -> None:
    url = receiver.url("form", "/ok/form")
    [result] = await push([url], "App down", "blog is down since 10:02", kind="failure")
    assert result.ok, result.error
    [got] = receiver.got
    assert got.form["title"] == "App down"
    assert got.form["message"] == "blog is down since 10:02"
    assert got.form["type"] == "failure"


async def test_a_name_that_resolves_to_loopback_is_delivered(receiver: Receiver) -> None:
    [result] = await push([f"json://localhost:{receiver.port}/ok/by-name"], "t", "b", timeout=5)
    assert result.ok, result.error
    assert [g.path for g in receiver.got] == ["/ok/by-name"]


async def test_one_failing_url_never_stops_the_others(receiver: Receiver) -> None:
    urls = [
        receiver.url("json", f"/fail/{SECRET}"),
        f"json://127.0.0.1:{closed_port()}/{SECRET}",
        receiver.url("json", "/ok/one"),
        receiver.url("form", "/ok/two"),
    ]
    started = time.monotonic()
    results = await push(urls, "Backup failed", "nightly backup: target unreachable", timeout=3)
    assert time.monotonic() - started < 3
    assert [r.url_id for r in results] == [url_id(u) for u in urls]
    assert [r.ok for r in results] == [False, False, True, True]
    failed, closed = results[0], results[1]
    assert failed.error is not None and "500" in failed.error, failed.error
    assert closed.error is not None and "onnection" in closed.error, closed.error
    for r in results:
        assert SECRET not in (r.error or "") and "127.0.0.1:" not in (r.error or "")
    assert sorted(g.path for g in receiver.got) == [f"/fail/{SECRET}", "/ok/one", "/ok/two"]


async def test_a_closed_port_fails_within_the_timeout() -> None:
    started = time.monotonic()
    [result] = await push([f"jsons://127.0.0.1:{closed_port()}/x"], "t", "b", timeout=2)
    assert time.monotonic() - started < 2
    assert not result.ok and result.error


async def test_a_receiver_that_never_answers_fails_at_the_timeout(receiver: Receiver) -> None:
    started = time.monotonic()
    [slow, fast] = await push(
        [receiver.url("json", "/slow/x"), receiver.url("json", "/ok/fast")], "t", "b", timeout=1
    )
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 1.8, elapsed
    assert not slow.ok and slow.error and "1 s" in slow.error, slow.error
    assert fast.ok, fast.error


async def test_redirects_are_never_followed(receiver: Receiver) -> None:
    [result] = await push([receiver.url("json", "/moved/x?redirect=yes")], "t", "b", timeout=3)
    assert not result.ok
    assert [g.path for g in receiver.got] == ["/moved/x"]


async def test_a_refused_url_is_not_sent_and_says_why(receiver: Receiver) -> None:
    results = await push(["json://169.254.169.254/latest", "windows://"], "t", "b")
    assert [r.ok for r in results] == [False, False]
    assert results[0].error and "link-local" in results[0].error
    assert results[1].error and "windows://" in results[1].error
    assert receiver.got == []
    assert await push([], "t", "b") == []
    with pytest.raises(ValueError, match="kind"):
        await push([receiver.url("json", "/ok/x")], "t", "b", kind="shout")


@pytest.mark.parametrize(
    "url",
    [
        "json://127.0.0.1:8080/hook",
        "jsons://user:pw@hooks.example.org/a/b",
        "forms://192.168.1.2/hook",
        "xml://[::1]:9000/hook",
        "ntfys://ntfy.sh/alerts",
        "ntfy://mytopic",
        "gotify://gotify.example.org/AbCdEfGhIjKlMnO",
        "matrixs://bot:pass@matrix.example.org/#room",
        "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#channel",
        "discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js",
        "tgram://123456789:abcdefg_hijklmnop/12345",
        "https://discord.com/api/webhooks/4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js",
    ],
)
def test_check_url_accepts_network_services(url: str) -> None:
    assert check_url(url) is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("windows://", "windows:// is not allowed"),
        ("dbus://", "dbus:// is not allowed"),
        ("macosx://", "macosx:// is not allowed"),
        ("file:///etc/passwd", "file:// is not allowed"),
        ("mailto://user:pw@example.org", "mailto:// is not allowed"),
        ("syslog://", "syslog:// is not allowed"),
        ("https://example.org/hook", "jsons://"),
        (f"json://169.254.169.254/latest/{SECRET}", "169.254.169.254, a link-local"),
        ("json://[fe80::1]/x", "link-local"),
        ("json://[::ffff:169.254.169.254]/x", "link-local"),
        ("json://2852039166/x", "169.254.169.254, a link-local"),  # the same, as one number
        ("json://metadata.google.internal/x", "metadata"),
        ("json://0.0.0.0:80/x", "unspecified"),
        ("json://[::]/x", "unspecified"),
        ("json://224.0.0.1/x", "multicast"),
        ("json://240.0.0.1/x", "not routable"),
        ("garbage", "not a URL"),
        ("not a url", "spaces"),
        ("", "empty"),
        ("json://127.0.0.1/a\x00b", "control characters"),
        ("json://127.0.0.1/" + "a" * 5000, "longer than 2000"),
        (f"gotify://gotify.example.org/?token={SECRET}", "gotify:// URL apprise can use"),
        ("tgram://garbage", "tgram:// URL apprise can use"),
    ],
)
def test_check_url_refuses_with_a_reason(url: str, why: str) -> None:
    reason = check_url(url)
    assert reason is not None and why in reason, reason
    assert SECRET not in reason


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"json://user:{SECRET}@127.0.0.1:8080/hook/{SECRET}", "json://127.0.0.1:8080/…"),
        (f"ntfys://ntfy.sh/{SECRET}", "ntfys://ntfy.sh/…"),
        (f"gotify://gotify.example.org/{SECRET}?priority=high", "gotify://gotify.example.org/…"),
        (f"xml://[::1]/{SECRET}", "xml://[::1]/…"),
        (f"ntfy://{SECRET}", "ntfy://…"),  # cloud mode: where a host would be is the topic
        (f"matrix://{SECRET}", "matrix://…"),  # t2bot: the token stands there
        (f"slack://T1JJ3T3L2/A1BRTD4JD/{SECRET}/#channel", "slack://…"),
        (f"tgram://123456789:{SECRET}/12345", "tgram://…"),
        (f"discord://4174216298/{SECRET}", "discord://…"),
        (f"https://discord.com/api/webhooks/4174216298/{SECRET}", "https://discord.com/…"),
        (f"{SECRET} no scheme", "…"),
    ],
)
def test_masked_shows_scheme_and_host_only(url: str, shown: str) -> None:
    assert masked(url) == shown
    assert SECRET not in masked(url)


def test_url_id_is_short_stable_and_reveals_nothing() -> None:
    a = f"json://127.0.0.1/{SECRET}"
    assert url_id(a) == url_id(a)
    assert re.fullmatch(r"[0-9a-f]{12}", url_id(a))
    assert url_id(a) != url_id(a + "x")
    assert url_id(a) not in a


async def test_no_url_or_token_in_logs(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # everything, apprise's and urllib3's debug included
    urls = [
        receiver.url("json", f"/ok/{SECRET}"),
        f"json://admin:{SECRET}@127.0.0.1:{receiver.port}/fail/{SECRET}",
        f"json://127.0.0.1:{closed_port()}/{SECRET}",
        receiver.url("form", f"/moved/{SECRET}?redirect=yes"),
        f"gotify://127.0.0.1:{receiver.port}/fail/{SECRET}",  # posts to /fail/message: 500
    ]
    results = await push(urls, "title", "body", timeout=3)
    assert [r.ok for r in results] == [True, False, False, False, False]
    for bad in (
        f"json://169.254.169.254/{SECRET}",
        f"tgram://{SECRET}",
        f"gotify://h.example/?x={SECRET}",
    ):
        assert check_url(bad) is not None

    records = caplog.records
    assert any(r.name == "apprise" for r in records), "apprise said nothing: nothing was tested"
    assert any(url_id(urls[1]) in r.getMessage() for r in records), "our own lines are missing"
    for r in records:
        text = r.getMessage() + (r.exc_text or "") + repr(r.exc_info) + repr(r.args)
        assert SECRET not in text, (r.name, text)
        assert "://127.0.0.1" not in text or "/…" in text, (r.name, text)
        if r.name == "apprise" or r.name.startswith("urllib3"):
            assert r.levelno >= logging.WARNING, (r.name, r.levelname, r.getMessage())
    assert SECRET not in caplog.text
