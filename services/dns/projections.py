"""The dns read model (schema `dns`), written inline with the events it reflects.

Commands append and apply in one transaction (libs/events/inline.py): the primary key of
`dns.domains` refuses a second `DomainAdded` for a domain that exists, and the unique index on
(zone, name, type) of `dns.records` keeps one owner per RRset, in the transaction that would
have recorded the event.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import asyncpg

from libs.events.envelope import RecordedEvent
from libs.events.projection import Projection, register_projection
from services.dns.events import DOMAIN_CATEGORY

__all__ = ["DnsProjection"]


@register_projection
class DnsProjection(Projection):
    """Domains with their provider config (secrets sealed) and the records Homeport owns."""

    name: ClassVar[str] = "dns"
    schema: ClassVar[str] = "dns"
    subject: ClassVar[str] = "domain.>"
    migrations: ClassVar[Path | None] = Path(__file__).parent / "migrations"

    def wants(self, event: RecordedEvent) -> bool:
        return event.category == DOMAIN_CATEGORY

    async def reset(self, conn: asyncpg.Connection) -> None:
        await conn.execute("TRUNCATE dns.domains, dns.records")

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        for ev in events:
            if ev.category != DOMAIN_CATEGORY:
                continue
            d = ev.data
            domain = d["domain"]
            at = ev.recorded_at
            if ev.type == "DomainAdded":
                provider = d["provider"]
                await conn.execute(
                    "INSERT INTO dns.domains (domain, zone, kind, provider, server_ipv4,"
                    " server_ipv6, added_at, updated_at)"
                    " VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $7)",
                    domain,
                    provider.get("zone") or domain,
                    provider["kind"],
                    json.dumps(provider),
                    d.get("server_ipv4"),
                    d.get("server_ipv6"),
                    at,
                )
            elif ev.type == "DomainVerified":
                await conn.execute(
                    "UPDATE dns.domains SET verified_at = $2, verify_error = NULL, updated_at = $2"
                    " WHERE domain = $1",
                    domain,
                    at,
                )
            elif ev.type == "DomainVerificationFailed":
                await conn.execute(
                    "UPDATE dns.domains SET verify_error = $2, updated_at = $3 WHERE domain = $1",
                    domain,
                    d["reason"],
                    at,
                )
            elif ev.type == "DnsRecordSet":
                await conn.execute(
                    """
                    INSERT INTO dns.records (domain, zone, name, type, "values", ttl, owner,
                        updated_at)
                    SELECT $1, zone, $2, $3, $4::jsonb, $5, $6, $7
                    FROM dns.domains WHERE domain = $1
                    ON CONFLICT (domain, name, type) DO UPDATE SET "values" = EXCLUDED."values",
                        ttl = EXCLUDED.ttl, owner = EXCLUDED.owner,
                        updated_at = EXCLUDED.updated_at
                    """,
                    domain,
                    d["name"],
                    d["type"],
                    json.dumps(list(d["values"])),
                    int(d["ttl"]),
                    d["owner"],
                    at,
                )
            elif ev.type == "DnsRecordRemoved":
                await conn.execute(
                    "DELETE FROM dns.records WHERE domain = $1 AND name = $2 AND type = $3",
                    domain,
                    d["name"],
                    d["type"],
                )
            elif ev.type == "DomainRemoved":
                await conn.execute("DELETE FROM dns.records WHERE domain = $1", domain)
                await conn.execute("DELETE FROM dns.domains WHERE domain = $1", domain)
