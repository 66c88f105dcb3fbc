"""python -m services.certs: ACME orders and renewals, fallback and custom certificates.

At start it sets up its read model, rewrites every certificate's files from the events (so a
lost certs_dir heals), serves its bus, then runs the renewal loop, which first resumes any
order a previous run left without an outcome.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from libs.events.bus import Bus, BusClient
from libs.events.projection import ProjectionRunner
from libs.events.sealing import Keyring
from libs.events.wiring import EventServiceKit
from libs.service.config import load_config
from libs.service.runner import Service, main
from services.certs.commands import Commands, Engine
from services.certs.config import CertsConfig
from services.certs.projections import CertsProjection
from services.certs.queries import Queries
from services.certs.store import CertFiles, TokenFiles

__all__ = ["build", "register"]

log = logging.getLogger("services.certs")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclass
class _Parts:
    engine: Engine
    commands: Commands
    queries: Queries
    keyring: Keyring


def register(bus: Bus, commands: Commands, queries: Queries) -> None:
    """The bus contract of certs (see services/gateway/api/handlers/certificates.py)."""
    command_map: dict[str, Handler] = {
        "ensure": commands.ensure,
        "renew": commands.renew,
        "upload": commands.upload,
        "forget": commands.forget,
    }
    query_map: dict[str, Handler] = {
        "files": queries.files,
        "certificates": queries.certificates,
    }
    for verb, fn in command_map.items():
        bus.command(verb)(fn)
    for name, fn in query_map.items():
        bus.query(name)(fn)


def build() -> Service:
    cfg = load_config(CertsConfig)
    svc = Service("certs", cfg)
    kit = EventServiceKit(svc)
    holder: list[_Parts] = []
    loops: list[asyncio.Task[Any]] = []

    def parts() -> _Parts:
        return holder[0]

    async def open_parts() -> None:
        keyring = await asyncio.to_thread(Keyring.open, cfg.keyring)
        await ProjectionRunner(CertsProjection(), kit.store).setup()
        files = CertFiles(cfg.certs_dir)
        tokens = TokenFiles(cfg.acme_dir)
        bus = BusClient(kit.nc, default_timeout=15.0)
        engine = Engine(cfg, kit.store, keyring, files, tokens, bus, svc.spawn)
        holder.append(_Parts(engine, Commands(engine), Queries(kit.store.pool, files), keyring))
        healed = await engine.heal_files()
        log.info("certificate files written for %d name(s)", healed)

    async def start_loop() -> None:
        loops.append(svc.spawn(parts().engine.run_renewals(), "certs.renewals"))

    async def stop_loop() -> None:
        if holder:
            parts().engine.stop()
        if loops:
            await asyncio.wait(loops, timeout=cfg.drain_seconds)

    async def close_parts() -> None:
        if holder:
            await parts().engine.close()
            parts().keyring.close()

    svc.on_start(open_parts)
    kit.bus(lambda bus: register(bus, parts().commands, parts().queries))
    svc.on_start(start_loop)
    svc.on_stop(stop_loop)
    svc.on_cleanup(close_parts)
    return svc


if __name__ == "__main__":
    main(build)
