"""DNS service configuration, read once from HP_* environment variables.

Nothing secret lives here: provider credentials come with each domain and are sealed in its
events.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from libs.service.config import ServiceConfig, check

__all__ = ["DnsConfig"]


def _positive(v: float) -> bool:
    return v > 0


@dataclass(frozen=True)
class DnsConfig(ServiceConfig):
    """How long the dns service waits for DNS and for the services it asks."""

    # publish_txt (ACME DNS-01) answers once every authoritative server has the value.
    txt_propagation_deadline: float = field(default=120.0, metadata=check(_positive, "seconds > 0"))
    # remove_domain asks the apps service which apps use the domain; no answer, no removal.
    apps_timeout: float = field(default=10.0, metadata=check(_positive, "seconds > 0"))
    # Provider URLs and nameservers may lead to this machine's loopback (tests and dev run
    # PowerDNS there); off in production, where they must not (providers/reach.py).
    allow_loopback_providers: bool = False
