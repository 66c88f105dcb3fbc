"""python -m services.dns: domains, their DNS providers and the records Homeport owns.

At start it opens the keyring (the provider credentials are sealed in the events), sets up its
read model (schema `dns`, written inline with the events) and serves its commands and queries.
Providers are built from a domain's recorded config for each use and closed after it, so
nothing is left open at shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from libs.events.bus import Bus, BusClient
from libs.events.projection import ProjectionRunner
from libs.events.sealing import Keyring
from libs.events.wiring import EventServiceKit
from libs.service.config import load_config
from libs.service.runner import Service, main
from services.dns.commands import Commands
from services.dns.config import DnsConfig
from services.dns.projections import DnsProjection
from services.dns.queries import Queries

__all__ = ["build", "register"]

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclass
class _Parts:
    commands: Commands
    queries: Queries
    keyring: Keyring


def register(bus: Bus, commands: Commands, queries: Queries) -> None:
    """The bus contract of dns (see services/gateway/api/handlers/domains.py)."""
    command_map: dict[str, Handler] = {
        "add_domain": commands.add_domain,
        "verify_domain": commands.verify_domain,
        "remove_domain": commands.remove_domain,
        "set_record": commands.set_record,
        "remove_record": commands.remove_record,
        "wait_record": commands.wait_record,
        "publish_txt": commands.publish_txt,
        "remove_txt": commands.remove_txt,
    }
    query_map: dict[str, Handler] = {
        "domains": queries.domains,
        "domain": queries.domain,
    }
    for verb, fn in command_map.items():
        bus.command(verb)(fn)
    for name, fn in query_map.items():
        bus.query(name)(fn)


def build() -> Service:
    cfg = load_config(DnsConfig)
    svc = Service("dns", cfg)
    kit = EventServiceKit(svc)
    holder: list[_Parts] = []

    def parts() -> _Parts:
        return holder[0]

    async def open_parts() -> None:
        keyring = await asyncio.to_thread(Keyring.open, cfg.keyring)
        try:
            await ProjectionRunner(DnsProjection(), kit.store).setup()
        except BaseException:
            keyring.close()
            raise
        bus = BusClient(kit.nc, default_timeout=cfg.apps_timeout)
        commands = Commands(cfg, kit.store, keyring, bus)
        holder.append(_Parts(commands, Queries(kit.store.pool), keyring))

    async def close_parts() -> None:
        if holder:
            parts().keyring.close()

    svc.on_start(open_parts)
    svc.on_cleanup(close_parts)
    kit.bus(lambda bus: register(bus, parts().commands, parts().queries))
    return svc


if __name__ == "__main__":
    main(build)
