"""The real backup service (services.backup.__main__.build) in this process, for tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest

from libs.events.bus import BusClient
from libs.events.context import Context
from libs.events.store import PostgresEventStore
from libs.service.runner import Service
from tests.support.bus import ActorBus, relaying
from tests.support.serving import serving
from tests.support.waits import wait_until

__all__ = ["ADMIN", "Backup", "backup_env", "running_backup"]

ADMIN = Context("system", "backup-test", None, None, admin=True)


def backup_env(
    *, dsn: str, nats_url: str, tmp_path: Path, uniq: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    return {
        "HP_EVENTS_STREAM": f"EV_{uniq}",
        "HP_EVENTS_PREFIX": f"t{uniq}.evt",
        "HP_DATABASE_URL": dsn,
        "HP_NATS_URL": nats_url,
        "HP_KEYRING": str(tmp_path / "keyring.json"),
        "HP_DATA_DIR": str(tmp_path),
        "HP_BACKUP_DIR": str(tmp_path / "backup"),
        "HP_APPS_DIR": str(tmp_path / "apps"),
        "HP_CERTS_DIR": str(tmp_path / "certs"),
        "HP_DRAIN_SECONDS": "1",
        "HP_HTTP_PORT": "0",
        "HP_APPS_TIMEOUT": "3",
        "HP_TARGET_RETRIES": "2",
        "HP_TARGET_BACKOFF_SECONDS": "0.05",
        "HP_SCHEDULE_LOOP": "false",
        "HP_ALLOW_LOOPBACK_TARGETS": "true",  # moto listens on loopback
        **(extra or {}),
    }


@dataclass
class Backup:
    svc: Service
    bus: BusClient
    store: PostgresEventStore

    async def cmd(self, verb: str, payload: dict[str, Any], timeout: float = 30) -> Any:
        return await self.bus.command("backup", verb, payload, ctx=ADMIN, timeout=timeout)

    async def ask(self, name: str, payload: dict[str, Any]) -> Any:
        return await self.bus.query("backup", name, payload, ctx=ADMIN, timeout=30)

    async def task_end(self, task_id: str, timeout: float = 60) -> tuple[str, dict[str, Any]]:
        """(TaskSucceeded|TaskFailed, its data) once the task has ended."""
        found: list[Any] = []

        async def ended() -> bool:
            events = await self.store.read_stream(f"task-{task_id}")
            found[:] = [e for e in events if e.type in ("TaskSucceeded", "TaskFailed")]
            return bool(found)

        await wait_until(ended, timeout, f"task {task_id} to end", step=0.1)
        return found[0].type, dict(found[0].data)

    async def events(self, stream: str) -> list[tuple[str, dict[str, Any]]]:
        return [(e.type, dict(e.data)) for e in await self.store.read_stream(stream)]

    async def all_events(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(stream, type, data) of every event in the store."""
        rows = await self.store.pool.fetch("SELECT stream, type, data::text FROM events.events")
        return [(r["stream"], r["type"], r["data"]) for r in rows]


@asynccontextmanager
async def running_backup(
    monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]
) -> AsyncIterator[Backup]:
    """The backup service in this process, ready; stopped (exit code 0) at the end."""
    from services.backup.__main__ import build

    uniq = env["HP_EVENTS_STREAM"].removeprefix("EV_")
    async with (
        relaying(env["HP_DATABASE_URL"], env["HP_NATS_URL"], uniq),
        serving(monkeypatch, build, env, "backup", ready_within=30) as svc,
    ):
        nc = await nats.connect(env["HP_NATS_URL"])
        store = await PostgresEventStore.open(env["HP_DATABASE_URL"], max_size=2)
        try:
            yield Backup(svc, ActorBus(nc, default_timeout=30), store)
        finally:
            await store.close()
            await nc.close()
