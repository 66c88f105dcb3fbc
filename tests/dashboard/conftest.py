"""Fixtures of the dashboard tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.dashkit import Edged, PlatformStarter, edged_platform
from tests.gateway.apikit import backup_env, running_backup


@pytest.fixture
def platform(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> PlatformStarter:
    """Starts this test's platform (with the backup service, which the app page asks for its
    backups): `async with platform(docker_host=...) as ed:`. With docker_host the whole
    platform of tests/e2e/kit.py runs, backup service included; without, one is added here
    (a second one would answer half of the backup service's requests from its own caches)."""

    @asynccontextmanager
    async def start(**kw: Any) -> AsyncIterator[Edged]:
        env = backup_env(dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path)
        async with contextlib.AsyncExitStack() as stack:
            ed = await stack.enter_async_context(
                edged_platform(
                    monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path, **kw
                )
            )
            if kw.get("docker_host") is None:
                await stack.enter_async_context(running_backup(monkeypatch, env))
            yield ed

    return start
