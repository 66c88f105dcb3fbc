"""python -m services.apps: the catalog, app lifecycles on Docker, addons, health.

At start it opens dockerd (HP_DOCKER_HOST), loads the signed catalog (the bundled one signed on
this machine unless HP_CATALOG_INDEX names a published index), makes sure the services network
exists (the addresses addons listen on), resumes every operation a previous run left half-done,
then follows health, Docker's events and resource use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libs.egress import EgressRules
from libs.events.bus import Bus, BusClient
from libs.events.projection import ProjectionRunner
from libs.events.sealing import Keyring
from libs.events.wiring import EventServiceKit
from libs.service.config import load_config
from libs.service.runner import Service, main
from services.apps.addons.postgresql import AddonPostgres
from services.apps.catalog import Catalog, ensure_local_catalog, load_public_key
from services.apps.commands import Commands
from services.apps.config import AppsConfig
from services.apps.engine import Engine
from services.apps.health import HealthMonitor
from services.apps.projections import AppsProjection
from services.apps.queries import Queries
from services.apps.runtime import DockerRuntime

log = logging.getLogger("services.apps")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclass
class _Parts:
    engine: Engine
    commands: Commands
    queries: Queries
    monitor: HealthMonitor
    runtime: DockerRuntime
    keyring: Keyring


def load_catalog(cfg: AppsConfig) -> Catalog:
    """The configured signed index, or the bundled catalog signed by this machine's key."""
    if cfg.catalog_index:
        keys = [load_public_key(Path(p)) for p in cfg.catalog_trust]
        return Catalog.load(Path(cfg.catalog_index), keys)
    index, key = ensure_local_catalog(cfg.catalog_source, cfg.apps_dir)
    return Catalog.load(index, [key])


def register(bus: Bus, commands: Commands, queries: Queries) -> None:
    """The bus contract of apps (see services/gateway/api/handlers/apps.py)."""
    command_map: dict[str, Handler] = {
        "install": commands.install,
        "configure": commands.configure,
        "start": commands.start,
        "stop": commands.stop,
        "restart": commands.restart,
        "update": commands.update,
        "approve_update": commands.approve_update,
        "restore": commands.restore,
        "clone": commands.clone,
        "uninstall": commands.uninstall,
        "repair": commands.repair,
        "snapshot": commands.snapshot,
    }
    query_map: dict[str, Handler] = {
        "catalog": queries.catalog_search,
        "catalog_app": queries.catalog_app,
        "apps": queries.apps,
        "app": queries.app,
        "snapshots": queries.snapshots,
        "logs": queries.logs,
        "catalog_icon": queries.catalog_icon,
        "stats": queries.stats,
    }
    for verb, fn in command_map.items():
        bus.command(verb)(fn)
    for name, fn in query_map.items():
        bus.query(name)(fn)


def build() -> Service:
    cfg = load_config(AppsConfig)
    svc = Service("apps", cfg)
    kit = EventServiceKit(svc)
    holder: list[_Parts] = []

    def parts() -> _Parts:
        return holder[0]

    async def open_parts() -> None:
        keyring = await asyncio.to_thread(Keyring.open, cfg.keyring)
        catalog = await asyncio.to_thread(load_catalog, cfg)
        if cfg.apps_egress_rules:
            # SECURITY.md "Isolation of apps": no app reaches link-local (metadata) addresses
            # or the host's loopback; shared code (libs/egress.py) so the firewall can own the
            # same chain later, made sure of here because no app may run without it.
            await EgressRules().ensure()
        runtime = DockerRuntime(cfg.docker_host)
        await runtime.__aenter__()
        await runtime.ping()
        await ProjectionRunner(AppsProjection(), kit.store).setup()
        bus = BusClient(kit.nc, default_timeout=15.0)
        engine = Engine(cfg, kit.store, keyring, runtime, catalog, None, bus, svc.spawn)
        services = await engine.services()
        if cfg.addon_pg_dsn:
            engine.addon_pg = AddonPostgres(
                cfg.addon_pg_dsn, services.gateway, cfg.addon_pg_port, cfg.addon_pg_hba
            )
            await engine.addon_pg.sync_hba()
        commands = Commands(engine, catalog)
        monitor = HealthMonitor(engine)
        queries = Queries(engine, catalog, bus, monitor.latest_stats)
        holder.append(_Parts(engine, commands, queries, monitor, runtime, keyring))
        resumed = await engine.resume_all()
        if resumed:
            log.info("resuming %d operation(s) a previous run left unfinished", resumed)
        loops.append(svc.spawn(monitor.run_checks(), "apps.health"))
        loops.append(svc.spawn(monitor.run_events(), "apps.docker_events"))
        loops.append(svc.spawn(monitor.run_stats(), "apps.stats"))

    loops: list[asyncio.Task[Any]] = []

    async def stop_monitor() -> None:
        if holder:
            parts().monitor.stop()
        for task in loops:  # the events loop waits on Docker: do not wait for it
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)

    async def close_parts() -> None:
        if holder:
            await parts().runtime.__aexit__(None, None, None)
            parts().keyring.close()

    async def docker_ready() -> bool:
        if not holder:
            return False
        try:
            await parts().runtime.ping()
        except Exception:
            return False
        return True

    svc.on_start(open_parts)
    svc.on_stop(stop_monitor)
    svc.on_cleanup(close_parts)
    svc.add_readiness_check("docker", docker_ready)
    kit.bus(lambda bus: register(bus, parts().commands, parts().queries))
    return svc


if __name__ == "__main__":
    main(build)
