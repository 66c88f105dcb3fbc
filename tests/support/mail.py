"""The real mail service (services.mail.__main__.build) running in this process, for tests.

`running_mail` serves it with its servers off (commands, queries, the sync deciding the model)
or on (`servers=True`: Postfix, Dovecot and rspamd on free loopback ports, in a folder the
servers' own users can reach; their DNS is the test PowerDNS when given).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest

from libs.events.bus import BusClient
from libs.events.context import Context
from libs.events.store import PostgresEventStore
from libs.service.runner import Service
from tests.support.bus import ActorBus
from tests.support.pdns import PdnsServer, PdnsZone
from tests.support.serving import served, serving

__all__ = [
    "KIM",
    "LEE",
    "SYSTEM",
    "Mail",
    "MailPorts",
    "World",
    "keep_hyperscan",
    "mail_beside",
    "mail_on",
    "mail_world",
    "resolve",
    "running_mail",
    "seed_hyperscan",
]

KIM = {"username": "kim", "email": "kim@example.test", "password": "kim's long password 1"}
LEE = {"username": "Lee", "email": "lee@example.test", "password": "lee's long password 2"}

SYSTEM = Context("system", "mail-test", None, None)


@dataclass(frozen=True)
class MailPorts:
    smtp: int
    submission: int
    submissions: int
    imaps: int
    managesieve: int
    milter: int


@dataclass
class Mail:
    svc: Service
    bus: BusClient
    store: PostgresEventStore
    root: Path
    ports: MailPorts | None

    async def cmd(self, verb: str, payload: dict[str, Any], **ctx: Any) -> Any:
        c = Context(**ctx) if ctx else SYSTEM
        return await self.bus.command("mail", verb, payload, ctx=c, timeout=60)

    async def ask(self, name: str, payload: dict[str, Any], **ctx: Any) -> Any:
        c = Context(**ctx) if ctx else SYSTEM
        return await self.bus.query("mail", name, payload, ctx=c, timeout=30)

    async def events(self, stream: str) -> list[tuple[str, dict[str, Any]]]:
        return [(e.type, e.data) for e in await self.store.read_stream(stream)]


# rspamd compiles its hyperscan databases at first start (8 of a server start's 12 s): kept
# here between tests and runs (like the test dockerd's images), copied into each new mail root.
# Their names are hashes of what they were compiled from, so a changed rspamd compiles anew.
HYPERSCAN_CACHE = Path("/var/lib/homeport-test/rspamd-hyperscan")


def seed_hyperscan(mail_root: Path) -> None:
    """Put the kept hyperscan databases into `mail_root`'s rspamd folder before it starts."""
    import pwd

    from services.mail.render import Layout

    if not HYPERSCAN_CACHE.is_dir():
        return
    db = Layout(mail_root).rspamd_db
    db.mkdir(parents=True, exist_ok=True)
    try:
        owner = pwd.getpwnam("_rspamd")
    except KeyError:
        return
    for f in HYPERSCAN_CACHE.iterdir():
        if f.is_file() and not f.is_symlink() and ".hs" in f.name:
            target = db / f.name
            shutil.copyfile(f, target)
            os.chown(target, owner.pw_uid, owner.pw_gid)


def keep_hyperscan(mail_root: Path) -> None:
    """Keep what rspamd compiled in `mail_root` for the next start (written whole, renamed)."""
    from services.mail.render import Layout

    db = Layout(mail_root).rspamd_db
    if not db.is_dir():
        return
    try:  # only a saving of time: a cache that cannot be written is no failure
        HYPERSCAN_CACHE.mkdir(parents=True, exist_ok=True)
        for f in db.iterdir():
            if not (f.is_file() and ".hs" in f.name) or (HYPERSCAN_CACHE / f.name).exists():
                continue
            tmp = HYPERSCAN_CACHE / f".{f.name}.{os.getpid()}"
            shutil.copyfile(f, tmp)
            tmp.rename(HYPERSCAN_CACHE / f.name)
    except OSError as e:
        print(f"rspamd's hyperscan databases not kept for the next start: {e}")


def _free_ports(n: int) -> list[int]:
    from deploy.embedded import free_ports

    return list(free_ports(n))


@asynccontextmanager
async def running_mail(
    monkeypatch: pytest.MonkeyPatch,
    *,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    servers: bool = False,
    nameservers: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[Mail]:
    """The mail service in this process, ready; stopped (exit code 0) at the end."""
    from services.mail.__main__ import build

    # the servers' users (postfix, dovecot, mail) must reach the folder: not under pytest's 0700
    root = Path(tempfile.mkdtemp(prefix="hp-mail-"))
    root.chmod(0o755)
    ports = MailPorts(*_free_ports(6)) if servers else None
    settings = {
        "HP_DATABASE_URL": dsn,
        "HP_NATS_URL": nats_url,
        "HP_KEYRING": str(tmp_path / "mail-keyring.json"),
        "HP_DATA_DIR": str(tmp_path),
        "HP_DRAIN_SECONDS": "1",
        "HP_HTTP_PORT": "0",
        "HP_MAIL_DIR": str(root / "mail"),
        "HP_MAIL_SERVERS": "true" if servers else "false",
        "HP_MAIL_INTERVAL": "30",
        "HP_MAIL_DEBOUNCE": "0.05",
        "HP_IDENTITY_TIMEOUT": "10",
        "HP_MAIL_RELAY_NETWORKS": "127.0.0.0/8",  # a relay tried here stays on this machine
        "HP_MAIL_AUTH_FAILURE_DELAY": "0",  # a wrong password answered at once, not in 2 s
        **(env or {}),
    }
    if ports is not None:
        settings.update(
            HP_MAIL_SMTP_PORT=str(ports.smtp),
            HP_MAIL_SUBMISSION_PORT=str(ports.submission),
            HP_MAIL_SUBMISSIONS_PORT=str(ports.submissions),
            HP_MAIL_IMAPS_PORT=str(ports.imaps),
            HP_MAIL_MANAGESIEVE_PORT=str(ports.managesieve),
            HP_MAIL_MILTER_PORT=str(ports.milter),
        )
    if nameservers:
        settings["HP_MAIL_NAMESERVERS"] = ",".join(nameservers)
    if servers:
        seed_hyperscan(root / "mail")
    try:
        async with serving(monkeypatch, build, settings, "mail", ready_within=90) as svc:
            nc = await nats.connect(nats_url)
            store = await PostgresEventStore.open(dsn, max_size=2)
            try:
                yield Mail(svc, ActorBus(nc, default_timeout=30), store, root / "mail", ports)
            finally:
                await store.close()
                await nc.close()
    finally:
        if servers:
            keep_hyperscan(root / "mail")
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class World:
    """identity (an administrator, kim and Lee), dns (the test zone, server 192.0.2.10) and
    mail, all real and running in this process."""

    ident: Any  # tests.identity.kit.Identity
    mail: Mail
    admin: str
    kim: str
    lee: str
    domain: str
    zone: PdnsZone


@asynccontextmanager
async def mail_world(
    monkeypatch: pytest.MonkeyPatch,
    *,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    zone: PdnsZone,
    servers: bool = False,
    nameservers: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[World]:
    from tests.dns.dnskit import dns_env, pdns_provider, running_dns
    from tests.identity.kit import running_identity

    async with running_identity(
        monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path / "identity"
    ) as ident:
        admin = await ident.set_up()
        kim = (await ident.cmd("create_user", dict(KIM), actor=admin))["user_id"]
        lee = (await ident.cmd("create_user", dict(LEE), actor=admin))["user_id"]
        dns_settings = dns_env(dsn=dsn, nats_url=nats_url, tmp_path=tmp_path / "dns")
        async with running_dns(monkeypatch, dns_settings) as dns_svc:
            await dns_svc.cmd(
                "add_domain",
                {
                    "domain": zone.name,
                    "provider": pdns_provider(zone),
                    "server_ipv4": "192.0.2.10",
                },
            )
            async with running_mail(
                monkeypatch,
                dsn=dsn,
                nats_url=nats_url,
                tmp_path=tmp_path / "mail",
                servers=servers,
                nameservers=nameservers,
                env=env,
            ) as mail:
                yield World(ident, mail, admin, kim, lee, zone.name, zone)


@asynccontextmanager
async def mail_on(
    monkeypatch: pytest.MonkeyPatch,
    *,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    pdns: PdnsServer,
    zone: PdnsZone,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[World]:
    """`mail_world` with the servers running (their DNS: the test PowerDNS) and mail on for the
    zone, once a round of the sync has configured them without error."""
    async with mail_world(
        monkeypatch,
        dsn=dsn,
        nats_url=nats_url,
        tmp_path=tmp_path,
        zone=zone,
        servers=True,
        nameservers=(f"127.0.0.1:{pdns.dns_port}",),
        env=env,
    ) as w:
        await w.mail.cmd("enable_domain", {"domain": w.domain})
        status = await w.mail.ask("status", {"wait": True})
        assert status["running"] and status["last_error"] is None, status
        yield w


def resolve(zone: PdnsZone, name: str, rtype: str) -> list[str]:
    """The records `name` has in the test PowerDNS, as a resolver reads them."""
    import dns.resolver

    r = dns.resolver.Resolver(configure=False)
    host, port = zone.nameservers[0]
    r.nameservers = [host]
    r.port = port
    try:
        return sorted(a.to_text() for a in r.resolve(name, rtype))
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []


@asynccontextmanager
async def mail_beside(env: Mapping[str, str], folder: Path) -> AsyncIterator[Service]:
    """The mail service with its servers off, for tests of a service that calls it (apps:
    the `sendmail` addon's accounts), on `env`'s database and bus; os.environ is not touched."""
    from libs.service.config import load_config
    from services.mail.__main__ import build
    from services.mail.config import MailConfig

    folder.mkdir(parents=True, exist_ok=True)
    cfg = load_config(
        MailConfig,
        {
            "HP_DATABASE_URL": env["HP_DATABASE_URL"],
            "HP_NATS_URL": env["HP_NATS_URL"],
            "HP_KEYRING": str(folder / "mail-keyring.json"),
            "HP_DATA_DIR": str(folder),
            "HP_HTTP_PORT": "0",
            "HP_DRAIN_SECONDS": "1",
            "HP_MAIL_SERVERS": "false",
            "HP_MAIL_APPS_LISTEN": "127.0.0.1",
            "HP_MAIL_INTERVAL": "30",
            "HP_IDENTITY_TIMEOUT": "2",
            "HP_MAIL_RELAY_NETWORKS": "127.0.0.0/8",  # the API fuzzer's relays stay here
        },
    )
    async with served(build(cfg), "mail beside the service under test", 30) as svc:
        yield svc
