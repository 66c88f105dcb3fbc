"""The activity log: a projection of every event into who did what, on what, when.

The row of an event is defined once, in SQL (migrations/0002_activity_sql.sql), and applied
set-wise to pages of `events.events`: live batches, catch-up and rebuilds use the same
statement. The fields each sentence names (activity_text.py) are read from the events of a page
when it is shown, not kept in the rows (a rebuild would compute them for every event).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import asyncpg

from libs.events.projection import Projection, register_projection
from services.gateway.tasks import TaskProjection  # noqa: F401 - known to `homeport replay`

__all__ = ["ActivityProjection"]


# The row of one event, for a page of them.
# Who: meta.actor (else "system") and meta.ip (sealed to its week: kept sealed in ip_sealed,
# read back through identity when shown); what: the type; on what: the stream; the
# summary: meta.summary (from the event's summary() at append time) on one line, else
# "<Type> on <stream>"; user_agent: a sign-in's browser string, as stored (sealed to its
# week: identity names its browser family when shown). The fields of `data` a sentence names
# (refs) are not kept: a page reads them from its events (activity_text.refs_of).
# Other sealed values are hidden everywhere; lengths are capped.
# OFFSET 0 keeps each step a separate scan, so no expression is computed twice, and each
# helper function gets a plain column: only then does Postgres inline it (a call of a SQL
# function per row costs more than the rest of the row). translate() is the costliest call of
# a row (2 us, multibyte-aware): it runs only on a summary that has a control character.
# Counting characters walks the text: a length cap asks first whether the text has no more
# bytes than the cap (then no more characters either, and unsealing only shortens it).
_PAGE_SQL = """
    INSERT INTO gateway.activity
        (position, occurred_at, actor, ip, ip_sealed, type, stream, category, summary, user_agent)
    SELECT position, recorded_at,
           CASE WHEN actor IS NULL THEN 'system'
                WHEN octet_length(actor) <= 200 THEN gateway.unsealed_text(actor)
                ELSE left(gateway.unsealed_text(actor), 200) END,
           CASE WHEN starts_with(ip, 'hp:sealed:t1:') THEN NULL
                WHEN octet_length(ip) <= 64 THEN gateway.unsealed_text(ip)
                ELSE left(gateway.unsealed_text(ip), 64) END,
           CASE WHEN starts_with(ip, 'hp:sealed:t1:') AND char_length(ip) <= 1024 THEN ip END,
           type, stream, split_part(stream, '-', 1),
           CASE WHEN octet_length(summary) <= 300 OR char_length(summary) <= 300 THEN summary
                ELSE left(summary, 299) || '…' END,
           CASE WHEN starts_with(agent, 'hp:sealed:t1:')
                THEN CASE WHEN char_length(agent) <= 1024 THEN agent END
                WHEN strpos(agent, 'hp:sealed:') = 0 THEN left(agent, 400) END
    FROM (
        SELECT position, recorded_at, type, stream, actor, ip, agent,
               gateway.unsealed_text(summary) AS summary
        FROM (
        SELECT position, recorded_at, type, stream, actor, ip,
               CASE WHEN type = 'SessionStarted'
                         AND jsonb_typeof(data -> 'user_agent') = 'string'
                    THEN nullif(data ->> 'user_agent', '') END AS agent,
               coalesce(nullif(gateway.one_line(raw_summary), ''), type || ' on ' || stream)
                   AS summary
        FROM (
            SELECT position, recorded_at, type, stream, data, actor, ip,
                   CASE WHEN strpos(summary_text, E'\\t') + strpos(summary_text, E'\\n')
                             + strpos(summary_text, E'\\r') + strpos(summary_text, E'\\f')
                             + strpos(summary_text, chr(11)) > 0
                        THEN translate(summary_text, E'\\t\\n\\r\\f' || chr(11), '     ')
                        ELSE summary_text END AS raw_summary
            FROM (
            SELECT position, recorded_at, type, stream, data,
                   CASE WHEN jsonb_typeof(meta -> 'actor') = 'string'
                        THEN nullif(meta ->> 'actor', '') END AS actor,
                   CASE WHEN jsonb_typeof(meta -> 'ip') = 'string'
                        THEN nullif(meta ->> 'ip', '') END AS ip,
                   CASE WHEN jsonb_typeof(meta -> 'summary') = 'string'
                        THEN meta ->> 'summary' END AS summary_text
            FROM page OFFSET 0
            ) AS meta_fields OFFSET 0
        ) AS fields OFFSET 0
        ) AS joined OFFSET 0
    ) AS shaped
    RETURNING 1
"""


@register_projection
class ActivityProjection(Projection):
    """Every event, as one line of the activity log (schema `gateway`)."""

    name: ClassVar[str] = "activity"
    schema: ClassVar[str] = "gateway"
    migrations: ClassVar[Path | None] = Path(__file__).parent / "migrations"
    page_sql: ClassVar[str | None] = _PAGE_SQL
    parallel_rebuild: ClassVar[bool] = True  # a row per event, from that event alone

    async def reset(self, conn: asyncpg.Connection) -> None:
        await conn.execute("TRUNCATE gateway.activity")

    async def drop_indexes(self, conn: asyncpg.Connection) -> None:
        await conn.execute(";".join(f"DROP INDEX IF EXISTS gateway.{n}" for n in _INDEXES))

    def index_statements(self) -> list[str]:
        return [
            f"CREATE INDEX IF NOT EXISTS {n} ON gateway.activity {how}"
            for n, how in _INDEXES.items()
        ]


# The filters of the activity query; the same definitions as the migrations (0007: the text
# filters key on its hash, queries.py `_filtered` asks for both).
_INDEXES = {
    "activity_actor": "(hashtext(actor), position)",
    "activity_type": "(hashtext(type), position)",
    "activity_stream": "(hashtext(stream), position)",
    "activity_category": "(hashtext(category), position)",
    "activity_time": "USING brin (occurred_at)",
    "activity_app_places": (
        "(stream, position) WHERE type IN ('AppInstallRequested', 'AppConfigureRequested')"
    ),
}
