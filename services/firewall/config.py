"""Firewall configuration, read once from HP_* environment variables."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from libs.events.relay import DEFAULT_PREFIX, DEFAULT_STREAM
from libs.service.config import ServiceConfig, check

__all__ = ["BanPolicy", "FirewallConfig"]


def _positive(v: float) -> bool:
    return v > 0


def _table(v: str) -> bool:
    return re.fullmatch(r"[a-z][a-z0-9_]{0,30}", v) is not None


@dataclass(frozen=True)
class BanPolicy:
    """SECURITY.md "Brute force": an address with `ban_failures` failed sign-ins within
    `ban_window_seconds` is banned for `ban_seconds`, doubled for each earlier ban."""

    ban_failures: int = field(default=5, metadata=check(_positive, "a whole number > 0"))
    ban_window_seconds: int = field(default=600, metadata=check(_positive, "seconds > 0"))
    ban_seconds: int = field(default=600, metadata=check(_positive, "seconds > 0"))


@dataclass(frozen=True)
class FirewallConfig(BanPolicy, ServiceConfig):
    """The firewall service: its ban policy, and whether (and how) it applies the bans."""

    events_stream: str = DEFAULT_STREAM
    events_prefix: str = DEFAULT_PREFIX
    # Off by default: the local stack must not change the host's packet filter. Production
    # units set HP_FIREWALL_APPLY=true. `nft` is run as this argv prefix (never a shell).
    firewall_apply: bool = False
    firewall_nft: tuple[str, ...] = ("nft",)
    firewall_table: str = field(
        default="homeport_ban", metadata=check(_table, "an nftables table name (a-z, 0-9, _)")
    )
    # A ban reaches the kernel within about this long after its event reaches the projection.
    firewall_reconcile_seconds: float = field(default=1.0, metadata=check(_positive, "seconds > 0"))
