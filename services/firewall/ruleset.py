"""The nftables text of Homeport's table: pure rendering, nothing here runs `nft`.

One table, `inet <table>`, holds every rule of ours; nft replaces it whole in one transaction
(`table`, `delete table`, then the new table: the kernel applies all of it or none). Nothing
else on the host is touched (Docker's tables, the admin's own).

- `prerouting` (priority raw, before connection tracking and Docker's DNAT): banned and
  blocked sources are dropped here, so they reach neither the host nor a published container
  port. Traffic from loopback and from Docker bridges is left to the other chains.
- `input` (policy drop, IPv4 and IPv6 alike): established/related, loopback, ICMP and ICMPv6
  (echo rate limited; neighbour discovery only with hop limit 255, as RFC 4861 sends it), the
  SSH rate limit (SECURITY.md: more than 5 new connections in 10 s from one address are
  dropped), then each opening: SSH, the edge, mail while it is on, apps' published ports, each
  limited to its allow list when it has one. Packets from app containers go to `from_apps`.
- `from_apps`: an app reaches the host only at its addons' ports on the services network's
  address (the addon Postgres for apps with the postgresql addon, the LDAP endpoint for those
  with ldap, the mail listeners for sendmail and mailclient) and the edge (other apps are
  reached through it); nothing else of the host, whatever it listens on.
- `forward` (before Docker's filter): packets from app containers go to `app_egress`
  (link-local and metadata addresses, host loopback, other apps' networks, private ranges,
  and everything for an app without internet, are dropped); new connections from outside to a
  published container port (`ct status dnat`) go to `published`, which lets through only the
  ports of apps that are installed and running, within their allow lists.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["AppNet", "Opening", "Rules", "ban_set", "element", "render", "split_cidrs"]

_OVER = "limit rate over 5/minute burst 5 packets"  # 5 at once, then one per 12 s
_ICMP_ERRORS = "destination-unreachable, time-exceeded, parameter-problem"
_ND = "nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert, nd-redirect"
_MLD = "mld-listener-query, mld-listener-report, mld2-listener-report"
# Where an app's packets never go: not routable on the internet, or this host's own networks.
PRIVATE4 = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/3",
)
PRIVATE6 = ("::1/128", "fc00::/7", "fe80::/10", "ff00::/8")
_BRIDGES = ("br-*", "docker0")  # Docker's bridges: user-defined networks and the default one


@dataclass(frozen=True)
class Opening:
    """A port open to the outside: `proto` tcp or udp, `allow` the CIDRs that may reach it
    (empty: everyone); `published` also lets it through to a container (Docker's DNAT)."""

    proto: str
    port: int
    what: str
    allow: tuple[str, ...] = ()
    published: bool = False


@dataclass(frozen=True)
class AppNet:
    """An app's Docker network: its subnet, the host ports it may reach on the services
    network's address (its addons'), and whether it may reach the internet."""

    app_id: str
    subnet: str
    ports: tuple[int, ...] = ()
    internet: bool = True


@dataclass(frozen=True)
class Rules:
    """Everything the table is made from (projections.py reads it from the read model)."""

    openings: tuple[Opening, ...] = ()
    ssh_ports: tuple[int, ...] = (22,)
    blocked: tuple[str, ...] = ()  # addresses and CIDRs, normalised
    apps: tuple[AppNet, ...] = ()
    services_gateway: str | None = None
    edge_ports: tuple[int, ...] = (80, 443)
    # bans in force: address -> seconds left (the kernel ends each)
    bans: Mapping[str, int] = field(default_factory=dict)


def split_cidrs(cidrs: Iterable[str]) -> tuple[list[str], list[str]]:
    """IPv4 and IPv6 entries apart, as nft writes them (a host without /32 or /128)."""
    v4: list[str] = []
    v6: list[str] = []
    for c in cidrs:
        net = ipaddress.ip_network(c, strict=False)
        text = str(net.network_address) if net.num_addresses == 1 else str(net)
        (v6 if net.version == 6 else v4).append(text)
    return v4, v6


def _elements(items: Sequence[str]) -> str:
    return ",\n            ".join(items)


def _set(name: str, kind: str, flags: str, items: Sequence[str], extra: str = "") -> str:
    elements = f"\n        elements = {{ {_elements(items)} }}" if items else ""
    return f"""    set {name} {{
        type {kind}; flags {flags};{extra}{elements}
    }}"""


def _anon(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _ports(ports: Iterable[int]) -> str:
    return _anon([str(p) for p in sorted(set(ports))])


def _open(o: Opening, match: str) -> list[str]:
    """The rules letting `match` (e.g. `tcp dport 22`) in for `o`'s allow list."""
    if not o.allow:
        return [f"{match} accept"]
    v4, v6 = split_cidrs(o.allow)
    out = []
    if v4:
        out.append(f"{match} ip saddr {_anon(v4)} accept")
    if v6:
        out.append(f"{match} ip6 saddr {_anon(v6)} accept")
    return out


def _input(rules: Rules) -> list[str]:
    out = [
        "ct state established,related accept",
        "ct state invalid drop",
        'iif "lo" accept',
        *(f'iifname "{b}" jump from_apps' for b in _BRIDGES),
        "icmp type echo-request limit rate 20/second burst 50 packets accept",
        f"icmp type {{ {_ICMP_ERRORS} }} accept",
        f"icmpv6 type {{ {_ND} }} ip6 hoplimit 255 accept",
        f"icmpv6 type {{ {_MLD} }} ip6 saddr fe80::/10 accept",
        f"icmpv6 type {{ {_ICMP_ERRORS}, packet-too-big }} accept",
        "icmpv6 type echo-request limit rate 20/second burst 50 packets accept",
        "udp dport 546 ip6 saddr fe80::/10 accept",  # DHCPv6 answers to this host
    ]
    if rules.ssh_ports:
        ssh = f"tcp dport {_ports(rules.ssh_ports)} ct state new"
        out += [
            f"{ssh} add @ssh4 {{ ip saddr {_OVER} }} drop",
            f"{ssh} add @ssh6 {{ ip6 saddr {_OVER} }} drop",
        ]
    # openings without allow lists share one rule per protocol; the others one rule each
    for proto in ("tcp", "udp"):
        free = sorted({o.port for o in rules.openings if o.proto == proto and not o.allow})
        if free:
            out.append(f"{proto} dport {_ports(free)} accept")
    for o in sorted(rules.openings, key=lambda o: (o.proto, o.port)):
        if o.allow:
            out += _open(o, f"{o.proto} dport {o.port}")
    return out


def _from_apps(rules: Rules) -> list[str]:
    out = []
    if rules.services_gateway:
        for app in sorted(rules.apps, key=lambda a: a.app_id):
            if app.ports:
                out.append(
                    f"ip saddr {app.subnet} ip daddr {rules.services_gateway}"
                    f" tcp dport {_ports(app.ports)} accept"
                )
    if rules.edge_ports:
        out.append(f"tcp dport {_ports(rules.edge_ports)} accept")  # other apps, via the edge
    out.append("counter drop")
    return out


def _egress(rules: Rules) -> list[str]:
    out = [
        "ip daddr { 127.0.0.0/8, 169.254.0.0/16 } drop",
        *(f'oifname "{b}" drop' for b in _BRIDGES),  # another app's network
    ]
    closed = sorted(a.subnet for a in rules.apps if not a.internet)
    if closed:
        out.append(f"ip saddr {_anon(closed)} counter drop")  # apps without internet
    out += [
        f"ip daddr {_anon(list(PRIVATE4))} counter drop",
        f"ip6 daddr {_anon(list(PRIVATE6))} counter drop",
    ]
    return out


def _published(rules: Rules) -> list[str]:
    out = []
    for o in sorted(rules.openings, key=lambda o: (o.proto, o.port)):
        if o.published:
            out += _open(o, f"meta l4proto {o.proto} ct original proto-dst {o.port}")
    out.append("counter drop")
    return out


def _chain(name: str, rules: Sequence[str], hook: str = "") -> str:
    head = f"\n        {hook}" if hook else ""
    body = "".join(f"\n        {r}" for r in rules)
    return f"    chain {name} {{{head}{body}\n    }}"


def render(table: str, rules: Rules) -> str:
    """The whole table, as an `nft -f` script that replaces any earlier version of it."""
    blocked4, blocked6 = split_cidrs(rules.blocked)
    bans4 = [element_text(ip, s) for ip, s in sorted(rules.bans.items()) if ":" not in ip]
    bans6 = [element_text(ip, s) for ip, s in sorted(rules.bans.items()) if ":" in ip]
    meter = " size 65535; timeout 1m;"
    parts = [
        _set("banned4", "ipv4_addr", "timeout", bans4),
        _set("banned6", "ipv6_addr", "timeout", bans6),
        _set("blocked4", "ipv4_addr", "interval", blocked4, " auto-merge;"),
        _set("blocked6", "ipv6_addr", "interval", blocked6, " auto-merge;"),
        _set("ssh4", "ipv4_addr", "dynamic, timeout", [], meter),
        _set("ssh6", "ipv6_addr", "dynamic, timeout", [], meter),
        _chain(
            "prerouting",
            [
                'iif "lo" accept',
                *(f'iifname "{b}" accept' for b in _BRIDGES),
                "ip saddr @banned4 drop",
                "ip6 saddr @banned6 drop",
                "ip saddr @blocked4 counter drop",
                "ip6 saddr @blocked6 counter drop",
            ],
            "type filter hook prerouting priority raw; policy accept;",
        ),
        _chain("input", _input(rules), "type filter hook input priority filter; policy drop;"),
        _chain("from_apps", _from_apps(rules)),
        _chain(
            "forward",
            [
                "ct state established,related accept",
                *(f'iifname "{b}" jump app_egress' for b in _BRIDGES),
                "ct status dnat jump published",
            ],
            "type filter hook forward priority filter - 10; policy accept;",
        ),
        _chain("app_egress", _egress(rules)),
        _chain("published", _published(rules)),
    ]
    body = "\n".join(parts)
    return f"table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n{body}\n}}\n"


def ban_set(ip: str) -> str:
    """The set an address's ban goes in: `banned4` or `banned6`."""
    return "banned6" if ipaddress.ip_address(ip).version == 6 else "banned4"


def element_text(ip: str, seconds: int) -> str:
    return f"{ipaddress.ip_address(ip)} timeout {max(1, seconds)}s"


def element(ip: str, seconds: int) -> str:
    """One set element: `ip` dropped for `seconds`, then removed by the kernel."""
    return f"{{ {element_text(ip, seconds)} }}"
