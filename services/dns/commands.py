"""Command handlers of the dns service: decide, talk to the provider, record.

The contract (`libs/contracts/dns.py`) has checked each payload's shape; the handlers put
names in canonical form and check what only this service knows. Every change of a domain runs
under that domain's lock (one at a time in this process; the stream's expected version refuses
a second process meanwhile). The provider is written first and the event recorded after, so an
event never claims a record the provider refused. Ownership is what the events say (the read
model is written in their transaction): Homeport replaces or deletes only an RRset its own
`DnsRecordSet` created, and refuses to touch any other. The query `served` (what the
nameservers answer) is here too: finding a zone's servers may take its provider.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from libs.events import context
from libs.events.bus import BusClient, BusError
from libs.events.context import Context
from libs.events.envelope import RecordedEvent
from libs.events.handlers import command, query
from libs.events.repository import Repository
from libs.events.sealing import Keyring, SealingError
from libs.events.store import PostgresEventStore
from services.dns import events as ev
from services.dns.config import DnsConfig
from services.dns.errors import (
    DnsError,
    DnsProviderError,
    DnsUnavailable,
    DomainChanged,
    DomainExists,
    DomainInUse,
    DomainNotFound,
    ForeignRecord,
    InvalidRequest,
    NoDomainFor,
    NotOwned,
    ProviderConfigError,
    RecordConflict,
)
from services.dns.projections import DnsProjection
from services.dns.providers.factory import PROVIDER_FIELDS, make_provider, secret_fields
from services.dns.providers.protocol import (
    WRITABLE_TYPES,
    DnsProvider,
    Record,
    canonical_name,
    format_record,
    in_zone,
)
from services.dns.queries import read_view
from services.dns.served import ask_served

__all__ = ["ACME_OWNER", "Commands", "check_record_name"]

ACME_OWNER = "acme"
ACME_TTL = 60
_FIND_WITHIN = 1.5  # seconds to find a zone's nameservers for `served` (then ASK_WITHIN to ask)
_WAIT_SLICE = 5.0  # a TXT set another publish_txt grows meanwhile is looked at again this often
_NAME_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_RECORD_NAME = re.compile(rf"^(\*\.)?{_NAME_LABEL}(\.{_NAME_LABEL})+$")


# -- input ----------------------------------------------------------------------------------


def check_record_name(value: str, field: str = "name") -> str:
    """A DNS name in canonical form (`_acme-challenge.` and a leading `*.` allowed)."""
    name = canonical_name(value)
    if len(name) > 253 or not _RECORD_NAME.match(name):
        raise InvalidRequest(
            f"{field} must be a DNS name such as blog.example.com (labels of letters, digits,"
            " '-' or '_'; '*.' only first)",
            field=field,
        )
    return name


def _same(answer: Mapping[str, Any], expected: Sequence[str]) -> bool:
    """Whether a `served` answer's values are `expected`, in dns's form of each (any order)."""
    if answer["values"] is None:
        return False
    try:
        want = Record(answer["name"], answer["type"], tuple(expected)).values
    except (ValueError, DnsError):
        return False
    return set(want) == set(answer["values"])


def _type(value: str, field: str = "type") -> str:
    type_ = value.strip().upper()
    if type_ not in WRITABLE_TYPES:
        raise InvalidRequest(
            f"{field} must be one of {', '.join(sorted(WRITABLE_TYPES))}", field=field
        )
    return type_


def _address(payload: Mapping[str, Any], name: str, version: int) -> str | None:
    value = payload.get(name)
    if value is None:
        return None
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        addr = None
    if addr is None or addr.version != version:
        raise InvalidRequest(f"{name} must be an IPv{version} address", field=name)
    return str(addr)


def _provider_input(value: Mapping[str, Any], domain: str) -> tuple[str, dict[str, Any]]:
    """The kind and settings of a provider (the contract knows every setting of every kind;
    `make_provider` names one the kind does not take)."""
    kind = str(value["kind"])
    config = {k: v for k, v in value.items() if k != "kind" and v is not None}
    config.setdefault("zone", domain)
    return kind, config


def _field_of(kind: str, message: str) -> str:
    """The provider field a provider's message tells the user to check (`provider` if none)."""
    _, sep, advice = message.rpartition("check ")
    if sep:
        found = [
            (m.start(), f.name)
            for f in PROVIDER_FIELDS.get(kind, ())
            for m in [re.search(rf"\b{re.escape(f.name)}\b", advice)]
            if m is not None
        ]
        if found:
            return f"provider.{min(found)[1]}"
    return "provider"


def _version(domain: str, events: Sequence[RecordedEvent]) -> int:
    return events[-1].version if events else 0


# -- the handlers ---------------------------------------------------------------------------


class Commands:
    """The command side: each `@command` method is one bus command of the dns service."""

    def __init__(
        self,
        cfg: DnsConfig,
        store: PostgresEventStore,
        keyring: Keyring,
        bus: BusClient,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.keyring = keyring
        self.bus = bus
        self._domains = Repository(
            store,
            ev.domain_stream,
            _version,
            DnsProjection(),
            conflict=DomainChanged,
            unique={"domains_pkey": DomainExists},
        )
        self._locks: dict[str, asyncio.Lock] = {}

    # -- domains ----------

    @command("add_domain")
    async def add_domain(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        domain: str = payload["domain"]
        kind, config = _provider_input(payload["provider"], domain)
        ipv4 = _address(payload, "server_ipv4", 4)
        ipv6 = _address(payload, "server_ipv6", 6)
        try:
            provider = make_provider(kind, config, allow_loopback=self.cfg.allow_loopback_providers)
        except ProviderConfigError as e:
            raise InvalidRequest(e.message, field=f"provider.{e.field}") from None
        except DnsProviderError as e:
            raise InvalidRequest(e.message, field="provider") from None
        config["zone"] = provider.zone
        if not in_zone(domain, provider.zone):
            await provider.aclose()
            raise InvalidRequest(
                f"domain {domain} is not in zone {provider.zone}: give its own zone or one of"
                " its parents",
                field="provider.zone",
            )
        async with self._lock(domain):
            try:
                if await self._row(domain) is not None:
                    raise DomainExists(domain)
                try:
                    await provider.verify()
                except DnsProviderError as e:
                    raise InvalidRequest(
                        f"the {kind} provider of {domain} failed its check, so nothing was saved:"
                        f" {e.message}",
                        field=_field_of(kind, e.message),
                    ) from None
            finally:
                await provider.aclose()
            subject = ev.domain_stream(domain)
            sealed = dict(config)
            for name in sorted(secret_fields(kind) & sealed.keys()):
                sealed[name] = await asyncio.to_thread(
                    self.keyring.seal_for, subject, str(sealed[name])
                )
            added = ev.DomainAdded(
                domain=domain,
                provider={"kind": kind, **sealed},
                server_ipv4=ipv4,
                server_ipv6=ipv6,
            )
            try:
                await self._append(domain, [added, ev.DomainVerified(domain=domain)])
            except DomainExists:
                raise DomainExists(domain) from None
        return await self._view(domain)

    @command("verify_domain")
    async def verify_domain(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        domain: str = payload["domain"]
        async with self._lock(domain):
            row = await self._existing(domain)
            version = await self.store.stream_version(ev.domain_stream(domain))
            new: Any
            async with self._provider(row) as provider:
                try:
                    await provider.verify()
                    new = ev.DomainVerified(domain=domain)
                except DnsProviderError as e:
                    new = ev.DomainVerificationFailed(domain=domain, reason=e.message)
            await self._append(domain, [new], version)
        return await self._view(domain)

    @command("remove_domain")
    async def remove_domain(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        domain: str = payload["domain"]
        await self._existing(domain)
        users = await self._apps_on(domain)
        if users:
            raise DomainInUse(domain, users)
        async with self._lock(domain):
            row = await self._existing(domain)
            version = await self.store.stream_version(ev.domain_stream(domain))
            owned = await self.store.pool.fetch(
                "SELECT * FROM dns.records WHERE domain = $1 ORDER BY name, type", domain
            )
            new: list[Any] = []
            failure: str | None = None
            async with self._provider(row) as provider:
                for r in owned:
                    record = Record(r["name"], r["type"], tuple(json.loads(r["values"])), r["ttl"])
                    try:
                        await provider.delete(record)
                    except DnsProviderError as e:
                        failure = (
                            f"could not delete {format_record(record)}, so domain {domain} stays:"
                            f" {e.message}"
                        )
                        break
                    new.append(
                        ev.DnsRecordRemoved(
                            domain=domain, name=record.name, type=record.type, owner=r["owner"]
                        )
                    )
            if failure is None:
                new.append(ev.DomainRemoved(domain=domain))
            if new:
                await self._append(domain, new, version)
            if failure is not None:
                raise DnsUnavailable(failure)
        return {"domain": domain, "removed": True}

    # -- records ----------

    @command("set_record")
    async def set_record(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        name = check_record_name(payload["name"])
        type_ = _type(payload["type"])
        ttl: int | None = payload.get("ttl")
        record = Record(name, type_, tuple(payload["values"]), 300 if ttl is None else ttl)
        owner: str = payload["owner"]
        domain = await self._domain_for(name)
        async with self._lock(domain):
            await self._set(domain, record, owner)
        return _answer(domain, record)

    @command("remove_record")
    async def remove_record(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        name = check_record_name(payload["name"])
        type_ = _type(payload["type"])
        owner: str = payload["owner"]
        domain = await self._domain_for(name)
        async with self._lock(domain):
            current = await self._owned(domain, name, type_)
            if current is None:
                raise NotOwned(name, type_)
            if current.owner != owner:
                raise RecordConflict(
                    f"{name} {type_} is kept for {current.owner}, not {owner}: it stays",
                    field="owner",
                )
            await self._delete(domain, current.record, owner)
        return {"domain": domain, "name": name, "type": type_}

    @command("wait_record")
    async def wait_record(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        name = check_record_name(payload["name"])
        record = Record(name, _type(payload["type"]), tuple(payload["values"]))
        deadline = float(payload["deadline_s"])
        domain = await self._domain_for(name)
        async with self._provider(await self._existing(domain)) as provider:
            try:
                await provider.wait(record, deadline)
            except DnsProviderError as e:
                raise DnsUnavailable(e.message) from None
        return {"ok": True}

    @command("publish_txt")
    async def publish_txt(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Add one value to the TXT set at `name` (ACME DNS-01) and wait until it is served."""
        name = check_record_name(payload["name"])
        value: str = payload["value"]
        domain = await self._domain_for(name)
        async with self._lock(domain):
            current = await self._owned(domain, name, "TXT")
            values = {value}
            if current is not None:
                self._acme_owns(current)
                values.update(current.record.values)
            record = Record(name, "TXT", tuple(values), ACME_TTL)
            await self._set(domain, record, ACME_OWNER)
        await self._wait_txt(domain, name, value)
        return _answer(domain, record)

    @command("remove_txt")
    async def remove_txt(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Remove one value of the TXT set at `name`; the others stay. Absent is not an error."""
        name = check_record_name(payload["name"])
        value: str = payload["value"]
        domain = await self._domain_for(name)
        async with self._lock(domain):
            current = await self._owned(domain, name, "TXT")
            if current is None or value not in current.record.values:
                left = current.record.values if current is not None else ()
                return _answer(domain, Record(name, "TXT", left))
            self._acme_owns(current)
            rest = tuple(v for v in current.record.values if v != value)
            record = Record(name, "TXT", rest, current.record.ttl)
            if rest:
                await self._set(domain, record, ACME_OWNER)
            else:
                await self._delete(domain, current.record, ACME_OWNER)
        return _answer(domain, record)

    # -- what DNS serves ----------

    @query("served")
    async def served(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """What the authoritative servers of each record's zone answer for it, all asked at once.

        A query, served here: knowing the servers may take the provider's credentials (Route 53
        names them), as commands do. A record no domain holds, or whose servers cannot be found
        in time, gets its `error` and values None; the others are answered all the same. With the
        values the caller `expected`, `same` says whether they are what is served, compared in
        the form dns writes records (so callers need not know it)."""
        asked = [
            (
                check_record_name(r["name"], f"records.{i}.name"),
                _type(r["type"], f"records.{i}.type"),
            )
            for i, r in enumerate(payload["records"])
        ]
        rows = await self.store.pool.fetch("SELECT * FROM dns.domains")
        domains = {str(r["domain"]): r for r in rows}
        holders = [_holder(rows, name) for name, _ in asked]
        held = sorted({h for h in holders if h})
        found = await asyncio.gather(*(self._nameservers(domains[d]) for d in held))
        servers = dict(zip(held, found, strict=True))

        async def one(name: str, type_: str, holder: str | None) -> dict[str, Any]:
            where = servers[holder] if holder else f"no domain Homeport manages holds {name}"
            if isinstance(where, str):
                return {"name": name, "type": type_, "values": None, "error": where}
            return await ask_served(name, type_, where)

        answers = await asyncio.gather(
            *(one(n, t, h) for (n, t), h in zip(asked, holders, strict=True))
        )
        for r, answer in zip(payload["records"], answers, strict=True):
            if "expected" in r:
                answer["same"] = _same(answer, r["expected"])
        return {"records": list(answers)}

    async def _nameservers(self, row: asyncpg.Record) -> Sequence[tuple[str, int]] | str:
        """The authoritative servers of the domain's zone, or why they are not known."""
        try:
            async with asyncio.timeout(_FIND_WITHIN), self._provider(row) as provider:
                return await provider.nameservers()
        except TimeoutError:
            return (
                f"the nameservers of {row['zone']} were not found within {_FIND_WITHIN:g} s:"
                " check this server's DNS resolver"
            )
        except DnsError as e:
            return e.message

    # -- helpers ----------

    def _lock(self, domain: str) -> asyncio.Lock:
        return self._locks.setdefault(domain, asyncio.Lock())

    async def _row(self, domain: str) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self.store.pool.fetchrow(
            "SELECT * FROM dns.domains WHERE domain = $1", domain
        )
        return row

    async def _existing(self, domain: str) -> asyncpg.Record:
        row = await self._row(domain)
        if row is None:
            raise DomainNotFound(domain)
        return row

    async def _view(self, domain: str) -> dict[str, Any]:
        view = await read_view(self.store.pool, domain)
        if view is None:
            raise DomainNotFound(domain, "")
        return view

    async def _domain_for(self, name: str) -> str:
        """The domain whose zone holds `name`: the longest domain holding it, else the one with
        the longest zone holding it."""
        rows = await self.store.pool.fetch("SELECT domain, zone FROM dns.domains")
        domain = _holder(rows, name)
        if domain is None:
            raise NoDomainFor(name)
        return domain

    async def _owned(self, domain: str, name: str, type_: str) -> _Owned | None:
        row = await self.store.pool.fetchrow(
            "SELECT * FROM dns.records WHERE domain = $1 AND name = $2 AND type = $3",
            domain,
            name,
            type_,
        )
        if row is None:
            return None
        values = tuple(json.loads(row["values"]))
        return _Owned(Record(name, type_, values, row["ttl"]), row["owner"])

    def _acme_owns(self, current: _Owned) -> None:
        if current.owner != ACME_OWNER:
            raise RecordConflict(
                f"{format_record(current.record)} is kept for {current.owner}, not for ACME"
                " challenges: it stays",
                field="name",
            )

    async def _set(self, domain: str, record: Record, owner: str) -> None:
        """Write `record` at the provider (replacing only what Homeport owns), then record it."""
        row = await self._existing(domain)
        version = await self.store.stream_version(ev.domain_stream(domain))
        current = await self._owned(domain, record.name, record.type)
        if current is None:
            other = await self.store.pool.fetchval(
                "SELECT domain FROM dns.records WHERE zone = $1 AND name = $2 AND type = $3",
                row["zone"],
                record.name,
                record.type,
            )
            if other is not None:
                raise RecordConflict(
                    f"{record.name} {record.type} is kept by Homeport for domain {other}, which"
                    " shares the zone: change it there",
                    field="name",
                )
        async with self._provider(row) as provider:
            try:
                await provider.upsert(record, owned=current is not None)
            except ForeignRecord as e:
                raise RecordConflict(e.message, field="name") from None
            except DnsProviderError as e:
                raise DnsUnavailable(e.message) from None
        if current is not None and current.record == record and current.owner == owner:
            return  # already so, provider and events alike
        event = ev.DnsRecordSet(
            domain=domain,
            name=record.name,
            type=record.type,
            values=list(record.values),
            ttl=record.ttl,
            owner=owner,
        )
        await self._append(domain, [event], version)

    async def _delete(self, domain: str, record: Record, owner: str) -> None:
        row = await self._existing(domain)
        version = await self.store.stream_version(ev.domain_stream(domain))
        async with self._provider(row) as provider:
            try:
                await provider.delete(record)
            except DnsProviderError as e:
                raise DnsUnavailable(e.message) from None
        removed = ev.DnsRecordRemoved(
            domain=domain, name=record.name, type=record.type, owner=owner
        )
        await self._append(domain, [removed], version)

    async def _wait_txt(self, domain: str, name: str, value: str) -> None:
        """Until every authoritative server answers the TXT set at `name`, which holds `value`.

        Another publish_txt may grow the set meanwhile: then the wait is for the new set."""
        deadline = self.cfg.txt_propagation_deadline
        end = time.monotonic() + deadline
        last = ""
        async with self._provider(await self._existing(domain)) as provider:
            while True:
                current = await self._owned(domain, name, "TXT")
                if current is None or value not in current.record.values:
                    raise RecordConflict(
                        f'the TXT value "{value}" at {name} was removed while waiting for it',
                        field="value",
                    )
                left = end - time.monotonic()
                if left <= 0:
                    raise DnsUnavailable(
                        f"{name} TXT is not served by every nameserver after {deadline:g}s: {last}"
                    )
                try:
                    await provider.wait(current.record, min(left, _WAIT_SLICE))
                    return
                except DnsProviderError as e:
                    last = e.message

    @asynccontextmanager
    async def _provider(self, row: asyncpg.Record) -> AsyncIterator[DnsProvider]:
        """The domain's provider, built from its recorded config (secrets unsealed), closed
        after use."""
        domain = row["domain"]
        config = json.loads(row["provider"])
        kind = str(config.pop("kind"))
        try:
            for name in secret_fields(kind) & config.keys():
                config[name] = self.keyring.unseal_str(config[name])
        except SealingError as e:
            raise DnsUnavailable(
                f"cannot unseal the provider credentials of {domain} ({e}): check that HP_KEYRING"
                " is the keyring they were sealed with"
            ) from None
        try:
            provider = make_provider(kind, config, allow_loopback=self.cfg.allow_loopback_providers)
        except DnsProviderError as e:
            raise DnsUnavailable(
                f"the recorded {kind} provider of {domain} is unusable ({e.message}): remove the"
                " domain and add it again"
            ) from None
        try:
            yield provider
        finally:
            await provider.aclose()

    async def _append(self, domain: str, new: list[Any], expected: int | None = None) -> None:
        """Append to the domain's stream and update the read model in one transaction."""
        if expected is None:
            expected = await self.store.stream_version(ev.domain_stream(domain))
        try:
            await self._domains.append(domain, new, expected)
        except DomainChanged:
            raise DomainChanged(domain) from None

    async def _apps_on(self, domain: str) -> list[str]:
        """The addresses of the apps installed on `domain`, as the apps service says."""
        ctx = Context("system", context.current().correlation_id, None, None)
        try:
            reply = await self.bus.query("apps", "apps", {}, ctx=ctx, timeout=self.cfg.apps_timeout)
        except BusError as e:
            raise DnsUnavailable(
                f"cannot tell whether apps use {domain}, so it stays: the apps service did not"
                f" answer ({e.message}); try again when it runs"
            ) from None
        items = reply.get("items") if isinstance(reply, dict) else None
        if not isinstance(items, list):
            raise DnsUnavailable(
                f"cannot tell whether apps use {domain}, so it stays: the apps service answered"
                " without a list of apps"
            )
        return sorted(
            f"{item.get('location')}.{domain}"
            for item in items
            if isinstance(item, dict) and item.get("domain") == domain
        )


@dataclass(frozen=True, slots=True)
class _Owned:
    """A record Homeport owns and whom it keeps it for."""

    record: Record
    owner: str


def _holder(rows: Sequence[asyncpg.Record], name: str) -> str | None:
    """Of the domains in `rows`, the one whose zone holds `name` (see `Commands._domain_for`)."""
    by_domain = [str(r["domain"]) for r in rows if in_zone(name, r["domain"])]
    if by_domain:
        return max(by_domain, key=len)
    by_zone = [r for r in rows if in_zone(name, r["zone"])]
    if by_zone:
        return str(max(by_zone, key=lambda r: len(r["zone"]))["domain"])
    return None


def _answer(domain: str, record: Record) -> dict[str, Any]:
    return {
        "domain": domain,
        "name": record.name,
        "type": record.type,
        "values": list(record.values),
    }
