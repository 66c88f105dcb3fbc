"""The notification centre of administrators: the bell (unread count), the list, read marks,
open alerts, and where each administrator wants to hear of what (email, push through apprise).

The notify service owns it all (libs/contracts/notify.py): what an alert is, whose
notification is whose, that a push URL is one apprise may reach. The schemas here are its
contract's and refuse malformed input first. Push URLs hold their services' tokens: they go in
once and come back masked (scheme and host only), never in clear.
"""

from __future__ import annotations

from typing import Any

from libs.contracts.notify import CATEGORIES, MAX_PUSH_URLS
from libs.contracts.notify import CONTRACT as NOTIFY
from libs.contracts.schema import Schema, array, boolean, integer, nullable, obj, string
from services.gateway.api.bodies import command_body
from services.gateway.api.routes import Access, Call, Routes

__all__ = ["routes"]

routes = Routes("notifications")

# A test notification waits for the mail service (which may try a relay) and for each push URL.
_TEST_TIMEOUT = 75.0


def _contract_query(name: str, notes: dict[str, dict[str, Any]] | None = None) -> Schema:
    schema = NOTIFY.schema("qry", name)
    if schema is None:
        raise ValueError(f"libs/contracts/notify.py declares no query {name}")
    props = {k: {**v, **(notes or {}).get(k, {})} for k, v in schema["properties"].items()}
    return {**schema, "properties": props}


LIST_QUERY = _contract_query(
    "notifications",
    {
        "unread": {"description": "only the unread ones (default false)"},
        "limit": {"description": "how many at most (default 50)"},
    },
)
READ_BODY = command_body(
    NOTIFY,
    "mark_read",
    notes={
        "ids": {"description": "the notifications to mark read"},
        "all": {"description": "true: mark every notification read (ids are then not needed)"},
    },
)
PREFERENCES_BODY = command_body(
    NOTIFY,
    "set_preferences",
    notes={
        "email": {"description": "the categories that come by email"},
        "push": {"description": "the categories that come by push"},
        "push_urls": {
            "description": (
                f"apprise URLs (ntfy, Gotify, Matrix, Slack, a JSON webhook, ...), at most "
                f"{MAX_PUSH_URLS}; they replace the ones set before, null keeps those. Never "
                "shown back in clear"
            ),
            "writeOnly": True,
        },
    },
)
TEST_BODY = command_body(
    NOTIFY,
    "test",
    notes={
        "email": {"description": "send it to your account's email address (default true)"},
        "push": {"description": "send it to your push URLs (default true)"},
    },
)

_CATEGORY = string(enum=list(CATEGORIES), description="what a notification is about")
_SEVERITY = string(description="info, warning or critical")
NOTIFICATION = obj(
    {
        "id": string(format="uuid"),
        "kind": string(description="opened (an alert), resolved (its end) or notice"),
        "category": _CATEGORY,
        "severity": _SEVERITY,
        "title": string(),
        "detail": string(),
        "created_at": string(format="date-time"),
        "read": boolean(description="whether the caller has read it"),
        "open": boolean(description="an alert that still holds"),
        "mailed": integer(description="how many people it was mailed to"),
        "pushed": integer(description="how many push URLs took it"),
        "note": string(description="what went wrong delivering it, if anything"),
    },
    required=["id", "kind", "category", "severity", "title", "detail", "created_at", "read"],
    additional=True,
)
PAGE = obj(
    {
        "items": array(NOTIFICATION, description="newest first"),
        "unread": integer(minimum=0, description="the caller's unread notifications in all"),
        "next_cursor": nullable(string(description="pass as cursor for the next page")),
    },
    required=["items", "unread", "next_cursor"],
    additional=True,
)
UNREAD = obj({"unread": integer(minimum=0)}, required=["unread"], additional=True)
ALERT = obj(
    {
        "key": string(description="the condition, e.g. app-down:<app id>"),
        "open": boolean(),
        "category": _CATEGORY,
        "severity": _SEVERITY,
        "title": string(),
        "detail": string(),
        "opened_at": string(format="date-time"),
        "resolved_at": nullable(string(format="date-time")),
    },
    required=["key", "open", "category", "severity", "title", "opened_at"],
    additional=True,
)
ALERTS = obj(
    {"items": array(ALERT, description="the open alerts, then the last resolved ones")},
    required=["items"],
    additional=True,
)
PREFERENCES = obj(
    {
        "email": array(_CATEGORY, description="the categories that come by email"),
        "push": array(_CATEGORY, description="the categories that come by push"),
        "push_urls": array(
            string(),
            description="the push URLs, masked: scheme and host only (ntfys://ntfy.sh/…)",
        ),
        "categories": array(string(), description="every category there is"),
    },
    required=["email", "push", "push_urls"],
    additional=True,
)
TESTED = obj(
    {
        "mailed": boolean(description="whether the mail service took the message"),
        "pushed": integer(minimum=0, description="how many push URLs took it"),
        "errors": array(string(), description="what went wrong, in words"),
    },
    required=["mailed", "pushed", "errors"],
    additional=True,
)


@routes.get(
    "/notifications",
    access=Access.admin,
    summary="Your notifications (alerts opened and resolved, notices), newest first",
    description="A page at a time: pass a page's next_cursor as cursor for the next one.",
    query=LIST_QUERY,
    responses={200: PAGE},
)
async def notifications(call: Call) -> Any:
    return await call.ask("notify", "notifications", dict(call.query))


@routes.get(
    "/notifications/unread",
    access=Access.admin,
    summary="How many of your notifications are unread (the bell)",
    responses={200: UNREAD},
)
async def notifications_unread(call: Call) -> Any:
    return await call.ask("notify", "unread_count", {})


@routes.post(
    "/notifications/read",
    access=Access.admin,
    summary="Mark notifications read: some (ids) or all of them (all=true)",
    description="A 400 naming `ids` when neither is given. Answers the unread count left.",
    body=READ_BODY,
    responses={200: UNREAD},
)
async def mark_notifications_read(call: Call) -> Any:
    return await call.command("notify", "mark_read", dict(call.body))


@routes.get(
    "/alerts",
    access=Access.admin,
    summary="The alerts open now, and the last ones resolved",
    responses={200: ALERTS},
)
async def alerts(call: Call) -> Any:
    return await call.ask("notify", "alerts", {})


@routes.get(
    "/notifications/preferences",
    access=Access.admin,
    summary="What comes to you by email and by push (push URLs masked)",
    responses={200: PREFERENCES},
)
async def notification_preferences(call: Call) -> Any:
    return await call.ask("notify", "preferences", {})


@routes.put(
    "/notifications/preferences",
    access=Access.admin,
    summary="Choose what comes to you by email and by push, and where push goes",
    description=(
        "The categories are replaced whole. push_urls replaces your push URLs (an empty list "
        "removes them); null keeps the ones set before, which are never shown back in clear. "
        "A URL apprise does not understand, or one aimed at a link-local, metadata or "
        "reserved address, is a 400 naming it (`push_urls.N`), and nothing changes."
    ),
    body=PREFERENCES_BODY,
    responses={200: PREFERENCES},
)
async def set_notification_preferences(call: Call) -> Any:
    return await call.command("notify", "set_preferences", dict(call.body))


@routes.post(
    "/notifications/test",
    access=Access.admin,
    summary="Send yourself a test notification, by email and/or push",
    description=(
        "Answers what happened: whether the mail was taken, how many push URLs took it, and "
        "the errors in words (no email address, no way to send mail, a push service refusing)."
    ),
    body=TEST_BODY,
    responses={200: TESTED},
)
async def send_test_notification(call: Call) -> Any:
    return await call.command("notify", "test", dict(call.body), timeout=_TEST_TIMEOUT)
