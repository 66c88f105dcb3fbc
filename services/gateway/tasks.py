"""Tasks as the gateway shows them: a projection of `task-<uuid>` streams, and its reads.

`gateway.tasks` holds the current state of each task, `gateway.task_steps` each step after its
start (progress, then success or failure) under the event's position, so a client that has
seen step N resumes with the steps after N. A task that has ended takes no more steps, and its
percent never falls, whatever a stream holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

import asyncpg

from libs.events.bus import Unavailable
from libs.events.envelope import RecordedEvent, dumps
from libs.events.errors import UnknownEventType
from libs.events.projection import Projection, register_projection
from libs.events.registry import REGISTRY
from libs.events.tasks import (
    TASK_CATEGORY,
    TaskFailed,
    TaskProgressed,
    TaskStarted,
    TaskSucceeded,
)

__all__ = [
    "QUERY_TIMEOUT",
    "State",
    "Step",
    "TaskProjection",
    "TaskStep",
    "task_owner",
    "task_state",
    "task_steps",
    "task_view",
]

log = logging.getLogger("homeport.gateway.tasks")

QUERY_TIMEOUT = 5.0  # seconds for one read of the tasks read model
STARTED_MESSAGE = "started"


class State(StrEnum):
    """Where a task is."""

    running = "running"
    succeeded = "succeeded"
    failed = "failed"


class Step(StrEnum):
    """What a step of a task is (the SSE event name)."""

    progress = "progress"
    succeeded = "succeeded"
    failed = "failed"


@register_projection
class TaskProjection(Projection):
    """Every task and its steps (schema `gateway`)."""

    name: ClassVar[str] = "tasks"
    schema: ClassVar[str] = "gateway"
    subject: ClassVar[str] = f"{TASK_CATEGORY}.>"
    migrations: ClassVar[Path | None] = Path(__file__).parent / "migrations_tasks"

    def wants(self, event: RecordedEvent) -> bool:
        return event.category == TASK_CATEGORY

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        for ev in events:
            task_id = _task_id(ev)
            try:
                decoded = REGISTRY.decode(ev) if task_id is not None else None
            except (UnknownEventType, TypeError):
                decoded = None
            if decoded is None or not await _apply_one(conn, ev, task_id, decoded):
                log.warning(
                    "task event skipped: not a well-formed step of a running task",
                    extra={"position": ev.position, "stream": ev.stream, "type": ev.type},
                )

    async def reset(self, conn: asyncpg.Connection) -> None:
        await conn.execute("TRUNCATE gateway.task_steps, gateway.tasks")


def _task_id(ev: RecordedEvent) -> uuid.UUID | None:
    try:
        return uuid.UUID(ev.stream.split("-", 1)[1])
    except (ValueError, IndexError):
        return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


async def _apply_one(
    conn: asyncpg.Connection, ev: RecordedEvent, task_id: uuid.UUID | None, decoded: Any
) -> bool:
    """Apply one event; False when it cannot take effect (malformed, unknown or ended task)."""
    at = ev.recorded_at
    if isinstance(decoded, TaskStarted):
        if not all(isinstance(v, str) for v in (decoded.kind, decoded.title, decoded.owner)):
            return False
        target = decoded.target if isinstance(decoded.target, str) else None
        status = await conn.execute(
            "INSERT INTO gateway.tasks (task_id, kind, title, owner, target, state, percent,"
            " message, started_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'running', 0, $6,"
            " $7, $7) ON CONFLICT (task_id) DO NOTHING",
            task_id,
            decoded.kind,
            decoded.title,
            decoded.owner,
            target,
            STARTED_MESSAGE,
            at,
        )
        return bool(status.endswith(" 1"))
    if isinstance(decoded, TaskProgressed):
        if not _is_int(decoded.percent) or not isinstance(decoded.message, str):
            return False
        percent = min(max(decoded.percent, 0), 100)
        return await _step(
            conn,
            "percent = greatest(percent, $3), message = $4, updated_at = $5",
            Step.progress,
            [task_id, ev.position, percent, decoded.message, at],
        )
    if isinstance(decoded, TaskSucceeded):
        if not isinstance(decoded.message, str):
            return False
        result = dumps(decoded.result) if isinstance(decoded.result, dict) else None
        return await _step(
            conn,
            "state = 'succeeded', percent = 100, message = $3, updated_at = $4,"
            " finished_at = $4, result = $5::jsonb",
            Step.succeeded,
            [task_id, ev.position, decoded.message, at, result],
        )
    if isinstance(decoded, TaskFailed):
        if not isinstance(decoded.message, str) or not isinstance(decoded.code, str):
            return False
        return await _step(
            conn,
            "state = 'failed', message = $3, updated_at = $4, finished_at = $4, error_code = $5",
            Step.failed,
            [task_id, ev.position, decoded.message, at, decoded.code],
        )
    return False


async def _step(conn: asyncpg.Connection, assign: str, step: Step, args: list[Any]) -> bool:
    """Update a running task ($1) with `assign`, and record the step at position $2 from it."""
    row = await conn.fetchrow(
        f"WITH t AS (UPDATE gateway.tasks SET {assign} "  # noqa: S608 - fixed clauses, values bound
        "WHERE task_id = $1 AND state = 'running' "
        "RETURNING task_id, percent, message, result, error_code, updated_at) "
        "INSERT INTO gateway.task_steps (position, task_id, step, percent, message, result,"
        f" error_code, occurred_at) SELECT $2::bigint, task_id, '{step.value}', percent,"
        " message, result, error_code, updated_at FROM t RETURNING position",
        *args,
    )
    return row is not None


# -- reads ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskStep:
    """One step of a task as clients receive it."""

    position: int
    step: Step
    percent: int
    message: str
    result: dict[str, Any] | None
    error_code: str | None
    occurred_at: datetime

    @property
    def final(self) -> bool:
        """The task's last step: it succeeded or failed."""
        return self.step is not Step.progress

    def data(self) -> dict[str, Any]:
        """The JSON of the step for clients."""
        out: dict[str, Any] = {
            "percent": self.percent,
            "message": self.message,
            "occurred_at": self.occurred_at.isoformat(),
        }
        if self.step is Step.succeeded:
            out["result"] = self.result
        elif self.step is Step.failed:
            out["error_code"] = self.error_code
        return out


@contextlib.asynccontextmanager
async def _reading() -> AsyncIterator[None]:
    """A read with a deadline; a database out of reach is `unavailable`, not a crash."""
    try:
        async with asyncio.timeout(QUERY_TIMEOUT):
            yield
    except TimeoutError:
        raise Unavailable("the task list did not answer in time; retry shortly") from None
    except (
        OSError,
        asyncpg.InterfaceError,
        asyncpg.PostgresConnectionError,
        asyncpg.CannotConnectNowError,
        asyncpg.UndefinedTableError,
    ) as e:
        log.warning("tasks read model unreachable: %r", e)
        raise Unavailable("the task list is not reachable now; retry shortly") from None


def _json(raw: str | None) -> dict[str, Any] | None:
    value = json.loads(raw) if raw is not None else None
    return value if isinstance(value, dict) else None


async def task_owner(pool: asyncpg.Pool, task_id: uuid.UUID) -> str | None:
    """Who the task belongs to (a user id or "system"); None when there is no such task."""
    async with _reading():
        owner = await pool.fetchval("SELECT owner FROM gateway.tasks WHERE task_id = $1", task_id)
    return None if owner is None else str(owner)


async def task_state(pool: asyncpg.Pool, task_id: uuid.UUID) -> State | None:
    """Where the task is; None when there is no such task."""
    async with _reading():
        state = await pool.fetchval("SELECT state FROM gateway.tasks WHERE task_id = $1", task_id)
    return None if state is None else State(state)


async def task_view(pool: asyncpg.Pool, task_id: uuid.UUID) -> dict[str, Any] | None:
    """The task as the API shows it; None when there is no such task."""
    async with _reading():
        r = await pool.fetchrow(
            "SELECT task_id, kind, title, owner, target, state, percent, message, result,"
            " error_code, started_at, updated_at, finished_at FROM gateway.tasks"
            " WHERE task_id = $1",
            task_id,
        )
    if r is None:
        return None
    return {
        "task_id": str(r["task_id"]),
        "kind": r["kind"],
        "title": r["title"],
        "owner": r["owner"],
        "target": r["target"],
        "state": r["state"],
        "percent": r["percent"],
        "message": r["message"],
        "result": _json(r["result"]),
        "error_code": r["error_code"],
        "started_at": r["started_at"].isoformat(),
        "updated_at": r["updated_at"].isoformat(),
        "finished_at": None if r["finished_at"] is None else r["finished_at"].isoformat(),
    }


async def task_steps(
    pool: asyncpg.Pool, task_id: uuid.UUID, after: int = 0, limit: int = 500
) -> list[TaskStep]:
    """Up to `limit` steps of the task after position `after`, in order."""
    async with _reading():
        rows = await pool.fetch(
            "SELECT position, step, percent, message, result, error_code, occurred_at"
            " FROM gateway.task_steps WHERE task_id = $1 AND position > $2"
            " ORDER BY position LIMIT $3",
            task_id,
            after,
            limit,
        )
    return [
        TaskStep(
            position=r["position"],
            step=Step(r["step"]),
            percent=r["percent"],
            message=r["message"],
            result=_json(r["result"]),
            error_code=r["error_code"],
            occurred_at=r["occurred_at"],
        )
        for r in rows
    ]
