"""kill -9 the apps service in the middle of an install and of an update, then start it again:
each operation finishes (or, when it cannot, rolls back) and never stays half-done.

The service runs as a child process with HP_APPS_PAUSE_AFTER=<operation>:<step>, which makes
its worker stop right after recording that step; the test kills it there with SIGKILL.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from libs.events.bus import BusError
from tests.apps.appskit import STATIC, Apps, AppsProcess, apps_env, connected, static_catalog

pytestmark = pytest.mark.timeout(400)

EVERYONE = {"all_users": True}


@asynccontextmanager
async def _crashable(
    dsn: str, nats_url: str, tmp_path: Path, docker_host: str, uniq: str, **extra: str
) -> AsyncIterator[tuple[Apps, AppsProcess]]:
    """The apps service as a child process (started by the test) with a client of its bus; the
    child is stopped at the end."""
    env = apps_env(
        dsn=dsn,
        nats_url=nats_url,
        tmp_path=tmp_path,
        docker_host=docker_host,
        prefix=f"k{uniq[:8]}",
        catalog=static_catalog(tmp_path / "catalog"),
        extra=extra,
    )
    proc = AppsProcess(env, tmp_path / "apps.log")
    async with connected(env) as apps:
        try:
            yield apps, proc
        finally:
            proc.stop()


async def _ready(apps: Apps, proc: AppsProcess) -> None:
    end = time.monotonic() + 60
    while time.monotonic() < end:
        assert proc.proc is not None and proc.proc.poll() is None, proc.tail()
        try:
            await apps.bus.query("apps", "apps", {}, timeout=1)
            return
        except BusError:
            await asyncio.sleep(0.2)
    raise AssertionError(f"the apps service did not answer within 60 s:\n{proc.tail()}")


async def _recorded(apps: Apps, app_id: str, operation: str, step: str) -> None:
    end = time.monotonic() + 90
    while time.monotonic() < end:
        for e in await apps.store.read_stream(f"app-{app_id}"):
            if e.type == "AppStepCompleted" and (e.data["operation"], e.data["step"]) == (
                operation,
                step,
            ):
                await asyncio.sleep(0.3)  # the worker is now paused after the step
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{operation}:{step} was not recorded: {await apps.events(app_id)}")


def _steps_once(events: list[tuple[str, str, str]]) -> None:
    counts = Counter((op, step) for kind, op, step in events if kind == "AppStepCompleted")
    assert all(n == 1 for n in counts.values()), counts


async def _step_events(apps: Apps, app_id: str) -> list[tuple[str, str, str]]:
    return [
        (e.type, e.data.get("operation", ""), e.data.get("step", ""))
        for e in await apps.store.read_stream(f"app-{app_id}")
    ]


@pytest.mark.slow
async def test_kill_9_during_install_and_update_then_restart_finishes_or_rolls_back(
    dsn: str, nats_url: str, tmp_path: Path, docker_host: str, uniq: str
) -> None:
    # 2.0.0 fails once the ready timeout is over; the others answer within a second
    crashable = _crashable(dsn, nats_url, tmp_path, docker_host, uniq, HP_READY_TIMEOUT="3")
    async with crashable as (apps, proc):
        # -- install: killed after three different steps -------------------------------
        for step in ("image", "storage", "container"):
            proc.start(HP_APPS_PAUSE_AFTER=f"install:{step}")
            await _ready(apps, proc)
            reply = await apps.cmd(
                "install",
                {
                    "manifest_id": STATIC,
                    "version": "1.0.0",
                    "location": f"at-{step}",
                    "access": EVERYONE,
                },
            )
            app_id = reply["app_id"]
            await _recorded(apps, app_id, "install", step)
            proc.kill9()
            assert (await apps.events(app_id))[-1] == "AppStepCompleted"  # half-done

            proc.start()
            await _ready(apps, proc)
            end = await apps.wait_task(reply["task_id"], 90)
            assert end["type"] == "TaskSucceeded", (step, end, proc.tail())
            info = await apps.app(app_id)
            assert info["state"] == "installed" and info["health"] == "healthy", info
            assert (await apps.page(app_id))[0] == 200
            _steps_once(await _step_events(apps, app_id))
            containers = apps.docker.containers.list(
                all=True, filters={"label": f"homeport.app={app_id}"}
            )
            assert len(containers) == 1
            proc.stop()

        # -- update: killed after three different steps ---------------------------------
        target = app_id  # the app installed last
        c = apps.container(target)
        r = c.exec_run(["sh", "-c", "echo kept > /app/data/www/index.html"], user="1000:1000")
        assert r.exit_code == 0
        for step, version in (
            ("snapshot", "1.1.0"),
            ("image", "1.2.0"),
            ("container", "2.0.0"),
        ):
            proc.start(HP_APPS_PAUSE_AFTER=f"update:{step}")
            await _ready(apps, proc)
            reply = await apps.cmd("update", {"app_id": target, "version": version})
            if reply["needs_approval"]:
                await apps.cmd("approve_update", {"app_id": target})
            await _recorded(apps, target, "update", step)
            proc.kill9()
            state = await apps.store.pool.fetchval(
                "SELECT state FROM apps.apps WHERE app_id = $1", target
            )
            assert state == "pending_update"  # half-done

            proc.start()
            await _ready(apps, proc)
            end = await apps.wait_task(reply["task_id"], 90)
            info = await apps.app(target)
            if version == "2.0.0":  # never healthy: rolled back to the version before
                assert end["type"] == "TaskFailed", end
                assert info["state"] == "installed" and info["version"] == "1.2.0", info
                assert "rolled back" in end["message"]
            else:
                assert end["type"] == "TaskSucceeded", (step, end, proc.tail())
                assert info["state"] == "installed" and info["version"] == version, info
            label = apps.container(target).attrs["Config"]["Labels"]["homeport.version"]
            assert label == info["version"]
            status, body = await apps.page(target)
            assert status == 200 and "kept" in body
            proc.stop()


async def test_kill_9_once_an_install_is_recorded_its_task_is_told_at_the_next_start(
    dsn: str, nats_url: str, tmp_path: Path, docker_host: str, uniq: str
) -> None:
    async with _crashable(dsn, nats_url, tmp_path, docker_host, uniq) as (apps, proc):
        proc.start(HP_APPS_PAUSE_AFTER="install:outcome")
        await _ready(apps, proc)
        payload = {"manifest_id": STATIC, "version": "1.0.0", "location": "told"}
        reply = await apps.cmd("install", {**payload, "access": EVERYONE})
        end = time.monotonic() + 90
        while "AppInstalled" not in await apps.events(reply["app_id"]):
            assert time.monotonic() < end, await apps.events(reply["app_id"])
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # the worker is now paused after recording the outcome
        proc.kill9()
        assert (await apps.task(reply["task_id"]))[-1] == "TaskProgressed"  # not told yet

        proc.start()
        await _ready(apps, proc)
        told = await apps.wait_task(reply["task_id"], 60)
        assert told["type"] == "TaskSucceeded", (told, proc.tail())
        assert told["message"].startswith("Static website installed"), told
