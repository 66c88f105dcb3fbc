"""Automatic app updates in the nightly window, on the real apps service and dockerd.

The service runs with an injected clock (no sleeping until 03:00) and its loop looking every
0.2 s; the window is in the server's time zone (HP_TIME_ZONE=Europe/Berlin here, the clock in
UTC). The static app in several catalog versions (tests/apps/appskit.py static_catalog).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from libs.events.bus import Forbidden, Invalid, NotFound
from libs.events.context import Context
from services.apps.__main__ import build
from services.apps.autoupdate import window_night
from tests.apps.appskit import STATIC, Apps, EnvFor, connected, static_catalog
from tests.support.serving import serving
from tests.support.waits import wait_until

pytestmark = pytest.mark.timeout(300)

EVERYONE = {"all_users": True}
APPROVE = "org.example.approve"  # 1.1.0; 1.2.0 needs approval; 1.3.0 does not
BROKEN = "org.example.broken"  # 1.0.0; 2.0.0 never answers (its update is rolled back)
BERLIN = ZoneInfo("Europe/Berlin")


def autoupdate_catalog(dest: Path) -> Path:
    """STATIC 1.0.0 -> 1.1.0 (the newest); APPROVE and BROKEN as their names say."""
    static_catalog(dest)
    for app, versions in ((APPROVE, ("1.1.0", "1.2.0")), (BROKEN, ("1.0.0", "2.0.0"))):
        for version in versions:
            shutil.copytree(dest / STATIC / version, dest / app / version)
            _edit(dest / app / version, {"id": app, "title": f"Copy {app}"})
    shutil.copytree(dest / STATIC / "1.1.0", dest / APPROVE / "1.3.0")
    _edit(dest / APPROVE / "1.3.0", {"id": APPROVE, "version": "1.3.0"})
    for version in ("1.2.0", "2.0.0"):
        shutil.rmtree(dest / STATIC / version)
    shutil.rmtree(dest / STATIC / "1.0.1")
    return dest


def _edit(d: Path, change: dict[str, Any]) -> None:
    manifest = json.loads((d / "manifest.json").read_text())
    manifest.update(change)
    (d / "manifest.json").write_text(json.dumps(manifest, indent=2))


@dataclass
class FakeClock:
    """The service's clock: the test sets `now`; `reads` counts the loop's looks."""

    now: datetime
    reads: int = field(default=0)

    def __call__(self) -> datetime:
        self.reads += 1
        return self.now


def berlin(day: int, hour: int, minute: int) -> datetime:
    """That Berlin wall-clock time, told as UTC (as the real clock would)."""
    return datetime(2026, 12, day, hour, minute, tzinfo=BERLIN).astimezone(UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(berlin(5, 2, 59))


@pytest.fixture
async def apps(
    monkeypatch: pytest.MonkeyPatch, apps_env_for: EnvFor, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[Apps]:
    extra = {
        "HP_READY_TIMEOUT": "3",  # BROKEN's 2.0.0 fails after it; the others answer at once
        "HP_TIME_ZONE": "Europe/Berlin",
        "HP_AUTO_UPDATE_LOOP": "1",
        "HP_AUTO_UPDATE_INTERVAL": "0.2",
    }
    env = apps_env_for(autoupdate_catalog(tmp_path / "catalog"), letter="u", extra=extra)
    async with (
        serving(monkeypatch, partial(build, clock=clock), env, "apps"),
        connected(env) as running,
    ):
        yield running


async def install(apps: Apps, manifest_id: str, version: str, location: str) -> str:
    reply = await apps.cmd(
        "install",
        {"manifest_id": manifest_id, "version": version, "location": location, "access": EVERYONE},
    )
    end = await apps.wait_task(reply["task_id"])
    assert end["type"] == "TaskSucceeded", end
    return str(reply["app_id"])


async def looks(clock: FakeClock, n: int = 3) -> None:
    """Until the loop has read the clock `n` more times (whole passes in between)."""
    target = clock.reads + n

    async def enough() -> bool:
        return clock.reads >= target

    await wait_until(enough, 30, f"{n} looks at the clock")


async def version(apps: Apps, app_id: str) -> str:
    return str((await apps.app(app_id))["version"])


@pytest.mark.slow
async def test_inside_the_window_apps_update_one_at_a_time_and_approval_is_listed(
    apps: Apps, clock: FakeClock
) -> None:
    first = await install(apps, STATIC, "1.0.0", "alpha")
    second = await install(apps, STATIC, "1.0.0", "beta")
    kept = await install(apps, STATIC, "1.0.0", "gamma")
    marked = await install(apps, APPROVE, "1.1.0", "delta")
    opted = await apps.cmd("set_app_auto_update", {"app_id": kept, "enabled": False})
    assert opted == {"app_id": kept, "enabled": False}
    settings = await apps.ask("auto_update", {})
    assert settings == {
        "enabled": True,
        "window_start": "03:00",
        "window_end": "05:00",
        "time_zone": "Europe/Berlin",
        "opted_out": [kept],
    }

    await looks(clock)  # 02:59 in Berlin (01:59 UTC): outside the window
    for app_id in (first, second, kept, marked):
        assert "AppUpdateRequested" not in await apps.events(app_id)

    clock.now = berlin(5, 3, 30)

    async def both_updated() -> bool:
        return [await version(apps, first), await version(apps, second)] == ["1.1.0", "1.1.0"]

    await wait_until(both_updated, 150, "alpha and beta updated to 1.1.0")
    await looks(clock)
    assert await version(apps, kept) == "1.0.0"  # opted out
    assert await version(apps, marked) == "1.1.0"  # 1.2.0 on the way needs approval
    assert "AppUpdateRequested" not in await apps.events(kept)
    assert "AppUpdateRequested" not in await apps.events(marked)

    # one after the other: beta's update was asked for after alpha's had ended
    a = {e.type: e for e in await apps.store.read_stream(f"app-{first}")}
    b = {e.type: e for e in await apps.store.read_stream(f"app-{second}")}
    assert a["AppUpdated"].position < b["AppUpdateRequested"].position
    for events in (a, b):
        started = events["AppAutoUpdateStarted"]
        assert started.meta["actor"] == "system"
        assert started.data["reason"] == "automatic" and started.data["night"] == "2026-12-05"
        assert started.data["to_version"] == "1.1.0"
        task = await apps.store.read_stream(f"task-{started.data['task_id']}")
        assert task[0].data["owner"] == "system" and "(automatic)" in task[0].data["title"]
    snaps = (await apps.ask("snapshots", {"app_id": first}))["items"]
    assert [(s["version"], s["reason"]) for s in snaps] == [("1.0.0", "update")]

    pending = (await apps.ask("pending_updates", {}))["items"]
    assert [(p["app_id"], p["version"], p["available_version"]) for p in pending] == [
        (marked, "1.1.0", "1.3.0")
    ]
    assert pending[0]["awaiting_approval"] is False


@pytest.mark.slow
async def test_a_failed_update_is_rolled_back_and_not_retried_the_same_night(
    apps: Apps, clock: FakeClock
) -> None:
    app_id = await install(apps, BROKEN, "1.0.0", "broken")
    clock.now = berlin(6, 0, 30)  # a window spanning midnight: the night began on the 5th
    await apps.cmd("set_auto_update", {"window_start": "23:00", "window_end": "01:00"})

    async def failed() -> bool:
        return "AppOperationFailed" in await apps.events(app_id)

    await wait_until(failed, 90, "the update to 2.0.0 to fail")
    info = await apps.app(app_id)
    assert info["state"] == "installed" and info["version"] == "1.0.0"  # rolled back
    await looks(clock, 5)
    assert (await apps.events(app_id)).count("AppAutoUpdateStarted") == 1

    clock.now = berlin(6, 23, 10)  # the next night: tried again

    async def tried_again() -> bool:
        return (await apps.events(app_id)).count("AppAutoUpdateStarted") == 2

    await wait_until(tried_again, 30, "a second try the next night")
    nights = [
        e.data["night"]
        for e in await apps.store.read_stream(f"app-{app_id}")
        if e.type == "AppAutoUpdateStarted"
    ]
    assert nights == ["2026-12-05", "2026-12-06"]

    async def failed_twice() -> bool:
        return (await apps.events(app_id)).count("AppOperationFailed") == 2

    await wait_until(failed_twice, 90, "the second try to end")


async def test_settings_are_for_admins_and_bad_input_names_the_field(apps: Apps) -> None:
    user = Context("0190a0a0-0000-7000-8000-000000000001", "apps-test", None, None)
    with pytest.raises(Forbidden):
        await apps.bus.command("apps", "set_auto_update", {"enabled": False}, ctx=user)
    with pytest.raises(Forbidden):
        await apps.bus.query("apps", "pending_updates", {}, ctx=user)
    for payload, name in (
        ({"window_start": "3:00"}, "window_start"),
        ({"window_end": "24:00"}, "window_end"),
        ({"window_start": "05:00"}, "window_end"),  # equal to the end: an empty window
        ({"enabled": "yes"}, "enabled"),
    ):
        with pytest.raises(Invalid) as bad:
            await apps.cmd("set_auto_update", payload)
        assert bad.value.field == name, (payload, bad.value)
    with pytest.raises(NotFound) as missing:
        await apps.cmd(
            "set_app_auto_update",
            {"app_id": "0190a0a0-0000-7000-8000-0000000000ff", "enabled": False},
        )
    assert missing.value.field == "app_id"
    assert (await apps.store.read_stream("apps-settings")) == []
    changed = await apps.cmd("set_auto_update", {"enabled": False, "window_end": "06:30"})
    assert (changed["enabled"], changed["window_start"], changed["window_end"]) == (
        False,
        "03:00",
        "06:30",
    )


def test_the_window_is_read_in_local_time_and_may_span_midnight() -> None:
    def at(day: int, hh: int, mm: int) -> datetime:
        return datetime(2026, 12, day, hh, mm, tzinfo=BERLIN)

    assert window_night(at(5, 2, 59), "03:00", "05:00") is None
    assert window_night(at(5, 3, 0), "03:00", "05:00") == date(2026, 12, 5)
    assert window_night(at(5, 4, 59), "03:00", "05:00") == date(2026, 12, 5)
    assert window_night(at(5, 5, 0), "03:00", "05:00") is None
    assert window_night(at(5, 23, 30), "23:00", "01:00") == date(2026, 12, 5)
    assert window_night(at(6, 0, 59), "23:00", "01:00") == date(2026, 12, 5)
    assert window_night(at(6, 1, 0), "23:00", "01:00") is None
    assert window_night(at(6, 12, 0), "23:00", "01:00") is None
