"""The events of the dns service: stream `domain-<domain>` holds one domain's life.

A domain is added with its provider config (secret fields sealed with the key of subject
`domain-<domain>`), verified or not, gets records that Homeport owns (`DnsRecordSet`,
`DnsRecordRemoved`) and is removed. Ownership is what these events say: Homeport changes or
deletes only an RRset (name and type in the zone) its own `DnsRecordSet` created.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from libs.events.registry import REGISTRY

__all__ = [
    "DOMAIN_CATEGORY",
    "DnsRecordRemoved",
    "DnsRecordSet",
    "DomainAdded",
    "DomainRemoved",
    "DomainVerificationFailed",
    "DomainVerified",
    "domain_stream",
]

DOMAIN_CATEGORY = "domain"


def domain_stream(domain: str) -> str:
    """`domain-example.com`; also the subject its secrets are sealed for."""
    return f"{DOMAIN_CATEGORY}-{domain}"


@REGISTRY.event("DomainAdded")
@dataclass(frozen=True, slots=True, kw_only=True)
class DomainAdded:
    domain: str
    provider: dict[str, Any]  # {kind, ...fields}; secret fields sealed
    server_ipv4: str | None
    server_ipv6: str | None

    def summary(self) -> str:
        return f"domain {self.domain} added ({self.provider.get('kind')})"


@REGISTRY.event("DomainVerified")
@dataclass(frozen=True, slots=True, kw_only=True)
class DomainVerified:
    domain: str

    def summary(self) -> str:
        return f"domain {self.domain}: DNS provider verified"


@REGISTRY.event("DomainVerificationFailed")
@dataclass(frozen=True, slots=True, kw_only=True)
class DomainVerificationFailed:
    domain: str
    reason: str

    def summary(self) -> str:
        return f"domain {self.domain}: DNS provider verification failed"


@REGISTRY.event("DnsRecordSet")
@dataclass(frozen=True, slots=True, kw_only=True)
class DnsRecordSet:
    domain: str
    name: str
    type: str
    values: list[str]
    ttl: int
    owner: str

    def summary(self) -> str:
        return f"{self.name} {self.type} set for {self.owner}"


@REGISTRY.event("DnsRecordRemoved")
@dataclass(frozen=True, slots=True, kw_only=True)
class DnsRecordRemoved:
    domain: str
    name: str
    type: str
    owner: str

    def summary(self) -> str:
        return f"{self.name} {self.type} removed for {self.owner}"


@REGISTRY.event("DomainRemoved")
@dataclass(frozen=True, slots=True, kw_only=True)
class DomainRemoved:
    domain: str

    def summary(self) -> str:
        return f"domain {self.domain} removed"
