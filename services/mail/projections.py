"""The mail read model (schema `mail`), written inline with the events it reflects.

Commands append and apply in one transaction (libs/events/inline.py): the primary key of
`mail.addresses` refuses an address taken twice, the unique hash of `mail.app_passwords` a
password recorded twice, and the one-`next`-key index of `mail.dkim_keys` a second DKIM
rotation waiting, in the transaction that would have recorded the event.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import asyncpg

from libs.events.envelope import RecordedEvent
from libs.events.projection import Projection, register_projection
from services.mail.events import APP_CATEGORY, DOMAIN_CATEGORY, MAILBOX_CATEGORY, SETTINGS_STREAM

__all__ = ["MailProjection"]

Data = Mapping[str, Any]
_CATEGORIES = frozenset({APP_CATEGORY, DOMAIN_CATEGORY, MAILBOX_CATEGORY})


@register_projection
class MailProjection(Projection):
    """Mail domains, extra addresses, quotas, app passwords and block lists."""

    name: ClassVar[str] = "mail"
    schema: ClassVar[str] = "mail"
    subject: ClassVar[str] = ">"
    migrations: ClassVar[Path | None] = Path(__file__).parent / "migrations"

    def wants(self, event: RecordedEvent) -> bool:
        return event.category in _CATEGORIES or event.stream == SETTINGS_STREAM

    async def reset(self, conn: asyncpg.Connection) -> None:
        await conn.execute(
            "TRUNCATE mail.domains, mail.addresses, mail.mailboxes, mail.app_passwords,"
            " mail.settings, mail.apps, mail.clients, mail.dkim_keys, mail.forwarding"
        )

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        for ev in events:
            if self.wants(ev):
                await _APPLY[ev.type](conn, ev.data, ev)


async def _enabled(conn: asyncpg.Connection, d: Data, r: RecordedEvent) -> None:
    await conn.execute(
        "INSERT INTO mail.domains (domain, enabled, selector, dkim_key, dkim_public, enabled_at,"
        " updated_at) VALUES ($1, true, $2, $3, $4, $5, $5)"
        " ON CONFLICT (domain) DO UPDATE SET enabled = true, selector = $2, dkim_key = $3,"
        " dkim_public = $4, enabled_at = $5, updated_at = $5",
        d["domain"],
        d["selector"],
        d["dkim_key"],
        d["dkim_public"],
        r.recorded_at,
    )


async def _disabled(conn: asyncpg.Connection, d: Data, r: RecordedEvent) -> None:
    await conn.execute(
        "UPDATE mail.domains SET enabled = false, updated_at = $2 WHERE domain = $1",
        d["domain"],
        r.recorded_at,
    )


async def _dkim_added(conn: asyncpg.Connection, d: Data, r: RecordedEvent) -> None:
    await conn.execute(
        "INSERT INTO mail.dkim_keys (domain, selector, state, dkim_key, dkim_public, since)"
        " VALUES ($1, $2, 'next', $3, $4, $5)",
        d["domain"],
        d["selector"],
        d["dkim_key"],
        d["dkim_public"],
        r.recorded_at,
    )


async def _dkim_activated(conn: asyncpg.Connection, d: Data, r: RecordedEvent) -> None:
    """The signing key becomes a retiring one (its public half only), the next one signs."""
    waiting = await conn.fetchval(
        "SELECT 1 FROM mail.dkim_keys WHERE domain = $1 AND selector = $2 AND state = 'next'",
        d["domain"],
        d["selector"],
    )
    if waiting is None:  # not the waiting key (the command checked): the signing key stays
        return
    await conn.execute(
        "INSERT INTO mail.dkim_keys (domain, selector, state, dkim_key, dkim_public, since)"
        " SELECT domain, selector, 'retiring', NULL, dkim_public, $2 FROM mail.domains"
        " WHERE domain = $1"
        " ON CONFLICT (domain, selector) DO UPDATE SET state = 'retiring', dkim_key = NULL,"
        " dkim_public = EXCLUDED.dkim_public, since = EXCLUDED.since",
        d["domain"],
        r.recorded_at,
    )
    await conn.execute(
        "UPDATE mail.domains d SET selector = k.selector, dkim_key = k.dkim_key,"
        " dkim_public = k.dkim_public, updated_at = $3 FROM mail.dkim_keys k"
        " WHERE d.domain = $1 AND k.domain = $1 AND k.selector = $2 AND k.state = 'next'",
        d["domain"],
        d["selector"],
        r.recorded_at,
    )
    await conn.execute(
        "DELETE FROM mail.dkim_keys WHERE domain = $1 AND selector = $2 AND state = 'next'",
        d["domain"],
        d["selector"],
    )


async def _dkim_retired(conn: asyncpg.Connection, d: Data, r: RecordedEvent) -> None:
    await conn.execute(
        "DELETE FROM mail.dkim_keys WHERE domain = $1 AND selector = $2 AND state = 'retiring'",
        d["domain"],
        d["selector"],
    )


async def _catch_all(conn: asyncpg.Connection, d: Data, r: RecordedEvent) -> None:
    await conn.execute(
        "UPDATE mail.domains SET catch_all = $2, updated_at = $3 WHERE domain = $1",
        d["domain"],
        d["user_id"],
        r.recorded_at,
    )


async def _address_set(conn: asyncpg.Connection, d: Data, r: RecordedEvent) -> None:
    await conn.execute(
        "INSERT INTO mail.addresses (domain, local_part, kind, user_ids, group_id, updated_at)"
        " VALUES ($1, $2, $3, $4::uuid[], $5, $6)"
        " ON CONFLICT (domain, local_part) DO UPDATE SET kind = $3, user_ids = $4::uuid[],"
        " group_id = $5, updated_at = $6",
        d["domain"],
        d["local_part"],
        d["kind"],
        d["user_ids"],
        d["group_id"],
        r.recorded_at,
    )


async def _address_removed(conn: asyncpg.Connection, d: Data, r: RecordedEvent) -> None:
    await conn.execute(
        "DELETE FROM mail.addresses WHERE domain = $1 AND local_part = $2",
        d["domain"],
        d["local_part"],
    )


async def _quota(conn: asyncpg.Connection, d: Data, r: RecordedEvent) -> None:
    await conn.execute(
        "INSERT INTO mail.mailboxes (user_id, quota_bytes, updated_at) VALUES ($1, $2, $3)"
        " ON CONFLICT (user_id) DO UPDATE SET quota_bytes = $2, updated_at = $3",
        d["user_id"],
        d["quota_bytes"],
        r.recorded_at,
    )


async def _password_created(conn: asyncpg.Connection, d: Data, r: RecordedEvent) -> None:
    await conn.execute(
        "INSERT INTO mail.app_passwords (password_id, user_id, label, hash, created_at)"
        " VALUES ($1, $2, $3, $4, $5)",
        d["password_id"],
        d["user_id"],
        d["label"],
        d["hash"],
        r.recorded_at,
    )


async def _password_revoked(conn: asyncpg.Connection, d: Data, r: RecordedEvent) -> None:
    await conn.execute(
        "UPDATE mail.app_passwords SET revoked_at = $2 WHERE password_id = $1"
        " AND revoked_at IS NULL",
        d["password_id"],
        r.recorded_at,
    )


async def _forwarding_set(conn: asyncpg.Connection, d: Data, r: RecordedEvent) -> None:
    """The addresses stay sealed here too; the sync and the mailbox view unseal them."""
    await conn.execute(
        "INSERT INTO mail.forwarding (user_id, addresses, keep_copy, updated_at)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (user_id) DO UPDATE SET addresses = $2,"
        " keep_copy = $3, updated_at = $4",
        d["user_id"],
        list(d["to"]),
        d["keep_copy"],
        r.recorded_at,
    )


async def _forwarding_cleared(conn: asyncpg.Connection, d: Data, r: RecordedEvent) -> None:
    await conn.execute("DELETE FROM mail.forwarding WHERE user_id = $1", d["user_id"])


async def _dnsbl(conn: asyncpg.Connection, d: Data, r: RecordedEvent) -> None:
    await conn.execute(
        "INSERT INTO mail.settings (id, dnsbl, updated_at) VALUES (true, $1::jsonb, $2)"
        " ON CONFLICT (id) DO UPDATE SET dnsbl = $1::jsonb, updated_at = $2",
        json.dumps(d["zones"]),
        r.recorded_at,
    )


async def _app_registered(conn: asyncpg.Connection, d: Data, r: RecordedEvent) -> None:
    await conn.execute(
        "INSERT INTO mail.apps (app_id, sender, network, hash, updated_at)"
        " VALUES ($1, $2, $3::cidr, $4, $5)"
        " ON CONFLICT (app_id) DO UPDATE SET sender = $2, network = $3::cidr, hash = $4,"
        " removed = false, updated_at = $5",
        d["app_id"],
        d["sender"],
        d["network"],
        d["hash"],
        r.recorded_at,
    )


async def _client_registered(conn: asyncpg.Connection, d: Data, r: RecordedEvent) -> None:
    await conn.execute(
        "INSERT INTO mail.clients (app_id, network, updated_at) VALUES ($1, $2::cidr, $3)"
        " ON CONFLICT (app_id) DO UPDATE SET network = $2::cidr, removed = false,"
        " updated_at = $3",
        d["app_id"],
        d["network"],
        r.recorded_at,
    )


async def _app_removed(conn: asyncpg.Connection, d: Data, r: RecordedEvent) -> None:
    await conn.execute(
        "UPDATE mail.apps SET removed = true, hash = NULL, updated_at = $2 WHERE app_id = $1",
        d["app_id"],
        r.recorded_at,
    )
    await conn.execute(
        "UPDATE mail.clients SET removed = true, updated_at = $2 WHERE app_id = $1",
        d["app_id"],
        r.recorded_at,
    )


async def _relay(conn: asyncpg.Connection, d: Data, r: RecordedEvent) -> None:
    relay = json.dumps(dict(d)) if r.type == "MailRelaySet" else None
    await conn.execute(
        "INSERT INTO mail.settings (id, relay, updated_at) VALUES (true, $1::jsonb, $2)"
        " ON CONFLICT (id) DO UPDATE SET relay = $1::jsonb, updated_at = $2",
        relay,
        r.recorded_at,
    )


_APPLY: Mapping[str, Callable[[asyncpg.Connection, Data, RecordedEvent], Awaitable[None]]] = {
    "MailDomainEnabled": _enabled,
    "MailDomainDisabled": _disabled,
    "MailDkimKeyAdded": _dkim_added,
    "MailDkimKeyActivated": _dkim_activated,
    "MailDkimKeyRetired": _dkim_retired,
    "MailCatchAllSet": _catch_all,
    "MailAddressSet": _address_set,
    "MailAddressRemoved": _address_removed,
    "MailQuotaSet": _quota,
    "MailAppPasswordCreated": _password_created,
    "MailAppPasswordRevoked": _password_revoked,
    "MailForwardingSet": _forwarding_set,
    "MailForwardingCleared": _forwarding_cleared,
    "MailDnsblSet": _dnsbl,
    "MailAppRegistered": _app_registered,
    "MailClientRegistered": _client_registered,
    "MailAppRemoved": _app_removed,
    "MailRelaySet": _relay,
    "MailRelayCleared": _relay,
}
