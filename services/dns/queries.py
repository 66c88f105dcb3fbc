"""Query handlers of the dns service: the domains and the records Homeport owns in them."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import asyncpg

from libs.events.bus import Invalid, NotFound
from services.dns.providers.factory import secret_fields

__all__ = ["REDACTED", "Queries", "check_domain", "domain_view", "read_view"]

REDACTED = "••••"
MAX_DOMAIN = 128  # the id part of the stream name `domain-<domain>` holds at most 128
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})+$")


def check_domain(value: object, field: str = "domain") -> str:
    """A lower-case DNS name of two labels or more, e.g. example.com."""
    if not isinstance(value, str) or len(value) > MAX_DOMAIN or not _DOMAIN.match(value):
        raise Invalid(
            f"{field} must be a lower-case domain name such as example.com (labels of letters,"
            f" digits and inner '-', at most {MAX_DOMAIN} characters)",
            field=field,
        )
    return value


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
    """The query side: each method is one bus query of the dns service."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def domains(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        rows = await self.pool.fetch("SELECT * FROM dns.domains ORDER BY domain")
        records = await self.pool.fetch("SELECT * FROM dns.records ORDER BY name, type")
        by_domain: dict[str, list[asyncpg.Record]] = {}
        for r in records:
            by_domain.setdefault(r["domain"], []).append(r)
        return {"items": [domain_view(row, by_domain.get(row["domain"], [])) for row in rows]}

    async def domain(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        domain = check_domain(payload.get("domain"))
        view = await read_view(self.pool, domain)
        if view is None:
            raise NotFound(f"no domain {domain}: add it first", field="domain")
        return view
