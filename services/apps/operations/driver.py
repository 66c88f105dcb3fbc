"""Runs the operation an app has in progress, walking its table (services/apps/operations/).

`Driver.kick(app_id)` runs it in the background, one run at a time per app. A run reads the
app's stream, skips the steps already recorded, runs the others, each recorded
(`AppStepCompleted` with its detail) before the next, then records the outcome and ends the
task. A service killed at any point and started again (`resume_all`) finishes the operation,
or, for an update or configuration that cannot finish, rolls the app back; a task whose outcome
was recorded but not yet told is told then.

No app is left pending: any unexpected exception of a step (or of the driver itself) ends the
operation in `error` with its message, from which the app can be repaired or uninstalled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from libs.events import context
from libs.events.context import Context
from libs.events.tasks import Task
from services.apps import events as ev
from services.apps.container import RuntimeFailure
from services.apps.errors import AppsError, ChangedMeanwhile, OperationFailed
from services.apps.operations.base import Detail, Run, Step, Tools
from services.apps.operations.common import roll_back as roll_back_app
from services.apps.operations.common import take_snapshot
from services.apps.operations.rebuild import request_pending
from services.apps.operations.repair import operation_of
from services.apps.state import AppState, State, fold_more

__all__ = ["Driver"]

log = logging.getLogger("services.apps.operations")

Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]
# What a step may fail with, told through the operation's task.
STEP_ERRORS = (AppsError, RuntimeFailure, OSError)
FAIL_ATTEMPTS = 5  # a failure is recorded again after a concurrent write (health events)
PROGRESS_AFTER = 0.2  # seconds a step runs before its message is told


def _unexpected(e: BaseException) -> OperationFailed:
    """An error no step expected: the app goes to `error`, to be repaired. Only its type is
    told (the event and the task are kept and shown; the details are in the service's log)."""
    return OperationFailed(
        f"an unexpected error stopped it ({type(e).__name__}, see the apps service's log);"
        " repair the app to try again, or uninstall it",
        "internal",
    )


class Driver:
    """Runs operations in the background; `aclose()` cancels the runs in flight (each resumes
    at the next start)."""

    def __init__(self, tools: Tools, spawn: Spawn, idle: Callable[[], None] | None = None) -> None:
        """`idle`: called whenever the last operation running ends (not while closing)."""
        self.tools = tools
        self._apps = tools.apps
        self._spawn = spawn
        self._idle = idle
        self._closing = False
        self._locks: dict[str, asyncio.Lock] = {}
        self._again: set[str] = set()
        self._running: set[asyncio.Task[Any]] = set()
        # snapshot id -> (app id, task id) of the snapshots being taken on request
        self.snapshot_tasks: dict[str, tuple[str, str]] = {}

    # -- scheduling ------------------------------------------------------------------------

    def kick(self, app_id: str) -> None:
        """Run the app's pending operation in the background (once at a time per app)."""
        lock = self._locks.setdefault(app_id, asyncio.Lock())
        if lock.locked():
            self._again.add(app_id)  # the running drive looks again when it ends
            return
        self._track(self._drive_locked(app_id, lock), f"apps.drive.{app_id[:8]}")

    def snapshot_in_background(
        self, app_id: str, task: Task, snapshot_id: str, reason: str
    ) -> None:
        """Take a snapshot now, after any operation running on the app."""
        lock = self._locks.setdefault(app_id, asyncio.Lock())
        self.snapshot_tasks[snapshot_id] = (app_id, task.id)
        coro = self._snapshot_locked(app_id, task, lock, snapshot_id, reason)
        self._track(coro, f"apps.snapshot.{app_id[:8]}")

    async def resume_all(self) -> int:
        """At start: continue every operation a previous run left half-done (their number),
        and tell the tasks of operations that ended while their task was not told yet."""
        await request_pending(self.tools)  # a platform restored onto a new machine
        rows = await self._apps.store.pool.fetch(
            "SELECT app_id::text, state FROM apps.apps"
            " WHERE state LIKE 'pending_%' OR state = 'installed'"
        )
        for r in rows:
            self.kick(r["app_id"])
        resumed = sum(1 for r in rows if r["state"] != State.installed.value)
        if resumed:
            log.info("resuming %d operation(s) a previous run left unfinished", resumed)
        return resumed

    async def aclose(self) -> None:
        self._closing = True
        running = list(self._running)
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    def _track(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = self._spawn(coro, name)
        self._running.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        if not self._running and not self._closing and self._idle is not None:
            self._idle()

    async def _drive_locked(self, app_id: str, lock: asyncio.Lock) -> None:
        async with lock:
            while True:
                self._again.discard(app_id)
                try:
                    await self.drive(app_id)
                except ChangedMeanwhile:
                    log.warning("app %s changed while its operation ran; looking again", app_id)
                    self._again.add(app_id)
                except Exception as e:
                    log.exception("driving app %s failed unexpectedly", app_id)
                    await self._give_up(app_id, e)
                if app_id not in self._again:
                    return

    # -- one run ---------------------------------------------------------------------------

    async def drive(self, app_id: str) -> None:
        s = await self._apps.load(app_id)
        op = s.operation
        if op is None:
            if s.done is not None:
                await self._tell_again(s, s.done.task_id, s.done.kind)
            return
        if op.awaiting_approval:
            return
        with context.use(await self._request_meta(app_id, op.task_id)):
            task = await Task.load(self._apps.store, op.task_id)
            if task.ended:  # its end was told but not recorded: the app must not stay pending
                failure = OperationFailed(
                    "the operation's task ended before the operation did; repair the app to"
                    " try again, or uninstall it",
                    "internal",
                )
                await self._fail(app_id, task, failure, roll_back=False)
                return
            try:
                await self._run(s, task)
            except ChangedMeanwhile:
                raise
            except OperationFailed as e:
                await self._fail(app_id, task, e)
            except STEP_ERRORS as e:
                await self._fail(app_id, task, OperationFailed(str(e), "runtime"))
            except Exception as e:
                log.exception("app %s: %s failed unexpectedly", app_id, op.kind)
                await self._fail(app_id, task, _unexpected(e))

    async def _run(self, s: AppState, task: Task) -> None:
        operation = operation_of(s)
        kind = operation.kind
        steps = operation.ends()
        for i, (step, start, end) in enumerate(steps):
            s = await self._since(s)
            if s.operation is None or s.operation.kind != kind:
                return  # someone else ended it
            if step.name in s.operation.steps:
                continue  # recorded: its detail is in the state, not done again
            detail = await self._step(step, Run(self.tools, s, task, end, start))
            s = await self._since(s)  # what the step recorded itself (an addon's credentials)
            done = ev.AppStepCompleted(
                app_id=s.app_id, operation=kind, step=step.name, detail=detail
            )
            s = fold_more(s, await self._apps.append(s.app_id, [done], s.version, state=s))
            await self._maybe_pause(kind, step.name)
            if i == len(steps) - 1:  # else the next step's start says it, an append less
                await task.progress(max(task.percent, end), step.message)
        s = await self._since(s)
        outcome = operation.outcome(s, task.id)
        s = fold_more(s, await self._apps.append(s.app_id, [outcome], s.version, state=s))
        await self._maybe_pause(kind, "outcome")
        s = await self._since(s)
        await task.succeed(await operation.announce(self.tools, s, task), {"app_id": s.app_id})

    async def _since(self, s: AppState) -> AppState:
        """`s` with what its stream recorded after it (read from its version on)."""
        more = await self._apps.store.read_stream(ev.app_stream(s.app_id), s.version)
        return fold_more(s, more)

    async def _step(self, step: Step, run: Run) -> Detail:
        """Run one step; its message is told (at its start percent) once it has run for
        PROGRESS_AFTER seconds without a report of its own: a step that ends sooner is not
        worth an append (most end in a few milliseconds; pulling an image takes minutes)."""
        task = run.task
        since = task.reported
        telling = False

        async def tell() -> None:
            nonlocal telling
            await asyncio.sleep(PROGRESS_AFTER)
            telling = True  # from here on it runs to its end: an append is not cut in two
            await task.progress_if_quiet(since, run.start, step.message)

        teller = asyncio.create_task(tell(), name=f"apps.progress.{run.s.app_id[:8]}")
        try:
            return await step.function(run)
        finally:
            if telling:
                await teller
            else:
                teller.cancel()

    async def _tell_again(self, s: AppState, task_id: str, kind: str) -> None:
        """An outcome recorded before a stop, its task not told: tell it now."""
        task = await Task.load(self._apps.store, task_id)
        if task.ended:
            return
        with context.use(await self._request_meta(s.app_id, task_id)):
            message = await operation_of(s, kind).announce(self.tools, s, task)
            await task.succeed(message, {"app_id": s.app_id})

    async def _maybe_pause(self, kind: str, step: str) -> None:
        if self.tools.cfg.apps_pause_after == f"{kind}:{step}":
            log.warning("HP_APPS_PAUSE_AFTER=%s:%s: pausing until killed (crash tests)", kind, step)
            await asyncio.Event().wait()

    async def _request_meta(self, app_id: str, task_id: str) -> Context:
        """The actor and correlation of the request that started this operation."""
        for e in reversed(await self._apps.store.read_stream(ev.app_stream(app_id))):
            if e.data.get("task_id") == task_id:
                return Context(
                    actor=str(e.meta.get("actor") or "system"),
                    correlation_id=str(e.meta.get("correlation_id") or task_id),
                    causation_id=str(e.id),
                    ip=e.meta.get("ip"),
                )
        return Context(actor="system", correlation_id=task_id)

    async def _give_up(self, app_id: str, e: Exception) -> None:
        """After the driver itself failed: record the operation in progress as failed (not
        rolled back, which may be what failed), so the app is in error, not pending."""
        try:
            s = await self._apps.load(app_id)
            op = s.operation
            if op is None or op.awaiting_approval:
                return
            with context.use(await self._request_meta(app_id, op.task_id)):
                task = await Task.load(self._apps.store, op.task_id)
                await self._fail(app_id, task, _unexpected(e), roll_back=False)
        except Exception:
            log.exception(
                "app %s could not be recorded as failed; it is retried at the next start", app_id
            )

    async def _fail(
        self, app_id: str, task: Task, e: OperationFailed, *, roll_back: bool = True
    ) -> None:
        s = await self._apps.load(app_id)
        if s.operation is None:
            return
        operation = operation_of(s)
        kind = operation.kind
        failed_at = [
            (st, end) for st, _, end in operation.ends() if st.name not in s.operation.steps
        ]
        step, end = (failed_at[0][0].name, failed_at[0][1]) if failed_at else ("end", task.percent)
        log.warning("app %s: %s failed at %s: %s", app_id, kind, step, e.message)
        rolled_back = False
        message = e.message
        if operation.rolls_back and roll_back:
            try:
                await roll_back_app(self.tools, s, task, end)
                rolled_back = True
            except STEP_ERRORS as err:
                message = f"{message}; rolling back failed too: {err}"
            except Exception as err:
                log.exception("app %s: rolling back failed unexpectedly", app_id)
                message = f"{message}; rolling back failed too: {type(err).__name__}: {err}"
            if rolled_back:
                message = f"{message} (the app was rolled back to how it was before)"
        failed = ev.AppOperationFailed(
            app_id=app_id,
            task_id=task.id,
            operation=kind,
            step=step,
            message=message,
            code=e.reason,
            rolled_back=rolled_back,
        )
        for attempt in range(FAIL_ATTEMPTS):
            s = await self._apps.load(app_id)
            if s.operation is None or s.operation.task_id != task.id:
                return  # someone else ended it
            try:
                await self._apps.append(app_id, [failed], s.version)
                break
            except ChangedMeanwhile:
                if attempt == FAIL_ATTEMPTS - 1:
                    raise
        if not task.ended:
            await task.fail(message[:500], e.reason)

    # -- a snapshot taken by hand ----------------------------------------------------------

    async def _snapshot_locked(
        self, app_id: str, task: Task, lock: asyncio.Lock, snapshot_id: str, reason: str
    ) -> None:
        try:
            async with lock:
                await self._snapshot(app_id, task, snapshot_id, reason)
        finally:
            self.snapshot_tasks.pop(snapshot_id, None)

    async def _snapshot(self, app_id: str, task: Task, snapshot_id: str, reason: str) -> None:
        s = await self._apps.load(app_id)
        if not s.can_snapshot:
            await task.fail(f"the app is {s.state.value}; no snapshot taken", "not_installed")
            return
        await task.progress(10, "copying the app's data and dumping its database")
        try:
            taken = await take_snapshot(self.tools, s, snapshot_id, reason, task.id)
        except STEP_ERRORS as e:
            await task.fail(f"the snapshot failed: {e}"[:500], "snapshot_failed")
            return
        await self._apps.append(app_id, [taken], None)
        await task.succeed("snapshot taken", {"snapshot_id": snapshot_id})
