"""Keeps the mail servers true to the platform, as the edge keeps nginx (services/gateway/edge).

It follows the events that change who gets mail (accounts and groups, identity's; mail domains,
addresses and quotas, this service's own, which also nudge it directly) and reconciles at once,
a burst once (`debounce`); every `interval` seconds it reconciles anyway. An event is only a
nudge: each round reads the whole picture again (the read model, identity's accounts and
groups, certs' files), decides the model (decide.py) and, when it changed, has the servers
adapter render, check, swap and reload (servers.py: a configuration a server refuses is never
applied, the running one keeps serving). With no mail domain on, the servers are not run.
For each domain it also asks, once per change, for what mail needs from the other services:
the DNS records (MX, SPF, DKIM, DMARC, and the mail host's address) through dns as owner
`mail`, and a certificate for `mail.<primary domain>` from certs. While a domain has a DKIM key
besides the signing one (a rotation), each round first takes the rotation's steps that are due
(`_rotate_dkim`): the next key signs once dns says the nameservers serve its record, a replaced
key's record is removed a week later; the command side records each step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from libs.events.bus import BusClient, BusError
from libs.events.sealing import Keyring, SealingError
from services.mail.auth import Directory
from services.mail.commands import app_login
from services.mail.decide import AddressRow, DomainRow, ForwardingRow, decide
from services.mail.errors import MailError
from services.mail.model import MailModel, Relay
from services.mail.people import SYSTEM, People, read_people
from services.mail.queries import (
    DKIM_DEADLINE,
    DKIM_KEEP,
    DKIM_SETTLE,
    dkim_record,
    expected_records,
    read_settings,
)
from services.mail.records import FoundRecords

__all__ = ["FOLLOWED", "MAIL_OWNER", "DkimSteps", "MailSync", "Servers"]

log = logging.getLogger(__name__)

FOLLOWED = ("user", "group")  # identity's categories: who has a mailbox, who is on a list
MAIL_OWNER = "mail"  # the owner of the DNS records mail needs
_SERVED_EVERY = 60.0  # seconds: dns is asked about a waiting DKIM key's record at most this often


class Servers(Protocol):
    """The servers adapter as the sync uses it (services/mail/servers.py)."""

    async def apply(self, model: MailModel) -> None: ...

    async def stop(self) -> None: ...

    async def usage(self) -> dict[str, tuple[int, int]] | None: ...

    async def tls_changed(self, model: MailModel) -> bool: ...

    def store_folders(self) -> list[str]: ...

    async def remove_store(self, folder: str) -> None: ...


class DkimSteps(Protocol):
    """The command side's steps of a DKIM key rotation (services/mail/commands.py), taken
    under the domain's lock; each says whether it recorded anything."""

    async def activate_dkim(self, domain: str, selector: str, *, served: bool) -> bool: ...

    async def retire_dkim(self, domain: str, selector: str) -> bool: ...


@dataclass
class MailSync:
    pool: asyncpg.Pool
    keyring: Keyring
    bus: BusClient
    nc: NATS
    servers: Servers | None  # None: decide and record only (no servers run here)
    hostname: str  # the servers' name while no domain has mail
    events_prefix: str = "hp.evt"
    interval: float = 60.0
    debounce: float = 0.2
    retry: float = 5.0
    timeout: float = 10.0
    apps_listen: tuple[str, ...] = ()  # where apps send, when present on this host
    not_run: str | None = None  # why no servers run here (servers is None), if not by choice
    dkim: DkimSteps | None = None  # takes a DKIM rotation's steps (None: none taken here)
    now: Callable[[], float] = time.time  # the clock of those steps (tests turn it)
    last_error: str | None = None
    rounds: int = 0  # rounds ended
    _begun: int = 0
    applied: MailModel | None = None
    applied_at: float | None = None
    _directory: Directory = field(default_factory=lambda: Directory(People(), frozenset(), None))
    _records: dict[str, tuple[str, ...]] = field(default_factory=dict)  # domain -> written
    wanted: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # domain -> records
    record_errors: dict[str, str] = field(default_factory=dict)  # "<name> <type>" -> why
    _certificates: set[str] = field(default_factory=set)  # hosts asked for
    _dkim_asked: dict[str, float] = field(default_factory=dict)  # domain -> now() dns was asked
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _kick: asyncio.Event = field(default_factory=asyncio.Event)
    _round_done: asyncio.Condition = field(default_factory=asyncio.Condition)

    def directory(self) -> Directory:
        return self._directory

    def kick(self) -> None:
        self._kick.set()

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()

    async def status(self, wait: bool = False) -> dict[str, Any]:
        """What the servers were last configured with (after a fresh round, with `wait`)."""
        if wait:
            await self.settled(60)
        model = self.applied
        return {
            "running": bool(model and model.domains) and self.servers is not None,
            "hostname": model.hostname if model else self.hostname,
            "domains": [d.name for d in model.domains] if model else [],
            "mailboxes": len(model.mailboxes) if model else 0,
            "last_error": self.last_error or (self.not_run if model and model.domains else None),
            "record_errors": [f"{k}: {v}" for k, v in sorted(self.record_errors.items())],
            "rounds": self.rounds,
        }

    async def usage(self) -> dict[str, tuple[int, int]] | None:
        """Each mailbox's (bytes used, messages) by address, as Dovecot counts them; None when
        no servers run here (or none with mail on) or Dovecot cannot say in time."""
        if self.servers is None or not (self.applied and self.applied.domains):
            return None
        return await self.servers.usage()

    async def _used(self) -> dict[str, int] | None:
        """Bytes each mailbox holds (which quotas Postfix asks about at RCPT); None: unknown."""
        counted = await self.usage()
        return None if counted is None else {a: used for a, (used, _) in counted.items()}

    async def settled(self, within: float) -> None:
        """Wait until a round that began after this call has ended (tests, the CLI)."""
        target = self._begun + 1
        self.kick()
        async with asyncio.timeout(within), self._round_done:
            await self._round_done.wait_for(lambda: self.rounds >= target)

    async def run(self) -> None:
        subs: list[Subscription] = []
        try:
            for category in FOLLOWED:
                subs.append(
                    await self.nc.subscribe(f"{self.events_prefix}.{category}.>", cb=self._event)
                )
            while not self._stop.is_set():
                self._begun += 1
                wait = self.interval
                try:
                    await self.reconcile()
                    self.last_error = None
                except (MailError, BusError, OSError, SealingError, asyncpg.PostgresError) as e:
                    self.last_error = str(e)
                    wait = min(self.retry, wait)
                    log.error("the mail servers could not be brought up to date: %s", e)
                async with self._round_done:
                    self.rounds += 1
                    self._round_done.notify_all()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), wait)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.debounce)
                self._kick.clear()
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            if self.servers is not None:
                await self.servers.stop()

    async def _event(self, msg: Msg) -> None:
        self.kick()

    # -- one round -----------------------------------------------------------------------------

    async def reconcile(self) -> None:
        await self._rotate_dkim()
        rows = await self.pool.fetch(
            "SELECT * FROM mail.domains WHERE enabled ORDER BY enabled_at, domain"
        )
        people = await read_people(self.bus, wait=self.timeout)
        domains = [
            DomainRow(
                domain=r["domain"],
                selector=r["selector"],
                dkim_pem=await asyncio.to_thread(self.keyring.unseal_str, r["dkim_key"]),
                catch_all=None if r["catch_all"] is None else str(r["catch_all"]),
            )
            for r in rows
        ]
        primary = domains[0].domain if domains else None
        self._directory = Directory(people, frozenset(d.domain for d in domains), primary)
        addresses = [
            AddressRow(
                domain=a["domain"],
                local_part=a["local_part"],
                kind=a["kind"],
                user_ids=tuple(str(u) for u in a["user_ids"]),
                group_id=None if a["group_id"] is None else str(a["group_id"]),
            )
            for a in await self.pool.fetch(
                "SELECT a.* FROM mail.addresses a JOIN mail.domains d USING (domain)"
                " WHERE d.enabled ORDER BY a.domain, a.local_part"
            )
        ]
        quotas: Mapping[str, int | None] = {
            str(r["user_id"]): r["quota_bytes"]
            for r in await self.pool.fetch("SELECT user_id, quota_bytes FROM mail.mailboxes")
        }
        settings = await read_settings(self.pool)
        relay = await self._relay(settings.relay)
        apps = [
            (str(r["sender"]), app_login(str(r["app_id"])))
            for r in await self.pool.fetch(
                "SELECT app_id, sender FROM mail.apps WHERE NOT removed ORDER BY app_id"
            )
        ]
        clients = [
            str(r["network"])
            for r in await self.pool.fetch(
                "SELECT network FROM mail.clients WHERE NOT removed ORDER BY app_id"
            )
        ]
        hostname = f"mail.{primary}" if primary else self.hostname
        tls = await self._certificate(hostname) if primary else None
        model = decide(
            hostname=hostname,
            domains=domains,
            addresses=addresses,
            people=people,
            quotas=quotas,
            dnsbl=settings.dnsbl,
            tls=tls,
            apps=apps,
            apps_listen=tuple(a for a in self.apps_listen if _on_this_host(a)),
            client_networks=clients,
            relay=relay,
            forwarding=await self._forwarding(),
            # Dovecot is asked only when some mailbox has a quota to check against
            usage=await self._used() if any(quotas.values()) else None,
        )
        if primary:
            other_keys: dict[str, list[tuple[str, str]]] = {}
            for k in await self.pool.fetch(
                "SELECT domain, selector, dkim_public FROM mail.dkim_keys ORDER BY since, selector"
            ):
                other_keys.setdefault(k["domain"], []).append((k["selector"], k["dkim_public"]))
            relay_spf = settings.relay.get("spf") if settings.relay else None
            await self._publish_records(rows, primary, hostname, other_keys, relay_spf)
        await self._remove_deleted_mailboxes()
        if model == self.applied and not await self._tls_renewed(model):
            return
        if self.servers is not None:
            if model.domains:
                await self.servers.apply(model)
            else:
                await self.servers.stop()
        self.applied = model
        self.applied_at = time.time()
        log.info(
            "mail servers configured: %d domains, %d mailboxes",
            len(model.domains),
            len(model.mailboxes),
        )

    async def _remove_deleted_mailboxes(self) -> None:
        """The mail of a deleted account is deleted too: each folder of the mail store whose
        account identity recorded as deleted (`UserDeleted` on its stream; an account merely
        missing from identity's answer, or disabled, keeps its mail) goes, with its mail."""
        if self.servers is None:
            return
        folders = await asyncio.to_thread(self.servers.store_folders)
        if not folders:
            return
        deleted = await self.pool.fetch(
            "SELECT DISTINCT substr(stream, 6) AS folder FROM events.events"
            " WHERE stream = ANY($1::text[]) AND type = 'UserDeleted'",
            [f"user-{f}" for f in folders],
        )
        for r in deleted:
            await self.servers.remove_store(r["folder"])
            log.info("the mailbox of deleted account %s removed with its mail", r["folder"][:8])

    async def _tls_renewed(self, model: MailModel) -> bool:
        """Whether the certificate files the servers serve changed under the same paths (certs
        renews in place; the self-signed stand-in is made anew when old): the model is then the
        same, but Postfix and Dovecot must reload to serve the new certificate."""
        if self.servers is None or not model.domains:
            return False
        renewed = await self.servers.tls_changed(model)
        if renewed:
            log.info("the mail host's certificate changed: Postfix and Dovecot reload")
        return renewed

    async def _forwarding(self) -> list[ForwardingRow]:
        """Each mailbox's forwarding, its addresses unsealed; one that cannot be unsealed (its
        key destroyed) is left out and logged rather than holding every other change back."""
        out: list[ForwardingRow] = []
        for r in await self.pool.fetch(
            "SELECT user_id, addresses, keep_copy FROM mail.forwarding ORDER BY user_id"
        ):
            user_id = str(r["user_id"])
            try:
                to = await asyncio.to_thread(_unseal_all, self.keyring, r["addresses"])
            except SealingError as e:
                log.warning("forwarding of account %s left out: %s", user_id[:8], e)
                continue
            out.append(ForwardingRow(user_id=user_id, to=to, keep_copy=r["keep_copy"]))
        return out

    async def _relay(self, r: Mapping[str, Any] | None) -> Relay | None:
        if r is None:
            return None
        password = r.get("password")
        if password is not None:
            password = await asyncio.to_thread(self.keyring.unseal_str, password)
        return Relay(
            host=r["host"],
            port=int(r["port"]),
            tls=r["tls"],
            username=r.get("username"),
            password=password,
        )

    async def _rotate_dkim(self) -> None:
        """A DKIM rotation's steps that are due. Only while a domain has a key besides the
        signing one (a query of a small table, otherwise): a next key signs once the domain's
        nameservers serve its record as published (dns `served`, asked from DKIM_SETTLE after
        it was added, at most every _SERVED_EVERY), or at DKIM_DEADLINE regardless; a replaced
        key's record is removed through dns DKIM_KEEP after it stopped signing, then recorded
        gone (removed first: a record recorded gone but left in DNS would stay for good)."""
        if self.dkim is None:
            return
        keys = await self.pool.fetch(
            "SELECT k.*, d.enabled FROM mail.dkim_keys k JOIN mail.domains d USING (domain)"
            " ORDER BY k.domain, k.since"
        )
        now = self.now()
        for k in keys:
            domain, selector = str(k["domain"]), str(k["selector"])
            age = now - k["since"].timestamp()
            if k["state"] == "next" and k["enabled"] and age >= DKIM_SETTLE:
                served = age < DKIM_DEADLINE
                if served and not await self._dkim_served(domain, selector, k["dkim_public"]):
                    continue
                if await self.dkim.activate_dkim(domain, selector, served=served):
                    self._dkim_asked.pop(domain, None)
                    log.info("DKIM key %s of %s signs from now on", selector, domain)
            elif k["state"] == "retiring" and age >= DKIM_KEEP:
                if await self._remove_record(f"{selector}._domainkey.{domain}", "TXT"):
                    await self.dkim.retire_dkim(domain, selector)
                    log.info("DKIM key %s of %s retired, its record removed", selector, domain)

    async def _dkim_served(self, domain: str, selector: str, public: str) -> bool:
        """Whether the domain's nameservers serve the key's record as published (asked at
        most every _SERVED_EVERY: False meanwhile)."""
        now = self.now()
        asked = self._dkim_asked.get(domain)
        if asked is not None and now - asked < _SERVED_EVERY:
            return False
        self._dkim_asked[domain] = now
        wanted = dkim_record(domain, selector, public)
        (found,) = await FoundRecords(self.bus, ttl=0).check(domain, [wanted])
        if not found["ok"]:
            log.info("DKIM key %s of %s waits for DNS: %s", selector, domain, found["error"])
        return bool(found["ok"])

    async def _remove_record(self, name: str, rtype: str) -> bool:
        """Remove a record mail published, through dns; True once it is gone (or was)."""
        what = f"{name} {rtype}"
        try:
            await self.bus.command(
                "dns",
                "remove_record",
                {"name": name, "type": rtype, "owner": MAIL_OWNER},
                ctx=SYSTEM,
                timeout=60,
            )
        except BusError as e:
            if e.code != "not_found":  # not found: not there (any more), nothing to remove
                self.record_errors[what] = e.message
                log.warning("%s of an old DKIM key not removed: %s", what, e.message)
                return False
        self.record_errors.pop(what, None)
        return True

    async def _certificate(self, host: str) -> tuple[Path, Path] | None:
        """certs' files for the mail host (asked for once); None until it has some."""
        try:
            if host not in self._certificates:
                await self.bus.command(
                    "certs", "ensure", {"names": [host]}, ctx=SYSTEM, timeout=self.timeout
                )
                self._certificates.add(host)
            files = await self.bus.query(
                "certs", "files", {"host": host}, ctx=SYSTEM, timeout=self.timeout
            )
        except BusError as e:
            if e.code not in ("not_found", "unavailable", "invalid"):
                log.warning("no certificate for %s yet: %s", host, e)
            return None
        return Path(files["cert"]), Path(files["key"])

    async def _publish_records(
        self,
        rows: list[asyncpg.Record],
        primary: str,
        host: str,
        other_keys: Mapping[str, list[tuple[str, str]]],
        relay_spf: str | None = None,
    ) -> None:
        """The records of each domain through dns (owner `mail`), once per change of them."""
        try:
            view = await self.bus.query("dns", "domain", {"domain": primary}, ctx=SYSTEM)
        except BusError as e:
            log.warning("dns cannot say %s's addresses: %s", primary, e)
            view = {}
        for r in rows:
            others = other_keys.get(r["domain"], [])
            wanted = expected_records(
                r["domain"], primary, r["selector"], r["dkim_public"], others, relay_spf
            )
            if r["domain"] == primary:
                for rtype, field_name in (("A", "server_ipv4"), ("AAAA", "server_ipv6")):
                    if view.get(field_name):
                        wanted.append({"name": host, "type": rtype, "values": [view[field_name]]})
            self.wanted[r["domain"]] = wanted
            key = tuple(sorted(f"{w['name']} {w['type']} {w['values']}" for w in wanted))
            if self._records.get(r["domain"]) == key:
                continue
            failed = False
            for w in wanted:
                what = f"{w['name']} {w['type']}"
                try:
                    await self.bus.command(
                        "dns", "set_record", {**w, "owner": MAIL_OWNER}, ctx=SYSTEM, timeout=60
                    )
                    self.record_errors.pop(what, None)
                except BusError as e:
                    failed = True
                    self.record_errors[what] = e.message
                    log.warning("%s for mail not written: %s", what, e.message)
            if not failed:
                self._records[r["domain"]] = key


def _unseal_all(keyring: Keyring, values: list[str]) -> tuple[str, ...]:
    return tuple(keyring.unseal_str(v) for v in values)


def _on_this_host(address: str) -> bool:
    """Whether `address` is one of this host's (the services network exists once the apps
    service made it): Postfix would not start with an address it cannot bind."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((address, 0))
        except OSError:
            return False
    return True
