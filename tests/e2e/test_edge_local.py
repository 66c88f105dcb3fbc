"""The edge follows the apps: the real gateway runs nginx and gives every installed app a vhost
at https://<location>.localhost (the local domain: a self-signed certificate, no DNS, no ACME);
moving the app moves the vhost; uninstalling removes it.

The edge's safety-net poll is 300 s here, so only the events it follows (relayed to JetStream)
can explain a change reaching nginx within the test. An install says "installed at https://..."
only once nginx serves the host: at the moment the task ends, the page answers through nginx.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from deploy.embedded import free_ports
from tests.apps.appskit import STATIC, Apps, apps_env, running_apps, static_catalog
from tests.gateway.apikit import running_gateway
from tests.support.bus import relaying
from tests.support.edge import edge_get, refused
from tests.support.waits import wait_until

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
    http_port, https_port = free_ports(2)
    env = apps_env(
        dsn=dsn,
        nats_url=nats_url,
        tmp_path=tmp_path,
        docker_host=docker_host,
        prefix=f"x{uniq[:8]}",
        catalog=static_catalog(tmp_path / "catalog"),
        extra={"HP_EDGE_HTTPS_PORT": str(https_port)},  # the port apps' addresses name
    )
    edge_env = {
        "HP_EDGE": "true",
        "HP_EDGE_DIR": str(tmp_path / "edge"),
        "HP_EDGE_HTTP_PORT": str(http_port),
        "HP_EDGE_HTTPS_PORT": str(https_port),
        "HP_EDGE_BIND": "127.0.0.1",
        "HP_EDGE_INTERVAL": "300",  # the safety net: never within this test
        "HP_ACME_DIR": str(tmp_path / "acme"),
    }
    async with (
        running_apps(monkeypatch, env) as apps,
        running_gateway(
            monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path, env=edge_env
        ),
        relaying(dsn, nats_url, uniq),
    ):
        yield apps, http_port, https_port


async def test_apps_get_vhosts_that_follow_them(edge: tuple[Apps, int, int]) -> None:
    apps, http_port, https_port = edge

    async def edge_host(host: str) -> bool:
        reply = await apps.bus.query("gateway", "edge_host", {"host": host}, timeout=10)
        return bool(reply["served"])

    async def gone(host: str) -> bool:
        return not await edge_host(host)

    assert await edge_host("my.localhost")  # the gateway is ready once nginx serves
    assert not await edge_host("blog.localhost")
    reply = await apps.cmd(
        "install",
        {
            "manifest_id": STATIC,
            "version": "1.0.0",
            "location": "blog",
            "access": {"all_users": True},
        },
    )
    end = await apps.wait_task(reply["task_id"])
    app_id = reply["app_id"]

    async def served(host: str) -> bool:
        try:
            status, _, body = await edge_get(https_port, host)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            return False
        return status == 200 and "version 1.0.0" in body

    # the task says where the app is only once nginx answers there: no waiting from here
    assert await served("blog.localhost")
    assert end["type"] == "TaskSucceeded"
    assert f"installed at https://blog.localhost:{https_port}" in end["message"], end
    assert await edge_host("blog.localhost")
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
    assert await edge_host("journal.localhost")
    await wait_until(lambda: gone("blog.localhost"), 5, "edge_host to drop blog.localhost")

    reply = await apps.cmd("uninstall", {"app_id": app_id})
    assert (await apps.wait_task(reply["task_id"]))["type"] == "TaskSucceeded"
    await wait_until(
        lambda: refused(https_port, "journal.localhost"), 20, "journal.localhost to go"
    )
    await wait_until(lambda: gone("journal.localhost"), 5, "edge_host to drop journal.localhost")
