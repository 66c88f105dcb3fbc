"""The apps read model (schema `apps`), written inline with the events it reflects.

Commands append and apply in one transaction (libs/events/inline.py), so the primary key of
`apps.locations` (domain, location) refuses a second app at a location another holds (its own,
or one a configuration of it moves to) in the transaction that would have recorded it, and the
primary key of `apps.ports` (protocol, host port) a second app on a host port another holds.
A row is the fold of its stream (services/apps/state.py): the same function decides what a
resumed operation does and what users see, so the two cannot disagree.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import asyncpg

from libs.events.envelope import RecordedEvent
from libs.events.projection import Projection, register_projection
from libs.events.registry import REGISTRY
from libs.events.store import read_stream_on
from services.apps.events import APP_CATEGORY
from services.apps.state import AppState, fold

__all__ = ["AppsProjection", "hold_locations", "hold_ports", "upsert_row"]


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
        last: dict[str, RecordedEvent] = {}
        for ev in events:
            if ev.category != APP_CATEGORY:
                continue
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
        states = []
        for stream, ev in last.items():
            history = await read_stream_on(conn, stream, REGISTRY, ev.position)
            state = fold(str(ev.data["app_id"]), history)
            await upsert_row(conn, state, history[0].recorded_at, ev.recorded_at)
            states.append(state)
        # Every app's old holds go before any new one is taken: in a batch of a rebuild, an
        # app may take a location another app of the same batch left.
        ids = [s.app_id for s in states]
        await conn.execute("DELETE FROM apps.locations WHERE app_id = ANY($1::uuid[])", ids)
        await conn.execute("DELETE FROM apps.ports WHERE app_id = ANY($1::uuid[])", ids)
        for state in states:
            await hold_locations(conn, state)
            await hold_ports(conn, state)


async def hold_locations(conn: asyncpg.Connection, s: AppState) -> None:
    """Take the locations the app holds (services/apps/state.py); a location another app holds
    fails the transaction on the primary key `apps_location_held`."""
    for location in sorted(s.held_locations):
        await conn.execute(
            "INSERT INTO apps.locations (domain, location, app_id) VALUES ($1, $2, $3)",
            s.domain,
            location,
            s.app_id,
        )


async def hold_ports(conn: asyncpg.Connection, s: AppState) -> None:
    """Take the host ports the app holds (services/apps/state.py); a port another app holds
    fails the transaction on the primary key `apps_port_held`."""
    for protocol, port in sorted(s.held_ports):
        await conn.execute(
            "INSERT INTO apps.ports (protocol, host_port, app_id) VALUES ($1, $2, $3)",
            protocol,
            port,
            s.app_id,
        )


async def upsert_row(
    conn: asyncpg.Connection, s: AppState, created_at: object, updated_at: object
) -> None:
    """Write the row of one app's state."""
    op = s.operation or s.failed
    target = None
    if op is not None and op.kind == "update":
        target = op.detail.get("to_version")
    await conn.execute(
        """
        INSERT INTO apps.apps (app_id, manifest_id, version, location, domain, access,
            memory_bytes, state, running, health, error, task_id, operation, awaiting_approval,
            target_version, clone_of, stream_version, created_at, updated_at, http_port,
            tcp_ports, udp_ports, upstream)
        VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
            $17, $18, $19, $20, $21::jsonb, $22::jsonb, $23)
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
        s.version,
        created_at,
        updated_at,
        s.http_host_port,
        json.dumps(s.tcp_ports),
        json.dumps(s.udp_ports),
        s.upstream,
    )
