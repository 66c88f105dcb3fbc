"""The activity log: a projection of every event into who did what, on what, when.

The row of an event is defined once, in SQL (migrations/0002_activity_sql.sql), and applied
set-wise to pages of `events.events`: live batches, catch-up and rebuilds use the same statement.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import asyncpg

from libs.events.projection import Projection, register_projection

__all__ = ["ActivityProjection"]


@register_projection
class ActivityProjection(Projection):
    """Every event, as one line of the activity log (schema `gateway`)."""

    name: ClassVar[str] = "activity"
    schema: ClassVar[str] = "gateway"
    migrations: ClassVar[Path | None] = Path(__file__).parent / "migrations"
    page_sql: ClassVar[str | None] = (
        "INSERT INTO gateway.activity "
        "(position, occurred_at, actor, ip, type, stream, category, summary) "
        "SELECT position, gateway.occurred_at(meta, recorded_at), "
        "coalesce(gateway.meta_text(meta, 'actor', 200), 'system'), "
        "gateway.meta_text(meta, 'ip', 64), type, stream, split_part(stream, '-', 1), "
        "gateway.activity_summary(meta, type, stream) FROM page RETURNING 1"
    )

    async def reset(self, conn: asyncpg.Connection) -> None:
        await conn.execute("TRUNCATE gateway.activity")
