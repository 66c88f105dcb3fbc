"""The activity log: who did what, on what, when (a projection of every event)."""

from __future__ import annotations

from typing import Any

from services.gateway.api.routes import Access, Call, Routes
from libs.contracts.schema import array, integer, nullable, obj, string
from services.gateway.queries import ACTIVITY_MAX_LIMIT, activity_query

__all__ = ["routes"]

routes = Routes("activity")

# The same rules as activity_query's own checks (which still run): here for the OpenAPI
# document and so a bad parameter is refused before any database work.
ACTIVITY_QUERY = obj(
    {
        "since": string(format="date-time", description="events at or after this time"),
        "until": string(format="date-time", description="events before this time"),
        "actor": string(minLength=1, maxLength=200, description="a user id or name"),
        "type": string(
            pattern="^[A-Z][A-Za-z0-9]{0,99}$", description="an event type such as AppInstalled"
        ),
        "target": string(
            maxLength=200,
            pattern="^[a-z][a-z0-9_]{0,31}(-[A-Za-z0-9][A-Za-z0-9_.:-]{0,127})?$",
            description="a stream (app-4f1c) or a category (app)",
        ),
        "limit": integer(minimum=1, maximum=ACTIVITY_MAX_LIMIT, default=50),
        "cursor": string(maxLength=40, description="the next_cursor of the previous page"),
    }
)
ITEM = obj(
    {
        "position": integer(minimum=1),
        "occurred_at": string(format="date-time"),
        "actor": string(),
        "ip": nullable(string()),
        "type": string(),
        "target": string(),
        "summary": string(),
    },
    required=["position", "occurred_at", "actor", "ip", "type", "target", "summary"],
)
PAGE = obj(
    {
        "items": array(ITEM),
        "next_cursor": nullable(string(description="pass as cursor for the next page")),
    },
    required=["items", "next_cursor"],
)


@routes.get(
    "/activity",
    access=Access.admin,
    summary="The activity log, newest first",
    query=ACTIVITY_QUERY,
    responses={200: PAGE},
)
async def activity(call: Call) -> Any:
    return await activity_query(call.pool, call.query)
