"""Query handlers of the dns service: the domains and the records Homeport owns in them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import asyncpg

from libs.events.handlers import query
from services.dns.errors import DomainNotFound
from services.dns.providers.factory import secret_fields

__all__ = ["REDACTED", "Queries", "domain_view", "read_view"]

REDACTED = "••••"


def public_provider(provider: Mapping[str, Any]) -> dict[str, Any]:
    """The provider config as users see it: secret fields redacted."""
    hidden = secret_fields(str(provider.get("kind", "")))
    return {k: (REDACTED if k in hidden else v) for k, v in provider.items()}


def domain_view(row: asyncpg.Record, records: list[asyncpg.Record]) -> dict[str, Any]:
    """What users see of a domain (never a secret)."""
    return {
        "domain": row["domain"],
        "provider": public_provider(json.loads(row["provider"])),
        "server_ipv4": row["server_ipv4"],
        "server_ipv6": row["server_ipv6"],
        "verified_at": row["verified_at"].isoformat() if row["verified_at"] else None,
        "verify_error": row["verify_error"],
        "records": [
            {
                "name": r["name"],
                "type": r["type"],
                "values": json.loads(r["values"]),
                "owner": r["owner"],
            }
            for r in records
        ],
    }


async def read_view(db: asyncpg.Pool | asyncpg.Connection, domain: str) -> dict[str, Any] | None:
    """The view of `domain`, None if Homeport does not manage it."""
    row = await db.fetchrow("SELECT * FROM dns.domains WHERE domain = $1", domain)
    if row is None:
        return None
    records = await db.fetch(
        "SELECT * FROM dns.records WHERE domain = $1 ORDER BY name, type", domain
    )
    return domain_view(row, records)


class Queries:
    """The query side: each `@query` method is one bus query of the dns service."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @query("domains")
    async def domains(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        rows = await self.pool.fetch("SELECT * FROM dns.domains ORDER BY domain")
        records = await self.pool.fetch("SELECT * FROM dns.records ORDER BY name, type")
        by_domain: dict[str, list[asyncpg.Record]] = {}
        for r in records:
            by_domain.setdefault(r["domain"], []).append(r)
        return {"items": [domain_view(row, by_domain.get(row["domain"], [])) for row in rows]}

    @query("domain")
    async def domain(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        domain: str = payload["domain"]
        view = await read_view(self.pool, domain)
        if view is None:
            raise DomainNotFound(domain)
        return view
