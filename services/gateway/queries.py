"""Queries the gateway answers on the bus (libs/contracts/gateway.py): the activity log over its
read model, and whether the edge serves a host."""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol

import asyncpg

from libs.contracts.gateway import ACTIVITY_MAX_LIMIT
from libs.events.bus import BusClient, DeadlineExceeded, Invalid, Unavailable
from libs.events.handlers import query
from services.gateway.errors import EdgeOff

__all__ = [
    "ACTIVITY_MAX_LIMIT",
    "ADDRESS_EXPIRED",
    "ADDRESS_UNAVAILABLE",
    "Addresses",
    "Queries",
    "activity_query",
    "identity_addresses",
]

log = logging.getLogger(__name__)

ACTIVITY_DEFAULT_LIMIT = 50
# What the activity log shows for a client address sealed to its week (libs/events/periods.py)
# once the week's key is destroyed, and while identity cannot be asked.
ADDRESS_EXPIRED = "address expired"
ADDRESS_UNAVAILABLE = "[sealed]"

# Sealed addresses -> their text (None once expired), in order: identity's `addresses` query.
Addresses = Callable[[list[str]], Awaitable[list[str | None]]]


def identity_addresses(bus: BusClient) -> Addresses:
    """Ask identity (the gateway holds no key), as the caller of the request being answered."""

    async def ask(values: list[str]) -> list[str | None]:
        got = await bus.query("identity", "addresses", {"values": values})
        return list(got["values"])

    return ask


class ServedHosts(Protocol):
    """What the edge_host query asks of the edge (EdgeSync)."""

    def serves(self, host: str) -> bool: ...


class Queries:
    """The gateway's bus queries; `edge` is None when this gateway runs no edge."""

    def __init__(
        self, pool: asyncpg.Pool, edge: ServedHosts | None, addresses: Addresses | None = None
    ) -> None:
        self._pool = pool
        self._edge = edge
        self._addresses = addresses

    @query("activity")
    async def activity(self, payload: dict[str, Any]) -> dict[str, Any]:
        return await activity_query(self._pool, payload, self._addresses)

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


async def activity_query(
    pool: asyncpg.Pool, payload: dict[str, Any], addresses: Addresses | None = None
) -> dict[str, Any]:
    """One page of the activity log, newest first, filtered; `next_cursor` fetches the next.

    `payload` has met the contract's `activity` schema (the bus and the REST route check it).
    Sealed client addresses are read back with `addresses`, one question per page.
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
        "SELECT position, occurred_at, actor, ip, ip_sealed, type, stream, summary FROM "  # noqa: S608 - fixed clauses, values bound
        "gateway.activity "
        + ("WHERE " + " AND ".join(where) + " " if where else "")
        + f"ORDER BY position DESC LIMIT ${len(args)}"
    )
    rows = await pool.fetch(sql, *args)
    more = len(rows) > limit
    rows = rows[:limit]
    shown = await _addresses_of(rows, addresses)
    return {
        "items": [
            {
                "position": r["position"],
                "occurred_at": r["occurred_at"].isoformat(),
                "actor": r["actor"],
                "ip": shown.get(r["ip_sealed"], r["ip"]),
                "type": r["type"],
                "target": r["stream"],
                "summary": r["summary"],
            }
            for r in rows
        ],
        "next_cursor": _cursor_out(rows[-1]["position"]) if more and rows else None,
    }


async def _addresses_of(
    rows: list[asyncpg.Record], addresses: Addresses | None
) -> dict[str | None, str]:
    """The text shown for each sealed address of a page: identity's answer, ADDRESS_EXPIRED
    once its week's key is destroyed, ADDRESS_UNAVAILABLE while identity cannot be asked."""
    sealed = list(dict.fromkeys(r["ip_sealed"] for r in rows if r["ip_sealed"] is not None))
    if not sealed:
        return {}
    if addresses is None:
        return dict.fromkeys(sealed, ADDRESS_UNAVAILABLE)
    try:
        plain = await addresses(sealed)
    except (Unavailable, DeadlineExceeded) as e:
        log.warning("the activity log shows no client addresses: identity did not answer (%s)", e)
        return dict.fromkeys(sealed, ADDRESS_UNAVAILABLE)
    return {s: p if p is not None else ADDRESS_EXPIRED for s, p in zip(sealed, plain, strict=True)}
