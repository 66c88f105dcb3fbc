"""No app is ever stuck, whatever the order of requests (issue 13, item 2): hypothesis' stateful
testing against the real apps service (in this process, on the real dockerd, Postgres, NATS).

Random interleavings of install, configure (location changes), start/stop, update, uninstall
and repair of 2 to 4 static apps over 3 colliding locations, each command sent without waiting
for the one before to finish (a step may wait for one app's operation to end, while the others
go on). Version 2.0.0 of the static app never answers its health check: an
install of it ends in error, an update to it is rolled back. At the end of each run every app
reaches installed, error or gone within a deadline, no two apps hold one location, every app in
error can be uninstalled, and no operation fails because another app took its location. The
commands may refuse (busy, taken, not installed); they may not fail (no internal error, no
timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)

from libs.events.bus import Conflict, Invalid, NotFound
from tests.apps.appskit import (
    STATIC,
    Apps,
    EnvFor,
    assert_read_model_replays,
    running_apps,
    static_catalog,
)
from tests.support.stateful import real_run_settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

T = TypeVar("T")
LOCATIONS = ("a", "b", "c")
SETTLED = {"installed", "error", "gone"}
SETTLE_SECONDS = 45.0
MAX_APPS = 4  # installs asked for in one run
REFUSALS = (Conflict, Invalid, NotFound)  # a clear "not now" / "not so"; anything else fails


async def test_random_interleavings_leave_no_app_stuck(
    monkeypatch: pytest.MonkeyPatch, apps_env_for: EnvFor, tmp_path: Path
) -> None:
    env = apps_env_for(
        static_catalog(tmp_path / "catalog"),
        letter="s",
        extra={"HP_READY_TIMEOUT": "2", "HP_EDGE_WAIT_SECONDS": "0"},
    )
    loop = asyncio.get_running_loop()
    async with running_apps(monkeypatch, env) as apps:
        # the image of 1.0.0 is built once here, not inside a run's deadline
        first = await apps.cmd("install", payload("warm", "1.0.0"))
        assert (await apps.wait_task(first["task_id"]))["type"] == "TaskSucceeded"
        await uninstall(apps, first["app_id"])

        def call(coro: Coroutine[Any, Any, T]) -> T:
            return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=120)

        machine = machine_for(apps, call)
        # A few short runs fit in about a minute; under CI the same ones every time.
        config = real_run_settings(examples=10, steps=10)
        await asyncio.to_thread(run_state_machine_as_test, machine, settings=config)


def payload(location: str, version: str) -> dict[str, Any]:
    return {
        "manifest_id": STATIC,
        "version": version,
        "location": location,
        "access": {"all_users": True},
    }


async def state_of(apps: Apps, app_id: str) -> str:
    try:
        return str((await apps.app(app_id))["state"])
    except NotFound:
        return "gone"


async def uninstall(apps: Apps, app_id: str) -> None:
    reply = await apps.cmd("uninstall", {"app_id": app_id})
    end = await apps.wait_task(reply["task_id"], 60)
    assert end["type"] == "TaskSucceeded", (app_id, end)
    assert await state_of(apps, app_id) == "gone"


async def settle(apps: Apps, app_ids: list[str]) -> dict[str, str]:
    """Each app's state once all are installed, in error or gone (fails after the deadline)."""
    end = time.monotonic() + SETTLE_SECONDS
    while True:
        states = {a: await state_of(apps, a) for a in app_ids}
        if all(s in SETTLED for s in states.values()):
            return states
        if time.monotonic() > end:
            raise AssertionError(f"apps still pending after {SETTLE_SECONDS} s: {states}")
        await asyncio.sleep(0.05)


async def clear(apps: Apps) -> None:
    """Uninstall every app left (once its operation ends)."""
    items = (await apps.ask("apps", {}))["items"]
    with contextlib.suppress(AssertionError):
        await settle(apps, [a["app_id"] for a in items])
    for app in items:
        with contextlib.suppress(*REFUSALS, AssertionError):
            await uninstall(apps, app["app_id"])
    assert (await apps.ask("apps", {}))["items"] == []


def machine_for(apps: Apps, call: Any) -> type[RuleBasedStateMachine]:
    class Interleavings(RuleBasedStateMachine):
        """Commands sent one after the other, without waiting for their operations."""

        ids = Bundle("apps")

        def __init__(self) -> None:
            super().__init__()
            self.known: list[str] = []
            self.installs = 0
            self.tasks: list[str] = []  # of the commands accepted

        def send(self, verb: str, body: dict[str, Any]) -> Any:
            try:
                reply = call(apps.cmd(verb, body))
            except REFUSALS:
                return None
            if isinstance(reply, dict) and "task_id" in reply:
                self.tasks.append(reply["task_id"])
            return reply

        @rule(
            target=ids,
            location=st.sampled_from(LOCATIONS),
            version=st.sampled_from(["1.0.0", "1.0.0", "2.0.0"]),
        )
        def install(self, location: str, version: str) -> str:
            # A refused install adds an id no app has (commands on it are refused as not
            # found): what the bundle holds must not depend on the service's answers.
            self.installs += 1
            if self.installs > MAX_APPS:
                return str(uuid.uuid4())
            reply = self.send("install", payload(location, version))
            if reply is None:
                return str(uuid.uuid4())
            self.known.append(reply["app_id"])
            return str(reply["app_id"])

        @rule(app_id=ids, location=st.sampled_from(LOCATIONS))
        def configure(self, app_id: str, location: str) -> None:
            self.send("configure", {"app_id": app_id, "location": location})

        @rule(target=ids, app_id=ids, location=st.sampled_from(LOCATIONS))
        def move_and_install_there(self, app_id: str, location: str) -> str:
            """Once A's operation ended, PATCH /apps/A {location: x} at once followed by
            POST /apps {location: x}."""
            call(settle(apps, [app_id]))
            self.send("configure", {"app_id": app_id, "location": location})
            return self.install(location, "1.0.0")

        @rule(app_id=ids, running=st.booleans())
        def start_or_stop(self, app_id: str, running: bool) -> None:
            self.send("start" if running else "stop", {"app_id": app_id})

        @rule(app_id=ids, version=st.sampled_from(["1.1.0", "2.0.0"]))
        def update(self, app_id: str, version: str) -> None:
            self.send("update", {"app_id": app_id, "version": version})

        @rule(app_id=ids)
        def repair(self, app_id: str) -> None:
            self.send("repair", {"app_id": app_id})

        @rule(app_id=consumes(ids))
        def uninstall(self, app_id: str) -> None:
            self.send("uninstall", {"app_id": app_id})

        @rule(app_id=ids)
        def wait_for(self, app_id: str) -> None:
            """Let the app's operation end (the others go on meanwhile)."""
            call(settle(apps, [app_id]))

        @invariant()
        def one_app_per_location(self) -> None:
            items = call(apps.ask("apps", {}))["items"]
            held = [(a["domain"], a["location"]) for a in items]
            assert len(held) == len(set(held)), items

        def teardown(self) -> None:
            try:
                self.check_the_end()
            finally:
                call(clear(apps))  # whatever a failed check left, for the next run

        def check_the_end(self) -> None:
            states = call(settle(apps, self.known))
            # a location is the app's from the moment its command is accepted: no operation
            # fails because another app took it in the meantime
            for task_id in self.tasks:
                end = call(apps.store.read_stream(f"task-{task_id}"))[-1]
                if end.type == "TaskFailed":
                    assert "location is taken" not in end.data["message"], end.data
            # the read model the live appends wrote is the one a replay writes
            call(assert_read_model_replays(apps.store))
            # every app in error can be uninstalled; the others go too, for the next run
            for app_id, state in states.items():
                if state != "gone":
                    call(uninstall(apps, app_id))
            call(assert_read_model_replays(apps.store))

    return Interleavings
