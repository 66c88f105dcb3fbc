"""A service of ours running in the test's own process: built from HP_* settings, served until
/readyz answers, stopped (exit code 0) when the block ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import aiohttp
import pytest

from libs.service.runner import Service
from tests.support.waits import wait_until


@asynccontextmanager
async def served(svc: Service, name: str, ready_within: float = 60) -> AsyncIterator[Service]:
    """`svc` served in a task; yields it once /readyz answers, stops it (exit code 0) after."""
    task = asyncio.create_task(svc.serve(), name=f"{name} under test")
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                assert not task.done(), f"{name} stopped, exit code {svc.exit_code}"
                if not svc.port:
                    return False
                try:
                    async with http.get(f"http://127.0.0.1:{svc.port}/readyz") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_until(ready, ready_within, f"{name} to be ready")
        yield svc
    finally:
        svc.request_stop("test over")
        await asyncio.wait_for(task, 30)
    assert svc.exit_code == 0


@asynccontextmanager
async def serving(
    monkeypatch: pytest.MonkeyPatch,
    build: Callable[[], Service],
    env: Mapping[str, str],
    name: str,
    ready_within: float = 60,
) -> AsyncIterator[Service]:
    """`build()` with `env` set, served in a task; yields the service once it is ready."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    async with served(build(), name, ready_within) as svc:
        yield svc
