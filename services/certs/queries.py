"""Query handlers of the certs service: which files serve a host, and every certificate."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg

from libs.events.handlers import query
from services.certs.certificates import CertInfo, covers, inspect
from services.certs.errors import CertificateError, NotCovered
from services.certs.names import check_host
from services.certs.store import CertFiles

__all__ = ["Queries", "certificate_view"]


def _iso(when: datetime | None) -> str | None:
    return when.astimezone(UTC).isoformat() if when is not None else None


def certificate_view(r: asyncpg.Record, fallback: CertInfo | None, now: datetime) -> dict[str, Any]:
    """What users see of a certificate; `fallback` is the self-signed one on disk, if any."""
    real = r["kind"] is not None
    names = list(r["cert_names"]) if real else list(r["names"])
    issuer = r["issuer"] if real else (fallback.issuer if fallback else None)
    not_before = r["not_before"] if real else (fallback.not_before if fallback else None)
    not_after = r["not_after"] if real else (fallback.not_after if fallback else None)
    fingerprint = r["fingerprint"] if real else (fallback.fingerprint_sha256 if fallback else None)
    return {
        "primary": r["primary_name"],
        "names": names,
        "requested_names": list(r["names"]),
        "challenge": r["challenge"],
        "kind": r["kind"] or "fallback",
        "issuer": issuer,
        "not_before": _iso(not_before),
        "not_after": _iso(not_after),
        "days_left": (not_after - now).days if not_after is not None else None,
        "fingerprint": fingerprint,
        "state": r["state"],
        "task_id": str(r["task_id"]) if r["task_id"] is not None else None,
        "last_error": r["last_error"],
        "last_error_code": r["last_error_code"],
        "next_attempt_at": _iso(r["next_attempt_at"]),
    }


class Queries:
    """The query side, over the `certs` read model and the files on disk: each `@query` method
    is one bus query of the certs service."""

    def __init__(self, pool: asyncpg.Pool, files: CertFiles) -> None:
        self.pool = pool
        self.disk = files

    def _fallback_info(self, primary: str) -> CertInfo | None:
        chain = self.disk.read_chain(primary)
        if chain is None:
            return None
        try:
            return inspect(chain)
        except CertificateError:
            return None

    @query("certificates")
    async def certificates(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Every certificate with its expiry, state, last error and next attempt."""
        rows = await self.pool.fetch("SELECT * FROM certs.certificates ORDER BY primary_name")
        now = datetime.now(UTC)
        items = []
        for r in rows:
            fallback = None
            if r["kind"] is None:
                fallback = await asyncio.to_thread(self._fallback_info, r["primary_name"])
            items.append(certificate_view(r, fallback, now))
        return {"items": items}

    @query("files")
    async def files(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The files of the best certificate for a host: a real unexpired one before the
        fallback, the exact name before a wildcard, custom before ACME, the latest expiry."""
        host = check_host(payload["host"])
        parent = host.partition(".")[2]
        wild = f"*.{parent}" if not host.startswith("*.") and "." in parent else host
        rows = await self.pool.fetch(
            "SELECT primary_name, names, kind, cert_names, not_after FROM certs.certificates"
            " WHERE names && $1::text[] OR cert_names && $1::text[]",
            [host, wild],
        )
        now = datetime.now(UTC)
        ranked: list[tuple[tuple[int, int, int, float], str, str]] = []
        for r in rows:
            kind = r["kind"] or "fallback"
            names = r["cert_names"] if r["kind"] is not None else r["names"]
            if not covers(names, host):
                continue
            live = kind != "fallback" and r["not_after"] > now
            expiry = r["not_after"].timestamp() if r["not_after"] is not None else 0.0
            key = (
                0 if live else 1,
                0 if host in names else 1,
                {"custom": 0, "acme": 1}.get(kind, 2),
                -expiry,
            )
            ranked.append((key, r["primary_name"], kind))
        for _, primary, kind in sorted(ranked):
            if await asyncio.to_thread(self.disk.exists, primary):
                paths = self.disk.paths(primary)
                return {"cert": str(paths.cert), "key": str(paths.key), "kind": kind}
        raise NotCovered(host)
