"""The activity log: a projection of every event into who did what, on what, when."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import asyncpg

from libs.events.envelope import RecordedEvent
from libs.events.projection import Projection, register_projection

__all__ = ["ActivityProjection", "activity_row", "summary_of"]

_SEALED = re.compile(r"hp:sealed:\S*")
_COLUMNS = ("position", "occurred_at", "actor", "ip", "type", "stream", "category", "summary")
SUMMARY_MAX = 300


def summary_of(event: RecordedEvent) -> str:
    """The event's one-line summary (from its `summary()` at append time), sealed parts hidden."""
    raw = event.meta.get("summary")
    text = raw if isinstance(raw, str) and raw.strip() else f"{event.type} on {event.stream}"
    text = _SEALED.sub("[sealed]", " ".join(text.split()))
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1] + "…"


def _occurred_at(event: RecordedEvent) -> datetime:
    raw = event.meta.get("occurred_at")
    if isinstance(raw, str):
        try:
            when = datetime.fromisoformat(raw)
        except ValueError:
            return event.recorded_at
        if when.tzinfo is not None:
            return when
    return event.recorded_at


def _text(value: Any, limit: int) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return _SEALED.sub("[sealed]", value)[:limit]


def activity_row(event: RecordedEvent) -> tuple[Any, ...]:
    """The activity row of one event (column order of `gateway.activity`)."""
    return (
        event.position,
        _occurred_at(event),
        _text(event.meta.get("actor"), 200) or "system",
        _text(event.meta.get("ip"), 64),
        event.type,
        event.stream,
        event.category,
        summary_of(event),
    )


@register_projection
class ActivityProjection(Projection):
    """Every event, as one line of the activity log (schema `gateway`)."""

    name: ClassVar[str] = "activity"
    schema: ClassVar[str] = "gateway"
    migrations: ClassVar[Path | None] = Path(__file__).parent / "migrations"

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        await conn.copy_records_to_table(
            "activity",
            schema_name="gateway",
            columns=_COLUMNS,
            records=[activity_row(e) for e in events],
        )

    async def reset(self, conn: asyncpg.Connection) -> None:
        await conn.execute("TRUNCATE gateway.activity")
