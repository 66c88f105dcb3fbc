"""The evaluator: every round, the conditions that hold (conditions.py) against the open alerts;
what is new opens (`AlertOpened`), what no longer holds resolves (`AlertResolved`), and each new
ban of an address is a notice. It nudges the dispatcher when it recorded something.

What other services know is asked on the bus: active bans (firewall) every round, updates
(apps) every `notify_updates_seconds`. A service that does not answer changes nothing: its
alerts neither open nor clear on a missing answer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from libs.events.bus import BusClient, BusError
from libs.events.sealing import Keyring
from libs.events.store import PostgresEventStore
from services.notify import events as ev
from services.notify import measure
from services.notify.conditions import (
    AppFacts,
    BackupFacts,
    CertFacts,
    Facts,
    decide,
)
from services.notify.config import NotifyConfig
from services.notify.events import ADDRESS
from services.notify.own import append_own
from services.notify.rounds import Rounds

__all__ = ["Clock", "Evaluator", "utcnow"]

log = logging.getLogger("services.notify")

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def _newer(current: str, candidate: str) -> bool:
    from deploy.release import is_newer  # the platform's own version order

    try:
        return bool(is_newer(candidate, current))
    except Exception:
        return False


class Evaluator(Rounds):
    what = "alert round"
    again = False

    def __init__(
        self,
        cfg: NotifyConfig,
        store: PostgresEventStore,
        bus: BusClient | None,
        *,
        clock: Clock = utcnow,
        changed: Callable[[], None] = lambda: None,
        keys: Keyring | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.every = cfg.notify_round_seconds
        self.store = store
        self.pool = store.pool
        self.bus = bus
        self.clock = clock
        self.changed = changed
        self.keys = keys  # notify's keyring: the keyed index of banned addresses
        self.rounds = 0
        self._updates_at: datetime | None = None
        self._platform_update: str | None = None
        self._app_updates: dict[str, tuple[str, str]] = {}
        self._titles: dict[str, str] = {}
        self._updates_known = False
        self._bans_at = -math.inf  # monotonic time of the last question to the firewall

    # -- one round ------------------------------------------------------------------------------

    async def round(self) -> int:
        """Look once; the number of events recorded."""
        now = self.clock()
        await self._poll_updates(now)
        facts = await self.facts()
        wanted = decide(facts, now, self.cfg)
        rows = await self.pool.fetch("SELECT key, stream, version, open, title FROM notify.alerts")
        known = {r["key"]: r for r in rows}
        recorded = 0
        for key, alert in wanted.items():
            row = known.get(key)
            if row is None or not row["open"]:
                recorded += await self._record(
                    ev.alert_stream(key),
                    ev.AlertOpened(
                        key=key,
                        category=alert.category,
                        severity=alert.severity,
                        title=alert.title,
                        detail=alert.detail,
                    ),
                )
        for key, row in known.items():
            if row["open"] and key not in wanted and self._may_resolve(key):
                recorded += await self._record(
                    row["stream"], ev.AlertResolved(key=key, title=f"Resolved: {row['title']}")
                )
        recorded += await self._bans()
        self.rounds += 1
        if recorded:
            self.changed()
        return recorded

    def _may_resolve(self, key: str) -> bool:
        """An update alert clears only on an answer from the apps service."""
        return not key.startswith("update:") or self._updates_known

    async def _record(self, stream: str, event: Any, ip: str | None = None) -> int:
        # once: a lost race means another round recorded it; the next round looks again
        return int(await append_own(self.store, stream, [event], tries=1, ip=ip))

    # -- facts ----------------------------------------------------------------------------------

    async def facts(self) -> Facts:
        apps = await self.pool.fetch("SELECT * FROM notify.apps")
        certs = await self.pool.fetch("SELECT * FROM notify.certs")
        backup = await self.pool.fetchrow("SELECT * FROM notify.backups")
        disks = await asyncio.to_thread(measure.disks, self.cfg.disk_paths())
        memory = await asyncio.to_thread(measure.memory, self.cfg.notify_proc)
        return Facts(
            apps=[self._app(r) for r in apps],
            certs=[
                CertFacts(r["primary_name"], r["not_after"], r["failed_at"], r["failed_message"])
                for r in certs
            ],
            backup=None
            if backup is None
            else BackupFacts(
                backup["scheduled"],
                backup["scheduled_since"],
                backup["last_success"],
                backup["last_failure"],
                backup["failure_reason"],
            ),
            disks=disks,
            memory=memory,
            platform_update=self._platform_update,
            app_updates=dict(self._app_updates),
        )

    def _app(self, r: asyncpg.Record) -> AppFacts:
        host = f"{r['location']}.{r['domain']}" if r["domain"] else r["location"]
        title = self._titles.get(r["manifest_id"], r["manifest_id"])
        return AppFacts(
            app_id=str(r["app_id"]),
            name=f"{title} at {host}",
            installed=r["installed"],
            running=r["running"],
            down_since=r["down_since"],
            unhealthy_since=r["unhealthy_since"],
            unhealthy_detail=r["unhealthy_detail"],
            deaths=tuple(r["deaths"]),
            oom_at=r["oom_at"],
        )

    # -- what other services answer ------------------------------------------------------------

    async def _poll_updates(self, now: datetime) -> None:
        if self.bus is None:
            return
        due = self._updates_at is None or (
            (now - self._updates_at).total_seconds() >= self.cfg.notify_updates_seconds
        )
        if not due:
            return
        self._updates_at = now
        try:
            platform = await self.bus.query("apps", "platform_update", {})
            catalog = await self.bus.query("apps", "catalog", {})
            apps = await self.bus.query("apps", "apps", {})
        except BusError as e:
            log.warning("updates not known this round: the apps service answered %s", e)
            return
        available = platform.get("available") or None
        self._platform_update = str(available["version"]) if available else None
        newest = {str(i["id"]): str(i["version"]) for i in catalog.get("items", [])}
        self._titles = {str(i["id"]): str(i["title"]) for i in catalog.get("items", [])}
        updates: dict[str, tuple[str, str]] = {}
        for a in apps.get("items", []):
            new = newest.get(str(a.get("manifest_id")))
            current = str(a.get("version") or "")
            if new and current and _newer(current, new):
                updates[str(a["app_id"])] = (current, new)
        self._app_updates = updates
        self._updates_known = True

    async def _bans(self) -> int:
        """A notice for each ban the firewall has in force that was not told yet."""
        if self.bus is None:
            return 0
        now = time.monotonic()
        if now - self._bans_at < self.cfg.notify_bans_seconds:
            return 0
        self._bans_at = now
        try:
            status = await self.bus.query("firewall", "status", {})
        except BusError as e:
            log.debug("bans not known this round: %s", e)
            return 0
        if self.keys is None:
            return 0  # no key for the notices' index: bans are not told
        bans = [(str(b["ip"]), str(b["until"])) for b in status.get("bans", [])]
        # an address is named only sealed (meta.ip) and by a keyed index: never in clear
        keys = {
            f"ban:{self.keys.blind_index('ban-address', ip)}:{until}": (ip, until)
            for ip, until in bans
        }
        told = {
            r["key"]
            for r in await self.pool.fetch(
                "SELECT key FROM notify.notifications WHERE key = ANY($1::text[])", list(keys)
            )
        }
        recorded = 0
        for key, (ip, until) in keys.items():
            if key in told:
                continue
            notice_id = str(uuid.uuid4())
            ends = datetime.fromisoformat(until)
            recorded += await self._record(
                ev.notice_stream(notice_id),
                ev.NoticePosted(
                    notice_id=notice_id,
                    key=key,
                    category="security",
                    title=f"Address {ADDRESS} banned until {ends:%H:%M} UTC",
                    detail=f"{ADDRESS} failed to sign in too often (SSH, the dashboard or mail)"
                    f" and cannot reach this server until {ends:%Y-%m-%d %H:%M} UTC. Nothing to"
                    " do unless it is one of yours: then unblock it on the Firewall page.",
                ),
                ip=ip,
            )
        return recorded
