"""Command handlers of the certs service: validate, decide, and hand orders to the engine.

`ensure` makes sure nginx has something to serve at once (the self-signed fallback) and starts
an ACME order as a task; `renew` orders now; `upload` serves a custom certificate; `forget`
stops serving and renewing one. The engine (`engine.py`) runs the orders.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from libs.events import context
from libs.events.handlers import command
from services.certs import events as ev
from services.certs.certificates import covers, validate_custom
from services.certs.engine import Engine
from services.certs.errors import (
    CertificateChanged,
    CertificateNotFound,
    CustomNotRenewed,
    InvalidRequest,
)
from services.certs.names import check_host, check_names
from services.certs.store import CertFiles

__all__ = ["Commands"]


def _owner() -> str:
    return context.current().actor


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat()


class Commands:
    """The command side: each `@command` method is one bus command of the certs service."""

    def __init__(
        self, engine: Engine, pool: asyncpg.Pool, files: CertFiles, renew_days: int
    ) -> None:
        self.engine = engine
        self.pool = pool
        self.files = files
        self.renew_days = renew_days

    @command("ensure")
    async def ensure(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A certificate for these names: nothing if one serves, else fallback now + an order."""
        names = check_names(payload["names"])
        challenge = payload.get("challenge") or "http-01"
        wild = [n for n in names if n.startswith("*.")]
        if wild and challenge != "dns-01":
            raise InvalidRequest(
                f"{', '.join(wild)} can only be validated over dns-01: set challenge to dns-01",
                field="challenge",
            )
        covering = await self._serving(names)
        if covering is not None:
            return {"primary": covering, "state": "valid", "task_id": None}
        primary = names[0]
        engine = self.engine
        async with engine.lock(primary):
            running = engine.running_task(primary)
            if running is not None:
                return {"primary": primary, "state": "ordering", "task_id": running}
            s = await engine.load(primary)
            if s.current is None:
                await engine.ensure_fallback(primary, names)
            task_id = await engine.start_order_locked(primary, names, challenge, "new", _owner())
        return {"primary": primary, "state": "ordering", "task_id": task_id}

    async def _serving(self, names: list[str]) -> str | None:
        """The primary of a certificate covering every name: custom and unexpired, or ACME and
        not due for renewal."""
        rows = await self.pool.fetch(
            "SELECT primary_name, kind, cert_names, not_after FROM certs.certificates"
            " WHERE kind IS NOT NULL ORDER BY primary_name = $1 DESC,"
            " not_after DESC",
            names[0],
        )
        now = datetime.now(UTC)
        limit = now + timedelta(days=self.renew_days)
        for r in rows:
            ok_until = now if r["kind"] == "custom" else limit
            if r["not_after"] <= ok_until:
                continue
            if all(covers(r["cert_names"], n) for n in names):
                return str(r["primary_name"])
        return None

    @command("renew")
    async def renew(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Order a new certificate now, even if not due; refused for custom certificates."""
        primary = check_host(payload["primary"], "primary")
        engine = self.engine
        async with engine.lock(primary):
            s = await engine.load(primary)
            if not s.exists:
                raise CertificateNotFound(primary)
            if s.current is not None and s.current.kind == "custom":
                raise CustomNotRenewed(primary)
            task_id = await engine.start_order_locked(
                primary, list(s.names), s.challenge, "manual", _owner()
            )
        return {"primary": primary, "task_id": task_id}

    @command("upload")
    async def upload(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A custom certificate: checked, its key sealed, served at once, never renewed."""
        names = check_names(payload["names"])
        chain_pem: str = payload["chain_pem"]
        key_pem: str = payload["key_pem"]
        info = await asyncio.to_thread(validate_custom, chain_pem, key_pem, names)
        chain = "".join(
            c.public_bytes(serialization.Encoding.PEM).decode()
            for c in x509.load_pem_x509_certificates(chain_pem.encode())
        )
        primary = names[0]
        engine = self.engine
        sealed = await engine.seal(ev.cert_stream(primary), key_pem)
        uploaded = ev.CustomCertificateUploaded(
            primary=primary,
            names=names,
            chain_pem=chain,
            key=sealed,
            not_before=_iso(info.not_before),
            not_after=_iso(info.not_after),
            issuer=info.issuer,
            fingerprint=info.fingerprint_sha256,
            cert_names=list(info.names),
        )
        async with engine.lock(primary):
            s = await engine.load(primary)
            await asyncio.to_thread(self.files.write, primary, chain, key_pem)
            try:
                await engine.append(primary, [uploaded], s.version)
            except CertificateChanged:
                await engine.heal_one(primary)
                raise CertificateChanged(primary, "upload again", field="names") from None
            await engine.stop_order(primary, "a custom certificate was uploaded instead")
        now = datetime.now(UTC)
        return {
            "primary": primary,
            "names": list(info.names),
            "kind": "custom",
            "issuer": info.issuer,
            "not_before": _iso(info.not_before),
            "not_after": _iso(info.not_after),
            "days_left": (info.not_after - now).days,
            "fingerprint": info.fingerprint_sha256,
            "state": "valid",
        }

    @command("forget")
    async def forget(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Stop serving and renewing a certificate: its files go, its order is cancelled."""
        primary = check_host(payload["primary"], "primary")
        engine = self.engine
        async with engine.lock(primary):
            s = await engine.load(primary)
            if not s.exists:
                raise CertificateNotFound(primary)
            forgotten = ev.CertificateForgotten(primary=primary)
            try:
                await engine.append(primary, [forgotten], s.version)
            except CertificateChanged:
                raise CertificateChanged(primary, "try again") from None
            await engine.stop_order(primary, f"the certificate for {primary} was forgotten")
            await asyncio.to_thread(self.files.remove, primary)
        return {"primary": primary, "forgotten": True}
