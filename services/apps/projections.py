"""The apps read model (schema `apps`), written inline with the events it reflects.

Each append applies its change with it, atomically (libs/events/inline.py), so the primary key
of `apps.locations` (domain, location) refuses a second app at a location another holds (its
own, or one a configuration of it moves to) in the append that would have recorded it, and the
primary key of `apps.ports` (protocol, host port) a second app on a host port another holds.
A row is the fold of its stream (services/apps/state.py): the same function decides what a
resumed operation does and what users see, so the two cannot disagree.

A writer that holds the app's state at the version it appends at (every command and the
operations' driver) has the change run inside the append's own statement (`statements_after`,
libs/events/statements.py): the row of the state after the event, and only the holds that event
releases or takes. `apply` (a replay, an append of several events) folds the stream and writes
the same statements.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import asyncpg

from libs.events.envelope import NewEvent, RecordedEvent, category_of, dumps
from libs.events.projection import Projection, register_projection
from libs.events.registry import REGISTRY
from libs.events.statements import RECORDED_HEAD, Statement, compose
from libs.events.store import read_stream_on
from services.apps.events import APP_CATEGORY
from services.apps.state import AppState, evolve, fold, fold_more

__all__ = ["AppsProjection"]


@register_projection
class AppsProjection(Projection):
    """Installed apps with state, run state, health and location; their snapshots."""

    name: ClassVar[str] = "apps"
    schema: ClassVar[str] = "apps"
    subject: ClassVar[str] = "app.>"
    migrations: ClassVar[Path | None] = Path(__file__).parent / "migrations"

    def wants(self, event: RecordedEvent) -> bool:
        return event.category == APP_CATEGORY

    async def reset(self, conn: asyncpg.Connection) -> None:
        await conn.execute("TRUNCATE apps.apps, apps.snapshots, apps.locations, apps.ports")

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        first: dict[str, RecordedEvent] = {}
        last: dict[str, RecordedEvent] = {}
        for ev in events:
            if ev.category != APP_CATEGORY:
                continue
            first.setdefault(ev.stream, ev)
            last[ev.stream] = ev
            if ev.type == "AppSnapshotTaken":
                d = ev.data
                await conn.execute(
                    "INSERT INTO apps.snapshots VALUES ($1, $2, $3, $4, $5, $6, $7)"
                    " ON CONFLICT (snapshot_id) DO NOTHING",
                    d["snapshot_id"],
                    d["app_id"],
                    d["manifest_id"],
                    d["version"],
                    d["reason"],
                    d["size_bytes"],
                    ev.recorded_at,
                )
            elif ev.type == "AppSnapshotForgotten":
                await conn.execute(
                    "DELETE FROM apps.snapshots WHERE snapshot_id = $1", ev.data["snapshot_id"]
                )
        changes = []
        for stream, ev in last.items():
            history = await read_stream_on(conn, stream, REGISTRY, ev.position)
            n = sum(1 for e in history if e.position < first[stream].position)
            before = fold(str(ev.data["app_id"]), history[:n])
            changes.append((ev, before, fold_more(before, history[n:]), history[0].recorded_at))
        # Every app's released holds go before any new one is taken: in a batch of a rebuild,
        # an app may take a location another app of the same batch left.
        for ev, before, after, _ in changes:
            await _run(conn, ev, _released(before, after))
        for ev, before, after, created_at in changes:
            await _run(conn, ev, [_row(after, created_at), *_taken(before, after)])

    def statements_after(
        self, before: Any, expected: int | None, stream: str, events: Sequence[NewEvent]
    ) -> Sequence[Statement] | None:
        """One event appended at the version the app's state `before` was folded at: the row
        of the state after it, and the holds it releases and takes, as statements (apply
        does the same from the stream itself, for a replay and for any other append)."""
        if (
            not isinstance(before, AppState)
            or expected is None
            or before.version != expected
            or len(events) != 1
            or category_of(stream) != APP_CATEGORY
        ):
            return None
        e = events[0]
        if e.type in ("AppSnapshotTaken", "AppSnapshotForgotten"):
            return None  # a table of their own: apply writes it
        data = json.loads(dumps(e.data))  # as the fold of the stream will read it
        after = evolve(before, e.type, data, expected + 1)
        return [*_released(before, after), _row(after, None), *_taken(before, after)]


async def _run(conn: asyncpg.Connection, ev: RecordedEvent, statements: list[Statement]) -> None:
    """`statements` for an event already in the log (a replay, or applied after its append)."""
    if statements:
        sql, args = compose(
            RECORDED_HEAD, (ev.position, ev.version, ev.recorded_at), statements, "SELECT 1"
        )
        await conn.execute(sql, *args)


def _locations(s: AppState) -> frozenset[tuple[str, str]]:
    return frozenset((s.domain, location) for location in s.held_locations)


def _ports(s: AppState) -> frozenset[tuple[str, int]]:
    return s.held_ports


class _Holds(NamedTuple):
    """A table of holds (services/apps/state.py) keyed by two columns: the SQL that drops and
    the SQL that takes the keys given as two arrays ($1, $2) for the app $3, and the keys a
    state holds. A location (a port) another app holds breaks the primary key
    `apps_location_held` (`apps_port_held`) and fails the append that takes it."""

    release: str
    take: str
    held: Callable[[AppState], frozenset[tuple[Any, Any]]]


def _hold_table(
    table: str, c0: str, t0: str, c1: str, t1: str, held: Callable[[AppState], Any]
) -> _Holds:
    rows = f"unnest($1::{t0}[], $2::{t1}[]) AS r({c0}, {c1})"
    return _Holds(
        f"DELETE FROM {table} h USING appended a, {rows}"  # noqa: S608 - names of this module
        f" WHERE h.app_id = $3::uuid AND h.{c0} = r.{c0} AND h.{c1} = r.{c1}",
        f"INSERT INTO {table} ({c0}, {c1}, app_id) SELECT r.{c0}, r.{c1}, $3::uuid"  # noqa: S608
        f" FROM appended a, {rows}",
        held,
    )


# made once, not at every append
_HOLDS = (
    _hold_table("apps.locations", "domain", "text", "location", "text", _locations),
    _hold_table("apps.ports", "protocol", "text", "host_port", "integer", _ports),
)


def _released(before: AppState, after: AppState) -> list[Statement]:
    """The holds `before` had and `after` has no more, dropped."""
    return [Statement(t.release, args) for t, args in _changed(before, after)]


def _taken(before: AppState, after: AppState) -> list[Statement]:
    """The holds `after` has and `before` had not, taken."""
    return [Statement(t.take, args) for t, args in _changed(after, before)]


def _changed(more: AppState, less: AppState) -> list[tuple[_Holds, tuple[Any, ...]]]:
    """Each table of holds with keys `more` holds and `less` does not, and those keys as its
    statement's arguments."""
    out = []
    for table in _HOLDS:
        keys = sorted(table.held(more) - table.held(less))
        if keys:
            out.append((table, ([k for k, _ in keys], [v for _, v in keys], more.app_id)))
    return out


def _row(s: AppState, created_at: datetime | None) -> Statement:
    """The row of one app's state, as of the appended event (its version and time);
    `created_at`: when its stream began (None: the appended event began it, or the row is
    there already)."""
    op = s.operation or s.failed
    target = None
    if op is not None and op.kind == "update":
        target = op.detail.get("to_version")
    return Statement(
        """
        INSERT INTO apps.apps (app_id, manifest_id, version, location, domain, access,
            memory_bytes, state, running, health, error, task_id, operation, awaiting_approval,
            target_version, clone_of, stream_version, created_at, updated_at, http_port,
            tcp_ports, udp_ports, upstream)
        SELECT $1::uuid, $2::text, $3::text, $4::text, $5::text, $6::jsonb, $7::bigint,
            $8::text, $9::boolean, $10::text, $11::text, $12::uuid, $13::text, $14::boolean,
            $15::text, $16::uuid, a.out_version, coalesce($17::timestamptz, a.out_recorded_at),
            a.out_recorded_at, $18::integer, $19::jsonb, $20::jsonb, $21::text
        FROM appended a
        ON CONFLICT (app_id) DO UPDATE SET manifest_id = EXCLUDED.manifest_id,
            version = EXCLUDED.version, location = EXCLUDED.location, domain = EXCLUDED.domain,
            access = EXCLUDED.access, memory_bytes = EXCLUDED.memory_bytes,
            state = EXCLUDED.state, running = EXCLUDED.running, health = EXCLUDED.health,
            error = EXCLUDED.error, task_id = EXCLUDED.task_id, operation = EXCLUDED.operation,
            awaiting_approval = EXCLUDED.awaiting_approval,
            target_version = EXCLUDED.target_version, clone_of = EXCLUDED.clone_of,
            stream_version = EXCLUDED.stream_version, updated_at = EXCLUDED.updated_at,
            http_port = EXCLUDED.http_port, tcp_ports = EXCLUDED.tcp_ports,
            udp_ports = EXCLUDED.udp_ports, upstream = EXCLUDED.upstream
        """,
        (
            s.app_id,
            s.manifest_id,
            s.app_version,
            s.location,
            s.domain,
            json.dumps(s.access),
            s.memory_bytes,
            s.state.value,
            s.running,
            s.health.value,
            s.error,
            op.task_id if op is not None else None,
            op.kind if op is not None else None,
            op.awaiting_approval if op is not None else False,
            target,
            s.clone_of,
            created_at,
            s.http_host_port,
            json.dumps(s.tcp_ports),
            json.dumps(s.udp_ports),
            s.upstream,
        ),
    )
