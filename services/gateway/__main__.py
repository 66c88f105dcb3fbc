"""python -m services.gateway: wiring and lifecycle of the gateway service."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from libs.events.bus import Bus
from libs.events.projection import ProjectionRunner
from libs.events.relay import connect_nats
from libs.events.store import PostgresEventStore
from libs.service.config import load_config
from libs.service.runner import Service, main
from services.gateway.config import GatewayConfig
from services.gateway.projections import ActivityProjection
from services.gateway.queries import activity_query


def build() -> Service:
    """The gateway: the activity-log projection and its query on the bus."""
    cfg = load_config(GatewayConfig)
    svc = Service("gateway", cfg)
    parts: dict[str, Any] = {}

    async def start() -> None:
        parts["store"] = store = await PostgresEventStore.open(cfg.database_url, max_size=5)
        parts["nc"] = nc = await connect_nats(cfg.nats_url, "homeport-gateway")
        runner = ProjectionRunner(
            ActivityProjection(), store, nc, stream=cfg.events_stream, prefix=cfg.events_prefix
        )
        await runner.setup()
        parts["runner"] = runner
        parts["task"] = svc.spawn(runner.run(), "projection.activity")
        bus = Bus(nc, "gateway", work=svc.work)

        @bus.query("activity")
        async def activity(payload: dict[str, Any]) -> Any:
            return await activity_query(store.pool, payload)

        await bus.start()
        parts["bus"] = bus

    async def ready() -> bool:
        runner = parts.get("runner")
        return runner is not None and runner.live.is_set() and parts["nc"].is_connected

    async def stop() -> None:
        if "bus" in parts:
            await parts["bus"].stop()
        runner, task = parts.get("runner"), parts.get("task")
        if runner is not None and task is not None:
            runner.stop()
            await asyncio.wait({task}, timeout=cfg.drain_seconds)

    async def cleanup() -> None:
        if "nc" in parts:
            await parts["nc"].close()
        if "store" in parts:
            await parts["store"].close()

    async def home(request: web.Request) -> web.Response:
        """A plain status page until the dashboard lands: what runs and how far events are."""
        store, runner = parts.get("store"), parts.get("runner")
        if store is None or runner is None:
            raise web.HTTPServiceUnavailable(text="Homeport is starting; reload in a moment.\n")
        head, seen = await store.head(), await runner.checkpoint()
        text = (
            "Homeport is running.\n\n"
            f"Events recorded: {head}; activity log up to event {seen}.\n"
            "The web dashboard and its setup wizard are not part of this build yet;\n"
            "use `homeport status` to check every part of the platform.\n"
        )
        return web.Response(text=text, headers={"Cache-Control": "no-store"})

    svc.http_app.router.add_get("/", home)
    svc.on_start(start)
    svc.on_stop(stop)
    svc.on_cleanup(cleanup)
    svc.add_readiness_check("activity", ready)
    return svc


if __name__ == "__main__":
    main(build)
