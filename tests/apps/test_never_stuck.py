"""No app is ever stuck (issue 13, item 2): a location is taken when the command that wants it
is accepted, an unexpected failure of a step ends the operation in `error`, and every app in
`error` can be repaired or uninstalled. Through the real apps service's bus, on the real dockerd.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from libs.events.bus import Conflict, Invalid, NotFound, Unavailable
from libs.events.tasks import Task
from services.apps import events as ev
from services.apps.streams import app_streams
from tests.apps.appskit import STATIC, Apps, EnvFor, running_apps, static_catalog

pytestmark = pytest.mark.timeout(240)

EVERYONE = {"all_users": True}


@pytest.fixture
def env(apps_env_for: EnvFor, tmp_path: Path) -> dict[str, str]:
    return apps_env_for(
        static_catalog(tmp_path / "catalog"),
        extra={"HP_READY_TIMEOUT": "8", "HP_EDGE_WAIT_SECONDS": "0"},
    )


@pytest.fixture
async def apps(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> AsyncIterator[Apps]:
    async with running_apps(monkeypatch, env) as running:
        yield running


async def install(apps: Apps, location: str, **extra: object) -> str:
    payload = {"manifest_id": STATIC, "version": "1.0.0", "location": location, "access": EVERYONE}
    payload |= extra
    reply = await apps.cmd("install", payload)
    end = await apps.wait_task(reply["task_id"])
    assert end["type"] == "TaskSucceeded", end
    return str(reply["app_id"])


async def test_a_location_being_moved_to_is_taken_at_once(apps: Apps) -> None:
    a = await install(apps, "first")
    moving = await apps.cmd("configure", {"app_id": a, "location": "x"})
    # the location is A's from the moment its configure is accepted: B cannot take it
    with pytest.raises(Conflict) as taken:
        await apps.cmd("install", {"manifest_id": STATIC, "location": "x", "version": "1.0.0"})
    assert taken.value.field == "location"
    end = await apps.wait_task(moving["task_id"])
    assert end["type"] == "TaskSucceeded", end
    info = await apps.app(a)
    assert info["state"] == "installed" and info["location"] == "x"
    # and the location A left is free at once
    b = await install(apps, "first")
    assert (await apps.app(b))["location"] == "first"
    assert (await apps.cmd("stop", {"app_id": a}))["running"] is False


async def seed_app(apps: Apps, domain: str, *steps: tuple[str, dict[str, Any]]) -> str:
    """An install recorded in the log as an earlier version of the service recorded it: the
    request, its task and the steps done so far (each with its detail)."""
    app_id = str(uuid.uuid4())
    streams = app_streams(apps.store)
    task = await Task.start(
        apps.store, kind="app.install", title="Install", owner="system", target=f"app-{app_id}"
    )
    request = ev.AppInstallRequested(
        app_id=app_id,
        manifest_id=STATIC,
        version="1.0.0",
        location="old",
        domain=domain,
        access=EVERYONE,
        memory_bytes=64 * 2**20,
        env={},
        task_id=task.id,
    )
    done = [
        ev.AppStepCompleted(app_id=app_id, operation="install", step=name, detail=detail)
        for name, detail in steps
    ]
    await streams.append(app_id, [request, *done], 0)
    return app_id


async def wait_state(apps: Apps, app_id: str, states: set[str], within: float = 60) -> str:
    end = time.monotonic() + within
    state = ""
    while time.monotonic() < end:
        try:
            state = (await apps.app(app_id))["state"]
        except NotFound:
            state = "gone"
        if state in states:
            return state
        await asyncio.sleep(0.2)
    raise AssertionError(f"app {app_id} is still {state} after {within} s, not one of {states}")


async def uninstall(apps: Apps, app_id: str) -> None:
    reply = await apps.cmd("uninstall", {"app_id": app_id})
    end = await apps.wait_task(reply["task_id"], 60)
    assert end["type"] == "TaskSucceeded", end
    with pytest.raises(NotFound):
        await apps.app(app_id)


async def test_an_unexpected_error_in_a_step_ends_in_error_then_repair_or_uninstall(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    async with running_apps(monkeypatch, env) as apps:
        # an install whose network step recorded no subnet (a log no step expects): the addons
        # step after it fails with a KeyError, which no step handles
        odd = await seed_app(apps, "localhost", ("dns", {}), ("certificate", {}), ("network", {}))
    async with running_apps(monkeypatch, env) as apps:  # a start resumes it
        assert await wait_state(apps, odd, {"error", "installed"}) == "error"
        info = await apps.app(odd)
        assert "unexpected error" in info["error"] and "KeyError" in info["error"], info
        task = await apps.store.read_stream(f"task-{info['task_id']}")
        assert task[-1].type == "TaskFailed" and task[-1].data["code"] == "internal"
        # a repair runs the failed step again (it fails the same way, and says so) ...
        reply = await apps.cmd("repair", {"app_id": odd})
        assert (await apps.wait_task(reply["task_id"], 60))["type"] == "TaskFailed"
        assert await wait_state(apps, odd, {"error"}) == "error"
        # ... and uninstalling works whatever step failed
        await uninstall(apps, odd)


async def test_only_the_platforms_domains_and_an_app_on_another_can_be_uninstalled(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    async with running_apps(monkeypatch, env) as apps:
        good = {"manifest_id": STATIC, "version": "1.0.0", "location": "site", "access": EVERYONE}
        for domain in ("evil", "0", "example.org"):
            with pytest.raises((Invalid, Unavailable)) as refused:
                await apps.cmd("install", {**good, "domain": domain})
            assert refused.value.field == "domain" or isinstance(refused.value, Unavailable)
            if domain != "example.org":  # no dns service runs here: it cannot be asked
                assert isinstance(refused.value, Invalid), refused.value
                assert "not one of this platform's domains" in refused.value.message
        app_id = await install(apps, "site", domain="localhost")
        with pytest.raises(Invalid) as refused:
            await apps.cmd("clone", {"app_id": app_id, "location": "copy", "domain": "evil"})
        assert refused.value.field == "domain"
        assert [a["app_id"] for a in (await apps.ask("apps", {}))["items"]] == [app_id]
        # apps an earlier version let in, on a domain that is not the platform's, failed at
        # their dns step: they can be uninstalled (and repaired)
        stuck = []
        for domain in ("evil", "0"):
            app = await seed_app(apps, domain)
            failed = ev.AppOperationFailed(
                app_id=app,
                task_id=(await apps.store.read_stream(f"app-{app}"))[0].data["task_id"],
                operation="install",
                step="dns",
                message="the dns service could not be asked",
                code="dns_unavailable",
                rolled_back=False,
            )
            await app_streams(apps.store).append(app, [failed], 1)
            stuck.append(app)
        assert await wait_state(apps, stuck[0], {"error"}) == "error"
        await uninstall(apps, stuck[0])
        reply = await apps.cmd("repair", {"app_id": stuck[1]})
        assert (await apps.wait_task(reply["task_id"], 60))["type"] == "TaskSucceeded"
        await uninstall(apps, stuck[1])


async def test_env_names_that_break_a_container_are_refused(apps: Apps) -> None:
    good = {"manifest_id": STATIC, "version": "1.0.0", "location": "site", "access": EVERYONE}
    names = ["PATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "HOME", "HOSTNAME", "PWD"]
    names += ["BASH_ENV", "GCONV_PATH", "PYTHONHOME", "homeport_x"]
    for name in names:
        with pytest.raises(Invalid) as refused:
            await apps.cmd("install", {**good, "env": {name: "/tmp"}})
        assert refused.value.field == f"env.{name}", refused.value
    assert (await apps.ask("apps", {}))["items"] == []
    app_id = await install(apps, "site", env={"path": "lower case is another variable"})
    for name in names:
        with pytest.raises(Invalid) as refused:
            await apps.cmd("configure", {"app_id": app_id, "env": {name: "x"}})
        assert refused.value.field == f"env.{name}", refused.value


async def test_a_request_is_checked_before_it_is_refused_as_busy(apps: Apps) -> None:
    app_id = await install(apps, "site")
    other = await install(apps, "other")
    # an update waiting for an administrator's approval keeps the app busy
    waiting = await apps.cmd("update", {"app_id": app_id, "version": "1.2.0"})
    assert waiting["needs_approval"] is True
    bad: list[tuple[str, dict[str, Any], type[Exception], str | None]] = [
        ("configure", {"env": {"PATH": "/x"}}, Invalid, "env.PATH"),
        ("configure", {"env": {"1BAD": "x"}}, Invalid, "env.1BAD"),
        ("configure", {"location": "my"}, Invalid, "location"),
        ("configure", {"access": {"all_users": False}}, Invalid, "access"),
        ("configure", {}, Invalid, None),
        ("update", {"version": "9.9.9"}, NotFound, "version"),
        ("restore", {"snapshot_id": str(uuid.uuid4())}, NotFound, "snapshot_id"),
        ("clone", {"location": "www"}, Invalid, "location"),
    ]
    for verb, payload, error, field in bad:
        with pytest.raises(error) as refused:
            await apps.cmd(verb, {"app_id": app_id, **payload})
        assert refused.value.field == field, (verb, payload, refused.value)
    # a good request is refused as busy; the location another app holds, too
    with pytest.raises(Conflict) as busy:
        await apps.cmd("configure", {"app_id": app_id, "env": {"MODE": "x"}})
    assert "busy" in busy.value.message
    with pytest.raises(Conflict):
        await apps.cmd("configure", {"app_id": app_id, "location": "other"})
    assert (await apps.app(app_id))["state"] == "pending_update"
    assert (await apps.app(other))["state"] == "installed"
