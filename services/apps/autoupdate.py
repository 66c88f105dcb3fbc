"""Automatic app updates in a nightly window (issue 15, "App updates, automatic").

Settings are events in stream `apps-settings`, the last of each kind winning: `AppsAutoUpdateSet`
(on or off and the window, default on, 03:00-05:00) and `AppAutoUpdateSet` (one app's opt-out).
The window is in the server's time zone (HP_TIME_ZONE, else /etc/localtime); an end before the
start spans midnight; the start is inside it, the end is not.

`AutoUpdater.tick()` is one pass by the injected clock: inside the window, every installed app
(by location) whose newest catalog release is newer than its version gets the existing update
operation (a snapshot first, which the backup service also stores off the machine when it is set
up; a failure rolled back by the operation), unless it is opted out, was tried already this
night, or needs approval. An update needs approval when the newest release, or any release
between the installed one and it, is marked so: jumping over a marked version would skip what
the mark is for. Updates start as actor "system" with an `AppAutoUpdateStarted` (reason
"automatic", the night) recorded with the request, one at a time: the pass waits for each task
to end before the next, and starts none after the window closes. The apps whose update needs
approval are what query `pending_updates` lists for the admin. Every pass, in the window or
not, sets the gauge `homeport_app_update_available` of each installed app (deploy/prometheus/).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from libs.events import context
from libs.events.context import Context
from libs.events.envelope import uuid7
from libs.events.handlers import command, query
from libs.events.store import PostgresEventStore
from libs.events.tasks import Task
from libs.events.wiring import loop
from libs.service.metrics import REGISTRY, Gauge
from libs.service.runner import Service
from services.apps import events as ev
from services.apps.catalog import Catalog, CatalogEntry, CatalogError
from services.apps.commands import Commands
from services.apps.config import AppsConfig
from services.apps.errors import AppNotFound, AppsError, InvalidRequest, NotAdmin
from services.apps.semver import Version, VersionError
from services.apps.state import AppState, State

__all__ = [
    "DEFAULT_WINDOW",
    "AutoUpdateHandlers",
    "AutoUpdateSettings",
    "AutoUpdater",
    "Available",
    "Clock",
    "auto_updates",
    "available",
    "load_settings",
    "server_zone",
    "utcnow",
    "window_night",
]

log = logging.getLogger("services.apps.autoupdate")

Clock = Callable[[], datetime]
DEFAULT_WINDOW = ("03:00", "05:00")
UPDATE_DEADLINE = 3 * 3600.0  # seconds one automatic update may take before the night gives up
POLL_SECONDS = 1.0  # how often the task of the update running is looked at
LOCALTIME = Path("/etc/localtime")
UPDATE_AVAILABLE = Gauge(
    "homeport_app_update_available",
    "1 when the catalog has a newer release of an installed app, else 0 (each pass)",
    ["app_id", "location"],
    registry=REGISTRY,
)


def utcnow() -> datetime:
    """The wall clock, timezone-aware (the default `Clock`)."""
    return datetime.now(UTC)


def server_zone(name: str) -> tuple[ZoneInfo, str]:
    """The zone named (HP_TIME_ZONE), else /etc/localtime's, else UTC; with its name."""
    if name:
        return ZoneInfo(name), name
    try:
        with LOCALTIME.open("rb") as f:
            zone = ZoneInfo.from_file(f)
    except (OSError, ValueError, ZoneInfoNotFoundError):
        return ZoneInfo("UTC"), "UTC"
    target = str(LOCALTIME.resolve())
    label = target.split("/zoneinfo/", 1)[1] if "/zoneinfo/" in target else "localtime"
    return zone, label


def _hhmm(value: str) -> clock_time:
    hours, minutes = value.split(":")
    return clock_time(int(hours), int(minutes))


def window_night(local: datetime, start: str, end: str) -> date | None:
    """The date the window `local` is in began on; None outside it (`start` in, `end` out)."""
    t, begin, stop = local.time().replace(tzinfo=None), _hhmm(start), _hhmm(end)
    if begin < stop:
        return local.date() if begin <= t < stop else None
    if t >= begin:
        return local.date()
    return local.date() - timedelta(days=1) if t < stop else None


@dataclass(frozen=True)
class AutoUpdateSettings:
    version: int = 0  # of stream apps-settings
    enabled: bool = True
    window_start: str = DEFAULT_WINDOW[0]
    window_end: str = DEFAULT_WINDOW[1]
    opted_out: frozenset[str] = frozenset()

    def night(self, local: datetime) -> date | None:
        """The night whose window `local` is in; None outside it or when turned off."""
        return window_night(local, self.window_start, self.window_end) if self.enabled else None


async def load_settings(store: PostgresEventStore) -> AutoUpdateSettings:
    """The settings folded from stream `apps-settings` (defaults where nothing was set)."""
    s = AutoUpdateSettings()
    for e in await store.read_stream(ev.SETTINGS_STREAM):
        d = e.data
        if e.type == "AppsAutoUpdateSet":
            s = replace(
                s, enabled=d["enabled"], window_start=d["window_start"], window_end=d["window_end"]
            )
        elif e.type == "AppAutoUpdateSet":
            out = s.opted_out - {d["app_id"]} if d["enabled"] else s.opted_out | {d["app_id"]}
            s = replace(s, opted_out=out)
        s = replace(s, version=e.version)
    return s


@dataclass(frozen=True)
class Available:
    """The newest release of an installed app's catalog app, newer than the app's version."""

    entry: CatalogEntry
    needs_approval: bool


def available(catalog: Catalog, manifest_id: str, installed: str) -> Available | None:
    """What an app at `installed` would be updated to, or None (up to date, not in catalog)."""
    try:
        newest = catalog.entry(manifest_id)
        current = Version.parse(installed)
        between = [catalog.entry(manifest_id, v) for v in catalog.versions(manifest_id)]
    except (CatalogError, VersionError):
        return None
    if newest.version <= current or newest.version.is_prerelease:
        return None
    marked = any(
        e.manifest.update_needs_approval
        for e in between
        if current < e.version <= newest.version and not e.version.is_prerelease
    )
    return Available(newest, marked)


class AutoUpdater:
    """The nightly loop: `tick()` is one pass (tests call it with their clock), `run()` loops."""

    def __init__(
        self, commands: Commands, zone: ZoneInfo, clock: Clock, *, interval: float
    ) -> None:
        self.commands = commands
        self.apps = commands.apps
        self.store = commands.apps.store
        self.catalog = commands.catalog
        self.zone = zone
        self.clock = clock
        self.interval = interval
        self._stop = asyncio.Event()

    def _night(self, settings: AutoUpdateSettings) -> date | None:
        return settings.night(self.clock().astimezone(self.zone))

    async def tick(self) -> int:
        """Update, one after the other, the apps due tonight; how many updates were started."""
        await self._count_available()
        settings = await load_settings(self.store)
        if self._night(settings) is None:
            return 0
        rows = await self.store.pool.fetch(
            "SELECT app_id::text FROM apps.apps WHERE state = 'installed' ORDER BY location, domain"
        )
        started = 0
        for r in rows:
            if self._stop.is_set():
                break
            settings = await load_settings(self.store)  # changed while the last one ran
            night = self._night(settings)
            if night is None:
                break  # the window closed: the rest wait for the next night
            app_id = r["app_id"]
            if app_id in settings.opted_out:
                continue
            s = await self.apps.load(app_id)
            if s.state is not State.installed or s.operation is not None:
                continue
            new = available(self.catalog, s.manifest_id, s.app_version)
            if new is None or new.needs_approval or await self._tried(app_id, night):
                continue
            task_id = await self._start(s, new.entry, night)
            if task_id is None:
                continue
            started += 1
            if not await self._ended(task_id):
                log.error(
                    "the automatic update of app %s (task %s) did not end within %d s; no more"
                    " automatic updates this night",
                    app_id,
                    task_id,
                    UPDATE_DEADLINE,
                )
                break
        return started

    async def _count_available(self) -> None:
        """The gauge of each installed app: is a newer release in the catalog?"""
        rows = await self.store.pool.fetch(
            "SELECT app_id::text, location, manifest_id, version FROM apps.apps"
            " WHERE state = 'installed'"
        )
        seen = set()
        for r in rows:
            new = available(self.catalog, r["manifest_id"], r["version"])
            UPDATE_AVAILABLE.labels(r["app_id"], r["location"]).set(0 if new is None else 1)
            seen.add((r["app_id"], r["location"]))
        for metric in UPDATE_AVAILABLE.collect():
            for sample in metric.samples:
                labels = (sample.labels["app_id"], sample.labels["location"])
                if labels not in seen:
                    with contextlib.suppress(KeyError):
                        UPDATE_AVAILABLE.remove(*labels)

    async def _tried(self, app_id: str, night: date) -> bool:
        """Whether this night already started an update of the app (one try per night)."""
        return any(
            e.type == "AppAutoUpdateStarted" and e.data["night"] == night.isoformat()
            for e in await self.store.read_stream(ev.app_stream(app_id))
        )

    async def _start(self, s: AppState, entry: CatalogEntry, night: date) -> str | None:
        def started(task_id: str) -> list[object]:
            return [
                ev.AppAutoUpdateStarted(
                    app_id=s.app_id,
                    task_id=task_id,
                    from_version=s.app_version,
                    to_version=str(entry.version),
                    night=night.isoformat(),
                )
            ]

        title = f"Update {entry.manifest.title} to {entry.version} (automatic)"
        with context.use(Context(actor="system", correlation_id=str(uuid7()))):
            try:
                reply = await self.commands.start_update(
                    s, entry.manifest, title=title, also=started
                )
            except AppsError as e:  # busy meanwhile, needs a newer platform: not tonight
                log.warning("app %s is not updated automatically: %s", s.app_id, e.message)
                return None
        log.info("automatic update of app %s to %s started", s.app_id, entry.version)
        return str(reply["task_id"])

    async def _ended(self, task_id: str) -> bool:
        """Wait for the update's task to end (succeeded, or failed and rolled back)."""
        deadline = time.monotonic() + UPDATE_DEADLINE
        while time.monotonic() < deadline:
            if (await Task.load(self.store, task_id)).ended:
                return True
            await asyncio.sleep(POLL_SECONDS)
        return False

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.tick()
            except Exception:
                log.exception("automatic app updates: a pass failed; trying again later")
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval)
            except TimeoutError:
                pass

    def stop(self) -> None:
        self._stop.set()


def _admin(what: str) -> None:
    if not context.current().is_admin:
        raise NotAdmin(what)


class AutoUpdateHandlers:
    """The bus commands and queries of automatic updates (libs/contracts/apps.py)."""

    def __init__(self, commands: Commands, zone_name: str) -> None:
        self.commands = commands
        self.store = commands.apps.store
        self.zone_name = zone_name
        self._lock = asyncio.Lock()

    async def _view(self) -> dict[str, Any]:
        s = await load_settings(self.store)
        return {
            "enabled": s.enabled,
            "window_start": s.window_start,
            "window_end": s.window_end,
            "time_zone": self.zone_name,
            "opted_out": sorted(s.opted_out),
        }

    @command("set_auto_update")
    async def set_auto_update(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        _admin("change how apps are updated")
        async with self._lock:
            s = await load_settings(self.store)
            new = ev.AppsAutoUpdateSet(
                enabled=bool(payload.get("enabled", s.enabled)),
                window_start=str(payload.get("window_start", s.window_start)),
                window_end=str(payload.get("window_end", s.window_end)),
            )
            if new.window_start == new.window_end:
                raise InvalidRequest(
                    "window_end must differ from window_start (the window would be empty)",
                    field="window_end",
                )
            await self.store.append(ev.SETTINGS_STREAM, [new], expected_version=s.version)
        return await self._view()

    @command("set_app_auto_update")
    async def set_app_auto_update(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        _admin("change how apps are updated")
        app_id = str(uuid.UUID(payload["app_id"]))
        if not (await self.commands.apps.load(app_id)).exists:
            raise AppNotFound(f"no app {app_id}", field="app_id")
        async with self._lock:
            s = await load_settings(self.store)
            new = ev.AppAutoUpdateSet(app_id=app_id, enabled=bool(payload["enabled"]))
            if (app_id not in s.opted_out) != new.enabled:
                await self.store.append(ev.SETTINGS_STREAM, [new], expected_version=s.version)
        return {"app_id": app_id, "enabled": new.enabled}

    @query("auto_update")
    async def auto_update(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        _admin("see how apps are updated")
        return await self._view()

    @query("pending_updates")
    async def pending_updates(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The apps whose update waits for an administrator: a newer release needing approval,
        or an update requested and waiting for `approve_update`."""
        _admin("see which updates wait for approval")
        rows = await self.store.pool.fetch(
            "SELECT app_id::text, location, domain, manifest_id, version, state,"
            " awaiting_approval, target_version, task_id::text"
            " FROM apps.apps WHERE state IN ('installed', 'pending_update')"
            " ORDER BY location, domain"
        )
        items = []
        for r in rows:
            if r["state"] == State.pending_update.value:
                if not r["awaiting_approval"]:
                    continue
                to, task_id = r["target_version"], r["task_id"]
            else:
                new = available(self.commands.catalog, r["manifest_id"], r["version"])
                if new is None or not new.needs_approval:
                    continue
                to, task_id = str(new.entry.version), None
            items.append(
                {
                    "app_id": r["app_id"],
                    "location": r["location"],
                    "domain": r["domain"],
                    "manifest_id": r["manifest_id"],
                    "version": r["version"],
                    "available_version": to,
                    "awaiting_approval": bool(r["awaiting_approval"]),
                    "task_id": task_id,
                }
            )
        return {"items": items}


@asynccontextmanager
async def auto_updates(
    svc: Service, cfg: AppsConfig, commands: Commands, clock: Clock | None = None
) -> AsyncIterator[AutoUpdateHandlers]:
    """The bus handlers of automatic updates and, unless HP_AUTO_UPDATE_LOOP is off, the
    nightly loop (task `apps.auto_update`, cancelled on a stop: the driver resumes an update
    it was waiting for at the next start)."""
    zone, name = server_zone(cfg.time_zone)
    handlers = AutoUpdateHandlers(commands, name)
    if not cfg.auto_update_loop:
        yield handlers
        return
    updater = AutoUpdater(commands, zone, clock or utcnow, interval=cfg.auto_update_interval)
    async with loop(svc, "apps.auto_update", updater.run(), updater.stop, cancel=True):
        yield handlers
