"""Where a provider URL an admin enters may lead: never to this machine's own services.

Loopback (127.0.0.0/8, ::1, `localhost` names), link-local and cloud metadata (169.254.0.0/16,
fe80::/10, fd00:ec2::254) and the unspecified addresses (0.0.0.0/8, ::) are refused twice:
when the URL is given (`check_url`, for literal addresses and localhost names) and when a
connection is made (`GuardedResolver`, for whatever a name resolves to at that moment, so a
name that changes its answer later gets no further). A refusal happens before any connection,
so its message is the same whether a port there is open or closed.

Tests and development run PowerDNS and moto on loopback: the dns service's
`allow_loopback_providers` setting (HP_ALLOW_LOOPBACK_PROVIDERS, off by default) lifts the rule.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from services.dns.errors import ProviderConfigError

if TYPE_CHECKING:
    from services.dns.providers.guarded import GuardedResolver

__all__ = ["GuardedResolver", "RefusedAddress", "check_url", "refusal", "refused_in"]

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_LEGACY_IPV4 = re.compile(r"[0-9a-fA-FxX.]{1,40}")
_REFUSED: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = (
    (ipaddress.ip_network("127.0.0.0/8"), "a loopback address of this server"),
    (ipaddress.ip_network("::1/128"), "a loopback address of this server"),
    (ipaddress.ip_network("169.254.0.0/16"), "a link-local (cloud metadata) address"),
    (ipaddress.ip_network("fe80::/10"), "a link-local address"),
    (ipaddress.ip_network("fd00:ec2::254/128"), "a cloud metadata address"),
    (ipaddress.ip_network("0.0.0.0/8"), "the unspecified address (this server)"),
    (ipaddress.ip_network("::/128"), "the unspecified address (this server)"),
)


def __getattr__(name: str) -> Any:
    # GuardedResolver subclasses aiohttp's resolver: imported on first use, so the dns service
    # does not load aiohttp (~11 MiB) at rest, only when it calls a provider's HTTP API.
    if name == "GuardedResolver":
        from services.dns.providers.guarded import GuardedResolver

        return GuardedResolver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _advice(field: str) -> str:
    return f"check {field}: give the address other machines reach the provider at"


class RefusedAddress(OSError):
    """A provider's name resolved to an address it may not use (raised at connect time)."""


def refusal(address: str) -> str | None:
    """Why `address` (an IP address) may not be used, or None if it may."""
    try:
        ip: _Address = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        if not _LEGACY_IPV4.fullmatch(address):
            return None
        try:  # 127.1, 0x7f.0.0.1, 2130706433: what inet_aton (and so a connect) makes of them
            ip = ipaddress.IPv4Address(socket.inet_aton(address))
        except OSError:
            return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for network, why in _REFUSED:
        if ip in network:
            return why
    return None


def check_url(field: str, url: str, *, allow_loopback: bool) -> None:
    """Raise ProviderConfigError(field) if `url`'s host is a refused address or localhost name."""
    if allow_loopback:
        return
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost") or host == "localhost.localdomain":
        why: str | None = "a loopback name of this server"
    else:
        why = refusal(host)
    if why is not None:
        said = f"{field} must not point at this server itself ({host} is {why})"
        raise ProviderConfigError(field, f"{said}: {_advice(field)}")


def refused_in(error: BaseException) -> RefusedAddress | None:
    """The RefusedAddress somewhere behind `error` (an SDK wraps aiohttp's error), if any."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, RefusedAddress):
            return e
        todo += [e.__cause__, e.__context__, getattr(e, "os_error", None)]
        kwargs = getattr(e, "kwargs", None)  # botocore keeps the wrapped error in kwargs
        if isinstance(kwargs, dict) and isinstance(kwargs.get("error"), BaseException):
            todo.append(kwargs["error"])
    return None
