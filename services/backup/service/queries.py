"""Query handlers of the backup service: its settings (never a secret) and the backups."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from libs.events.handlers import query
from services.backup.errors import BackupUnavailable, JobFailed
from services.backup.service.commands import admin_only
from services.backup.service.jobs import Engine, snapshot_view
from services.backup.service.schedule import next_run
from services.backup.service.settings import Settings, public_target

__all__ = ["Queries", "settings_view"]


def settings_view(s: Settings, seed: str) -> dict[str, Any]:
    """The settings as answered: defaults where unset, the target without its secret, and
    when the schedule runs next (server time)."""
    due = next_run(s.schedule, dt.datetime.now().astimezone(), seed)
    return {
        "next_run": due.isoformat() if due is not None and s.ready else None,
        "target": public_target(s.target),
        "recipients": list(s.recipients),
        "passphrase_copy": s.passphrase_copy,
        "schedule": s.schedule.as_dict(),
        "retention": s.retention.as_dict(),
        "ready": s.ready,
    }


class Queries:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @query("settings")
    async def settings(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        admin_only()
        view = settings_view(await self.engine.settings(), self.engine.seed)
        view.update(await self.engine.last_outcomes())
        return view

    @query("backups")
    async def backups(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        admin_only()
        settings = await self.engine.settings()
        if not settings.ready:
            return {"items": []}
        try:
            listed = await self.engine.snapshots(settings)
        except JobFailed as e:
            raise BackupUnavailable(e.message) from None
        app_id = payload.get("app_id")
        items = [
            snapshot_view(s)
            for s in reversed(listed)
            if app_id is None or s.labels.get("app_id") == app_id
        ]
        return {"items": items}
