"""The notify service's read model (schema `notify`, migrations/): facts alerts are decided
from, the alerts, the notification centre, and each administrator's preferences.

Other services' events set the facts (an app died at, a certificate ends at, the last backup
that succeeded); times are the events' recorded times, so a rebuild decides the same. The
service's own events are applied in the command's transaction (`append_inline`) and again when
the runner reaches them: each of their steps is idempotent (alerts by stream version,
notifications by event id).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import asyncpg

from libs.events.envelope import RecordedEvent
from libs.events.projection import Projection, register_projection

__all__ = ["RESTART_MEMORY", "NotifyProjection"]

log = logging.getLogger("services.notify")

RESTART_MEMORY = 10  # deaths kept per app (the "restarting repeatedly" rule counts them)

_FOREIGN = frozenset(
    {
        "AppInstallRequested",
        "AppConfigureRequested",
        "AppInstalled",
        "AppUninstalled",
        "AppRunStateChanged",
        "AppDied",
        "AppRecovered",
        "AppUnhealthy",
        "AppOutOfMemory",
        "CertificateIssued",
        "CustomCertificateUploaded",
        "CertificateRenewalFailed",
        "CertificateForgotten",
        "BackupScheduleSet",
        "BackupCompleted",
        "BackupFailed",
        "SessionStarted",
    }
)
_OWN = frozenset(
    {
        "AlertOpened",
        "AlertResolved",
        "NoticePosted",
        "NotificationDelivered",
        "NotificationsRead",
        "NotifyPreferencesSet",
    }
)


@register_projection
class NotifyProjection(Projection):
    name: ClassVar[str] = "notify"
    schema: ClassVar[str] = "notify"
    migrations: ClassVar[Path | None] = Path(__file__).parent / "migrations"

    def wants(self, event: RecordedEvent) -> bool:
        return event.type in _FOREIGN or event.type in _OWN

    async def reset(self, conn: asyncpg.Connection) -> None:
        await conn.execute(
            "TRUNCATE notify.apps, notify.certs, notify.backups, notify.alerts,"
            " notify.notifications, notify.reads, notify.read_marks, notify.preferences"
        )

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        for e in events:
            step = _STEPS.get(e.type)
            if step is None:
                continue
            try:
                async with conn.transaction():  # a savepoint: one malformed event is skipped
                    await step(conn, e, e.data)
            except (KeyError, TypeError, ValueError, asyncpg.DataError) as err:
                log.warning(
                    "event %s (%s at %d) is not shaped as expected; skipped: %r",
                    e.id,
                    e.type,
                    e.position,
                    err,
                )


Step = Any  # async (conn, event, data) -> None


async def _app_requested(conn: asyncpg.Connection, e: RecordedEvent, d: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO notify.apps (app_id, manifest_id, location, domain) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (app_id) DO UPDATE SET manifest_id = $2, location = $3, domain = $4",
        d["app_id"],
        str(d["manifest_id"]),
        str(d["location"]),
        str(d["domain"]),
    )


async def _app_configure(conn: asyncpg.Connection, e: RecordedEvent, d: dict[str, Any]) -> None:
    if d.get("location"):
        await conn.execute(
            "UPDATE notify.apps SET location = $2 WHERE app_id = $1", d["app_id"], d["location"]
        )


async def _app_installed(conn: asyncpg.Connection, e: RecordedEvent, d: dict[str, Any]) -> None:
    # a new (or updated, repaired) container: what went wrong before is history
    await conn.execute(
        "UPDATE notify.apps SET installed = true, down_since = NULL, unhealthy_since = NULL"
        " WHERE app_id = $1",
        d["app_id"],
    )


async def _app_gone(conn: asyncpg.Connection, e: RecordedEvent, d: dict[str, Any]) -> None:
    await conn.execute("DELETE FROM notify.apps WHERE app_id = $1", d["app_id"])


async def _app_run(conn: asyncpg.Connection, e: RecordedEvent, d: dict[str, Any]) -> None:
    running = bool(d["running"])
    await conn.execute(
        "UPDATE notify.apps SET running = $2,"
        " down_since = CASE WHEN $2 THEN down_since END,"
        " unhealthy_since = CASE WHEN $2 THEN unhealthy_since END WHERE app_id = $1",
        d["app_id"],
        running,
    )


async def _app_died(conn: asyncpg.Connection, e: RecordedEvent, d: dict[str, Any]) -> None:
    await conn.execute(
        "UPDATE notify.apps SET down_since = coalesce(down_since, $2),"
        " deaths = (array_append(deaths, $2))[greatest(1, cardinality(deaths) + 2 - $3):]"
        " WHERE app_id = $1",
        d["app_id"],
        e.recorded_at,
        RESTART_MEMORY,
    )


async def _app_recovered(conn: asyncpg.Connection, e: RecordedEvent, d: dict[str, Any]) -> None:
    await conn.execute(
        "UPDATE notify.apps SET down_since = NULL, unhealthy_since = NULL WHERE app_id = $1",
        d["app_id"],
    )


async def _app_unhealthy(conn: asyncpg.Connection, e: RecordedEvent, d: dict[str, Any]) -> None:
    await conn.execute(
        "UPDATE notify.apps SET unhealthy_since = coalesce(unhealthy_since, $2),"
        " unhealthy_detail = $3 WHERE app_id = $1",
        d["app_id"],
        e.recorded_at,
        str(d.get("detail") or "")[:500],
    )


async def _app_oom(conn: asyncpg.Connection, e: RecordedEvent, d: dict[str, Any]) -> None:
    await conn.execute(
        "UPDATE notify.apps SET oom_at = $2 WHERE app_id = $1", d["app_id"], e.recorded_at
    )


async def _cert_issued(conn: asyncpg.Connection, e: RecordedEvent, d: dict[str, Any]) -> None:
    not_after = datetime.fromisoformat(str(d["not_after"]).replace("Z", "+00:00"))
    await conn.execute(
        "INSERT INTO notify.certs (primary_name, not_after) VALUES ($1, $2)"
        " ON CONFLICT (primary_name) DO UPDATE SET not_after = $2, failed_at = NULL,"
        " failed_message = ''",
        str(d["primary"]),
        not_after,
    )


async def _cert_failed(conn: asyncpg.Connection, e: RecordedEvent, d: dict[str, Any]) -> None:
    message = f"{d.get('code', '')}: {d.get('message', '')}"[:500]
    await conn.execute(
        "INSERT INTO notify.certs (primary_name, failed_at, failed_message) VALUES ($1, $2, $3)"
        " ON CONFLICT (primary_name) DO UPDATE SET failed_at = $2, failed_message = $3",
        str(d["primary"]),
        e.recorded_at,
        message,
    )


async def _cert_forgotten(conn: asyncpg.Connection, e: RecordedEvent, d: dict[str, Any]) -> None:
    await conn.execute("DELETE FROM notify.certs WHERE primary_name = $1", str(d["primary"]))


async def _backup_schedule(conn: asyncpg.Connection, e: RecordedEvent, d: dict[str, Any]) -> None:
    enabled = bool(d["enabled"])
    await conn.execute(
        "INSERT INTO notify.backups (scheduled, scheduled_since) VALUES ($1, $2)"
        " ON CONFLICT (one) DO UPDATE SET scheduled = $1,"
        " scheduled_since = CASE WHEN notify.backups.scheduled AND $1"
        "   THEN notify.backups.scheduled_since ELSE $2 END",
        enabled,
        e.recorded_at,
    )


async def _backup_done(conn: asyncpg.Connection, e: RecordedEvent, d: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO notify.backups (last_success) VALUES ($1)"
        " ON CONFLICT (one) DO UPDATE SET last_success = $1",
        e.recorded_at,
    )


async def _backup_failed(conn: asyncpg.Connection, e: RecordedEvent, d: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO notify.backups (last_failure, failure_reason) VALUES ($1, $2)"
        " ON CONFLICT (one) DO UPDATE SET last_failure = $1, failure_reason = $2",
        e.recorded_at,
        str(d.get("reason") or "")[:500],
    )


async def _signin(conn: asyncpg.Connection, e: RecordedEvent, d: dict[str, Any]) -> None:
    """An administrator signed in from an address and browser not seen before (identity
    decides, `new_place`): a notice to that administrator alone."""
    if not d.get("new_place"):
        return
    sealed = [str(d.get("ip") or e.meta.get("ip") or ""), str(d.get("user_agent") or "")]
    await conn.execute(
        "INSERT INTO notify.notifications (id, position, stream, key, kind, category, severity,"
        " title, detail, user_id, sealed, created_at)"
        " VALUES ($1, $2, $3, $4, 'notice', 'security', 'warning', $5, '', $6, $7, $8)"
        " ON CONFLICT (id) DO NOTHING",
        e.id,
        e.position,
        f"notice-{e.id}",  # what notify records about it goes there, not to identity's stream
        f"signin:{d['user_id']}:{e.id}",
        "New sign-in to your account from an address and browser not seen before",
        d["user_id"],
        sealed,
        e.recorded_at,
    )


# -- the service's own events (idempotent: applied inline, then again by the runner) ---------


async def _opened(conn: asyncpg.Connection, e: RecordedEvent, d: dict[str, Any]) -> None:
    done = await conn.fetchval(
        "INSERT INTO notify.alerts (key, stream, version, open, category, severity, title,"
        " detail, opened_at) VALUES ($1, $2, $3, true, $4, $5, $6, $7, $8)"
        " ON CONFLICT (key) DO UPDATE SET version = $3, open = true, category = $4,"
        " severity = $5, title = $6, detail = $7, opened_at = $8, resolved_at = NULL"
        " WHERE notify.alerts.version < $3 RETURNING 1",
        d["key"],
        e.stream,
        e.version,
        d["category"],
        d["severity"],
        d["title"],
        d["detail"],
        e.recorded_at,
    )
    if done:
        await _notification(conn, e, d["key"], "opened", d["category"], d["severity"], d)


async def _resolved(conn: asyncpg.Connection, e: RecordedEvent, d: dict[str, Any]) -> None:
    row = await conn.fetchrow(
        "UPDATE notify.alerts SET version = $2, open = false, resolved_at = $3"
        " WHERE key = $1 AND version < $2 RETURNING category",
        d["key"],
        e.version,
        e.recorded_at,
    )
    if row is not None:
        info = {"title": d["title"], "detail": ""}
        await _notification(conn, e, d["key"], "resolved", row["category"], "info", info)


async def _notice(conn: asyncpg.Connection, e: RecordedEvent, d: dict[str, Any]) -> None:
    # the address its words name ({address}, events.ADDRESS) stays sealed, as meta.ip holds it
    ip = e.meta.get("ip")
    sealed = [ip] if isinstance(ip, str) and ip else []
    await _notification(conn, e, d["key"], "notice", d["category"], "warning", d, sealed)


async def _notification(
    conn: asyncpg.Connection,
    e: RecordedEvent,
    key: str,
    kind: str,
    category: str,
    severity: str,
    d: dict[str, Any],
    sealed: list[str] | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO notify.notifications (id, position, stream, key, kind, category, severity,"
        " title, detail, user_id, created_at, sealed) VALUES ($1, $2, $3, $4, $5, $6, $7, $8,"
        " $9, $10, $11, $12) ON CONFLICT (id) DO NOTHING",
        e.id,
        e.position,
        e.stream,
        key,
        kind,
        category,
        severity,
        str(d["title"]),
        str(d.get("detail") or ""),
        d.get("user_id"),
        e.recorded_at,
        sealed or [],
    )


async def _delivered(conn: asyncpg.Connection, e: RecordedEvent, d: dict[str, Any]) -> None:
    await conn.execute(
        "UPDATE notify.notifications SET delivered = true, mailed = $2, pushed = $3, note = $4"
        " WHERE id = $1",
        d["notification_id"],
        int(d["mailed"]),
        int(d["pushed"]),
        str(d.get("note") or ""),
    )


async def _read(conn: asyncpg.Connection, e: RecordedEvent, d: dict[str, Any]) -> None:
    user_id = d["user_id"]
    if d.get("up_to") is not None:
        await conn.execute(
            "INSERT INTO notify.read_marks (user_id, up_to) VALUES ($1, $2)"
            " ON CONFLICT (user_id) DO UPDATE SET"
            " up_to = greatest(notify.read_marks.up_to, $2)",
            user_id,
            int(d["up_to"]),
        )
    await conn.execute(
        "INSERT INTO notify.reads (user_id, notification_id)"
        " SELECT $1, unnest($2::uuid[]) ON CONFLICT DO NOTHING",
        user_id,
        list(d.get("ids") or []),
    )


async def _preferences(conn: asyncpg.Connection, e: RecordedEvent, d: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO notify.preferences (user_id, version, email, push, push_urls)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id) DO UPDATE SET version = $2,"
        " email = $3, push = $4, push_urls = $5 WHERE notify.preferences.version < $2",
        d["user_id"],
        e.version,
        list(d["email"]),
        list(d["push"]),
        list(d["push_urls"]),
    )


_STEPS: dict[str, Step] = {
    "AppInstallRequested": _app_requested,
    "AppConfigureRequested": _app_configure,
    "AppInstalled": _app_installed,
    "AppUninstalled": _app_gone,
    "AppRunStateChanged": _app_run,
    "AppDied": _app_died,
    "AppRecovered": _app_recovered,
    "AppUnhealthy": _app_unhealthy,
    "AppOutOfMemory": _app_oom,
    "CertificateIssued": _cert_issued,
    "CustomCertificateUploaded": _cert_issued,
    "CertificateRenewalFailed": _cert_failed,
    "CertificateForgotten": _cert_forgotten,
    "BackupScheduleSet": _backup_schedule,
    "BackupCompleted": _backup_done,
    "BackupFailed": _backup_failed,
    "SessionStarted": _signin,
    "AlertOpened": _opened,
    "AlertResolved": _resolved,
    "NoticePosted": _notice,
    "NotificationDelivered": _delivered,
    "NotificationsRead": _read,
    "NotifyPreferencesSet": _preferences,
}
