"""The calls the backup service makes to the apps service, and waiting for an apps task.

Calls carry a system context with the admin flag (the backup service acts for the platform);
a failure becomes `JobFailed` naming the app and what the apps service said.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from libs.contracts.errors import BusError
from libs.events.bus import BusClient
from libs.events.context import Context
from libs.events.store import PostgresEventStore
from libs.events.tasks import task_stream
from services.backup.errors import JobFailed

__all__ = ["AppsPeer"]

_POLL = 0.25


class AppsPeer:
    """The apps service as the backup service asks it."""

    def __init__(
        self, bus: BusClient, store: PostgresEventStore, *, timeout: float, task_seconds: float
    ) -> None:
        self._bus = bus
        self._store = store
        self._timeout = timeout
        self._task_seconds = task_seconds

    @staticmethod
    def _ctx(why: str) -> Context:
        return Context(actor="system", correlation_id=why, admin=True)

    async def _cmd(self, verb: str, payload: dict[str, Any], why: str) -> Any:
        try:
            return await self._bus.command(
                "apps", verb, payload, ctx=self._ctx(why), timeout=self._timeout
            )
        except BusError as e:
            raise JobFailed(
                f"the apps service refused {verb}: {e.message}", "apps_" + e.code
            ) from e

    async def apps(self, why: str) -> list[dict[str, Any]]:
        """Every installed app (the apps query, asked as the platform)."""
        try:
            answer = await self._bus.query(
                "apps", "apps", {}, ctx=self._ctx(why), timeout=self._timeout
            )
        except BusError as e:
            raise JobFailed(
                f"the apps service could not list the apps: {e.message}", "apps_" + e.code
            ) from e
        return list(answer.get("items", []))

    async def app(self, app_id: str, why: str) -> dict[str, Any] | None:
        """One app, or None when it is not installed."""
        try:
            view: dict[str, Any] = await self._bus.query(
                "apps", "app", {"app_id": app_id}, ctx=self._ctx(why), timeout=self._timeout
            )
        except BusError as e:
            if e.code == "not_found":
                return None
            raise JobFailed(
                f"the apps service could not be asked: {e.message}", "apps_" + e.code
            ) from e
        return view

    async def snapshot(self, app_id: str, snapshot_id: str, why: str) -> None:
        """Ask for a snapshot of the app with our id; wait until its task ends."""
        payload = {"app_id": app_id, "reason": "backup", "snapshot_id": snapshot_id}
        answer = await self._cmd("snapshot", payload, why)
        await self.wait_task(str(answer["task_id"]), f"the snapshot of app {app_id}")

    async def forget_snapshot(self, app_id: str, snapshot_id: str, why: str) -> None:
        await self._cmd("forget_snapshot", {"app_id": app_id, "snapshot_id": snapshot_id}, why)

    async def adopt(self, app_id: str, snapshot_id: str, why: str) -> None:
        """Hand a folder restored into the app's snapshots to the app (checked there)."""
        await self._cmd("adopt_snapshot", {"app_id": app_id, "snapshot_id": snapshot_id}, why)

    async def restore(self, app_id: str, snapshot_id: str, why: str) -> str:
        """Restore the app to an adopted snapshot and wait; the apps task's message."""
        payload = {"app_id": app_id, "snapshot_id": snapshot_id}
        answer = await self._cmd("restore", payload, why)
        return await self.wait_task(str(answer["task_id"]), f"the restore of app {app_id}")

    async def install(self, payload: dict[str, Any], why: str) -> tuple[str, str]:
        """Install an app (from a snapshot folder); (app_id, the apps task's message)."""
        answer = await self._cmd("install", payload, why)
        message = await self.wait_task(str(answer["task_id"]), "the install from the backup")
        return str(answer["app_id"]), message

    async def wait_task(self, task_id: str, what: str) -> str:
        """Wait for an apps task to end: its message when it succeeded, else JobFailed."""
        deadline = time.monotonic() + self._task_seconds
        stream = task_stream(task_id)
        while True:
            for e in await self._store.read_stream(stream):
                if e.type == "TaskSucceeded":
                    return str(e.data.get("message", ""))
                if e.type == "TaskFailed":
                    raise JobFailed(f"{what} failed: {e.data.get('message')}", "apps_task_failed")
            if time.monotonic() > deadline:
                raise JobFailed(
                    f"{what} did not end within {self._task_seconds:g} s", "apps_task_timeout"
                )
            await asyncio.sleep(_POLL)
