"""`BaseProvider`: the generic part of every DNS adapter (template method).

It checks that a record is in the zone and of a writable type, applies the ownership rule of
`upsert` and runs `wait`; each adapter fills in `_records_at`, `_replace`, `_remove`, `_verify`
and, where it knows better than a look-up, `_authoritative` and `_before_wait`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType

from services.dns.errors import DnsProviderError, ForeignRecord
from services.dns.propagation import find_nameservers, wait_for_record
from services.dns.providers.protocol import (
    WRITABLE_TYPES,
    Progress,
    Record,
    canonical_name,
    in_zone,
)

__all__ = ["BaseProvider"]


class BaseProvider:
    """The generic part of every adapter (template method)."""

    kind: str = "base"

    def __init__(self, zone: str, nameservers: Sequence[tuple[str, int]] | None = None) -> None:
        self.zone = canonical_name(zone)
        if not self.zone or "." not in self.zone:
            raise DnsProviderError(f"zone {zone!r} is not a domain name: give e.g. example.com")
        self._nameservers: tuple[tuple[str, int], ...] | None = (
            tuple(nameservers) if nameservers else None
        )

    # -- public surface ---------------------------------------------------------------------

    async def verify(self) -> None:
        await self._verify()

    async def get(self, name: str, type: str) -> Record | None:
        name = self._check_name(name)
        type_ = type.strip().upper()
        for r in await self._records_at(name):
            if r.type == type_:
                return r
        return None

    async def upsert(self, record: Record, *, owned: bool) -> None:
        self._check_writable(record)
        if not record.values:
            raise DnsProviderError(
                f"{record.name} {record.type} has no values: give at least one, or delete it"
            )
        existing = await self._records_at(record.name)
        for r in existing:
            # A CNAME cannot live beside other data at one name (RFC 1034 3.6.2); whoever owns
            # the other one, Homeport does not remove it to make room.
            clash = (r.type == "CNAME") != (record.type == "CNAME")
            if clash or (r.type == record.type and not owned):
                raise ForeignRecord(r, record)
        current = next((r for r in existing if r.type == record.type), None)
        if current == record:
            return
        await self._replace(record)

    async def delete(self, record: Record) -> None:
        self._check_writable(record)
        existing = await self._records_at(record.name)
        current = next((r for r in existing if r.type == record.type), None)
        if current is None:
            return
        await self._remove(current)

    async def wait(self, record: Record, deadline: float, progress: Progress | None = None) -> None:
        self._check_name(record.name)
        start = time.monotonic()
        await self._before_wait(record, deadline, progress)
        left = max(0.0, deadline - (time.monotonic() - start))
        servers = self._nameservers or await self._authoritative()
        await wait_for_record(record, servers, left, progress, zone=self.zone)

    async def nameservers(self) -> Sequence[tuple[str, int]]:
        """The zone's authoritative servers: those configured, else those the provider knows,
        else its NS set looked up."""
        return self._nameservers or await self._authoritative() or await find_nameservers(self.zone)

    async def aclose(self) -> None:
        return None

    async def __aenter__(self) -> BaseProvider:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- provider parts ---------------------------------------------------------------------

    async def _verify(self) -> None:
        raise NotImplementedError

    async def _records_at(self, name: str) -> list[Record]:
        """Every RRset at `name` (any type), as the provider holds it."""
        raise NotImplementedError

    async def _replace(self, record: Record) -> None:
        raise NotImplementedError

    async def _remove(self, record: Record) -> None:
        """Remove the RRset `record` exactly as `_records_at` returned it."""
        raise NotImplementedError

    async def _before_wait(
        self, record: Record, deadline: float, progress: Progress | None
    ) -> None:
        return None

    async def _authoritative(self) -> Sequence[tuple[str, int]] | None:
        """The zone's authoritative servers if the provider knows them; None to look them up."""
        return None

    # -- helpers ----------------------------------------------------------------------------

    def _check_name(self, name: str) -> str:
        name = canonical_name(name)
        if not in_zone(name, self.zone):
            raise DnsProviderError(
                f"{name} is not in zone {self.zone}: use a name ending in .{self.zone}"
            )
        return name

    def _check_writable(self, record: Record) -> None:
        self._check_name(record.name)
        if record.type not in WRITABLE_TYPES:
            raise DnsProviderError(
                f"{record.name} {record.type}: Homeport only writes "
                f"{', '.join(sorted(WRITABLE_TYPES))} records"
            )
        if record.ttl < 1:
            raise DnsProviderError(f"{record.name} {record.type}: ttl must be at least 1 second")
