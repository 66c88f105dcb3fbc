"""The platform with its edge, the dashboard served at https://my.localhost:<port>/ by nginx."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.embedded import free_ports
from services.gateway.config import DASHBOARD_DIR
from tests.e2e.kit import Platform, running_platform

__all__ = [
    "DIST",
    "INSTALL_TIMEOUT",
    "OWNER",
    "PASSWORD",
    "USER_PASSWORD",
    "Edged",
    "PlatformStarter",
    "edge_env",
    "edged_platform",
]

DIST = DASHBOARD_DIR
PASSWORD = "correct horse battery staple"
USER_PASSWORD = "purple monkey dishwasher 42"
OWNER = {"username": "owner", "email": "owner@example.test", "password": "correct horse battery"}
INSTALL_TIMEOUT = 180_000  # ms: the first build of the static image on a cold dockerd


@dataclass
class Edged:
    platform: Platform
    https_port: int
    http_port: int

    @property
    def url(self) -> str:
        """The dashboard through nginx, as a browser on this machine opens it."""
        return f"https://my.localhost:{self.https_port}"

    @property
    def direct_url(self) -> str:
        """The gateway's own loopback address. Browser tests drive the dashboard here: chromium
        aborts requests in flight over names and HTTP/2 (ERR_NETWORK_CHANGED) whenever dockerd
        adds or removes an interface, which parallel tests do all the time; nginx's answers are
        tested without a browser (test_headers.py)."""
        return self.platform.client.base

    def app_url(self, location: str) -> str:
        return f"https://{location}.localhost:{self.https_port}/"


# the `platform` fixture (conftest.py): edged_platform with this test's servers filled in
PlatformStarter = Callable[..., AbstractAsyncContextManager["Edged"]]


def edge_env(tmp_path: Path, http_port: int, https_port: int) -> dict[str, str]:
    return {
        "HP_EDGE": "true",
        "HP_EDGE_DIR": str(tmp_path / "edge"),
        "HP_EDGE_HTTP_PORT": str(http_port),
        "HP_EDGE_HTTPS_PORT": str(https_port),
        "HP_EDGE_BIND": "127.0.0.1",
        "HP_EDGE_INTERVAL": "0.5",
        "HP_ACME_DIR": str(tmp_path / "acme"),
        "HP_METRICS_INTERVAL": "1",
    }


@asynccontextmanager
async def edged_platform(
    monkeypatch: pytest.MonkeyPatch,
    *,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
    docker_host: str | None = None,
    apps_extra: Mapping[str, str] | None = None,
) -> AsyncIterator[Edged]:
    """Identity, gateway with nginx, relay (and with `docker_host` apps, dns, certs and backup)."""
    assert (DIST / "index.html").exists(), f"the dashboard is not built in {DIST}: make dashboard"
    http_port, https_port = free_ports(2)
    # every service reads the edge's port (apps name it in their addresses), as in the stack
    monkeypatch.setenv("HP_EDGE_HTTPS_PORT", str(https_port))
    async with running_platform(
        monkeypatch,
        dsn=dsn,
        nats_url=nats_url,
        uniq=uniq,
        tmp_path=tmp_path,
        docker_host=docker_host,
        gateway_env=edge_env(tmp_path, http_port, https_port),
        apps_extra=apps_extra,
    ) as platform:
        yield Edged(platform, https_port, http_port)
