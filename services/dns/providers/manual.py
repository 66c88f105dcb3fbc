"""Manual adapter: the user keeps the zone by hand; Homeport only reads DNS and says what to do.

`upsert` and `delete` succeed only when DNS already shows what was asked (the user did it);
otherwise they raise DnsProviderError with the exact record to create or remove.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.dns.errors import DnsProviderError
from services.dns.propagation import find_nameservers, lookup, query
from services.dns.providers.base import BaseProvider
from services.dns.providers.protocol import Record, format_record
from services.dns.providers.zonefile import to_presentation

__all__ = ["ManualProvider", "zone_file_lines"]


def zone_file_lines(record: Record) -> str:
    """`blog.example.test. 300 IN A 127.0.0.1`, one line per value, as most DNS consoles take."""
    return "\n".join(
        f"{record.name}. {record.ttl} IN {record.type} {to_presentation(record.type, v)}"
        for v in record.values
    )


class ManualProvider(BaseProvider):
    """A zone kept by hand at any DNS host: read through its authoritative servers."""

    kind = "manual"

    def __init__(self, zone: str, nameservers: Sequence[tuple[str, int]] | None = None) -> None:
        super().__init__(zone, nameservers)

    async def _servers(self) -> Sequence[tuple[str, int]]:
        return self._nameservers or await find_nameservers(self.zone)

    async def _verify(self) -> None:
        servers = await self._servers()
        answers = [await query(s, self.zone, "SOA") for s in servers]
        if not any(a.status == "NOERROR" and a.values and a.authoritative for a in answers):
            raise DnsProviderError(
                f"no nameserver answers for zone {self.zone} with authority ("
                + "; ".join(a.describe() for a in answers)
                + "): check that the domain is delegated to the DNS host where you keep it"
            )

    async def get(self, name: str, type: str) -> Record | None:
        name = self._check_name(name)
        return await lookup(name, type, await self._servers(), zone=self.zone)

    async def upsert(self, record: Record, *, owned: bool) -> None:
        self._check_writable(record)
        current = await self.get(record.name, record.type)
        if current is not None and current.values == record.values:
            return  # already there: the user made it
        raise DnsProviderError(self._create_text(record, current))

    async def delete(self, record: Record) -> None:
        self._check_writable(record)
        current = await self.get(record.name, record.type)
        if current is None:
            return
        raise DnsProviderError(
            f"zone {self.zone} is kept by hand: remove {format_record(current)} at your DNS "
            "host, then try again"
        )

    def _create_text(self, record: Record, current: Record | None) -> str:
        now = f"; it now answers {', '.join(current.values)}" if current is not None else ""
        return (
            f"zone {self.zone} is kept by hand: create this record at your DNS host{now}, "
            f"then try again:\n{zone_file_lines(record)}"
        )
