"""The edge follows the apps: the real gateway runs nginx and gives every installed app a vhost
at https://<location>.localhost (the local domain: a self-signed certificate, no DNS, no ACME);
moving the app moves the vhost; uninstalling removes it.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from deploy.embedded import free_port
from tests.apps.appskit import STATIC, Apps, apps_env, running_apps, static_catalog
from tests.gateway.apikit import running_gateway

pytestmark = pytest.mark.timeout(240)


async def _get(
    port: int, host: str, path: str = "/", *, tls: bool = True
) -> tuple[int, dict[str, str], str]:
    """A raw HTTP/1.1 request to 127.0.0.1:port for `host` (SNI and Host), as a browser would
    send it once `host` resolves here."""
    ctx = None
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # self-signed for the local domain
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname=host if tls else None
    )
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.decode(errors="replace").partition("\r\n\r\n")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0] else 0
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return status, headers, body


async def _refused(port: int, host: str) -> bool:
    try:
        status, _, _ = await _get(port, host)
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return True
    return status == 0


@pytest.fixture
async def edge(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    docker_host: str,
    uniq: str,
) -> AsyncIterator[tuple[Apps, int, int]]:
    http_port, https_port = free_port(), free_port()
    env = apps_env(
        dsn=dsn,
        nats_url=nats_url,
        tmp_path=tmp_path,
        docker_host=docker_host,
        prefix=f"x{uniq[:8]}",
        catalog=static_catalog(tmp_path / "catalog"),
    )
    edge_env = {
        "HP_EDGE": "true",
        "HP_EDGE_DIR": str(tmp_path / "edge"),
        "HP_EDGE_HTTP_PORT": str(http_port),
        "HP_EDGE_HTTPS_PORT": str(https_port),
        "HP_EDGE_BIND": "127.0.0.1",
        "HP_EDGE_INTERVAL": "0.5",
        "HP_ACME_DIR": str(tmp_path / "acme"),
    }
    async with (
        running_apps(monkeypatch, env) as apps,
        running_gateway(
            monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path, env=edge_env
        ),
    ):
        yield apps, http_port, https_port


async def _until(check, seconds: float, what: str) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {seconds:.0f}s waiting for {what}")


async def test_apps_get_vhosts_that_follow_them(edge: tuple[Apps, int, int]) -> None:
    apps, http_port, https_port = edge
    reply = await apps.cmd(
        "install",
        {
            "manifest_id": STATIC,
            "version": "1.0.0",
            "location": "blog",
            "access": {"all_users": True},
        },
    )
    assert (await apps.wait_task(reply["task_id"]))["type"] == "TaskSucceeded"
    app_id = reply["app_id"]

    async def served(host: str) -> bool:
        try:
            status, _, body = await _get(https_port, host)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            return False
        return status == 200 and "version 1.0.0" in body

    await _until(lambda: served("blog.localhost"), 20, "blog.localhost through nginx")
    status, headers, _ = await _get(https_port, "blog.localhost")
    assert headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
    assert headers["x-content-type-options"] == "nosniff"
    status, headers, _ = await _get(http_port, "blog.localhost", "/a?b=1", tls=False)
    assert status == 301
    assert headers["location"] == f"https://blog.localhost:{https_port}/a?b=1"
    assert await _refused(https_port, "unknown.localhost")

    # the app moves: its new host is served, the old one is refused
    reply = await apps.cmd("configure", {"app_id": app_id, "location": "journal"})
    assert (await apps.wait_task(reply["task_id"]))["type"] == "TaskSucceeded"
    await _until(lambda: served("journal.localhost"), 20, "journal.localhost through nginx")
    await _until(lambda: _refused(https_port, "blog.localhost"), 20, "blog.localhost to go")

    reply = await apps.cmd("uninstall", {"app_id": app_id})
    assert (await apps.wait_task(reply["task_id"]))["type"] == "TaskSucceeded"
    await _until(lambda: _refused(https_port, "journal.localhost"), 20, "journal.localhost to go")
