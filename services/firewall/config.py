"""Firewall configuration, read once from HP_* environment variables."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from libs.contracts.firewall import TRIAL_SECONDS
from libs.events.relay import DEFAULT_PREFIX, DEFAULT_STREAM
from libs.service.config import ServiceConfig, check

__all__ = ["BanPolicy", "FirewallConfig"]


def _positive(v: float) -> bool:
    return v > 0


def _table(v: str) -> bool:
    return re.fullmatch(r"[a-z][a-z0-9_]{0,30}", v) is not None


def _port(v: str) -> bool:
    return re.fullmatch(r"[0-9]{1,5}", v) is not None and 0 < int(v) < 65536


def _ports(v: tuple[str, ...]) -> bool:
    return all(_port(p) for p in v)


def _address(v: str) -> bool:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return False
    return True


def _ssh_log(v: str) -> bool:
    """Empty (off), "journal", or the absolute path of a log file."""
    return v in ("", "journal") or (
        v.startswith("/") and len(v) <= 4096 and re.search(r"[\x00-\x1f\x7f]", v) is None
    )


def _addon_ports(v: tuple[str, ...]) -> bool:
    for entry in v:
        addon, eq, port = entry.partition("=")
        if not eq or re.fullmatch(r"[a-z][a-z0-9]{0,30}", addon) is None or not _port(port):
            return False
    return True


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
    # The container egress floor (libs/egress.py, iptables): on wherever apps run, applying or
    # not; off only where something else owns the host's filter (and in tests of other parts).
    firewall_egress: bool = True
    firewall_table: str = field(
        default="homeport", metadata=check(_table, "an nftables table name (a-z, 0-9, _)")
    )
    # A ban reaches the kernel within about this long after its event reaches the projection;
    # a change of the rules is applied on the round after it.
    firewall_reconcile_seconds: float = field(default=1.0, metadata=check(_positive, "seconds > 0"))
    # How long a remote change of the SSH or dashboard allow list waits for its confirmation
    # before it is undone (libs/contracts/firewall.py TRIAL_SECONDS; tests shorten it).
    firewall_trial_seconds: float = field(
        default=float(TRIAL_SECONDS), metadata=check(_positive, "seconds > 0")
    )
    # The host's own openings: SSH (rate limited, SECURITY.md) and the edge.
    firewall_ssh_ports: tuple[str, ...] = field(
        default=("22",), metadata=check(_ports, "port numbers 1-65535, comma separated")
    )
    firewall_edge_ports: tuple[str, ...] = field(
        default=("80", "443"), metadata=check(_ports, "port numbers 1-65535, comma separated")
    )
    # sshd's log, read for failed SSH sign-ins (sshd.py): off ("", the local stack's default),
    # "journal" (a server install) or a log file's path (e.g. /var/log/auth.log)
    firewall_ssh_log: str = field(
        default="", metadata=check(_ssh_log, '"journal" or an absolute path of a log file')
    )
    # What apps may reach on the host: the services network's address, and per addon its ports
    # there ("addon=port", one entry per port; deploy/units.py sets the server install's).
    firewall_services_gateway: str = field(
        default="10.213.0.1", metadata=check(_address, "an IP address")
    )
    firewall_addon_ports: tuple[str, ...] = field(
        default=(
            "postgresql=7433",
            "ldap=7389",
            "sendmail=2525",
            "mailclient=2525",
            "mailclient=1143",
            "mailclient=4191",
        ),
        metadata=check(_addon_ports, "entries addon=port, e.g. postgresql=5432"),
    )

    def ports(self, which: tuple[str, ...]) -> tuple[int, ...]:
        return tuple(int(p) for p in which)

    def addon_ports(self) -> dict[str, tuple[int, ...]]:
        out: dict[str, tuple[int, ...]] = {}
        for entry in self.firewall_addon_ports:
            addon, _, port = entry.partition("=")
            out[addon] = (*out.get(addon, ()), int(port))
        return out
