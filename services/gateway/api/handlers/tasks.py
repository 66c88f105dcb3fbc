"""Tasks: the state of long work, and its steps as Server-Sent Events while it runs.

A task is shown to its owner and to admins; to anyone else it does not exist (404, never 403,
so task ids do not leak). The event stream follows new steps by polling the tasks projection
every `poll` seconds (one indexed read; no connection is held between polls, so open streams
cost no database connections), sends a comment every `heartbeat` seconds while nothing happens,
and ends after the task's final step, when the client goes away, when the gateway stops, when
the caller no longer may see it (session or token ended, user disabled or demoted: checked on
identity's announcements and every `recheck` seconds, liveness.py), or after `max_seconds`
(the client then resumes with Last-Event-ID).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

import asyncpg
from aiohttp import web

from libs.contracts.schema import integer, nullable, obj, string
from libs.events.bus import Invalid, NotFound, Unavailable
from services.gateway.api.app import API_APP, caller_of
from services.gateway.api.liveness import Caller, Watch
from services.gateway.api.routes import Access, Call, Routes
from services.gateway.tasks import (
    State,
    Step,
    TaskStep,
    task_owner,
    task_state,
    task_steps,
    task_view,
)

__all__ = ["EVENT_STREAM", "LAST_EVENT_ID", "TASK_STREAMS", "TaskStreams", "routes", "task_streams"]

log = logging.getLogger("homeport.gateway.api")

routes = Routes("tasks")

EVENT_STREAM = "text/event-stream"
LAST_EVENT_ID = "Last-Event-ID"
RETRY_MS = 2000  # how long an EventSource waits before it reconnects
PAGE = 500  # steps per read
_POSITION = re.compile(r"[0-9]{1,18}")
CATCH_UP = 3.0  # s a just-started task may take to reach the tasks read model
CATCH_UP_WINDOW = 30.0  # s: ids made longer ago than this are answered at once
_T = TypeVar("_T")


class TaskStreams:
    """The open event streams of one API and their timing; `stop()` ends them all."""

    def __init__(
        self,
        *,
        poll: float = 0.25,
        heartbeat: float = 15.0,
        max_seconds: float = 3600.0,
        write_timeout: float = 10.0,
        recheck: float = 2.0,
    ) -> None:
        self.poll = poll  # seconds between reads of the projection while nothing is new
        self.heartbeat = heartbeat  # seconds of silence before a comment keeps proxies open
        self.max_seconds = max_seconds  # a stream's longest life; the client then resumes
        self.write_timeout = write_timeout  # seconds for a client to take one event
        self.recheck = recheck  # seconds between checks that the caller still may (liveness.py)
        self._stopping = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = 0
        self._watches: set[Watch] = set()

    @property
    def open(self) -> int:
        """How many streams are open now."""
        return self._open

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @contextlib.contextmanager
    def opened(self, caller: Caller | None) -> Iterator[None]:
        """Count one stream as open for the duration of the block, and follow its caller (the
        request's, app.py `caller_of`): `pause` in the block says when it must end."""
        if self.stopping:
            raise Unavailable("the gateway is stopping; reconnect in a moment")
        watch = Watch(caller, every=self.recheck)
        token = _WATCH.set(watch)
        self._open += 1
        self._watches.add(watch)
        self._idle.clear()
        try:
            with watch:
                yield
        finally:
            _WATCH.reset(token)
            self._watches.discard(watch)
            self._open -= 1
            if not self._open:
                self._idle.set()

    async def pause(self, seconds: float) -> bool:
        """Wait `seconds`; True (end the stream) at once when a stop begins, or when the
        stream's caller no longer may (their session or token ended, or a right it needs)."""
        watch = _WATCH.get()
        if watch is None:  # not in `opened`: only a stop ends the wait
            try:
                async with asyncio.timeout(seconds):
                    await self._stopping.wait()
            except TimeoutError:
                return False
            return True
        await watch.pause(seconds)
        return self.stopping or await watch.ended()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """Streams open until exit; then every open stream ends (a part of the gateway)."""
        try:
            yield
        finally:
            await self.stop()

    async def stop(self, within: float = 5.0) -> None:
        """End every open stream, and refuse new ones; wait up to `within` s for them."""
        self._stopping.set()
        for watch in tuple(self._watches):
            watch.wake()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._idle.wait()
        if self._open:
            log.warning("%d task event stream(s) still open after the stop", self._open)


TASK_STREAMS = web.AppKey("homeport_task_streams", TaskStreams)  # set on the API's app


def task_streams(call: Call) -> TaskStreams:
    """The open task event streams kept on the API's app (a test's may have none)."""
    return call.request.config_dict[API_APP].get(TASK_STREAMS) or TaskStreams()


_WATCH: ContextVar[Watch | None] = ContextVar("hp_stream_watch", default=None)

TASK_PATH = obj(
    {"task_id": string(format="uuid", description="a task id (UUID)")}, required=["task_id"]
)
TASK = obj(
    {
        "task_id": string(format="uuid"),
        "kind": string(description="what sort of work, e.g. app.install"),
        "title": string(description="what a person reads, e.g. Install Nextcloud"),
        "owner": string(description='the user id it runs for, or "system"'),
        "target": nullable(string(description="the stream it works on, e.g. app-4f1c")),
        "state": string(enum=[s.value for s in State]),
        "percent": integer(minimum=0, maximum=100),
        "message": string(description="the last step's message"),
        "result": nullable(obj({}, additional=True, description="what a success produced")),
        "error_code": nullable(string(description="why it failed, for programs")),
        "started_at": string(format="date-time"),
        "updated_at": string(format="date-time"),
        "finished_at": nullable(string(format="date-time")),
    },
    required=[
        "task_id", "kind", "title", "owner", "target", "state", "percent", "message",
        "result", "error_code", "started_at", "updated_at", "finished_at",
    ],
)  # fmt: skip
EVENTS = string(
    description=(
        "Server-Sent Events, one per step: `id:` the step's position, `event:` "
        + " | ".join(s.value for s in Step)
        + ", `data:` JSON {percent, message, occurred_at} plus `result` (succeeded) or "
        "`error_code` (failed). Comment lines are heartbeats."
    )
)


async def _own_task(call: Call) -> bool:
    """Owners pass (admins are not asked); to anyone else the task does not exist."""
    if await _caught_up(task_owner, call.pool, _task_id(call)) != call.user.user_id:
        raise _not_found(call)
    return True


async def _caught_up(
    read: Callable[[asyncpg.Pool, uuid.UUID], Awaitable[_T | None]],
    pool: asyncpg.Pool,
    task_id: uuid.UUID,
) -> _T | None:
    """`read(pool, task_id)`, waiting a moment for a task started just now.

    The tasks read model follows the events, so a client that asks right after the 202 that
    named the task can be a step ahead of it. A task id is a UUIDv7: when its time says it was
    made in the last CATCH_UP_WINDOW seconds, a missing task is asked for again for up to
    CATCH_UP seconds before it counts as unknown; any other id answers at once.
    """
    found = await read(pool, task_id)
    made = (task_id.int >> 80) / 1000 if task_id.version == 7 else 0.0
    if found is not None or not 0 <= time.time() - made <= CATCH_UP_WINDOW:
        return found
    deadline = asyncio.get_running_loop().time() + CATCH_UP
    while found is None and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        found = await read(pool, task_id)
    return found


@routes.get(
    "/tasks/{task_id}",
    access=Access.user,
    owner=_own_task,
    path_params=TASK_PATH,
    summary="One task: its state, percent and last message",
    description="Only its owner or an admin sees a task; for anyone else it is 404.",
    responses={200: TASK},
)
async def get_task(call: Call) -> Any:
    view = await _caught_up(task_view, call.pool, _task_id(call))
    if view is None:
        raise _not_found(call)
    return view


@routes.get(
    "/tasks/{task_id}/events",
    access=Access.user,
    owner=_own_task,
    path_params=TASK_PATH,
    media_type=EVENT_STREAM,
    summary="The steps of a task as Server-Sent Events, live until it ends",
    description=(
        "Sends every step so far, then each new one, and closes after the task's final step "
        f"(succeeded or failed). Send {LAST_EVENT_ID} (the `id:` of the last event received) "
        "to resume after it; browsers' EventSource does so when it reconnects. A comment line "
        "is sent every 15 s while nothing happens. Only its owner or an admin sees a task; for "
        "anyone else it is 404."
    ),
    responses={200: EVENTS},
)
async def task_events(call: Call) -> Any:
    task_id = _task_id(call)
    pool = call.pool
    if await _caught_up(task_state, pool, task_id) is None:
        raise _not_found(call)  # admins skip the owner check, which looks too
    after = _last_event_id(call.request)
    streams = task_streams(call)
    response = web.StreamResponse(
        headers={"Content-Type": f"{EVENT_STREAM}; charset=utf-8", "X-Accel-Buffering": "no"}
    )
    if call.request.method == "HEAD":
        return response
    with streams.opened(caller_of(call)):
        await _follow(call.request, response, pool, task_id, after, streams)
    return response


async def _follow(
    request: web.Request,
    response: web.StreamResponse,
    pool: asyncpg.Pool,
    task_id: uuid.UUID,
    after: int,
    streams: TaskStreams,
) -> None:
    """Send the steps after `after`, then new ones as they come, until the final step."""
    loop = asyncio.get_running_loop()
    end = loop.time() + streams.max_seconds

    async def send(text: str) -> None:
        async with asyncio.timeout(streams.write_timeout):
            await response.write(text.encode())

    try:
        await response.prepare(request)
        await send(f"retry: {RETRY_MS}\n\n")
        quiet_since = loop.time()
        while True:
            # The state is read before the steps: if the task had ended by then, the read of
            # the steps that follows sees its final step, so nothing is left to wait for.
            state = await task_state(pool, task_id)
            steps = await task_steps(pool, task_id, after, PAGE)
            for step in steps:
                await send(_event(step))
                after = step.position
                if step.final:
                    return
            if steps:
                quiet_since = loop.time()
                if len(steps) == PAGE:
                    continue
            if state is not State.running:
                return
            if loop.time() - quiet_since >= streams.heartbeat:
                await send(": keep-alive\n\n")
                quiet_since = loop.time()
            if loop.time() >= end or _gone(request):
                return
            if await streams.pause(streams.poll):
                return
    except (ConnectionError, TimeoutError):
        return  # the client went away or stopped reading
    except Unavailable as e:
        log.warning("task event stream ended: %s", e.message, extra={"task_id": str(task_id)})
    except Exception:
        # The answer has begun: no problem response can follow, so the stream just ends.
        log.exception("task event stream failed", extra={"task_id": str(task_id)})


def _event(step: TaskStep) -> str:
    data = json.dumps(step.data(), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return f"id: {step.position}\nevent: {step.step.value}\ndata: {data}\n\n"


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _task_id(call: Call) -> uuid.UUID:
    return uuid.UUID(call.path["task_id"])


def _not_found(call: Call) -> NotFound:
    return NotFound(f"no task {call.path['task_id']}: check the id", field="task_id")


def _last_event_id(request: web.Request) -> int:
    raw = request.headers.get(LAST_EVENT_ID, "").strip()
    if not raw:
        return 0
    if not _POSITION.fullmatch(raw):
        raise Invalid(
            f"{LAST_EVENT_ID} must be the id of an event of this stream, a whole number",
            field=LAST_EVENT_ID,
        )
    return int(raw)
