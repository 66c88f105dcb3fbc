"""Query handlers of the mail service: domains with the DNS records they need, a person's
mailbox, every mailbox with what it holds, the block lists, the servers' state."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg

from libs.events import context
from libs.events.handlers import query
from libs.events.sealing import Keyring, SealingError
from services.mail.errors import MailForbidden, MailNotFound
from services.mail.model import MailModel

__all__ = [
    "DKIM_DEADLINE",
    "DKIM_KEEP",
    "DKIM_SETTLE",
    "Queries",
    "Settings",
    "dkim_record",
    "expected_records",
    "read_settings",
]

_Found = Callable[[str, list[dict[str, Any]]], Awaitable[list[dict[str, Any]]]]

# DKIM key rotation (the sync takes the steps, the views say when): a next key signs once the
# domain's nameservers serve its record, asked from DKIM_SETTLE after it was added (every
# nameserver of an anycast provider has it by then, and the record's TTL has passed), or at
# DKIM_DEADLINE whatever they say; a replaced key's record stays published DKIM_KEEP (mail
# signed with it and still on its way verifies), then is removed.
DKIM_SETTLE = 300.0
DKIM_DEADLINE = 48 * 3600.0
DKIM_KEEP = 7 * 24 * 3600.0


def dkim_record(domain: str, selector: str, public: str) -> dict[str, Any]:
    """The TXT record that publishes a DKIM key's public half."""
    return {
        "name": f"{selector}._domainkey.{domain}",
        "type": "TXT",
        "values": [f"v=DKIM1; k=rsa; p={public}"],
    }


@dataclass(frozen=True)
class Settings:
    """`mail.settings` decoded: the DNS block list zones and the relay as recorded (its
    password still sealed), None when there is none."""

    dnsbl: tuple[str, ...] = ()
    relay: Mapping[str, Any] | None = None


async def read_settings(db: asyncpg.Pool | asyncpg.Connection) -> Settings:
    """The one reader of `mail.settings` (the queries and the sync)."""
    row = await db.fetchrow("SELECT dnsbl, relay FROM mail.settings")
    if row is None:
        return Settings()
    dnsbl, relay = (
        json.loads(v) if isinstance(v, str) else v for v in (row["dnsbl"], row["relay"])
    )
    return Settings(
        dnsbl=tuple(str(z) for z in dnsbl or ()), relay=None if relay is None else dict(relay)
    )


def expected_records(
    domain: str,
    primary: str,
    selector: str,
    public: str,
    other_keys: Sequence[tuple[str, str]] = (),
    relay_spf: str | None = None,
) -> list[dict[str, Any]]:
    """The records mail for `domain` needs (MX to the primary domain's mail host, SPF, DKIM of
    the signing key and of `other_keys` (selector, public: a rotation's next and replaced
    keys), DMARC), as dns takes them (TXT text unquoted: dns splits it into 255-byte strings);
    the sync writes them through the dns service as owner `mail`. `relay_spf`: what the
    relay's provider asks to add to SPF (its senders), while mail leaves through it."""
    spf = f"v=spf1 mx {relay_spf} -all" if relay_spf else "v=spf1 mx -all"
    return [
        {"name": domain, "type": "MX", "values": [f"10 mail.{primary}"]},
        {"name": domain, "type": "TXT", "values": [spf]},
        dkim_record(domain, selector, public),
        *(dkim_record(domain, s, p) for s, p in other_keys),
        {
            "name": f"_dmarc.{domain}",
            "type": "TXT",
            "values": ["v=DMARC1; p=quarantine; adkim=s; aspf=s"],
        },
    ]


class Queries:
    def __init__(
        self,
        pool: asyncpg.Pool,
        keyring: Keyring,
        model: Callable[[], MailModel | None],
        wanted: Callable[[str], list[dict[str, Any]] | None],
        status: Callable[[bool], Awaitable[dict[str, Any]]],
        usage: Callable[[], Awaitable[Mapping[str, tuple[int, int]] | None]],
        *,
        found: _Found | None = None,
    ) -> None:
        """`found` adds what DNS serves to a domain's records (services/mail/records.py)."""
        self.pool = pool
        self.keyring = keyring
        self.model = model
        self.wanted = wanted
        self._status = status
        self._usage = usage
        self._found = found

    async def _primary(self) -> str | None:
        value = await self.pool.fetchval(
            "SELECT domain FROM mail.domains WHERE enabled ORDER BY enabled_at, domain LIMIT 1"
        )
        return None if value is None else str(value)

    async def _view(self, row: asyncpg.Record, primary: str | None) -> dict[str, Any]:
        addresses = await self.pool.fetch(
            "SELECT * FROM mail.addresses WHERE domain = $1 ORDER BY local_part", row["domain"]
        )
        keys = await self.pool.fetch(
            "SELECT selector, state, dkim_public, since FROM mail.dkim_keys WHERE domain = $1"
            " ORDER BY since, selector",
            row["domain"],
        )
        waiting = next((k for k in keys if k["state"] == "next"), None)
        return {
            "domain": row["domain"],
            "enabled": row["enabled"],
            "primary": row["domain"] == primary,
            "selector": row["selector"],
            # a rotation under way: the next key, waiting for DNS to serve its record
            "dkim_next": None
            if waiting is None
            else {
                "selector": waiting["selector"],
                "waiting_since": waiting["since"].isoformat(),
                "signs_by": (waiting["since"] + timedelta(seconds=DKIM_DEADLINE)).isoformat(),
            },
            # keys replaced: their records stay published until removed_on
            "dkim_retiring": [
                {
                    "selector": k["selector"],
                    "replaced_at": k["since"].isoformat(),
                    "removed_on": (k["since"] + timedelta(seconds=DKIM_KEEP)).isoformat(),
                }
                for k in keys
                if k["state"] == "retiring"
            ],
            "catch_all": None if row["catch_all"] is None else str(row["catch_all"]),
            "addresses": [
                {
                    "address": f"{a['local_part']}@{a['domain']}",
                    "local_part": a["local_part"],
                    "kind": a["kind"],
                    "user_ids": [str(u) for u in a["user_ids"]],
                    "group_id": None if a["group_id"] is None else str(a["group_id"]),
                }
                for a in addresses
            ],
            "records": self._records(row, primary, keys),
        }

    def _records(
        self, row: asyncpg.Record, primary: str | None, keys: Sequence[asyncpg.Record]
    ) -> list[dict[str, Any]]:
        """What the sync last wanted for the domain (the mail host's address included), else
        what the read model alone says."""
        if not row["enabled"] or not primary:
            return []
        wanted = self.wanted(row["domain"])
        if wanted is not None:
            return wanted
        others = [(k["selector"], k["dkim_public"]) for k in keys]
        return expected_records(row["domain"], primary, row["selector"], row["dkim_public"], others)

    @query("domains")
    async def domains(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        primary = await self._primary()
        rows = await self.pool.fetch("SELECT * FROM mail.domains ORDER BY enabled_at, domain")
        return {"items": [await self._view(r, primary) for r in rows]}

    @query("domain")
    async def domain(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        row = await self.pool.fetchrow(
            "SELECT * FROM mail.domains WHERE domain = $1", payload["domain"]
        )
        if row is None:
            raise MailNotFound(f"mail was never on for {payload['domain']}", field="domain")
        view = await self._view(row, await self._primary())
        if self._found is not None:  # what DNS serves of them, beside: asked for this view only
            view["records"] = await self._found(row["domain"], view["records"])
        return view

    @query("mailbox")
    async def mailbox(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        user_id = str(uuid.UUID(payload["user_id"]))
        ctx = context.current()
        if not ctx.is_admin and ctx.actor != user_id:
            raise MailNotFound("no such account", field="user_id")
        model = self.model()
        box = next((m for m in model.mailboxes if m.folder == user_id), None) if model else None
        addresses: list[str] = []
        if model is not None and box is not None:
            # a mailbox's own address that forwards here is that mailbox's, not this one's
            boxes = {m.address for m in model.mailboxes}
            mine = sorted(
                a
                for a, targets in model.aliases.items()
                if box.address in targets and a not in boxes
            )
            addresses = [box.address, *mine]
        quota = await self.pool.fetchval(
            "SELECT quota_bytes FROM mail.mailboxes WHERE user_id = $1", user_id
        )
        rows = await self.pool.fetch(
            "SELECT * FROM mail.app_passwords WHERE user_id = $1 AND revoked_at IS NULL"
            " ORDER BY created_at",
            user_id,
        )
        passwords = []
        for r in rows:
            try:
                label = await asyncio.to_thread(self.keyring.unseal_str, r["label"])
            except SealingError:
                label = "(unreadable)"
            passwords.append(
                {
                    "password_id": str(r["password_id"]),
                    "label": label,
                    "created_at": r["created_at"].isoformat(),
                    "last_used_at": None
                    if r["last_used_at"] is None
                    else r["last_used_at"].isoformat(),
                }
            )
        return {
            "user_id": user_id,
            "address": box.address if box else None,
            "addresses": addresses,
            "quota_bytes": quota,
            "app_passwords": passwords,
            "forwarding": await self._forwarding(user_id),
        }

    async def _forwarding(self, user_id: str) -> dict[str, Any] | None:
        """Where the mailbox's mail goes on to (None: nowhere); addresses that cannot be
        unsealed any more are left out, as the sync leaves them out."""
        row = await self.pool.fetchrow(
            "SELECT addresses, keep_copy, updated_at FROM mail.forwarding WHERE user_id = $1",
            user_id,
        )
        if row is None:
            return None
        try:
            to = [await asyncio.to_thread(self.keyring.unseal_str, a) for a in row["addresses"]]
        except SealingError:
            to = []
        return {
            "to": to,
            "keep_copy": row["keep_copy"],
            "updated_at": row["updated_at"].isoformat(),
        }

    @query("mailboxes")
    async def mailboxes(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Every mailbox the servers were configured with: its quota, and what it holds as
        Dovecot counts it (null when no servers run here or Dovecot cannot say in time)."""
        if not context.current().is_admin:
            raise MailForbidden("only an administrator may see every mailbox")
        model = self.model()
        boxes = sorted(model.mailboxes, key=lambda b: b.address) if model else []
        quotas = {
            str(r["user_id"]): r["quota_bytes"]
            for r in await self.pool.fetch("SELECT user_id, quota_bytes FROM mail.mailboxes")
        }
        usage = await self._usage() if boxes else None
        items = []
        for b in boxes:
            used = usage.get(b.address) if usage is not None else None
            items.append(
                {
                    "user_id": b.folder,
                    "username": b.login,
                    "address": b.address,
                    "quota_bytes": quotas.get(b.folder),
                    "used_bytes": None if used is None else used[0],
                    "messages": None if used is None else used[1],
                }
            )
        return {"items": items}

    @query("dnsbl")
    async def dnsbl(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        return {"zones": list((await read_settings(self.pool)).dnsbl)}

    @query("relay")
    async def relay(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        r = (await read_settings(self.pool)).relay
        if r is None:
            return {"relay": None}
        return {"relay": {k: r.get(k) for k in ("host", "port", "tls", "username", "spf")}}

    @query("status")
    async def status(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        return await self._status(bool(payload.get("wait")))
