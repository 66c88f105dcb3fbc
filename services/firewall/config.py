"""Firewall configuration, read once from HP_* environment variables."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from libs.events.relay import DEFAULT_PREFIX, DEFAULT_STREAM
from libs.service.config import ServiceConfig, check

__all__ = ["FirewallConfig"]


def _positive(v: int) -> bool:
    return v > 0


def _table(v: str) -> bool:
    return re.fullmatch(r"[a-z][a-z0-9_]{0,30}", v) is not None


@dataclass(frozen=True)
class FirewallConfig(ServiceConfig):
    """SECURITY.md "Brute force": an address with `ban_failures` failed sign-ins within
    `ban_window_seconds` is banned for `ban_seconds`, doubled for each earlier ban."""

    events_stream: str = DEFAULT_STREAM
    events_prefix: str = DEFAULT_PREFIX
    ban_failures: int = field(default=5, metadata=check(_positive, "a whole number > 0"))
    ban_window_seconds: int = field(default=600, metadata=check(_positive, "seconds > 0"))
    ban_seconds: int = field(default=600, metadata=check(_positive, "seconds > 0"))
    # Off by default: the local stack must not change the host's packet filter. Production
    # units set HP_FIREWALL_APPLY=true. `nft` is run as this argv prefix (never a shell).
    firewall_apply: bool = False
    firewall_nft: tuple[str, ...] = ("nft",)
    firewall_table: str = field(
        default="homeport_ban", metadata=check(_table, "an nftables table name (a-z, 0-9, _)")
    )
