"""The read model of the backup service: pre-update snapshots waiting to be stored.

`UpdateSnapshots` follows `AppSnapshotTaken` and records those taken before an update
(reason "update"); the worker (`Engine.store_updates`) stores each on the target and marks it.
Rebuilt from the log, every row starts again as pending: the worker then finds the folders of
the ones long gone missing and marks them so, without storing anything twice for a live one
(the repository deduplicates what it stores again).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import asyncpg

from libs.events.envelope import RecordedEvent
from libs.events.projection import Projection, register_projection

__all__ = ["UpdateSnapshots"]


@register_projection
class UpdateSnapshots(Projection):
    name: ClassVar[str] = "backup_updates"
    schema: ClassVar[str] = "backup"
    subject: ClassVar[str] = "app.AppSnapshotTaken"
    migrations: ClassVar[Path | None] = Path(__file__).parent / "migrations"

    def wants(self, event: RecordedEvent) -> bool:
        return event.type == "AppSnapshotTaken"

    async def reset(self, conn: asyncpg.Connection) -> None:
        await conn.execute("TRUNCATE backup.updates")

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        for e in events:
            d = e.data
            if d.get("reason") != "update":
                continue
            await conn.execute(
                "INSERT INTO backup.updates (app_id, snapshot_id, manifest_id, version, taken_at)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                str(d["app_id"]),
                str(d["snapshot_id"]),
                str(d.get("manifest_id", "")),
                str(d.get("version", "")),
                e.recorded_at,
            )
