"""The wire contract of the firewall service: allow lists, the block list, apps' way out, and
the view of the packet filter.

Callers: the gateway (administrators). What is open derives from events (mail on, apps'
published ports, the lists); the service renders one nftables table from that and applies it
atomically.

Host ports an app may not take (`PLATFORM_PORTS`) are here so the apps service refuses them
with the same list the firewall opens for the platform.
"""

from __future__ import annotations

from libs.contracts import Contract
from libs.contracts.common import uuid
from libs.contracts.schema import array, boolean, integer, obj, string

__all__ = [
    "ALLOW_SCOPES",
    "CONTRACT",
    "MAIL_PORTS",
    "MAX_ALLOW",
    "MAX_BLOCK",
    "MAX_BLOCK_TEXT",
    "PLATFORM_PORTS",
    "TRIAL_SECONDS",
]

# Mail's public ports: SMTP, submissions (implicit TLS), submission, IMAPS, ManageSieve.
MAIL_PORTS = (25, 465, 587, 993, 4190)
# TCP ports the platform itself opens (SSH and its alternative, the edge, mail): no app gets one.
PLATFORM_PORTS = frozenset({22, 202, 80, 443, *MAIL_PORTS})
# ssh; the dashboard (nginx, my.<domain>); the edge's 80 and 443 (every site: a private
# server); the mail ports; plus "app:<app id>" for each app's published ports
ALLOW_SCOPES = ("ssh", "dashboard", "edge", "mail")
MAX_ALLOW = 1000  # CIDRs in one allow list
MAX_BLOCK = 100_000  # entries in the block list
MAX_BLOCK_TEXT = 3_000_000  # characters of an imported list (100,000 lines with comments)
# A change to the SSH or dashboard allow list made from a remote address is undone unless it
# is confirmed from an address the new list lets in within this long.
TRIAL_SECONDS = 60

_SCOPE = string(
    maxLength=40,
    pattern=(
        r"^(ssh|dashboard|edge|mail"
        r"|app:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$"
    ),
    description=(
        "what the list guards: ssh, dashboard, edge (80 and 443: every site), mail (its"
        " ports), or app:<app id> (its published ports)"
    ),
)
_CIDR = string(
    minLength=2,
    maxLength=49,
    pattern=r"^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$",
    description="an address or a CIDR range, IPv4 or IPv6, e.g. 203.0.113.0/24",
)
_ENTRIES = array(_CIDR, maxItems=5000, description="addresses or CIDR ranges (5,000 at most)")

CONTRACT = Contract(
    "firewall",
    commands={
        # An empty list lets everyone in. For ssh, dashboard and edge, a change asked from a
        # remote address is on trial: undone after TRIAL_SECONDS unless confirmed.
        "set_allowlist": obj(
            {"scope": _SCOPE, "cidrs": array(_CIDR, maxItems=MAX_ALLOW)},
            required=["scope", "cidrs"],
        ),
        # Keeps a list on trial; only from an address the new list lets in.
        "confirm_allowlist": obj(
            {"scope": _SCOPE, "trial_id": uuid(description="the trial's id")},
            required=["scope", "trial_id"],
        ),
        # The whole block list from text: one address or CIDR per line; '#' or ';' starts a
        # comment. replace=false adds the lines to what is there.
        "import_blocklist": obj(
            {
                "text": string(maxLength=MAX_BLOCK_TEXT, description="one entry per line"),
                "replace": boolean(description="true: the text is the whole new list"),
            },
            required=["text", "replace"],
        ),
        "block": obj({"entries": _ENTRIES}, required=["entries"]),
        "unblock": obj({"entries": _ENTRIES}, required=["entries"]),
        # An app with internet=false reaches only what the platform gives it (its addons).
        "set_app_internet": obj(
            {"app_id": uuid(description="an app id (UUID)"), "internet": boolean()},
            required=["app_id", "internet"],
        ),
    },
    queries={
        # what is open, to whom, the lists' sizes, active bans, the trial, the last apply
        "status": obj({}),
        # the block list's entries, a page at a time
        "blocklist": obj(
            {
                "offset": integer(minimum=0, maximum=MAX_BLOCK),
                "limit": integer(minimum=1, maximum=5000),
            }
        ),
        "allowlist": obj({"scope": _SCOPE}, required=["scope"]),
        "app": obj({"app_id": uuid(description="an app id (UUID)")}, required=["app_id"]),
    },
)
