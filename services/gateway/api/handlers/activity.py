"""The activity log: who did what, on what, when (a projection of every event)."""

from __future__ import annotations

from typing import Any

from libs.contracts.gateway import ACTIVITY
from libs.contracts.schema import array, integer, nullable, obj, string
from services.gateway.api.routes import Access, Call, Routes
from services.gateway.queries import activity_query

__all__ = ["routes"]

routes = Routes("activity")

ITEM = obj(
    {
        "position": integer(minimum=1),
        "occurred_at": string(format="date-time"),
        "actor": string(),
        "ip": nullable(
            string(description='the client address; "address expired" past the retention period')
        ),
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
    query=ACTIVITY,
    responses={200: PAGE},
)
async def activity(call: Call) -> Any:
    async def addresses(values: list[str]) -> list[str | None]:
        # the gateway holds no key: identity reads the page's sealed addresses back
        got = await call.ask("identity", "addresses", {"values": values})
        return list(got["values"])

    return await activity_query(call.pool, call.query, addresses)
