"""The platform's own updates as the dashboard shows them (issue 15): the running version, the
newest signed release when it is newer (with its changelog), when that was last checked, the
last update's outcome, the nightly update's setting, and whether Debian asks for a reboot.

The apps service owns this because it already owns updates and fetches signed catalogs; it only
ever looks. Installing needs root: `homeport update` (or its nightly timer,
`homeport-update.timer`, which runs `homeport update --scheduled`) does it and records the
outcome (services/apps/platform_events.py). The release URL and the pinned key are read through
`Layout(HP_INSTALL_ROOT)`: `/etc/homeport/release-url` and `release.pub`, readable by the
homeport group. Without them (`homeport up`, `make run`) there is nothing to check: the answer
says so (`server_install: false`).

The check (`deploy.release.fetch_manifest`: the signature is checked before anything of the
manifest is parsed) runs at start, then every HP_PLATFORM_CHECK_INTERVAL seconds (0: only when
asked), and when an admin presses "Check now"; its result is kept in memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deploy.layout import Layout
from deploy.release import Manifest, ReleaseError, fetch_manifest, is_newer, load_public_key
from libs.events import context
from libs.events.handlers import command, query
from libs.events.store import PostgresEventStore
from libs.events.wiring import loop
from libs.service.metrics import REGISTRY, Gauge
from libs.service.runner import Service
from libs.service.version import package_version
from services.apps import platform_events as pev
from services.apps.config import AppsConfig
from services.apps.errors import NotAdmin

__all__ = [
    "CheckResult",
    "PlatformUpdates",
    "platform_updates",
    "reboot_required",
    "running_version",
]

log = logging.getLogger("services.apps.platform")

MAX_PACKAGES = 200  # names read from reboot-required.pkgs
UPDATE_AVAILABLE = Gauge(
    "homeport_platform_update_available",
    "1 when the last check of the release URL found a newer signed release, else 0",
    registry=REGISTRY,
)


def running_version(layout: Layout) -> str:
    """The version running: where `current` points on a server install (what
    `homeport update` compares with), else the code's package version."""
    return layout.version_of(layout.current) or package_version()


def reboot_required(flag: Path) -> tuple[bool, list[str]]:
    """Whether Debian asks for a reboot (`/run/reboot-required`) and the packages that do
    (`/run/reboot-required.pkgs`, one a line, each named once)."""
    if not flag.exists():
        return False, []
    try:
        lines = flag.with_name(flag.name + ".pkgs").read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    packages = list(dict.fromkeys(p.strip() for p in lines if p.strip()))
    return True, packages[:MAX_PACKAGES]


@dataclass(frozen=True)
class CheckResult:
    """The last check of the release URL: a newer verified release, or none, or why not."""

    checked_at: datetime
    available: Manifest | None = None
    error: str | None = None


def _admin(what: str) -> None:
    if not context.current().is_admin:
        raise NotAdmin(what)


class PlatformUpdates:
    """The bus handlers of the platform's updates (libs/contracts/apps.py) and the check."""

    def __init__(self, store: PostgresEventStore, layout: Layout, reboot_flag: Path) -> None:
        self.store = store
        self.layout = layout
        self.reboot_flag = reboot_flag
        self.last: CheckResult | None = None
        self._lock = asyncio.Lock()
        self._setting_lock = asyncio.Lock()
        self._stop = asyncio.Event()

    @property
    def server_install(self) -> bool:
        """A server install: the release URL and the pinned key are there."""
        return self.layout.release_url_file.exists() and self.layout.release_key.exists()

    def _check_now(self) -> CheckResult:
        now = datetime.now(UTC)
        current = running_version(self.layout)
        try:
            url = self.layout.release_url_file.read_text().strip()
            if not url:
                return CheckResult(now, error=f"{self.layout.release_url_file} is empty")
            manifest = fetch_manifest(url, load_public_key(self.layout.release_key))
            if is_newer(current, manifest.version):
                raise ReleaseError(
                    f"version {manifest.version} is older than the running {current}: refused"
                )
        except (ReleaseError, OSError) as e:
            return CheckResult(now, error=str(e))
        return CheckResult(now, manifest if is_newer(manifest.version, current) else None)

    async def check(self) -> CheckResult | None:
        """Check the release URL now (None when this is no server install)."""
        if not self.server_install:
            return None
        async with self._lock:
            result = await asyncio.to_thread(self._check_now)
            self.last = result
        if result.error:
            log.warning("platform update check: %s", result.error)
        else:  # a failed check says nothing new: the gauge keeps what the last one found
            UPDATE_AVAILABLE.set(1 if result.available is not None else 0)
        return result

    async def run(self, interval: float) -> None:
        """Check at start, then every `interval` seconds (0: once)."""
        while not self._stop.is_set():
            try:
                await self.check()
            except Exception:
                log.exception("platform update check failed; trying again later")
            if interval <= 0:
                return
            try:
                await asyncio.wait_for(self._stop.wait(), interval)
            except TimeoutError:
                pass

    def stop(self) -> None:
        self._stop.set()

    async def _auto_update(self) -> tuple[bool, int]:
        events = await self.store.read_stream(pev.SETTINGS_STREAM)
        return pev.auto_update_enabled(events), (events[-1].version if events else 0)

    async def _last_update(self) -> dict[str, Any] | None:
        version = await self.store.stream_version(pev.UPDATES_STREAM)
        if version == 0:
            return None
        last = (await self.store.read_stream(pev.UPDATES_STREAM, after_version=version - 1))[-1]
        outcome = {
            "PlatformUpdateStarted": "started",
            "PlatformUpdated": "updated",
            "PlatformUpdateRolledBack": "rolled_back",
            "PlatformUpdateRefused": "refused",
        }.get(last.type, "unknown")
        summary = last.meta.get("summary")
        return {
            "outcome": outcome,
            "summary": summary if isinstance(summary, str) else last.type,
            "at": last.recorded_at.isoformat(),
            "from_version": last.data.get("from_version"),
            "to_version": last.data.get("to_version"),
        }

    async def _view(self) -> dict[str, Any]:
        enabled, _ = await self._auto_update()
        required, packages = await asyncio.to_thread(reboot_required, self.reboot_flag)
        server = self.server_install
        last = self.last
        available = last.available if last else None
        return {
            "version": running_version(self.layout),
            "server_install": server,
            "checked_at": last.checked_at.isoformat() if last else None,
            "available": None
            if available is None
            else {
                "version": available.version,
                "changelog": available.changelog,
                "created": available.created,
            },
            "check_error": last.error if last else None,
            "auto_update": enabled,
            "last_update": await self._last_update(),
            "reboot_required": required,
            "reboot_packages": packages,
        }

    @query("platform_update")
    async def platform_update(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        _admin("see the platform's updates")
        return await self._view()

    @command("check_platform_update")
    async def check_platform_update(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        _admin("check for platform updates")
        await self.check()
        return await self._view()

    @command("set_platform_auto_update")
    async def set_platform_auto_update(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        _admin("change how the platform is updated")
        enabled = bool(payload["enabled"])
        async with self._setting_lock:
            now, version = await self._auto_update()
            if now != enabled:
                await self.store.append(
                    pev.SETTINGS_STREAM,
                    [pev.PlatformAutoUpdateSet(enabled=enabled)],
                    expected_version=version,
                )
        return await self._view()


@asynccontextmanager
async def platform_updates(
    svc: Service, cfg: AppsConfig, store: PostgresEventStore
) -> AsyncIterator[PlatformUpdates]:
    """The handlers, and the check loop (task `apps.platform_check`) on a server install."""
    updates = PlatformUpdates(store, Layout(cfg.install_root), cfg.reboot_required_file)
    if not updates.server_install:
        yield updates
        return
    run = updates.run(cfg.platform_check_interval)
    async with loop(svc, "apps.platform_check", run, updates.stop, cancel=True):
        yield updates
