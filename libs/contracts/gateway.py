"""The gateway's wire contract: the queries it serves on the bus.

- `activity`: one page of the activity log (filters as GET /api/v1/activity takes them), each
  event with the sentence a person reads ("owner installed Static website at blog.example.org"):
  names are asked of identity (and catalog titles of apps) once per page, as the caller.
- `edge_host` {host} -> {served: bool}: whether the nginx generation that is live (applied and
  reloaded) has a vhost for `host`. The edge routes an app once the apps read model shows it
  installed (or with a configure, update or restore under way) with an HTTP port, at the
  location and domain recorded there, and once certs has files for the host (hosts of the local
  domain get a self-signed certificate from the edge). So a caller that waits for `served`
  asks after it has recorded the final event of its operation (AppInstalled, AppConfigured).
  A gateway without an edge answers `unavailable`.
"""

from __future__ import annotations

from libs.contracts import Contract
from libs.contracts.schema import integer, obj, string

__all__ = [
    "ACTIVITY",
    "ACTIVITY_FILTERS",
    "ACTIVITY_MAX_LIMIT",
    "ACTIVITY_VIEWS",
    "CONTRACT",
    "EDGE_HOST",
    "HOST_PATTERN",
]

ACTIVITY_MAX_LIMIT = 200
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
# A lower-case DNS name (the edge's own grammar, services/gateway/edge/render.py).
HOST_PATTERN = rf"^{_LABEL}(\.{_LABEL})*$"

# Which events a page shows: "changes" (the default) leaves out the steps of work under way
# (services/gateway/activity_text.py PROGRESS_TYPES), "everything" shows them too; a `type`
# filter shows its type whatever the view.
ACTIVITY_VIEWS = ("changes", "everything")
# The filters of a page of the activity log and of its export (GET /api/v1/activity/export).
ACTIVITY_FILTERS = {
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
    "view": string(
        enum=list(ACTIVITY_VIEWS),
        default="changes",
        description="changes: configuration changes and sign-ins; everything: task steps too",
    ),
}
ACTIVITY = obj(
    {
        **ACTIVITY_FILTERS,
        "limit": integer(minimum=1, maximum=ACTIVITY_MAX_LIMIT, default=50),
        "cursor": string(maxLength=40, description="the next_cursor of the previous page"),
    }
)
EDGE_HOST = obj(
    {
        "host": string(
            minLength=1,
            maxLength=253,
            pattern=HOST_PATTERN,
            description="a host name, e.g. blog.example.com",
        )
    },
    required=["host"],
)

CONTRACT = Contract("gateway", queries={"activity": ACTIVITY, "edge_host": EDGE_HOST})
