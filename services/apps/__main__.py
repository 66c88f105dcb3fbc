"""python -m services.apps: catalog, app lifecycles, addons, health; resumes unfinished work."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from functools import partial

from libs.contracts.apps import CONTRACT
from libs.events.projection import ProjectionRunner
from libs.events.wiring import connections, loop, opened_keyring, serve
from libs.service.config import load_config
from libs.service.runner import Service, main
from services.apps.addons.postgresql import addon_postgres
from services.apps.addons.starting import ask_if_used, keep_hba
from services.apps.autoupdate import Clock, auto_updates
from services.apps.catalog import load_catalog
from services.apps.commands import Commands
from services.apps.config import NO_POOL, AppsConfig
from services.apps.health import HealthMonitor, Restarts, docker_ready
from services.apps.operations import Driver, Tools
from services.apps.operations.common import app_network
from services.apps.peers import Peers
from services.apps.platform import platform_updates
from services.apps.projections import AppsProjection
from services.apps.queries import Queries
from services.apps.runtime import DockerRuntime
from services.apps.snapshots import Snapshots
from services.apps.spare import SpareNetwork
from services.apps.streams import AppStreams, app_streams
from services.apps.subnets import SubnetPool


def build(cfg: AppsConfig | None = None, clock: Clock | None = None) -> Service:
    """The apps process; `clock` (tests) is what the nightly update window is read by."""
    cfg = cfg if cfg is not None else load_config(AppsConfig)
    svc = Service("apps", cfg)
    svc.use(partial(_parts, cfg, clock))
    return svc


@asynccontextmanager
async def _parts(cfg: AppsConfig, clock: Clock | None, svc: Service) -> AsyncIterator[None]:
    catalog = await asyncio.to_thread(load_catalog, cfg)
    async with (
        connections(svc) as conn,
        opened_keyring(cfg.keyring) as keys,
        DockerRuntime(cfg.docker_host) as runtime,
    ):
        await runtime.ping()
        svc.add_readiness_check("docker", partial(docker_ready, runtime))
        await ProjectionRunner(AppsProjection(), conn.store).setup()
        services = await runtime.ensure_services_network(cfg.services_network, cfg.services_subnet)
        # on demand: nothing here waits for it (see services/apps/addons/postgresql.py)
        pg = addon_postgres(cfg.addon_pg_dsn, services.gateway, cfg.addon_pg_port, cfg.addon_pg_hba)
        if pg is not None:
            await ask_if_used(pg, conn.store.pool, catalog)
        apps, peers, restarts = app_streams(conn.store), Peers(conn.client()), Restarts()
        snapshots = Snapshots(cfg.apps_dir / "snapshots", runtime, pg, cfg.name_prefix)
        subnets = None
        if cfg.app_subnets != NO_POOL:
            subnets = SubnetPool(conn.store, cfg.app_subnets, runtime)
        tools = Tools(cfg, apps, keys, runtime, catalog, peers, snapshots, pg, services, subnets)
        monitor = HealthMonitor(cfg, apps, runtime, catalog, restarts)
        spare = SpareNetwork(
            runtime, tools.names, partial(_known, apps), partial(app_network, tools)
        )
        await spare.adopt()
        async with (
            aclosing(spare),
            aclosing(Driver(tools, svc.spawn, idle=spare.refill)) as driver,
        ):
            commands = Commands(cfg, apps, keys, catalog, runtime, driver, restarts, spare)
            queries = Queries(cfg, apps, runtime, catalog, peers, monitor.latest_stats)
            async with (
                auto_updates(svc, cfg, commands, clock) as auto,
                platform_updates(svc, cfg, conn.store) as platform,
                loop(svc, "apps.health", monitor.run_checks(), cancel=True),
                loop(svc, "apps.docker_events", monitor.run_events(), cancel=True),
                # exited first (reverse order): its `stop` ends all three of the monitor's loops
                loop(svc, "apps.stats", monitor.run_stats(), monitor.stop, cancel=True),
                loop(svc, "apps.addon_pg", keep_hba(pg), cancel=True),
                serve(svc, conn.nc, CONTRACT, commands, queries, auto, platform),
            ):
                await driver.resume_all()
                spare.refill()  # after what resumed: not beside it (refilled when it ends)
                yield


async def _known(apps: AppStreams, app_id: str) -> bool:
    """Whether an app with this id was ever asked for (its stream has events)."""
    return (await apps.load(app_id)).version > 0


if __name__ == "__main__":
    main(build)
