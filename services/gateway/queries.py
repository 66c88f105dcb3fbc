"""Queries the gateway answers on the bus (libs/contracts/gateway.py): the activity log over its
read model, and whether the edge serves a host. The activity log's export (GET
/api/v1/activity/export) reads the same rows here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import asyncpg

from libs.contracts.cursors import cursor_in, cursor_out
from libs.contracts.gateway import ACTIVITY_MAX_LIMIT
from libs.events.bus import Invalid
from libs.events.handlers import query
from services.gateway.activity_names import Ask, Looked, Row, look_up
from services.gateway.activity_text import (
    ADDRESS_EXPIRED,
    ADDRESS_UNAVAILABLE,
    PROGRESS_TYPES,
    Line,
    actor_name,
    sentence,
)
from services.gateway.errors import EdgeOff

__all__ = [
    "ACTIVITY_MAX_LIMIT",
    "ADDRESS_EXPIRED",
    "ADDRESS_UNAVAILABLE",
    "EXPORT_MAX_ROWS",
    "Ask",
    "Export",
    "Queries",
    "activity_query",
    "export_items",
    "export_plan",
]

ACTIVITY_DEFAULT_LIMIT = 50
# An export holds at most this many events; a range with more is refused (400 naming `since`)
# before anything is sent, so a file is never cut short silently.
EXPORT_MAX_ROWS = 100_000
EXPORT_PAGE = 500  # events per read (and per round of names) while an export is written


class ServedHosts(Protocol):
    """What the edge_host query asks of the edge (EdgeSync)."""

    def serves(self, host: str) -> bool: ...


class Queries:
    """The gateway's bus queries; `edge` is None when this gateway runs no edge."""

    def __init__(
        self, pool: asyncpg.Pool, edge: ServedHosts | None, ask: Ask | None = None
    ) -> None:
        self._pool = pool
        self._edge = edge
        self._ask = ask

    @query("activity")
    async def activity(self, payload: dict[str, Any]) -> dict[str, Any]:
        return await activity_query(self._pool, payload, self._ask)

    @query("edge_host")
    async def edge_host(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Whether the live nginx generation has a vhost for `host`."""
        if self._edge is None:
            raise EdgeOff()
        return {"served": self._edge.serves(payload["host"])}


def _time(payload: dict[str, Any], name: str) -> datetime | None:
    raw = payload.get(name)
    if raw is None:
        return None
    return datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))


# A text filter as its index has it (migrations/0007): the hash, then the text itself.
_KEYED = "hashtext({0}) = hashtext({{0}}) AND {0} = {{0}}"


class _Where:
    """The WHERE clause of a filtered read, its values bound."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.args: list[Any] = []

    def add(self, sql: str, value: Any) -> None:
        self.args.append(value)
        self.clauses.append(sql.format(f"${len(self.args)}"))

    def bind(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    @property
    def sql(self) -> str:
        return "WHERE " + " AND ".join(self.clauses) + " " if self.clauses else ""


def _filtered(payload: dict[str, Any]) -> _Where:
    """The filters of a page or an export (the contract's ACTIVITY_FILTERS, already checked
    for shape); `since` after `until` is refused naming `since`."""
    since, until = _time(payload, "since"), _time(payload, "until")
    if since is not None and until is not None and since > until:
        raise Invalid("since must not be after until", field="since")
    w = _Where()
    if since is not None:
        w.add("occurred_at >= {}", since)
    if until is not None:
        w.add("occurred_at < {}", until)
    if payload.get("actor") is not None:
        w.add(_KEYED.format("actor"), payload["actor"])
    if payload.get("type") is not None:
        w.add(_KEYED.format("type"), payload["type"])  # a type asked for shows whatever the view
    elif payload.get("view", "changes") == "changes":
        w.add("NOT (type = ANY({}::text[]))", sorted(PROGRESS_TYPES))
    target = payload.get("target")
    if target is not None:
        w.add(_KEYED.format("stream" if "-" in target else "category"), target)
    return w


def _item(row: Row, looked: Looked) -> dict[str, Any]:
    """One event as the API shows it: who, what, on what, when, and its sentence."""
    names = looked.names
    ip = looked.addresses.get(row.ip_sealed, ADDRESS_UNAVAILABLE) if row.ip_sealed else row.ip
    browser = names.browsers.get(row.user_agent) if row.user_agent else None
    line = Line(row.actor, row.type, row.stream, row.summary, row.refs, ip, row.user_agent)
    return {
        "position": row.position,
        "occurred_at": row.occurred_at.isoformat(),
        "actor": row.actor,
        "actor_name": actor_name(row.actor, names),
        "ip": ip,
        "browser": browser,
        "type": row.type,
        "target": row.stream,
        "summary": row.summary,
        "sentence": sentence(line, names),
    }


async def _read(pool: asyncpg.Pool, w: _Where, limit: int) -> list[Row]:
    last = w.bind(limit)
    rows = await pool.fetch(Row.select(w.sql, last), *w.args)
    return [Row.of(r) for r in rows]


async def activity_query(
    pool: asyncpg.Pool, payload: dict[str, Any], ask: Ask | None = None
) -> dict[str, Any]:
    """One page of the activity log, newest first, filtered; `next_cursor` fetches the next.

    `payload` has met the contract's `activity` schema (the bus and the REST route check it).
    The names a page's sentences need, and its sealed client addresses, are asked with `ask`
    once per kind (activity_names.py); without it ids stay short and addresses sealed.
    """
    w = _filtered(payload)
    limit: int = payload.get("limit", ACTIVITY_DEFAULT_LIMIT)
    if payload.get("cursor") is not None:
        w.add("position < {}", cursor_in("a", payload["cursor"]))
    rows = await _read(pool, w, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    looked = await look_up(pool, rows, ask)
    return {
        "items": [_item(r, looked) for r in rows],
        "next_cursor": cursor_out("a", rows[-1].position) if more and rows else None,
    }


@dataclass(frozen=True, slots=True)
class Export:
    """An export decided: its filters, the last event it holds, how many events."""

    where: _Where
    upto: int
    count: int


async def export_plan(pool: asyncpg.Pool, payload: dict[str, Any]) -> Export:
    """The events an export of `payload`'s filters holds (those recorded by now), counted
    before anything is sent: more than EXPORT_MAX_ROWS is refused, naming `since`."""
    w = _filtered(payload)
    upto = int(await pool.fetchval("SELECT coalesce(max(position), 0) FROM gateway.activity"))
    w.add("position <= {}", upto)
    count = int(
        await pool.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM gateway.activity "  # noqa: S608 - fixed clauses, values bound
            f"{w.sql}LIMIT {EXPORT_MAX_ROWS + 1}) AS held",
            *w.args,
        )
    )
    if count > EXPORT_MAX_ROWS:
        raise Invalid(
            f"this range holds more than {EXPORT_MAX_ROWS:,} events, the most one export "
            "holds: narrow it with since and until (or filter by actor, type or target)",
            field="since",
        )
    return Export(w, upto, count)


async def export_items(
    pool: asyncpg.Pool, export: Export, ask: Ask | None
) -> AsyncIterator[list[dict[str, Any]]]:
    """The events of `export`, newest first, a page at a time (names asked once per page, the
    catalog's titles once per export)."""
    ask = _catalog_once(ask) if ask is not None else None
    before: int | None = None
    while True:
        w = _Where()
        w.clauses, w.args = list(export.where.clauses), list(export.where.args)
        if before is not None:
            w.add("position < {}", before)
        rows = await _read(pool, w, EXPORT_PAGE)
        if not rows:
            return
        looked = await look_up(pool, rows, ask)
        yield [_item(r, looked) for r in rows]
        if len(rows) < EXPORT_PAGE:
            return
        before = rows[-1].position


def _catalog_once(ask: Ask) -> Ask:
    """`ask`, with the apps catalog asked once and its answer kept (for one export)."""
    kept: dict[str, Any] = {}

    async def asking(
        service: str,
        name: str,
        payload: dict[str, Any],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the wire deadline, not a local wait
    ) -> Any:
        if (service, name) != ("apps", "catalog"):
            return await ask(service, name, payload, timeout=timeout)
        if "catalog" not in kept:
            kept["catalog"] = await ask(service, name, payload, timeout=timeout)
        return kept["catalog"]

    return asking
