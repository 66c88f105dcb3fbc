"""`homeport update` in the activity log, and the nightly check's setting.

The CLI runs as root on the server with `/etc/homeport/homeport.env`, which names the event
store (HP_DATABASE_URL): it appends its events there itself (services/apps/platform_events.py,
stream `platform-updates`) rather than asking a service over NATS. The update restarts every
service, so a bus command would fail exactly when the outcome matters (the new version's or the
roll-back's); and NATS requires per-service credentials the CLI does not have. The activity log
is a projection of the store, so it shows them like any other event.

Writing an event never fails an update: a store that cannot be reached prints a warning and the
update goes on (`EventLog.record`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deploy.release import Manifest, ReleaseError, fetch_manifest, is_newer, load_public_key
from deploy.update import STEPS, Outcome, UpdateError, Updater, read_env_file
from services.apps import platform_events as pev

__all__ = ["EventLog", "EventLogError", "newer_release", "recorded_update"]

Warn = Callable[[str], None]
_TIMEOUT = 15.0  # seconds to reach the store, append or read
_STEP_NAMES = frozenset(s.name for s in STEPS)


class EventLogError(Exception):
    """The event store cannot be read (only the nightly check needs it: its setting)."""


class EventLog:
    """Appends platform update events to the store at `dsn` (None: nothing is written)."""

    def __init__(self, dsn: str | None, warn: Warn) -> None:
        self.dsn = dsn
        self.warn = warn

    @classmethod
    def from_env_file(cls, path: Path, warn: Warn) -> EventLog:
        """The store named by HP_DATABASE_URL in `path` (homeport.env)."""
        try:
            dsn = read_env_file(path).get("HP_DATABASE_URL") or None
        except (UpdateError, OSError) as e:
            warn(f"cannot read {path}: {e}; the activity log will not show this update")
            return cls(None, warn)
        return cls(dsn, warn)

    async def _append(self, event: Any) -> None:
        from libs.events import context
        from libs.events.context import Context
        from libs.events.store import PostgresEventStore

        assert self.dsn is not None
        store = await asyncio.wait_for(
            PostgresEventStore.open(self.dsn, min_size=1, max_size=1, run_migrations=False),
            _TIMEOUT,
        )
        try:
            with context.use(Context(actor="system")):
                await asyncio.wait_for(store.append(pev.UPDATES_STREAM, [event]), _TIMEOUT)
        finally:
            await store.close()

    def record(self, event: Any) -> None:
        """Append `event` to `platform-updates`; a failure is a warning, never an error."""
        if self.dsn is None:
            self.warn(
                f"no event store (HP_DATABASE_URL): not in the activity log: {event.summary()}"
            )
            return
        try:
            asyncio.run(self._append(event))
        except Exception as e:  # the update matters more than its log line
            self.warn(f"the activity log could not be written ({type(e).__name__}: {e})")

    async def _settings(self) -> list[Any]:
        from libs.events.store import PostgresEventStore

        assert self.dsn is not None
        store = await asyncio.wait_for(
            PostgresEventStore.open(self.dsn, min_size=1, max_size=1, run_migrations=False),
            _TIMEOUT,
        )
        try:
            return list(await asyncio.wait_for(store.read_stream(pev.SETTINGS_STREAM), _TIMEOUT))
        finally:
            await store.close()

    def auto_update_enabled(self) -> bool:
        """Whether the admin turned the nightly update on in the dashboard."""
        if self.dsn is None:
            raise EventLogError("no HP_DATABASE_URL in homeport.env: the setting cannot be read")
        try:
            return pev.auto_update_enabled(asyncio.run(self._settings()))
        except Exception as e:  # driver errors of any kind, named below
            raise EventLogError(
                f"the nightly update setting cannot be read from the event store"
                f" ({type(e).__name__}: {e})"
            ) from e


def newer_release(updater: Updater, current: str) -> Manifest | None:
    """The verified manifest at the release URL when it is newer than `current`; None when it
    is the same version; UpdateError (a refusal) when it is unsigned, altered or older."""
    url = updater.url
    try:
        manifest = fetch_manifest(url, load_public_key(updater.layout.release_key))
        if is_newer(current, manifest.version):
            raise ReleaseError(
                f"version {manifest.version} is older than the running {current}: refused"
            )
    except ReleaseError as e:
        raise UpdateError(str(e)) from e
    return manifest if is_newer(manifest.version, current) else None


class _Steps:
    """Passes the updater's progress lines on and remembers the step running."""

    def __init__(self, progress: Callable[[str], None]) -> None:
        self.progress = progress
        self.step: str | None = None

    def __call__(self, line: str) -> None:
        if line.startswith("[") and "]" in line:
            name = line.split("]", 1)[1].strip().split(":", 1)[0]
            if name in _STEP_NAMES:
                self.step = name
        self.progress(line)


def recorded_update(updater: Updater, log: EventLog, *, scheduled: bool = False) -> Outcome | None:
    """`updater.update()` with its events in the activity log; None when nothing is newer.

    Raises UpdateError as `update` does (after recording the refusal or the failure)."""
    current = updater.current_version()
    try:
        manifest = newer_release(updater, current)
    except UpdateError as e:
        log.record(pev.PlatformUpdateRefused(reason=str(e)))
        raise
    if manifest is None:
        return None
    log.record(
        pev.PlatformUpdateStarted(
            from_version=current, to_version=manifest.version, scheduled=scheduled
        )
    )
    steps = _Steps(updater.progress)
    updater.progress = steps
    started = time.monotonic()
    try:
        outcome = updater.update()
    except UpdateError as e:
        if steps.step == "fetch":
            log.record(pev.PlatformUpdateRefused(reason=str(e)))
        else:
            log.record(
                pev.PlatformUpdateRolledBack(
                    from_version=current,
                    to_version=manifest.version,
                    step=steps.step or "start",
                    reason=str(e),
                )
            )
        raise
    finally:
        updater.progress = steps.progress
    if outcome.rolled_back:
        log.record(
            pev.PlatformUpdateRolledBack(
                from_version=current,
                to_version=outcome.version,
                step=steps.step or "health",
                reason="unhealthy: " + ", ".join(outcome.unhealthy),
            )
        )
    else:
        log.record(
            pev.PlatformUpdated(
                from_version=current,
                to_version=outcome.version,
                seconds=round(time.monotonic() - started, 1),
            )
        )
    return outcome
