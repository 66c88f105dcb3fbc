"""A step's message is told only once the step has run a while (services/apps/operations/
driver.py, PROGRESS_AFTER): most steps end in milliseconds, and an append each would cost an
install more than the step itself. Real Postgres; the delay is shortened, the steps wait on
what they observe rather than on the clock."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from libs.events.store import PostgresEventStore
from libs.events.tasks import Task
from services.apps.operations import driver as driver_module
from services.apps.operations.base import Detail, Run, Step
from services.apps.operations.driver import Driver
from services.apps.state import AppState

DELAY = 0.05


@pytest.fixture(autouse=True)
def _short_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(driver_module, "PROGRESS_AFTER", DELAY)


async def _task(store: PostgresEventStore) -> Task:
    return await Task.start(store, kind="app.install", title="Install a test app", owner="system")


async def _told(store: PostgresEventStore, task: Task) -> list[tuple[int, str]]:
    events = await store.read_stream(task.stream)
    return [(e.data["percent"], e.data["message"]) for e in events if e.type == "TaskProgressed"]


async def _run_step(store: PostgresEventStore, task: Task, fn: Any, start: int = 20) -> Detail:
    driver = Driver(SimpleNamespace(apps=None), lambda coro, name: asyncio.create_task(coro))  # type: ignore[arg-type]
    step = Step("thing", 10, "doing the thing", fn)
    run = Run(None, AppState("a"), task, start + 10, start)  # type: ignore[arg-type]
    return await driver._step(step, run)


async def test_a_quick_step_tells_nothing(store: PostgresEventStore) -> None:
    task = await _task(store)

    async def quick(run: Run) -> Detail:
        return {"done": True}

    assert await _run_step(store, task, quick) == {"done": True}
    await asyncio.sleep(DELAY * 3)  # past the delay: the teller was stopped, not just late
    assert await _told(store, task) == []
    await task.succeed("done")  # the task's version is where its reporter thinks it is


async def test_a_long_step_tells_its_message_at_its_start(store: PostgresEventStore) -> None:
    task = await _task(store)

    async def long(run: Run) -> Detail:
        while not await _told(store, run.task):  # runs until it is told, however long
            await asyncio.sleep(0.01)
        return {}

    await asyncio.wait_for(_run_step(store, task, long, start=20), 10)
    assert await _told(store, task) == [(20, "doing the thing")]
    await task.succeed("done")


async def test_a_step_that_reports_itself_is_not_followed_by_the_general_message(
    store: PostgresEventStore,
) -> None:
    task = await _task(store)

    async def precise(run: Run) -> Detail:
        await run.task.progress(25, "pulling layer 1 of 3")
        await asyncio.sleep(DELAY * 4)
        return {}

    await _run_step(store, task, precise, start=20)
    assert await _told(store, task) == [(25, "pulling layer 1 of 3")]


async def test_a_told_message_never_lowers_the_percent(store: PostgresEventStore) -> None:
    task = await _task(store)
    await task.progress(40, "an earlier step's own report")

    async def long(run: Run) -> Detail:
        while len(await _told(store, run.task)) < 2:
            await asyncio.sleep(0.01)
        return {}

    await asyncio.wait_for(_run_step(store, task, long, start=20), 10)
    assert await _told(store, task) == [
        (40, "an earlier step's own report"),
        (40, "doing the thing"),
    ]


async def test_a_step_that_fails_after_its_message_leaves_the_task_to_fail(
    store: PostgresEventStore,
) -> None:
    task = await _task(store)

    async def failing(run: Run) -> Detail:
        while not await _told(store, run.task):
            await asyncio.sleep(0.01)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        await asyncio.wait_for(_run_step(store, task, failing), 10)
    await task.fail("disk full", "runtime")
    types = [e.type for e in await store.read_stream(task.stream)]
    assert types == ["TaskStarted", "TaskProgressed", "TaskFailed"]
