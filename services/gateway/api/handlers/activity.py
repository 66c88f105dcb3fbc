"""The activity log: who did what, on what, when (a projection of every event), as sentences
with names; and its export as CSV or JSON."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from libs.contracts.gateway import ACTIVITY, ACTIVITY_FILTERS
from libs.contracts.schema import array, integer, nullable, obj, string
from services.gateway.api.routes import Access, Call, Routes
from services.gateway.queries import (
    EXPORT_MAX_ROWS,
    Export,
    activity_query,
    export_items,
    export_plan,
)

__all__ = ["CSV_COLUMNS", "routes", "spreadsheet_safe"]

routes = Routes("activity")
log = logging.getLogger(__name__)

_WRITE_TIMEOUT = 10.0  # seconds a part of an export may wait for the client to read

CSV = "text/csv"
JSON = "application/json"

ITEM = obj(
    {
        "position": integer(minimum=1),
        "occurred_at": string(format="date-time"),
        "actor": string(description='a user id, "system" (the platform) or "anonymous"'),
        "actor_name": string(
            description='the actor as a person reads it: a username, "Homeport", "someone", '
            '"a deleted user"'
        ),
        "ip": nullable(
            string(description='the client address; "address expired" past the retention period')
        ),
        "browser": nullable(string(description="a sign-in's browser, e.g. Firefox")),
        "type": string(),
        "target": string(),
        "summary": string(description="the event's own summary, names as ids"),
        "sentence": string(
            description='what happened, with names: "owner installed Static website at '
            'blog.example.org"'
        ),
    },
    required=[
        "position", "occurred_at", "actor", "actor_name", "ip", "browser", "type", "target",
        "summary", "sentence",
    ],
)  # fmt: skip
PAGE = obj(
    {
        "items": array(ITEM),
        "next_cursor": nullable(string(description="pass as cursor for the next page")),
    },
    required=["items", "next_cursor"],
)
EXPORT_QUERY = obj(
    {
        **ACTIVITY_FILTERS,
        "format": string(enum=["csv", "json"], default="csv", description="csv or json"),
    }
)
EXPORT = {
    "description": "CSV with a header row (the columns of CSV_COLUMNS), or JSON {items: [...]} "
    "with the items of GET /activity; as an attachment"
}
# The columns of the CSV export, in order (each a field of an item).
CSV_COLUMNS = (
    "occurred_at", "actor_name", "sentence", "ip", "browser", "type", "target", "actor",
    "summary", "position",
)  # fmt: skip
# A cell a spreadsheet would read as a formula (OWASP "CSV injection"): = + - @, and tab or
# carriage return, which some read past.
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


@routes.get(
    "/activity",
    access=Access.admin,
    summary="The activity log, newest first",
    description=(
        "Each event with the sentence a person reads, names included. `view=changes` (the "
        "default) leaves out the steps of work under way (task progress, an install's steps); "
        "`view=everything` shows them too; a `type` filter shows its type in either view."
    ),
    query=ACTIVITY,
    responses={200: PAGE},
)
async def activity(call: Call) -> Any:
    # the gateway holds no key: identity reads the page's names and sealed addresses back
    return await activity_query(call.pool, call.query, call.ask)


@routes.get(
    "/activity/export",
    access=Access.admin,
    summary="The activity log's events of a range, as a CSV or JSON file",
    description=(
        "The filters of GET /activity (view included), newest first, as an attachment: CSV "
        f"(the default; columns {', '.join(CSV_COLUMNS)}; a cell that starts with = + - @ is "
        "prefixed with ' so no spreadsheet runs it) or JSON. At most "
        f"{EXPORT_MAX_ROWS:,} events: a range with more is 400 naming `since`, before anything "
        "is sent; events recorded while it is written are not in it. The header "
        "X-Homeport-Events says how many events it holds."
    ),
    query=EXPORT_QUERY,
    media_type=CSV,
    alt_media_types=(JSON,),
    responses={200: EXPORT},
)
async def export_activity(call: Call) -> Any:
    filters = {k: v for k, v in call.query.items() if k != "format"}
    kind = call.query.get("format", "csv")
    plan = await export_plan(call.pool, filters)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    media = JSON if kind == "json" else CSV
    response = web.StreamResponse(
        headers={
            "Content-Type": f"{media}; charset=utf-8",
            "Content-Disposition": f'attachment; filename="homeport-activity-{stamp}.{kind}"',
            "X-Homeport-Events": str(plan.count),
        }
    )
    if call.request.method == "HEAD":
        return response
    await response.prepare(call.request)
    try:
        await _write(call, response, kind, plan)
    except ConnectionResetError:
        pass  # the client went away
    except Exception:  # a server-side error or timeout, or a client that stopped reading
        # The file has begun: no problem response can follow. The connection is cut, so the
        # client sees a broken transfer rather than a file that looks whole.
        log.exception("the activity export failed while it was written")
        if call.request.transport is not None:
            call.request.transport.abort()
    return response


async def _write(call: Call, response: web.StreamResponse, kind: str, plan: Export) -> None:
    async def write(data: bytes) -> None:
        async with asyncio.timeout(_WRITE_TIMEOUT):  # a client that stops reading is let go
            await response.write(data)

    first = True
    await write(b'{"items": [' if kind == "json" else _csv_lines([CSV_COLUMNS]))
    async for items in export_items(call.pool, plan, call.ask):
        if kind == "json":
            text = ",\n".join(json.dumps(i, ensure_ascii=False, allow_nan=False) for i in items)
            await write(("\n" if first else ",\n").encode() + text.encode())
        else:
            await write(_csv_lines(_csv_row(i) for i in items))
        first = False
    if kind == "json":
        await write(b"\n]}\n")
    await response.write_eof()


def spreadsheet_safe(value: object) -> str:
    """A CSV cell no spreadsheet reads as a formula: text starting with = + - @ (or a tab or
    carriage return) gets a leading '."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA) else text


def _csv_row(item: Mapping[str, Any]) -> list[str]:
    return [spreadsheet_safe(item.get(c)) for c in CSV_COLUMNS]


def _csv_lines(rows: Iterable[Sequence[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode()
