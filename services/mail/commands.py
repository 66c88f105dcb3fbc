"""Command handlers of the mail service: check, decide, record; the sync applies the result.

The contract (`libs/contracts/mail.py`) has checked each payload's shape; the handlers check
what only this service knows (dns manages the domain, the accounts and group exist, an address
is free) and append to the stream at the version they read, applying the read model in the same
transaction. Changes of one domain run one at a time in this process; the expected version
refuses a second process meanwhile. After each change the sync is nudged (`changed`): the
servers are brought up to date from the read model, never from the command's own idea.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import logging
import re
import secrets
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from libs.contracts.mail import FORWARD_PATTERN
from libs.events import context
from libs.events.bus import BusClient, BusError
from libs.events.errors import ConcurrencyError
from libs.events.handlers import command
from libs.events.inline import append_inline
from libs.events.sealing import Keyring
from libs.events.store import PostgresEventStore
from services.mail import events as ev
from services.mail import snapshots
from services.mail.decide import ROLE_ADDRESSES
from services.mail.errors import (
    InvalidRequest,
    MailConflict,
    MailForbidden,
    MailNotFound,
    MailServersError,
)
from services.mail.outbound import Outbound, RelayTarget, check_relay
from services.mail.people import SYSTEM, People, Person, read_people
from services.mail.projections import MailProjection
from services.mail.render import Layout

__all__ = [
    "APP_PASSWORD_BYTES",
    "Commands",
    "app_login",
    "app_password_hash",
    "check_relay",
    "dkim_keypair",
    "next_selector",
]

log = logging.getLogger("homeport.mail.commands")

APP_PASSWORD_BYTES = 32  # 256 random bits, shown once
DKIM_BITS = 2048


def app_password_hash(password: str) -> str:
    """What is kept of an app password (random, so a fast hash is as good as a slow one)."""
    return hashlib.sha256(password.encode("utf-8", "surrogatepass")).hexdigest()


def app_login(app_id: str) -> str:
    """The SMTP login of an app's sending account."""
    return f"app-{app_id}"


def dkim_keypair() -> tuple[str, str]:
    """A new RSA 2048 DKIM key: (PKCS#8 PEM, base64 of the public SubjectPublicKeyInfo)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=DKIM_BITS)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, base64.b64encode(public).decode()


def _selector(now: datetime) -> str:
    return f"hp{now:%Y%m}"


def next_selector(now: datetime, taken: Iterable[str]) -> str:
    """A rotation's selector: `hp<YYYYMMDD>` of the day it is made (a reader of DNS sees the
    key's age; no counter to keep), `-2`, `-3`... when that is one of `taken` (the domain's
    keys still published: a resolver may hold their records, so a name is never reused then)."""
    base = f"hp{now:%Y%m%d}"
    taken = set(taken)
    n = 1
    selector = base
    while selector in taken:
        n += 1
        selector = f"{base}-{n}"
    return selector


class Commands:
    """The command side: each `@command` method is one bus command of the mail service."""

    def __init__(
        self,
        store: PostgresEventStore,
        keyring: Keyring,
        bus: BusClient,
        *,
        changed: Callable[[], None],
        outbound: Outbound,
        timeout: float = 10.0,
        apps_host: str | None = None,
        apps_port: int = 0,
        apps_imap_port: int = 0,
        apps_sieve_port: int = 0,
        relay_networks: Sequence[str] = (),
        mail_root: Path | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.mail_root = mail_root  # the servers' folder: its store and snapshots
        self.now = now  # the clock of new selectors (tests turn it)
        self.relay_networks = tuple(relay_networks)
        self.apps_host = apps_host  # where apps send (None: nowhere on this machine)
        self.apps_port = apps_port
        self.apps_imap_port = apps_imap_port  # mail clients (webmail) on apps_host
        self.apps_sieve_port = apps_sieve_port
        self.store = store
        self.keyring = keyring
        self.bus = bus
        self.changed = changed
        self.outbound = outbound  # the platform's own mail, and a relay's test message
        self.timeout = timeout
        self._projection = MailProjection()
        self._locks: dict[str, asyncio.Lock] = {}

    # -- helpers -----------------------------------------------------------------------------

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def _append(self, stream: str, new: Sequence[Any]) -> None:
        """Append at the version the stream has now (callers hold its lock: another process
        meanwhile makes the append fail with MailConflict), then nudge the sync."""
        expected = await self.store.stream_version(stream)
        try:
            async with self.store.pool.acquire() as conn, conn.transaction():
                await append_inline(self.store, conn, self._projection, stream, new, expected)
        except ConcurrencyError:
            raise MailConflict(
                "someone else changed this at the same moment: look again and retry"
            ) from None
        except asyncpg.UniqueViolationError:
            raise MailConflict("that is taken already: look again and retry") from None
        self.changed()

    async def _people(self) -> People:
        try:
            return await read_people(self.bus, wait=self.timeout)
        except BusError as e:
            raise MailServersError(f"identity did not answer, so nothing changed: {e}") from None

    async def _domain(self, domain: str, *, enabled: bool = True) -> asyncpg.Record:
        row = await self.store.pool.fetchrow("SELECT * FROM mail.domains WHERE domain = $1", domain)
        if row is None or (enabled and not row["enabled"]):
            raise MailNotFound(f"mail is not on for {domain}: turn it on first", field="domain")
        return row

    @staticmethod
    def _admin() -> None:
        if not context.current().is_admin:
            raise MailForbidden("only an administrator may change mail settings")

    @staticmethod
    def _platform() -> None:
        if context.current().actor != "system":
            raise MailForbidden("only the platform's own services may do this")

    @staticmethod
    def _self_or_admin(user_id: str) -> None:
        ctx = context.current()
        if not ctx.is_admin and ctx.actor != user_id:
            raise MailNotFound("no such account", field="user_id")

    # -- domains -----------------------------------------------------------------------------

    @command("enable_domain")
    async def enable_domain(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        self._admin()
        domain: str = payload["domain"]
        try:
            await self.bus.query("dns", "domain", {"domain": domain}, ctx=SYSTEM)
        except BusError as e:
            if e.code == "not_found":
                raise MailNotFound(
                    f"Homeport does not manage {domain}: add it under Domains first",
                    field="domain",
                ) from None
            raise MailServersError(f"the dns service did not answer: {e}") from None
        stream = ev.domain_stream(domain)
        async with self._lock(domain):
            row = await self.store.pool.fetchrow(
                "SELECT * FROM mail.domains WHERE domain = $1", domain
            )
            if row is not None and row["enabled"]:
                raise MailConflict(f"mail is already on for {domain}", field="domain")
            if row is not None:  # back on: the key it had
                new = ev.MailDomainEnabled(
                    domain=domain,
                    selector=row["selector"],
                    dkim_key=row["dkim_key"],
                    dkim_public=row["dkim_public"],
                )
            else:
                pem, public = await asyncio.to_thread(dkim_keypair)
                sealed = await asyncio.to_thread(self.keyring.seal_for, stream, pem)
                new = ev.MailDomainEnabled(
                    domain=domain,
                    selector=_selector(datetime.fromtimestamp(self.now(), UTC)),
                    dkim_key=sealed,
                    dkim_public=public,
                )
            await self._append(stream, [new])
        return {"domain": domain, "enabled": True, "selector": new.selector}

    @command("disable_domain")
    async def disable_domain(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        self._admin()
        domain: str = payload["domain"]
        async with self._lock(domain):
            await self._domain(domain)
            stream = ev.domain_stream(domain)
            await self._append(stream, [ev.MailDomainDisabled(domain=domain)])
        return {"domain": domain, "enabled": False}

    # -- DKIM key rotation ---------------------------------------------------------------------
    # Two phases: `rotate_dkim` adds the next key (its record published beside the signing
    # key's); the sync has it sign once DNS serves that record (`activate_dkim`), and removes
    # the replaced key's record a week later (`retire_dkim`). Both steps run here, under the
    # domain's lock, so they never cross a command.

    @command("rotate_dkim")
    async def rotate_dkim(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        self._admin()
        domain: str = payload["domain"]
        stream = ev.domain_stream(domain)
        async with self._lock(domain):
            row = await self._domain(domain)
            keys = await self.store.pool.fetch(
                "SELECT selector, state, since FROM mail.dkim_keys WHERE domain = $1", domain
            )
            waiting = next((k for k in keys if k["state"] == "next"), None)
            if waiting is not None:
                raise MailConflict(
                    f"a new DKIM key for {domain} (selector {waiting['selector']}) is waiting"
                    f" for DNS to serve it since {waiting['since']:%Y-%m-%d %H:%M} UTC: it signs"
                    " once DNS does; rotate again after that",
                    field="domain",
                )
            selector = next_selector(
                datetime.fromtimestamp(self.now(), UTC),
                [row["selector"], *(k["selector"] for k in keys)],
            )
            pem, public = await asyncio.to_thread(dkim_keypair)
            sealed = await asyncio.to_thread(self.keyring.seal_for, stream, pem)
            new = ev.MailDkimKeyAdded(
                domain=domain, selector=selector, dkim_key=sealed, dkim_public=public
            )
            await self._append(stream, [new])
        return {"domain": domain, "selector": row["selector"], "next_selector": selector}

    async def activate_dkim(self, domain: str, selector: str, *, served: bool) -> bool:
        """The domain's next key `selector` signs from now on (the sync: DNS serves its record,
        or the wait ran out); False when it is not the waiting key (any more)."""
        async with self._lock(domain):
            waiting = await self.store.pool.fetchval(
                "SELECT 1 FROM mail.dkim_keys WHERE domain = $1 AND selector = $2"
                " AND state = 'next'",
                domain,
                selector,
            )
            if waiting is None:
                return False
            new = ev.MailDkimKeyActivated(domain=domain, selector=selector, served=served)
            await self._append(ev.domain_stream(domain), [new])
        return True

    async def retire_dkim(self, domain: str, selector: str) -> bool:
        """The replaced key `selector` is gone from DNS (the sync removed its record); False
        when it was not retiring (any more)."""
        async with self._lock(domain):
            retiring = await self.store.pool.fetchval(
                "SELECT 1 FROM mail.dkim_keys WHERE domain = $1 AND selector = $2"
                " AND state = 'retiring'",
                domain,
                selector,
            )
            if retiring is None:
                return False
            new = ev.MailDkimKeyRetired(domain=domain, selector=selector)
            await self._append(ev.domain_stream(domain), [new])
        return True

    @command("set_catch_all")
    async def set_catch_all(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        self._admin()
        domain: str = payload["domain"]
        user_id: str | None = payload.get("user_id")
        if user_id is not None:
            user_id = str(uuid.UUID(user_id))
            if user_id not in (await self._people()).by_id():
                raise MailNotFound("no such account", field="user_id")
        async with self._lock(domain):
            await self._domain(domain)
            stream = ev.domain_stream(domain)
            await self._append(stream, [ev.MailCatchAllSet(domain=domain, user_id=user_id)])
        return {"domain": domain, "catch_all": user_id}

    # -- extra addresses ---------------------------------------------------------------------

    @command("set_address")
    async def set_address(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        self._admin()
        domain: str = payload["domain"]
        local: str = payload["local_part"]
        kind: str = payload["kind"]
        people = await self._people()
        user_ids: list[str] = []
        group_id: str | None = None
        if kind == "alias":
            user_ids = sorted({str(uuid.UUID(u)) for u in payload.get("user_ids") or ()})
            if not user_ids:
                raise InvalidRequest("an alias needs one account or more", field="user_ids")
            known = people.by_id()
            missing = [u for u in user_ids if u not in known]
            if missing:
                raise MailNotFound(f"no account {missing[0]}", field="user_ids")
        else:
            if payload.get("group_id") is None:
                raise InvalidRequest("a list needs a group", field="group_id")
            group_id = str(uuid.UUID(payload["group_id"]))
            if group_id not in people.groups:
                raise MailNotFound("no such group", field="group_id")
        if people.by_login(local) is not None:
            raise MailConflict(f"{local}@{domain} is an account's own address", field="local_part")
        async with self._lock(domain):
            await self._domain(domain)
            stream = ev.domain_stream(domain)
            new = ev.MailAddressSet(
                domain=domain, local_part=local, kind=kind, user_ids=user_ids, group_id=group_id
            )
            await self._append(stream, [new])
        return {
            "address": f"{local}@{domain}",
            "kind": kind,
            "user_ids": user_ids,
            "group_id": group_id,
        }

    @command("remove_address")
    async def remove_address(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        self._admin()
        domain: str = payload["domain"]
        local: str = payload["local_part"]
        async with self._lock(domain):
            await self._domain(domain, enabled=False)
            found = await self.store.pool.fetchval(
                "SELECT 1 FROM mail.addresses WHERE domain = $1 AND local_part = $2", domain, local
            )
            if found is None:
                raise MailNotFound(f"no address {local}@{domain}", field="local_part")
            stream = ev.domain_stream(domain)
            new = ev.MailAddressRemoved(domain=domain, local_part=local)
            await self._append(stream, [new])
        return {"address": f"{local}@{domain}", "removed": True}

    # -- mailboxes ---------------------------------------------------------------------------

    @command("set_quota")
    async def set_quota(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        self._admin()
        user_id = str(uuid.UUID(payload["user_id"]))
        quota: int | None = payload.get("quota_bytes")
        if user_id not in (await self._people()).by_id():
            raise MailNotFound("no such account", field="user_id")
        async with self._lock(user_id):
            stream = ev.mailbox_stream(user_id)
            await self._append(stream, [ev.MailQuotaSet(user_id=user_id, quota_bytes=quota)])
        return {"user_id": user_id, "quota_bytes": quota}

    @command("create_app_password")
    async def create_app_password(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        user_id = str(uuid.UUID(payload["user_id"]))
        self._self_or_admin(user_id)
        if user_id not in (await self._people()).by_id():
            raise MailNotFound("no such account", field="user_id")
        password = secrets.token_urlsafe(APP_PASSWORD_BYTES)
        password_id = str(uuid.uuid4())
        stream = ev.mailbox_stream(user_id)
        label = await asyncio.to_thread(self.keyring.seal_for, stream, payload["label"])
        async with self._lock(user_id):
            new = ev.MailAppPasswordCreated(
                user_id=user_id,
                password_id=password_id,
                label=label,
                hash=app_password_hash(password),
            )
            await self._append(stream, [new])
        return {"password_id": password_id, "label": payload["label"], "password": password}

    @command("revoke_app_password")
    async def revoke_app_password(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        user_id = str(uuid.UUID(payload["user_id"]))
        password_id = str(uuid.UUID(payload["password_id"]))
        self._self_or_admin(user_id)
        async with self._lock(user_id):
            live = await self.store.pool.fetchval(
                "SELECT revoked_at IS NULL FROM mail.app_passwords"
                " WHERE password_id = $1 AND user_id = $2",
                password_id,
                user_id,
            )
            if live is None:
                raise MailNotFound("no such app password", field="password_id")
            if live:
                stream = ev.mailbox_stream(user_id)
                new = ev.MailAppPasswordRevoked(user_id=user_id, password_id=password_id)
                await self._append(stream, [new])
        return {"password_id": password_id, "revoked": True}

    @command("set_forwarding")
    async def set_forwarding(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Mail to the mailbox goes on to `to` (lower-cased; sealed in the event, as an
        outside address is personal data), and stays in it too with `keep_copy`. Refused,
        naming `to.N`: the same address twice, the mailbox's own addresses, and an address of
        a mail domain here that nobody receives. Forwarded mail keeps its original envelope
        sender (no SRS): a receiver that checks the sender's SPF strictly may refuse it."""
        user_id = str(uuid.UUID(payload["user_id"]))
        self._self_or_admin(user_id)
        people = await self._people()
        person = people.by_id().get(user_id)
        if person is None:
            raise MailNotFound("no such account", field="user_id")
        to = [str(a).lower() for a in payload["to"]]
        keep_copy = bool(payload["keep_copy"])
        await self._check_forwarding(to, person, people)
        stream = ev.mailbox_stream(user_id)
        sealed = await asyncio.to_thread(_seal_all, self.keyring, stream, to)
        async with self._lock(user_id):
            new = ev.MailForwardingSet(user_id=user_id, to=sealed, keep_copy=keep_copy)
            await self._append(stream, [new])
        return {"user_id": user_id, "to": to, "keep_copy": keep_copy}

    @command("clear_forwarding")
    async def clear_forwarding(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        user_id = str(uuid.UUID(payload["user_id"]))
        self._self_or_admin(user_id)
        async with self._lock(user_id):
            found = await self.store.pool.fetchval(
                "SELECT 1 FROM mail.forwarding WHERE user_id = $1", user_id
            )
            if found is not None:  # none: nothing to record
                stream = ev.mailbox_stream(user_id)
                await self._append(stream, [ev.MailForwardingCleared(user_id=user_id)])
        return {"user_id": user_id, "forwarding": None}

    async def _check_forwarding(self, to: Sequence[str], person: Person, people: People) -> None:
        """InvalidRequest naming `to.N` for the first address mail cannot be forwarded to."""
        domains = {
            str(r["domain"]): None if r["catch_all"] is None else str(r["catch_all"])
            for r in await self.store.pool.fetch(
                "SELECT domain, catch_all FROM mail.domains WHERE enabled"
            )
        }
        wanted = sorted({a.rpartition("@")[2] for a in to} & set(domains))
        extra = {
            f"{r['local_part']}@{r['domain']}": r
            for r in await self.store.pool.fetch(
                "SELECT * FROM mail.addresses WHERE domain = ANY($1::text[])", wanted
            )
        }
        known = people.by_id()
        admins = any(p.is_admin and not p.disabled for p in people.persons)
        seen: set[str] = set()
        for i, address in enumerate(to):
            field = f"to.{i}"
            if len(address) > 254 or not re.fullmatch(FORWARD_PATTERN, address):
                raise InvalidRequest(f"{address!r} is not a mail address", field=field)
            if address in seen:
                raise InvalidRequest(f"{address} is given twice", field=field)
            seen.add(address)
            local, _, domain = address.rpartition("@")
            if domain not in domains:
                continue  # elsewhere
            if local == person.username:
                raise InvalidRequest(
                    f"{address} is this mailbox's own address: mail would come back to it",
                    field=field,
                )
            if people.by_login(local) is not None:
                continue  # an account's own address
            row = extra.get(address)
            if row is not None:  # an alias or a list: someone receives it while it has people
                ids = (
                    row["user_ids"]
                    if row["kind"] == "alias"
                    else people.groups.get(str(row["group_id"]), ())
                )
                if any(str(u) in known for u in ids):
                    continue
            elif local in ROLE_ADDRESSES and admins:
                continue
            if domains[domain] in known:  # the domain's catch-all receives it
                continue
            raise InvalidRequest(
                f"nobody here receives mail for {address}: check the address", field=field
            )

    # -- apps that send mail ------------------------------------------------------------------

    @command("register_app")
    async def register_app(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """An app's sending account, usable only from the app's network and only with its
        sender: a fresh password, or the one the app already has (`password`: the apps
        service making sure an app installed earlier has its account; the same account again
        records nothing)."""
        self._platform()
        app_id = str(uuid.UUID(payload["app_id"]))
        network = _app_network(payload["network"])
        password = payload.get("password") or secrets.token_urlsafe(APP_PASSWORD_BYTES)
        new = ev.MailAppRegistered(
            app_id=app_id,
            sender=payload["sender"],
            network=str(network),
            hash=app_password_hash(password),
        )
        stream = ev.app_stream(app_id)
        async with self._lock(stream):
            row = await self.store.pool.fetchrow(
                "SELECT sender, network, hash FROM mail.apps WHERE app_id = $1 AND NOT removed",
                app_id,
            )
            if row is None or (row["sender"], str(row["network"]), row["hash"]) != (
                new.sender,
                new.network,
                new.hash,
            ):
                await self._append(stream, [new])
        return {
            "username": app_login(app_id),
            "password": password,
            "sender": payload["sender"],
            "host": self.apps_host,
            "port": self.apps_port,
        }

    @command("register_client")
    async def register_client(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """An app that is a mail client for people (webmail, its `mailclient` addon): where it
        reaches IMAP, submission and ManageSieve. It holds no account of its own: each person
        signs in with theirs, and Dovecot trusts the app's network to name the person's address
        (so failed sign-ins count against that address, not the app's)."""
        self._platform()
        app_id = str(uuid.UUID(payload["app_id"]))
        network = _app_network(payload["network"])
        if self.apps_host is None or not self.apps_imap_port or not self.apps_sieve_port:
            return {"host": None}  # nowhere for apps to reach mail here: nothing recorded
        stream = ev.app_stream(app_id)
        async with self._lock(stream):
            known = await self.store.pool.fetchval(
                "SELECT network FROM mail.clients WHERE app_id = $1 AND NOT removed", app_id
            )
            if known is None or str(known) != str(network):  # the same again: nothing new
                new = ev.MailClientRegistered(app_id=app_id, network=str(network))
                await self._append(stream, [new])
        domain = await self.store.pool.fetchval(
            "SELECT domain FROM mail.domains WHERE enabled ORDER BY enabled_at, domain LIMIT 1"
        )
        return {
            "host": self.apps_host,
            "imap_port": self.apps_imap_port,
            "submission_port": self.apps_port,
            "sieve_port": self.apps_sieve_port,
            "domain": domain,
        }

    @command("remove_app")
    async def remove_app(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        self._platform()
        app_id = str(uuid.UUID(payload["app_id"]))
        stream = ev.app_stream(app_id)
        async with self._lock(stream):
            live = await self.store.pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM mail.apps WHERE app_id = $1 AND NOT removed"
                " UNION ALL SELECT 1 FROM mail.clients WHERE app_id = $1 AND NOT removed)",
                app_id,
            )
            if live:
                await self._append(stream, [ev.MailAppRemoved(app_id=app_id)])
        return {"app_id": app_id, "removed": True}

    # -- the outbound relay --------------------------------------------------------------------

    @command("set_relay")
    async def set_relay(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Mail to other domains through a smart host, kept only once it took the connection,
        the TLS and the sign-in, and with `test_to` a test message for that address; the
        password is sealed."""
        self._admin()
        host: str = payload["host"]
        port: int = payload["port"]
        tls: str = payload["tls"]
        username: str | None = payload.get("username")
        password: str | None = payload.get("password")
        test_to: str | None = payload.get("test_to")
        spf = _spf_terms(payload.get("spf"))
        if (username is None) != (password is None):
            missing = "password" if password is None else "username"
            raise InvalidRequest("a relay sign-in needs both username and password", field=missing)
        if test_to is None:
            await asyncio.to_thread(
                check_relay, host, port, tls, username, password, self.relay_networks
            )
        else:
            relay = RelayTarget(host, port, tls, username, password)
            await self.outbound.test_relay(relay, test_to)
        sealed = (
            None
            if password is None
            else await asyncio.to_thread(self.keyring.seal_for, ev.SETTINGS_STREAM, password)
        )
        new = ev.MailRelaySet(
            host=host, port=port, tls=tls, username=username, password=sealed, spf=spf
        )
        async with self._lock(ev.SETTINGS_STREAM):
            await self._append(ev.SETTINGS_STREAM, [new])
        return {"host": host, "port": port, "tls": tls, "username": username, "spf": spf}

    @command("clear_relay")
    async def clear_relay(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        self._admin()
        async with self._lock(ev.SETTINGS_STREAM):
            await self._append(ev.SETTINGS_STREAM, [ev.MailRelayCleared()])
        return {"relay": None}

    # -- the platform's own mail ---------------------------------------------------------------

    @command("send")
    async def send(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The platform's own mail (the notify service: invitations, resets, alerts), through
        the local servers when mail is on, else the relay (services/mail/outbound.py)."""
        self._platform()
        return await self.outbound.send(
            to=list(payload["to"]),
            subject=payload["subject"],
            text=payload["text"],
            html=payload.get("html"),
            from_name=payload.get("from_name"),
        )

    # -- the mail store in backups --------------------------------------------------------------

    @command("snapshot")
    async def snapshot(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """A snapshot of the mail store for the backup service (services/mail/snapshots.py)."""
        self._platform()
        snapshot_id = str(uuid.UUID(payload["snapshot_id"]))
        if self.mail_root is None:
            raise MailServersError("this mail service keeps no mail store")
        dest = snapshots.snapshot_dir(self.mail_root, snapshot_id)
        store = Layout(self.mail_root).store
        try:
            taken = await asyncio.to_thread(snapshots.take, store, dest)
        except FileExistsError:
            raise MailConflict(f"snapshot {snapshot_id} exists already") from None
        except OSError as e:
            await asyncio.to_thread(shutil.rmtree, dest, True)
            raise MailServersError(f"the mail store could not be copied: {e}") from None
        log.info(
            "mail snapshot %s: %d mailbox(es), %d files, %d bytes",
            snapshot_id, taken.mailboxes, taken.files, taken.bytes,
        )  # fmt: skip
        return {"mailboxes": taken.mailboxes, "files": taken.files, "bytes": taken.bytes}

    @command("forget_snapshot")
    async def forget_snapshot(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        self._platform()
        snapshot_id = str(uuid.UUID(payload["snapshot_id"]))
        if self.mail_root is None:
            return {"forgotten": False}
        gone = await asyncio.to_thread(snapshots.forget, self.mail_root, snapshot_id)
        return {"forgotten": gone}

    # -- settings ----------------------------------------------------------------------------

    @command("set_dnsbl")
    async def set_dnsbl(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        self._admin()
        zones = list(dict.fromkeys(payload["zones"]))
        async with self._lock(ev.SETTINGS_STREAM):
            await self._append(ev.SETTINGS_STREAM, [ev.MailDnsblSet(zones=zones)])
        return {"zones": zones}


def _seal_all(keyring: Keyring, subject: str, values: Sequence[str]) -> list[str]:
    return [keyring.seal_for(subject, v) for v in values]


def _spf_terms(value: str | None) -> str | None:
    """The relay's SPF addition checked term by term (the contract has their shape): a domain
    with a dot and letters last, an IPv4 or IPv6 address or network of that version; lower
    case. InvalidRequest naming `spf`."""
    if value is None:
        return None
    terms = []
    for term in value.split(" "):
        kind, _, rest = term.partition(":")
        if kind in ("ip4", "ip6"):
            try:
                net = ipaddress.ip_network(rest, strict=False)
            except ValueError:
                net = None
            if net is None or net.version != int(kind[-1]):
                raise InvalidRequest(
                    f"spf has {term[:60]!r}, which is not an IPv{kind[-1]} address or network",
                    field="spf",
                )
        elif len(rest) > 253 or any(len(label) > 63 for label in rest.split(".")):
            raise InvalidRequest(f"spf has {term[:60]!r}, which names no domain", field="spf")
        terms.append(f"{kind}:{rest.lower()}")
    return " ".join(terms)


def _app_network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An app's Docker network as a CIDR; a wider one than an app's network can be is refused."""
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise InvalidRequest(
            "network must be a CIDR such as 172.20.0.0/16", field="network"
        ) from None
    if network.prefixlen < (8 if network.version == 4 else 48):
        raise InvalidRequest("network is wider than an app's network can be", field="network")
    return network
