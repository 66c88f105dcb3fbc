"""The nftables text of the ban table: pure rendering, nothing here runs `nft`.

The table `inet <table>` holds two sets with timeouts (the kernel removes an element when its
ban ends) and an input-hook chain dropping their sources, plus the SSH rule (more than 5 new
connections in 10 s from one address are dropped, SECURITY.md). It only ever holds our rules.
"""

from __future__ import annotations

import ipaddress

__all__ = ["ban_set", "element", "ruleset"]

# SSH: more than 5 new connections within 10 s from one address are dropped (SECURITY.md).
_SSH = "tcp dport { 22, 202 } ct state new"
_OVER = "limit rate over 5/minute burst 5 packets"  # 5 at once, then one per 12 s


def ruleset(table: str) -> str:
    """The whole table, as an `nft -f` script that replaces any earlier version of it."""
    return f"""table inet {table}
delete table inet {table}
table inet {table} {{
    set banned4 {{ type ipv4_addr; flags timeout; }}
    set banned6 {{ type ipv6_addr; flags timeout; }}
    set ssh4 {{ type ipv4_addr; size 65535; flags dynamic, timeout; timeout 1m; }}
    set ssh6 {{ type ipv6_addr; size 65535; flags dynamic, timeout; timeout 1m; }}
    chain input {{
        type filter hook input priority filter - 10; policy accept;
        ip saddr @banned4 drop
        ip6 saddr @banned6 drop
        {_SSH} add @ssh4 {{ ip saddr {_OVER} }} drop
        {_SSH} add @ssh6 {{ ip6 saddr {_OVER} }} drop
    }}
}}
"""


def ban_set(ip: str) -> str:
    """The set an address's ban goes in: `banned4` or `banned6`."""
    return "banned6" if ipaddress.ip_address(ip).version == 6 else "banned4"


def element(ip: str, seconds: int) -> str:
    """One set element: `ip` dropped for `seconds`, then removed by the kernel."""
    return f"{{ {ipaddress.ip_address(ip)} timeout {seconds}s }}"
