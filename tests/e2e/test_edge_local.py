"""The edge follows the apps: the real gateway runs nginx and gives every installed app a vhost
at https://<location>.localhost (the local domain: a self-signed certificate, no DNS, no ACME);
moving the app moves the vhost; uninstalling removes it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from deploy.embedded import free_port
from tests.apps.appskit import STATIC, Apps, apps_env, running_apps, static_catalog
from tests.e2e.edgekit import edge_get, refused
from tests.events.relaykit import wait_until
from tests.gateway.apikit import running_gateway

pytestmark = pytest.mark.timeout(240)


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
            status, _, body = await edge_get(https_port, host)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            return False
        return status == 200 and "version 1.0.0" in body

    await wait_until(lambda: served("blog.localhost"), 20, "blog.localhost through nginx")
    status, headers, _ = await edge_get(https_port, "blog.localhost")
    assert headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
    assert headers["x-content-type-options"] == "nosniff"
    status, headers, _ = await edge_get(http_port, "blog.localhost", "/a?b=1", tls=False)
    assert status == 301
    assert headers["location"] == f"https://blog.localhost:{https_port}/a?b=1"
    assert await refused(https_port, "unknown.localhost")

    # the app moves: its new host is served, the old one is refused
    reply = await apps.cmd("configure", {"app_id": app_id, "location": "journal"})
    assert (await apps.wait_task(reply["task_id"]))["type"] == "TaskSucceeded"
    await wait_until(lambda: served("journal.localhost"), 20, "journal.localhost through nginx")
    await wait_until(lambda: refused(https_port, "blog.localhost"), 20, "blog.localhost to go")

    reply = await apps.cmd("uninstall", {"app_id": app_id})
    assert (await apps.wait_task(reply["task_id"]))["type"] == "TaskSucceeded"
    await wait_until(
        lambda: refused(https_port, "journal.localhost"), 20, "journal.localhost to go"
    )
