"""python -m services.identity: accounts, sessions, the LDAP endpoint for apps, the check of
mail clients' passwords for the mail service and the failed SSH sign-ins the firewall records.

The LDAP endpoint listens on HP_LDAP_HOST:HP_LDAP_PORT. In production those are the app
networks' gateway addresses (set by the apps side, which creates the networks) and a fixed
port: never a public address. Tests use loopback (127.0.0.1, port 0).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import partial

from libs.contracts.identity import CONTRACT
from libs.events.periods import PeriodKeys
from libs.events.projection import ProjectionRunner
from libs.events.wiring import connections, loop, opened_keyring, serve
from libs.service.config import load_config
from libs.service.runner import Service, main
from services.identity import changes
from services.identity.addresses import Addresses
from services.identity.clock import Clock, utcnow
from services.identity.config import IdentityConfig
from services.identity.directory import IdentityDirectory
from services.identity.failures import Failures
from services.identity.groups import Groups
from services.identity.housekeeping import Housekeeping
from services.identity.ldap_apps import LdapApps, endpoint
from services.identity.link_mail import LinkMail
from services.identity.mail_signin import MailSignIn
from services.identity.mfa import Mfa
from services.identity.names import Names
from services.identity.password_check import PasswordCheck
from services.identity.passwords import Hasher
from services.identity.projections import TABLES, IdentityProjection
from services.identity.sessions import Sessions, Whoami
from services.identity.setup_token import offer_setup_token
from services.identity.signin import Limits, SignIn
from services.identity.store import IdentityStore
from services.identity.users import Users

log = logging.getLogger("services.identity")


def build(cfg: IdentityConfig | None = None, *, clock: Clock = utcnow) -> Service:
    """The identity process; `clock` is the time it decides by (tests move it)."""
    cfg = cfg if cfg is not None else load_config(IdentityConfig)
    svc = Service("identity", cfg)
    svc.use(partial(_parts, cfg, clock))
    return svc


@asynccontextmanager
async def _parts(cfg: IdentityConfig, clock: Clock, svc: Service) -> AsyncIterator[None]:
    async with connections(svc) as conn, opened_keyring(cfg.keyring) as keyring:
        # client addresses in events: sealed to their week's key, destroyed after retention
        ip_keys = await asyncio.to_thread(PeriodKeys, cfg.ip_keys_path, clock=clock)
        retention = timedelta(days=cfg.ip_retention_days)
        await asyncio.to_thread(ip_keys.housekeep, retention)  # this week's key before any seal
        conn.store.seal_addresses_with(ip_keys)
        projection = IdentityProjection(TABLES, addresses=ip_keys)
        await ProjectionRunner(projection, conn.store).setup()
        # gateways drop what they cached of the users a transaction changed
        store = IdentityStore(
            conn.store,
            keyring,
            projection,
            announce=partial(changes.announce, conn.nc),
            addresses=ip_keys,
            hasher=Hasher(cfg.password_memory_kib),
        )
        addresses = Addresses(
            ip_keys, store.pool, retention=retention, require_admin=store.require_admin, clock=clock
        )
        limits = Limits(store, cfg, clock=clock)
        users = Users(store, limits, data_dir=cfg.data_dir)
        if shredded := await users.shred_deleted():
            log.info("checked the keys of %d deleted users are destroyed", shredded)
        await offer_setup_token(store.pool, cfg.data_dir)  # logged, and in the data dir
        sessions = Sessions(store, cfg, clock=clock)
        mfa = Mfa(store, sessions, limits, clock=clock)
        whoami = Whoami(sessions, token_lookup=mfa.token_lookup, extend=mfa.extend_principal)
        signin = SignIn(store, cfg, sessions, second_factor=mfa.second_factor, clock=clock)
        resets = (cfg.reset_ip_limit, cfg.reset_email_limit)
        links = LinkMail(conn.client(), spawn=svc.spawn)  # invitations, resets: notify mails
        groups = Groups(store, users, clock=clock, reset_limits=resets, mail=links)
        # other services' sign-ins (LDAP binds, mail clients) share one bound on argon2 at once
        passwords = PasswordCheck(store)
        mail = MailSignIn(store, cfg, passwords, clock=clock)
        limit = cfg.signin_account_limit
        directory = IdentityDirectory(store, passwords, account_limit=limit, clock=clock)
        async with endpoint(svc, cfg, directory) as ldap:
            apps = LdapApps(store, ldap)
            handlers = (users, sessions, whoami, signin, mail, Failures(store), mfa, groups, apps)
            names = Names(store, ip_keys)  # the activity log's names and browsers
            async with serve(svc, conn.nc, CONTRACT, *handlers, addresses, names):
                chores = Housekeeping((sessions.prune, signin.prune, groups.prune, addresses.prune))
                async with loop(svc, "identity.prune", chores.run(), chores.stop):
                    yield


if __name__ == "__main__":
    main(build)
