"""The certs read model (schema `certs`), written inline with the events it reflects.

A row is the fold of one `cert-` stream (`fold` below); the same fold decides what the
service does next (resume an order, renew, retry), so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import asyncpg

from libs.events.envelope import RecordedEvent
from libs.events.projection import Projection, register_projection
from libs.events.registry import REGISTRY
from libs.events.store import read_stream_on
from services.certs import metrics
from services.certs.events import ACCOUNT_CATEGORY, CERT_CATEGORY

__all__ = ["CertState", "CertsProjection", "Current", "Pending", "fold", "parse_time"]


def parse_time(value: str) -> datetime:
    """An ISO 8601 time from an event, as an aware UTC datetime."""
    when = datetime.fromisoformat(value)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Current:
    """The certificate served for a primary: issued by ACME or uploaded."""

    kind: str  # acme | custom
    names: tuple[str, ...]
    chain_pem: str
    key: str  # sealed
    not_before: datetime
    not_after: datetime
    issuer: str
    fingerprint: str


@dataclass(frozen=True)
class Pending:
    """An order recorded without an outcome yet."""

    task_id: str
    names: tuple[str, ...]
    challenge: str
    reason: str


@dataclass
class CertState:
    """The fold of one `cert-` stream."""

    primary: str
    version: int = 0
    names: tuple[str, ...] = ()
    challenge: str = "http-01"
    current: Current | None = None
    pending: Pending | None = None
    failures: int = 0
    last_error: str | None = None
    last_error_code: str | None = None
    retry_at: datetime | None = None
    forgotten: bool = False
    history: list[str] = field(default_factory=list)

    @property
    def exists(self) -> bool:
        return self.version > 0 and not self.forgotten

    @property
    def state(self) -> str:
        """valid | fallback | ordering | failed."""
        if self.pending is not None:
            return "ordering"
        if self.last_error is not None:
            return "failed"
        return "valid" if self.current is not None else "fallback"


def fold(primary: str, events: Sequence[RecordedEvent]) -> CertState:
    """The state of a certificate from its stream's events, oldest first."""
    s = CertState(primary)
    for ev in events:
        d = ev.data
        s.version = ev.version
        s.history.append(ev.type)
        if ev.type == "CertificateOrdered":
            s.forgotten = False
            s.names = tuple(d["names"])
            s.challenge = str(d["challenge"])
            s.pending = Pending(
                str(d["task_id"]), tuple(d["names"]), s.challenge, str(d.get("reason", "new"))
            )
        elif ev.type in ("CertificateIssued", "CustomCertificateUploaded"):
            s.forgotten = False
            s.current = Current(
                kind="acme" if ev.type == "CertificateIssued" else "custom",
                names=tuple(d.get("cert_names") or d["names"]),
                chain_pem=str(d["chain_pem"]),
                key=str(d["key"]),
                not_before=parse_time(d["not_before"]),
                not_after=parse_time(d["not_after"]),
                issuer=str(d["issuer"]),
                fingerprint=str(d["fingerprint"]),
            )
            if ev.type == "CustomCertificateUploaded":
                s.names = tuple(d["names"])
            s.pending = None
            s.failures = 0
            s.last_error = s.last_error_code = None
            s.retry_at = None
        elif ev.type == "CertificateRenewalFailed":
            s.pending = None
            s.failures += 1
            s.last_error = str(d["message"])
            s.last_error_code = str(d["code"])
            s.retry_at = parse_time(d["retry_at"])
        elif ev.type == "CertificateForgotten":
            s.forgotten = True
            s.current = None
            s.pending = None
            s.failures = 0
            s.last_error = s.last_error_code = None
            s.retry_at = None
    return s


@register_projection
class CertsProjection(Projection):
    """Certificates by primary name with expiry, state and the next attempt; ACME accounts."""

    name: ClassVar[str] = "certs"
    schema: ClassVar[str] = "certs"
    subject: ClassVar[str] = ">"
    migrations: ClassVar[Path | None] = Path(__file__).parent / "migrations"

    def wants(self, event: RecordedEvent) -> bool:
        return event.category in (CERT_CATEGORY, ACCOUNT_CATEGORY)

    async def reset(self, conn: asyncpg.Connection) -> None:
        await conn.execute("TRUNCATE certs.certificates, certs.accounts")

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        last: dict[str, RecordedEvent] = {}
        for ev in events:
            if ev.category == CERT_CATEGORY:
                last[ev.stream] = ev
            elif ev.type == "AcmeAccountRegistered":
                await conn.execute(
                    "INSERT INTO certs.accounts VALUES ($1, $2, $3) ON CONFLICT (directory)"
                    " DO UPDATE SET uri = EXCLUDED.uri, registered_at = EXCLUDED.registered_at",
                    ev.data["directory"],
                    ev.data["uri"],
                    ev.recorded_at,
                )
        for stream, ev in last.items():
            history = await read_stream_on(conn, stream, REGISTRY, ev.position)
            primary = str(ev.data["primary"])
            await write_row(conn, stream, fold(primary, history), ev.recorded_at)


async def write_row(conn: asyncpg.Connection, stream: str, s: CertState, when: datetime) -> None:
    """Write (or, once forgotten, delete) the row of one certificate."""
    if not s.exists:
        await conn.execute("DELETE FROM certs.certificates WHERE primary_name = $1", s.primary)
        metrics.forget(s.primary)
        return
    c = s.current
    metrics.observe(s.primary, c.not_after if c is not None else None, s.failures)
    await conn.execute(
        """
        INSERT INTO certs.certificates (primary_name, stream, names, challenge, kind,
            cert_names, issuer, not_before, not_after, fingerprint, state, task_id, failures,
            last_error, last_error_code, next_attempt_at, stream_version, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
        ON CONFLICT (primary_name) DO UPDATE SET stream = EXCLUDED.stream,
            names = EXCLUDED.names, challenge = EXCLUDED.challenge, kind = EXCLUDED.kind,
            cert_names = EXCLUDED.cert_names, issuer = EXCLUDED.issuer,
            not_before = EXCLUDED.not_before, not_after = EXCLUDED.not_after,
            fingerprint = EXCLUDED.fingerprint, state = EXCLUDED.state,
            task_id = EXCLUDED.task_id, failures = EXCLUDED.failures,
            last_error = EXCLUDED.last_error, last_error_code = EXCLUDED.last_error_code,
            next_attempt_at = EXCLUDED.next_attempt_at,
            stream_version = EXCLUDED.stream_version, updated_at = EXCLUDED.updated_at
        """,
        s.primary,
        stream,
        list(s.names),
        s.challenge,
        c.kind if c is not None else None,
        list(c.names) if c is not None else None,
        c.issuer if c is not None else None,
        c.not_before if c is not None else None,
        c.not_after if c is not None else None,
        c.fingerprint if c is not None else None,
        s.state,
        s.pending.task_id if s.pending is not None else None,
        s.failures,
        s.last_error,
        s.last_error_code,
        s.retry_at,
        s.version,
        when,
    )
