"""Queries the gateway answers over its read models."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import Any

import asyncpg

from libs.events.bus import Invalid

__all__ = ["ACTIVITY_MAX_LIMIT", "activity_query"]

ACTIVITY_DEFAULT_LIMIT = 50
ACTIVITY_MAX_LIMIT = 200
_TYPE = re.compile(r"^[A-Z][A-Za-z0-9]{0,99}$")
_TARGET = re.compile(r"^[a-z][a-z0-9_]{0,31}(-[A-Za-z0-9][A-Za-z0-9_.:-]{0,127})?$")
_KNOWN = {"since", "until", "actor", "type", "target", "limit", "cursor"}


def _cursor_out(position: int) -> str:
    return base64.urlsafe_b64encode(f"a:{position}".encode()).decode().rstrip("=")


def _cursor_in(raw: object) -> int:
    if not isinstance(raw, str) or len(raw) > 40:
        raise Invalid("cursor must be the next_cursor of a previous page", field="cursor")
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
    if isinstance(raw, str):
        try:
            when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            when = None
        if when is not None and when.tzinfo is not None:
            return when
    raise Invalid(
        f"{name} must be an ISO 8601 time with a zone, e.g. 2026-11-22T08:00:00Z", field=name
    )


def _text(
    payload: dict[str, Any], name: str, pattern: re.Pattern[str] | None, hint: str
) -> str | None:
    raw = payload.get(name)
    if raw is None:
        return None
    if (
        not isinstance(raw, str)
        or not raw
        or len(raw) > 200
        or (pattern is not None and not pattern.match(raw))
    ):
        raise Invalid(f"{name} must be {hint}", field=name)
    return raw


async def activity_query(pool: asyncpg.Pool, payload: dict[str, Any]) -> dict[str, Any]:
    """One page of the activity log, newest first, filtered; `next_cursor` fetches the next."""
    unknown = sorted(set(payload) - _KNOWN)
    if unknown:
        raise Invalid(
            f"unknown filter {unknown[0]!r}; use one of {', '.join(sorted(_KNOWN))}",
            field=unknown[0],
        )
    since, until = _time(payload, "since"), _time(payload, "until")
    if since is not None and until is not None and since > until:
        raise Invalid("since must not be after until", field="since")
    actor = _text(payload, "actor", None, "a user id or name (1-200 characters)")
    etype = _text(payload, "type", _TYPE, "an event type such as AppInstalled")
    target = _text(payload, "target", _TARGET, "a stream (app-4f1c) or a category (app)")
    limit = payload.get("limit", ACTIVITY_DEFAULT_LIMIT)
    if (
        not isinstance(limit, int)
        or isinstance(limit, bool)
        or not 1 <= limit <= ACTIVITY_MAX_LIMIT
    ):
        raise Invalid(f"limit must be an integer from 1 to {ACTIVITY_MAX_LIMIT}", field="limit")
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
    if actor is not None:
        add("actor = {}", actor)
    if etype is not None:
        add("type = {}", etype)
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
