"""The real notify service (services.notify.__main__.build) running in this process, beside
the services of the same test (events stream, data dir, its own keyring)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from libs.service.runner import Service
from tests.support.serving import serving

__all__ = ["notify_env", "running_notify"]


def notify_env(
    *, dsn: str, nats_url: str, uniq: str, tmp_path: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Notify's settings: rounds every half second, links to a dashboard on loopback. The
    host's own disk alerts only a test that names the disk paths it is about: a CI machine's
    disk 90 % full made an app-down test's first mail a disk alert."""
    own_disks = "HP_NOTIFY_DISK_PATHS" in (extra or {})
    quiet = {} if own_disks else {"HP_NOTIFY_DISK_WARNING": "100", "HP_NOTIFY_DISK_CRITICAL": "100"}
    return {
        **quiet,
        "HP_DATABASE_URL": dsn,
        "HP_NATS_URL": nats_url,
        "HP_EVENTS_STREAM": f"EV_{uniq}",
        "HP_EVENTS_PREFIX": f"t{uniq}.evt",
        "HP_DATA_DIR": str(tmp_path),
        "HP_KEYRING": str(tmp_path / "notify-keyring.json"),
        "HP_HTTP_PORT": "0",
        "HP_DRAIN_SECONDS": "1",
        "HP_NOTIFY_ROUND_SECONDS": "0.5",
        "HP_NOTIFY_DASHBOARD_URL": "https://my.example.test",
        "HP_NOTIFY_UPDATES_SECONDS": "3600",
        **(extra or {}),
    }


@asynccontextmanager
async def running_notify(
    monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]
) -> AsyncIterator[Service]:
    """The notify service with `env` (notify_env), served until the block ends."""
    from services.notify.__main__ import build

    async with serving(monkeypatch, build, env, "notify", ready_within=30) as svc:
        yield svc
