"""python -m services.mail: mail domains, addresses and app passwords, and the mail servers.

At start it opens the keyring (DKIM keys are sealed in the events), sets up its read model
(schema `mail`, written inline with the events), starts the endpoint Dovecot asks about
passwords (loopback, with a token made for this run), then the sync that keeps Postfix, Dovecot
and rspamd true to the read model (run only while a domain has mail on), and serves its
commands and queries, `send` among them (the platform's own mail: outbound.py, signing in to
the servers with a password made for this run). Stopping: the bus first, then the sync
(which stops the servers), then the endpoint.
"""

from __future__ import annotations

import logging
import os
import pwd
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

from libs.contracts.mail import CONTRACT
from libs.events.projection import ProjectionRunner
from libs.events.wiring import connections, loop, opened_keyring, serve
from libs.service.config import load_config
from libs.service.runner import Service, main
from services.mail.auth import AuthEndpoint, Directory
from services.mail.commands import Commands
from services.mail.config import MailConfig
from services.mail.model import ServersSettings
from services.mail.outbound import Outbound, PlatformLogin
from services.mail.people import People
from services.mail.projections import MailProjection
from services.mail.queries import Queries
from services.mail.records import FoundRecords
from services.mail.render import Layout
from services.mail.sieve_send import SieveSender
from services.mail.sync import MailSync

__all__ = ["build", "servers_settings"]

log = logging.getLogger("services.mail")

_LOOPBACK = "127.0.0.1"
_EMPTY = Directory(People(), frozenset(), None)


def build(cfg: MailConfig | None = None, *, now: Callable[[], float] = time.time) -> Service:
    """The mail process: read model, auth endpoint, servers sync, bus; `now` is the clock of
    DKIM key rotation (tests turn it)."""
    cfg = cfg if cfg is not None else load_config(MailConfig)
    svc = Service("mail", cfg)
    svc.use(partial(_parts, cfg, now))
    return svc


def servers_settings(cfg: MailConfig, *, auth_port: int, auth_token: str) -> ServersSettings:
    """Where and how the servers run, from the configuration and this run's auth endpoint."""
    return ServersSettings(
        root=cfg.mail_root,
        listen=cfg.mail_listen,
        smtp_port=cfg.mail_smtp_port,
        submission_port=cfg.mail_submission_port,
        submissions_port=cfg.mail_submissions_port,
        imaps_port=cfg.mail_imaps_port,
        managesieve_port=cfg.mail_managesieve_port,
        auth_url=f"http://{_LOOPBACK}:{auth_port}/auth",
        auth_token=auth_token,
        milter_port=cfg.mail_milter_port,
        auth_failure_delay=cfg.mail_auth_failure_delay,
        apps_port=cfg.mail_apps_port,
        apps_imap_port=cfg.mail_apps_imap_port,
        apps_sieve_port=cfg.mail_apps_sieve_port,
        nameservers=cfg.mail_nameservers,
        vmail_user=cfg.mail_vmail_user,
        sieve_send=True,
    )


def _vmail_gid(user: str) -> int:
    return pwd.getpwnam(user).pw_gid


@asynccontextmanager
async def _parts(cfg: MailConfig, now: Callable[[], float], svc: Service) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        conn = await stack.enter_async_context(connections(svc))
        keys = await stack.enter_async_context(opened_keyring(cfg.keyring))
        await ProjectionRunner(MailProjection(), conn.store).setup()
        bus = conn.client(default_timeout=cfg.identity_timeout)
        token = secrets.token_urlsafe(32)
        platform = PlatformLogin()
        sync: MailSync | None = None
        auth = AuthEndpoint(
            pool=conn.store.pool,
            bus=bus,
            directory=lambda: sync.directory() if sync else _EMPTY,
            token=token,
            timeout=cfg.identity_timeout,
            platform=platform,
        )
        port = await auth.start(_LOOPBACK, cfg.mail_auth_port)
        stack.push_async_callback(auth.stop)
        servers = None
        not_run = None
        if cfg.mail_servers and os.geteuid() != 0:
            # a local stack started by a user (a server install's unit is root's, bounded:
            # deploy/units.py): mail settings are recorded and the status says why
            not_run = "the mail servers are not run: they need root (the service runs as a user)"
            log.warning(not_run)
        elif cfg.mail_servers:
            from services.mail.servers import MailServers  # the servers' adapter

            settings = servers_settings(cfg, auth_port=port, auth_token=token)
            servers = await stack.enter_async_context(MailServers(settings))
        outbound = Outbound(
            pool=conn.store.pool,
            keyring=keys,
            login=platform,
            applied=lambda: sync.applied if sync is not None else None,
            listener=Layout(cfg.mail_root).platform_socket if servers is not None else None,
            local_part=cfg.mail_platform_sender,
            relay_from=cfg.mail_platform_from,
            relay_networks=cfg.mail_relay_networks,
        )
        if servers is not None:  # what Sieve sends (away messages, redirects)
            sieve = SieveSender(outbound.submit_raw)
            await sieve.start(servers.lay.sieve_socket, _vmail_gid(cfg.mail_vmail_user))
            stack.push_async_callback(sieve.stop)
        commands = Commands(
            conn.store,
            keys,
            bus,
            changed=lambda: sync.kick() if sync is not None else None,
            outbound=outbound,
            timeout=cfg.identity_timeout,
            apps_host=cfg.mail_apps_listen[0] if cfg.mail_apps_listen else None,
            apps_port=cfg.mail_apps_port,
            apps_imap_port=cfg.mail_apps_imap_port,
            apps_sieve_port=cfg.mail_apps_sieve_port,
            relay_networks=cfg.mail_relay_networks,
            mail_root=cfg.mail_root,
            now=now,
        )
        sync = MailSync(
            pool=conn.store.pool,
            keyring=keys,
            bus=bus,
            nc=conn.nc,
            servers=servers,
            hostname=cfg.mail_hostname,
            events_prefix=cfg.events_prefix,
            interval=cfg.mail_interval,
            debounce=cfg.mail_debounce,
            timeout=cfg.identity_timeout,
            apps_listen=cfg.mail_apps_listen,
            not_run=not_run,
            dkim=commands,  # a DKIM rotation's steps: recorded by the command side
            now=now,
        )
        await stack.enter_async_context(loop(svc, "mail.sync", sync.run(), sync.stop))
        found = FoundRecords(bus, ttl=cfg.mail_found_cache)
        queries = Queries(
            conn.store.pool,
            keys,
            lambda: sync.applied,
            sync.wanted.get,
            sync.status,
            sync.usage,
            found=found.check,
        )
        await stack.enter_async_context(serve(svc, conn.nc, CONTRACT, commands, queries))
        yield


if __name__ == "__main__":
    main(build)
