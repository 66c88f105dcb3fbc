"""Wildcard adapter: `*.zone` already points at this server, so app names need no records.

An A/AAAA that DNS already answers with the wanted address needs no write; anything else (a
TXT for DNS-01, an MX, a different address) is refused with the record to create by hand.
"""

from __future__ import annotations

import secrets

from services.dns.errors import DnsProviderError
from services.dns.propagation import query
from services.dns.providers.manual import ManualProvider
from services.dns.providers.protocol import Record

__all__ = ["WildcardProvider"]

_ADDRESS_TYPES = ("A", "AAAA")


class WildcardProvider(ManualProvider):
    """A zone with a wildcard address record for this server, kept by hand."""

    kind = "wildcard"

    async def _verify(self) -> None:
        await super()._verify()
        probe = f"_homeport-check-{secrets.token_hex(4)}.{self.zone}"
        servers = await self._servers()
        answers = [await query(s, probe, t) for s in servers for t in _ADDRESS_TYPES]
        if not any(a.status == "NOERROR" and a.values for a in answers):
            raise DnsProviderError(
                f"no wildcard record answers for *.{self.zone} ({probe} gets no address): "
                f"create *.{self.zone} A <this server's address> at your DNS host"
            )

    async def upsert(self, record: Record, *, owned: bool) -> None:
        if record.type not in _ADDRESS_TYPES:
            await super().upsert(record, owned=owned)
            return
        self._check_writable(record)
        current = await self.get(record.name, record.type)
        if current is not None and current.values == record.values:
            return
        now = ", ".join(current.values) if current is not None else "no address"
        raise DnsProviderError(
            f"zone {self.zone} uses the wildcard *.{self.zone}, but {record.name} "
            f"{record.type} answers {now}, not {', '.join(record.values)}: point "
            f"*.{self.zone} {record.type} at {', '.join(record.values)} (and remove any record "
            f"of {record.name} that hides it) at your DNS host"
        )

    async def delete(self, record: Record) -> None:
        if record.type in _ADDRESS_TYPES:
            self._check_writable(record)
            return  # the wildcard stays: nothing of this name was created
        await super().delete(record)
