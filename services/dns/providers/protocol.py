"""The DNS provider port: `Record` (an RRset) and the `DnsProvider` Protocol.

Read this first, then `base.py` (the generic part every adapter shares), then one adapter.
Adapters raise the provider errors of `services/dns/errors.py` (`DnsProviderError`,
`ForeignRecord`, `ProviderConfigError`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "WRITABLE_TYPES",
    "DnsProvider",
    "Progress",
    "Record",
    "canonical_name",
    "format_record",
    "in_zone",
]

WRITABLE_TYPES = frozenset({"A", "AAAA", "CNAME", "TXT", "MX", "CAA"})

Progress = Callable[[str], Awaitable[None]]


@runtime_checkable
class DnsProvider(Protocol):
    """One DNS zone at one provider."""

    kind: str
    zone: str

    async def verify(self) -> None:
        """Raise DnsProviderError unless the credentials work and the zone may be changed."""
        ...

    async def get(self, name: str, type: str) -> Record | None: ...

    async def upsert(self, record: Record, *, owned: bool) -> None:
        """owned=False refuses (ForeignRecord) if `name`/`type` exists; owned=True replaces."""
        ...

    async def delete(self, record: Record) -> None:
        """Remove `record.name`/`record.type`; nothing to remove is not an error."""
        ...

    async def wait(self, record: Record, deadline: float, progress: Progress | None = None) -> None:
        """Return when every authoritative server answers `record`, else raise after `deadline`
        seconds naming the servers that do not."""
        ...

    async def nameservers(self) -> Sequence[tuple[str, int]]:
        """The zone's authoritative servers (address, port), to ask it what it serves."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Record:
    """An RRset: `name` is a lower-case FQDN without trailing dot; `values` are in presentation
    form without quoting (TXT holds the text itself, CNAME/MX targets have no trailing dot,
    CAA is `0 issue "ca.example"`), kept sorted and without duplicates so equal sets compare
    equal."""

    name: str
    type: str
    values: tuple[str, ...]
    ttl: int = 300

    def __post_init__(self) -> None:
        type_ = self.type.strip().upper()
        object.__setattr__(self, "name", canonical_name(self.name))
        object.__setattr__(self, "type", type_)
        object.__setattr__(
            self, "values", tuple(sorted({_canonical_value(type_, v) for v in self.values}))
        )


def canonical_name(name: str) -> str:
    """Lower-case, no trailing dot."""
    return name.strip().rstrip(".").lower()


def _canonical_value(type: str, value: str) -> str:
    if type in ("A", "AAAA"):
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            return value
    if type in ("CNAME", "NS", "PTR"):
        return canonical_name(value)
    if type == "MX":
        parts = value.split()
        if len(parts) == 2:
            return f"{parts[0]} {canonical_name(parts[1])}"
    if type == "CAA":
        parts = value.split(" ", 2)
        if len(parts) == 3:
            return f"{parts[0]} {parts[1].lower()} {parts[2]}"
    return value


def format_record(record: Record) -> str:
    """`blog.example.test A 127.0.0.1` (TXT values quoted) for messages."""
    if record.type == "TXT":
        vals = ", ".join(
            '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in record.values
        )
    else:
        vals = ", ".join(record.values)
    return f"{record.name} {record.type} {vals}".rstrip()


def in_zone(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)
