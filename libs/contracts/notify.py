"""The wire contract of the notify service: alerts, the notification centre, the platform's own
mail (invitations, password resets, alerts) and where each administrator wants to hear of what.

Callers: the gateway (administrators: the bell, the list, preferences) and identity (`email`:
the links of invitations and password resets, which only identity ever holds in clear).

Alerts derive from events and measurements (services/notify/conditions.py): one open alert per
condition, a resolved notice when it clears, at most one mail per condition per hour.
"""

from __future__ import annotations

from libs.contracts import Contract
from libs.contracts.common import uuid
from libs.contracts.schema import array, boolean, integer, nullable, obj, string

__all__ = [
    "CATEGORIES",
    "CONTRACT",
    "MAIL_INTERVAL_SECONDS",
    "MAX_PUSH_URLS",
    "TEMPLATES",
]

# What a notification is about; each administrator chooses which come by email and push.
CATEGORIES = ("apps", "certificates", "backups", "system", "updates", "security")
# The mails identity asks for: each has a plain-text and an HTML template (templates.py).
TEMPLATES = ("invitation", "password_reset")
MAX_PUSH_URLS = 10
# Never more than one mail per condition within this long (the "per hour").
MAIL_INTERVAL_SECONDS = 3600

_CATEGORY = string(enum=list(CATEGORIES), description="what a notification is about")
_EMAIL = string(minLength=3, maxLength=254, pattern=r"^[^@\s]+@[^@\s]+$")
_CURSOR = string(maxLength=64, description="the next_cursor of a previous page")

CONTRACT = Contract(
    "notify",
    commands={
        # identity only (actor "system"): a mail with a link; the token is used for the link
        # and forgotten, never stored. Answers {sent, via} or an `unavailable` error when the
        # platform has no way to send mail (no mail domain on, no relay).
        "email": obj(
            {
                "template": string(enum=list(TEMPLATES)),
                "to": _EMAIL,
                "token": string(minLength=16, maxLength=200, pattern=r"^[A-Za-z0-9_-]+$"),
                "expires_at": string(format="date-time"),
                "name": nullable(string(maxLength=200, description="whom the mail greets")),
            },
            required=["template", "to", "token", "expires_at"],
        ),
        # the caller's notifications: these ids, or all of them (all=true)
        "mark_read": obj(
            {"ids": array(uuid(), maxItems=500), "all": boolean()},
        ),
        # the caller's choices: categories sent by email, push URLs (apprise), replaced whole
        "set_preferences": obj(
            {
                "email": array(_CATEGORY, maxItems=len(CATEGORIES)),
                "push": array(_CATEGORY, maxItems=len(CATEGORIES)),
                "push_urls": nullable(
                    array(
                        string(minLength=4, maxLength=2000),
                        maxItems=MAX_PUSH_URLS,
                        description="apprise URLs; null keeps the ones set before",
                    )
                ),
            },
            required=["email", "push"],
        ),
        # a test notification to the caller's push URLs (and email when asked)
        "test": obj({"email": boolean(), "push": boolean()}),
    },
    queries={
        # the caller's notification centre, newest first
        "notifications": obj(
            {
                "unread": boolean(description="only the unread ones"),
                "limit": integer(minimum=1, maximum=200),
                "cursor": _CURSOR,
            }
        ),
        "unread_count": obj({}),
        # open alerts (and the recently resolved ones)
        "alerts": obj({}),
        "preferences": obj({}),
    },
)
