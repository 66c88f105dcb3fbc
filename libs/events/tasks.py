"""Long work as events: a task starts, reports progress, and ends once, succeeded or failed.

Stream `task-<uuid>` holds `TaskStarted`, then any number of `TaskProgressed` (percent never
falls, 0-100), then one `TaskSucceeded` or `TaskFailed`, and nothing after it. A service reports
its work through `Task`, which appends each step at the version it expects, so two writers of
one task fail loudly (ConcurrencyError) instead of interleaving. The gateway projects these
streams and serves them to clients (services/gateway/tasks.py).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass
from typing import Any

from libs.events.envelope import dumps, uuid7
from libs.events.errors import EventStoreError
from libs.events.registry import REGISTRY
from libs.events.store import PostgresEventStore, validate_stream

__all__ = [
    "TASK_CATEGORY",
    "Task",
    "TaskEnded",
    "TaskFailed",
    "TaskProgressed",
    "TaskStarted",
    "TaskSucceeded",
    "task_stream",
]

TASK_CATEGORY = "task"
MAX_TITLE = 200
MAX_MESSAGE = 500
MAX_RESULT = 4096  # bytes of the result as compact JSON
_KIND = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_OWNER = re.compile(r"^[\x21-\x7e]{1,200}$")


def task_stream(task_id: str) -> str:
    """`task-<uuid>`."""
    return f"{TASK_CATEGORY}-{task_id}"


def _short(task_id: str) -> str:
    return task_id[:8]


@REGISTRY.event("TaskStarted")
@dataclass(frozen=True, slots=True, kw_only=True)
class TaskStarted:
    task_id: str
    kind: str  # what sort of work: app.install, backup.run, ...
    title: str  # what a person reads: "Install Nextcloud"
    owner: str  # the user id it was started for, or "system"
    target: str | None  # the stream it works on (app-4f1c), if any

    def summary(self) -> str:
        return f"{self.kind} task {_short(self.task_id)} started"


@REGISTRY.event("TaskProgressed")
@dataclass(frozen=True, slots=True, kw_only=True)
class TaskProgressed:
    task_id: str
    percent: int  # 0-100, never below the previous step's
    message: str

    def summary(self) -> str:
        return f"task {_short(self.task_id)} at {self.percent}%"


@REGISTRY.event("TaskSucceeded")
@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSucceeded:
    task_id: str
    message: str
    result: dict[str, Any] | None  # a small JSON object (an id it created, a URL), or None

    def summary(self) -> str:
        return f"task {_short(self.task_id)} succeeded"


@REGISTRY.event("TaskFailed")
@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFailed:
    task_id: str
    message: str  # what went wrong and what to do, for a person
    code: str  # stable, for programs: dns_timeout, disk_full, ...

    def summary(self) -> str:
        return f"task {_short(self.task_id)} failed ({self.code})"


class TaskEnded(EventStoreError):
    """A step was reported after the task succeeded or failed."""


def _text(name: str, value: object, limit: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise ValueError(f"{name} must be non-blank text of at most {limit} characters")
    return value


def _match(name: str, value: object, pattern: re.Pattern[str], hint: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise ValueError(f"{name} must be {hint}, got {value!r:.80}")
    return value


def _result(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"result must be a JSON object or None, got {type(value).__name__}")
    try:
        size = len(dumps(value).encode())
    except (TypeError, ValueError) as e:
        raise ValueError(f"result must be JSON: {e}") from None
    if size > MAX_RESULT:
        raise ValueError(f"result must be at most {MAX_RESULT} bytes as JSON, got {size}")
    return value


class Task:
    """The reporter of one task: its steps appended to `task-<id>` in order, each once."""

    def __init__(
        self,
        store: PostgresEventStore,
        task_id: str,
        *,
        version: int,
        percent: int = 0,
        ended: bool = False,
    ) -> None:
        self.store = store
        self.id = task_id
        self.stream = task_stream(task_id)
        self._version = version
        self._percent = percent
        self._ended = ended
        self._lock = asyncio.Lock()  # steps of one reporter are appended one after the other

    @property
    def percent(self) -> int:
        """The percent of the last step reported."""
        return self._percent

    @property
    def ended(self) -> bool:
        """Whether the task has succeeded or failed."""
        return self._ended

    @classmethod
    async def start(
        cls,
        store: PostgresEventStore,
        *,
        kind: str,
        title: str,
        owner: str,
        target: str | None = None,
    ) -> Task:
        """Record a new task (a fresh UUIDv7 id) and return its reporter."""
        kind = _match("kind", kind, _KIND, "lower-case, e.g. app.install")
        title = _text("title", title, MAX_TITLE)
        owner = _match("owner", owner, _OWNER, 'a user id or "system"')
        if target is not None:
            try:
                validate_stream(target)
            except EventStoreError as e:
                raise ValueError(f"target: {e}") from None
        task_id = str(uuid7())
        started = TaskStarted(task_id=task_id, kind=kind, title=title, owner=owner, target=target)
        await store.append(task_stream(task_id), [started], expected_version=0)
        return cls(store, task_id, version=1)

    @classmethod
    async def load(cls, store: PostgresEventStore, task_id: str) -> Task:
        """The reporter of a task recorded earlier (a service resuming its work after a restart)."""
        try:
            task_id = str(uuid.UUID(task_id))
        except (ValueError, TypeError):
            raise ValueError(f"task id must be a UUID, got {task_id!r:.80}") from None
        events = await store.read_stream(task_stream(task_id))
        if not events or events[0].type != "TaskStarted":
            raise EventStoreError(f"no task {task_id}: its stream has no TaskStarted")
        percent = 0
        ended = False
        for ev in events:
            if ev.type == "TaskProgressed":
                percent = max(percent, int(ev.data.get("percent", 0)))
            elif ev.type in ("TaskSucceeded", "TaskFailed"):
                ended = True
        return cls(store, task_id, version=events[-1].version, percent=percent, ended=ended)

    async def progress(self, percent: int, message: str) -> None:
        """Report a step: `percent` from 0 to 100, not below the last one reported."""
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise ValueError(f"percent must be an integer from 0 to 100, got {percent!r:.40}")
        message = _text("message", message, MAX_MESSAGE)
        async with self._lock:
            if percent < self._percent:
                raise ValueError(
                    f"percent must not fall: task {self.id} is at {self._percent}%, got {percent}"
                )
            await self._progressed(percent, message)

    @property
    def reported(self) -> int:
        """How many events the task has had (it grows with every report)."""
        return self._version

    async def progress_if_quiet(self, since: int, percent: int, message: str) -> bool:
        """Report `message` at `percent` (or the task's percent, if past it already) only if
        nothing was reported since `reported` was `since`: a step's own, more precise,
        reports are not followed by its general message. Whether it was reported."""
        message = _text("message", message, MAX_MESSAGE)
        async with self._lock:
            if self._version != since or self._ended:
                return False
            await self._progressed(max(percent, self._percent), message)
            return True

    async def succeed(self, message: str, result: dict[str, Any] | None = None) -> None:
        """End the task as done; `result` is a small JSON object for the client, or None."""
        message = _text("message", message, MAX_MESSAGE)
        result = _result(result)
        async with self._lock:
            await self._append(TaskSucceeded(task_id=self.id, message=message, result=result))
            self._percent = 100
            self._ended = True

    async def fail(self, message: str, code: str) -> None:
        """End the task as failed: `message` for a person, `code` (snake_case) for programs."""
        message = _text("message", message, MAX_MESSAGE)
        code = _match("code", code, _CODE, "snake_case, e.g. disk_full")
        async with self._lock:
            await self._append(TaskFailed(task_id=self.id, message=message, code=code))
            self._ended = True

    async def _progressed(self, percent: int, message: str) -> None:
        """Record a report (under the lock, checked)."""
        await self._append(TaskProgressed(task_id=self.id, percent=percent, message=message))
        self._percent = percent

    async def _append(self, event: object) -> None:
        if self._ended:
            raise TaskEnded(f"task {self.id} has ended: nothing may be reported after its end")
        result = await self.store.append(self.stream, [event], expected_version=self._version)
        self._version = result.version
