"""python -m services.gateway: wiring and lifecycle of the gateway service."""

from __future__ import annotations

from typing import Any

from libs.events.bus import Bus, BusClient
from libs.events.projection import ProjectionRunner
from libs.events.wiring import EventServiceKit
from libs.service.config import load_config
from libs.service.runner import Service, main
from services.gateway.api import (
    ApiConfig,
    BusAuthenticator,
    KitBackend,
    build_api,
    default_table,
    mount_api,
)
from services.gateway.api.handlers.tasks import TASK_STREAMS, TaskStreams
from services.gateway.api.principals import IdentityChanges, PrincipalCache
from services.gateway.config import GatewayConfig
from services.gateway.dashboard import add_dashboard
from services.gateway.edge.sync import EdgeSettings, EdgeSync
from services.gateway.metrics_history import add_metrics_history
from services.gateway.projections import ActivityProjection
from services.gateway.queries import activity_query
from services.gateway.tasks import TaskProjection


def build() -> Service:
    """The gateway: the activity-log projection, its query on the bus, the REST API."""
    cfg = load_config(GatewayConfig)
    api_cfg = load_config(ApiConfig)
    svc = Service("gateway", cfg)
    kit = EventServiceKit(svc)

    def activity_runner() -> ProjectionRunner:
        runner = ProjectionRunner(
            ActivityProjection(),
            kit.store,
            kit.nc,
            stream=cfg.events_stream,
            prefix=cfg.events_prefix,
        )
        return runner

    kit.add_worker(
        "projection.activity",
        activity_runner,
        ready=lambda r: r.live.is_set(),
        prepare=ProjectionRunner.setup,
    )

    def tasks_runner() -> ProjectionRunner:
        return ProjectionRunner(
            TaskProjection(),
            kit.store,
            kit.nc,
            stream=cfg.events_stream,
            prefix=cfg.events_prefix,
        )

    kit.add_worker(
        "projection.tasks",
        tasks_runner,
        ready=lambda r: r.live.is_set(),
        prepare=ProjectionRunner.setup,
    )

    def handlers(bus: Bus) -> None:
        @bus.query("activity")
        async def activity(payload: dict[str, Any]) -> Any:
            return await activity_query(kit.store.pool, payload)

    kit.bus(handlers)
    add_metrics_history(kit, cfg)  # the samples GET /metrics/history graphs

    add_dashboard(svc.http_app, cfg.dashboard_dir)
    backend = KitBackend(kit)
    principals = PrincipalCache(api_cfg.principal_cache_seconds, api_cfg.principal_cache_size)
    changes = IdentityChanges(principals, lambda: kit.nc)
    svc.on_start(changes.start)  # after the kit connected NATS: it registered first
    svc.on_stop(changes.stop)
    api = build_api(
        default_table(),
        backend=backend,
        authenticator=BusAuthenticator(backend.bus),
        config=api_cfg,
        principal_cache=principals,
    )
    task_streams = TaskStreams()
    api[TASK_STREAMS] = task_streams
    svc.on_stop(task_streams.stop)  # open task event streams end before the drain
    mount_api(svc.http_app, api)
    if cfg.edge:
        _add_edge(svc, kit, cfg)
    return svc


def _add_edge(svc: Service, kit: EventServiceKit, cfg: GatewayConfig) -> None:
    """nginx as this process's child, kept true to the platform by EdgeSync."""
    holder: list[EdgeSync] = []

    async def start() -> None:
        settings = EdgeSettings(
            prefix=cfg.edge_dir.absolute(),
            http_port=cfg.edge_http_port,
            https_port=cfg.edge_https_port,
            acme_dir=cfg.acme_dir.absolute(),
            dashboard_upstream=f"127.0.0.1:{svc.port}",
            bind=cfg.edge_bind,
            local_domain=cfg.local_domain,
            interval=cfg.edge_interval,
        )
        sync = EdgeSync(settings, BusClient(kit.nc, default_timeout=10))
        holder.append(sync)
        svc.spawn(sync.run(), "edge.sync")

    async def stop() -> None:
        for sync in holder:
            sync.stop()

    async def ready() -> bool:
        return bool(holder) and holder[0].ready

    svc.on_start(start)
    svc.on_stop(stop)
    svc.add_readiness_check("edge", ready)


if __name__ == "__main__":
    main(build)
