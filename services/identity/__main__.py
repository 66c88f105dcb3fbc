"""python -m services.identity: accounts, sessions and the LDAP endpoint for apps."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from libs.events.bus import Bus
from libs.events.projection import ProjectionRunner
from libs.events.sealing import Keyring
from libs.events.wiring import EventServiceKit
from libs.service.config import load_config
from libs.service.runner import Service, main
from services.identity.accounts import Accounts
from services.identity.config import IdentityConfig
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
        await ProjectionRunner(IdentityProjection(), kit.store).setup()
        shredded = await acc.shred_deleted()
        if shredded:
            log.info("checked the keys of %d deleted users are destroyed", shredded)
        holder.append(acc)
        svc.spawn(prune_loop(), "identity.prune")

    async def prune_loop() -> None:
        while True:
            try:
                await accounts().prune()
            except Exception:  # pruning is housekeeping: log and try again later
                log.exception("pruning old sign-in failures failed")
            await asyncio.sleep(PRUNE_EVERY)

    async def close_keyring() -> None:
        if holder:
            holder[0].keyring.close()

    svc.on_start(open_accounts)
    svc.on_cleanup(close_keyring)
    kit.bus(lambda bus: register(bus, accounts()))
    return svc


if __name__ == "__main__":
    main(build)
