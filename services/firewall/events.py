"""The events of the firewall service: what the administrators decided about the packet filter.

Everything else the ruleset depends on comes from other services' events (mail on or off,
apps' published ports, networks and addons, failed sign-ins), so a replay of the log decides
the same ruleset (projections.py).

- Stream `firewall-allow-<scope>`: `AllowListChanged`, each carrying the whole list in force
  after it (a follower keeps the last one per scope; the gateway's edge does for `dashboard`).
- Stream `firewall-blocklist`: `BlockListPart` (an import, in parts of at most 5,000 entries,
  appended in one call; it takes effect with its last part) and `BlockListEdited`.
- Stream `firewall-app-<app id>`: `AppInternetSet`.
"""

from __future__ import annotations

from dataclasses import dataclass

from libs.events.registry import REGISTRY

__all__ = [
    "BLOCKLIST_STREAM",
    "PART_SIZE",
    "AllowListChanged",
    "AppInternetSet",
    "BlockListEdited",
    "BlockListPart",
    "allow_stream",
    "app_stream",
]

BLOCKLIST_STREAM = "firewall-blocklist"
PART_SIZE = 5000  # entries per event: an event stays far below a NATS message's size


def allow_stream(scope: str) -> str:
    """`firewall-allow-ssh`, `firewall-allow-dashboard`, `firewall-allow-app:<id>`."""
    return f"firewall-allow-{scope}"


def app_stream(app_id: str) -> str:
    return f"firewall-app-{app_id}"


@REGISTRY.event("AllowListChanged")
@dataclass(frozen=True, slots=True, kw_only=True)
class AllowListChanged:
    scope: str  # ssh | dashboard | app:<app id>
    cidrs: list[str]  # in force after this event; empty: everyone
    # set: applied for good; trial: applied, undone at `deadline` unless confirmed;
    # confirmed: a trial kept; reverted: a trial undone (cidrs are the list before it)
    why: str
    trial_id: str | None = None
    deadline: str | None = None  # ISO 8601, UTC: when a trial is undone
    previous: list[str] | None = None  # a trial's list before it

    def summary(self) -> str:
        who = "everyone" if not self.cidrs else f"{len(self.cidrs)} range(s)"
        what = {
            "set": "set",
            "trial": "set on trial (undone in 60 s unless confirmed)",
            "confirmed": "confirmed",
            "reverted": "undone (not confirmed in time)",
        }.get(self.why, self.why)
        return f"allow list for {self.scope} {what}: {who}"


@REGISTRY.event("BlockListPart")
@dataclass(frozen=True, slots=True, kw_only=True)
class BlockListPart:
    upload_id: str
    part: int  # 1-based
    parts: int
    replace: bool  # the upload is the whole new list (else it is added)
    entries: list[str]  # normalised addresses and CIDR ranges

    def summary(self) -> str:
        if self.parts == 1:
            n = len(self.entries)
            return f"block list {'replaced' if self.replace else 'extended'}: {n} entries"
        return f"block list import, part {self.part} of {self.parts} ({len(self.entries)} entries)"


@REGISTRY.event("BlockListEdited")
@dataclass(frozen=True, slots=True, kw_only=True)
class BlockListEdited:
    added: list[str]
    removed: list[str]

    def summary(self) -> str:
        return f"block list: {len(self.added)} added, {len(self.removed)} removed"


@REGISTRY.event("AppInternetSet")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppInternetSet:
    app_id: str
    internet: bool

    def summary(self) -> str:
        state = "may reach the internet" if self.internet else "cut off from the internet"
        return f"app {self.app_id[:8]} {state}"
