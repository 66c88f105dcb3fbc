"""python -m services.identity: accounts, sessions and the LDAP endpoint for apps.

The LDAP endpoint listens on HP_LDAP_HOST:HP_LDAP_PORT. In production those are the app
networks' gateway addresses (set by the apps side, which creates the networks) and a fixed
port: never a public address. Tests use loopback (127.0.0.1, port 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from libs.events.bus import Bus
from libs.events.projection import ProjectionRunner
from libs.events.sealing import Keyring
from libs.events.wiring import EventServiceKit
from libs.service.config import load_config
from libs.service.runner import Service, main
from services.identity import changes
from services.identity.accounts import Accounts
from services.identity.config import IdentityConfig
from services.identity.directory import IdentityDirectory
from services.identity.groups import Groups, register_groups
from services.identity.ldap_apps import LdapEndpoint
from services.identity.mfa import register_mfa
from services.identity.projections import IdentityProjection

log = logging.getLogger("services.identity")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
PRUNE_EVERY = 600.0


def register(bus: Bus, accounts: Accounts) -> None:
    """The bus contract of identity (see services/gateway/api/handlers/identity.py)."""
    commands: dict[str, Handler] = {
        "setup": accounts.setup,
        "login": accounts.login,
        "logout": accounts.logout,
        "create_user": accounts.create_user,
        "disable_user": accounts.disable_user,
        "enable_user": accounts.enable_user,
        "delete_user": accounts.delete_user,
        "set_admin": accounts.set_admin,
        "update_user": accounts.update_user,
        "update_profile": accounts.update_profile,
        "change_password": accounts.change_password,
        "revoke_session": accounts.revoke_session,
    }
    queries: dict[str, Handler] = {
        "whoami": accounts.whoami,
        "profile": accounts.profile,
        "users": accounts.users,
        "sessions": accounts.sessions,
    }

    async def setup_state(payload: dict[str, Any]) -> Any:
        return {"setup_done": await accounts.setup_done()}

    queries["setup_state"] = setup_state
    for verb, fn in commands.items():
        bus.command(verb)(fn)
    for name, fn in queries.items():
        bus.query(name)(fn)


def build() -> Service:
    cfg = load_config(IdentityConfig)
    svc = Service("identity", cfg)
    kit = EventServiceKit(svc)
    holder: list[Accounts] = []

    def accounts() -> Accounts:
        return holder[0]

    async def open_accounts() -> None:
        keyring = await asyncio.to_thread(Keyring.open, cfg.keyring)
        acc = Accounts(kit.store, keyring, cfg)

        async def announce(changed: changes.Changes) -> None:
            await changes.announce(kit.nc, changed)

        acc.announce = announce  # gateways drop what they cached of these users
        await ProjectionRunner(IdentityProjection(), kit.store).setup()
        shredded = await acc.shred_deleted()
        if shredded:
            log.info("checked the keys of %d deleted users are destroyed", shredded)
        holder.append(acc)
        svc.spawn(prune_loop(), "identity.prune")

    stopping = asyncio.Event()
    areas: list[Groups] = []

    async def prune_loop() -> None:
        while not stopping.is_set():
            try:
                await accounts().prune()
                for area in areas:
                    await area.prune()
            except Exception:  # pruning is housekeeping: log and try again later
                log.exception("pruning old sign-in failures and invitations failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), PRUNE_EVERY)

    async def stop_pruning() -> None:
        stopping.set()

    async def close_keyring() -> None:
        if holder:
            holder[0].keyring.close()

    ldap = LdapEndpoint(cfg, IdentityDirectory)

    async def start_ldap() -> None:
        await ldap.start(accounts())

    svc.on_start(open_accounts)
    svc.on_start(start_ldap)
    svc.on_stop(ldap.stop)
    svc.on_stop(stop_pruning)
    svc.add_readiness_check("ldap", ldap.ready)
    svc.on_cleanup(close_keyring)

    def register_all(bus: Bus) -> None:
        register_mfa(bus, accounts())  # first: it extends the whoami that register() serves
        register(bus, accounts())
        areas.append(register_groups(bus, accounts()))

    kit.bus(register_all)
    kit.bus(ldap.register)
    return svc


if __name__ == "__main__":
    main(build)
