"""Queries the gateway answers on the bus (libs/contracts/gateway.py): the activity log over its
read model, and whether the edge serves a host."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any, Protocol

import asyncpg

from libs.contracts.gateway import ACTIVITY_MAX_LIMIT
from libs.events.bus import Invalid
from libs.events.handlers import query
from services.gateway.errors import EdgeOff

__all__ = ["ACTIVITY_MAX_LIMIT", "Queries", "activity_query"]

ACTIVITY_DEFAULT_LIMIT = 50


class ServedHosts(Protocol):
    """What the edge_host query asks of the edge (EdgeSync)."""

    def serves(self, host: str) -> bool: ...


class Queries:
    """The gateway's bus queries; `edge` is None when this gateway runs no edge."""

    def __init__(self, pool: asyncpg.Pool, edge: ServedHosts | None) -> None:
        self._pool = pool
        self._edge = edge

    @query("activity")
    async def activity(self, payload: dict[str, Any]) -> dict[str, Any]:
        return await activity_query(self._pool, payload)

    @query("edge_host")
    async def edge_host(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Whether the live nginx generation has a vhost for `host`."""
        if self._edge is None:
            raise EdgeOff()
        return {"served": self._edge.serves(payload["host"])}


def _cursor_out(position: int) -> str:
    return base64.urlsafe_b64encode(f"a:{position}".encode()).decode().rstrip("=")


def _cursor_in(raw: str) -> int:
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        kind, _, pos = text.partition(":")
        if kind != "a" or not pos.isdigit():
            raise ValueError(text)
        return int(pos)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Invalid("cursor must be the next_cursor of a previous page", field="cursor") from None


def _time(payload: dict[str, Any], name: str) -> datetime | None:
    raw = payload.get(name)
    if raw is None:
        return None
    return datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))


async def activity_query(pool: asyncpg.Pool, payload: dict[str, Any]) -> dict[str, Any]:
    """One page of the activity log, newest first, filtered; `next_cursor` fetches the next.

    `payload` has met the contract's `activity` schema (the bus and the REST route check it).
    """
    since, until = _time(payload, "since"), _time(payload, "until")
    if since is not None and until is not None and since > until:
        raise Invalid("since must not be after until", field="since")
    limit: int = payload.get("limit", ACTIVITY_DEFAULT_LIMIT)
    before = _cursor_in(payload["cursor"]) if payload.get("cursor") is not None else None

    where: list[str] = []
    args: list[Any] = []

    def add(sql: str, value: Any) -> None:
        args.append(value)
        where.append(sql.format(f"${len(args)}"))

    if before is not None:
        add("position < {}", before)
    if since is not None:
        add("occurred_at >= {}", since)
    if until is not None:
        add("occurred_at < {}", until)
    if payload.get("actor") is not None:
        add("actor = {}", payload["actor"])
    if payload.get("type") is not None:
        add("type = {}", payload["type"])
    target = payload.get("target")
    if target is not None:
        add("stream = {}" if "-" in target else "category = {}", target)
    args.append(limit + 1)
    sql = (
        "SELECT position, occurred_at, actor, ip, type, stream, summary FROM gateway.activity "  # noqa: S608 - fixed clauses, values bound
        + ("WHERE " + " AND ".join(where) + " " if where else "")
        + f"ORDER BY position DESC LIMIT ${len(args)}"
    )
    rows = await pool.fetch(sql, *args)
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [
            {
                "position": r["position"],
                "occurred_at": r["occurred_at"].isoformat(),
                "actor": r["actor"],
                "ip": r["ip"],
                "type": r["type"],
                "target": r["stream"],
                "summary": r["summary"],
            }
            for r in rows
        ],
        "next_cursor": _cursor_out(rows[-1]["position"]) if more and rows else None,
    }
