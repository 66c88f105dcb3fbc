"""python -m services.gateway: the REST API and dashboard, the activity and tasks read models,
the metrics history, the bus queries `activity` and `edge_host`, and the edge (nginx)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from functools import partial

from libs.contracts.gateway import CONTRACT
from libs.events.projection import Projection, ProjectionRunner
from libs.events.wiring import Connections, connections, serve, worker
from libs.service.config import load_config
from libs.service.runner import Service, main
from services.gateway.api import ApiConfig, BusAuthenticator, ConnectionsBackend
from services.gateway.api.app import build_api, mount_api
from services.gateway.api.handlers.tasks import TASK_STREAMS, TaskStreams
from services.gateway.api.principals import IdentityChanges, PrincipalCache
from services.gateway.api.table import default_table
from services.gateway.config import GatewayConfig
from services.gateway.dashboard import add_dashboard
from services.gateway.edge.sync import EdgeSync, edge_settings
from services.gateway.metrics_history import metrics_history
from services.gateway.projections import ActivityProjection
from services.gateway.queries import Queries
from services.gateway.tasks import TaskProjection


def build(cfg: GatewayConfig | None = None, api_cfg: ApiConfig | None = None) -> Service:
    """The gateway: the API and dashboard (mounted now), its parts entered at start."""
    cfg = cfg if cfg is not None else load_config(GatewayConfig)
    api_cfg = api_cfg if api_cfg is not None else load_config(ApiConfig)
    svc = Service("gateway", cfg)
    backend = ConnectionsBackend()
    cache = PrincipalCache(api_cfg.principal_cache_seconds, api_cfg.principal_cache_size)
    auth = BusAuthenticator(backend.bus)
    api = build_api(default_table(), backend=backend, authenticator=auth, config=api_cfg,
                    principal_cache=cache)  # fmt: skip
    api[TASK_STREAMS] = streams = TaskStreams()  # open task event streams end before the drain
    add_dashboard(svc.http_app, cfg.dashboard_dir)
    mount_api(svc.http_app, api)
    svc.use(partial(_parts, cfg, backend, cache, streams))
    return svc


@asynccontextmanager
async def _parts(
    cfg: GatewayConfig, backend: ConnectionsBackend, cache: PrincipalCache, streams: TaskStreams,
    svc: Service,
) -> AsyncIterator[None]:  # fmt: skip
    async with connections(svc) as conn, backend.attached(conn):
        activity, tasks = (_runner(cfg, conn, p) for p in (ActivityProjection(), TaskProjection()))
        history = metrics_history(cfg, conn)
        for prepared in (activity, tasks, history):  # read models exist before queries come
            await prepared.setup()
        edge = EdgeSync(edge_settings(cfg, svc.port), conn.nc) if cfg.edge else None
        async with (
            worker(svc, "projection.activity", activity, ready=partial(_live, conn)),
            worker(svc, "projection.tasks", tasks, ready=partial(_live, conn)),
            worker(svc, "metrics.history", history, ready=lambda _: conn.connected),
            serve(svc, conn.nc, CONTRACT, Queries(conn.store.pool, edge)),
            IdentityChanges(cache, conn.nc).following(),
            streams.serving(),
            worker(svc, "edge", edge, ready=EdgeSync.up) if edge else nullcontext(),
        ):
            yield


def _runner(cfg: GatewayConfig, conn: Connections, projection: Projection) -> ProjectionRunner:
    stream, prefix = cfg.events_stream, cfg.events_prefix
    return ProjectionRunner(projection, conn.store, conn.nc, stream=stream, prefix=prefix)


def _live(conn: Connections, runner: ProjectionRunner) -> bool:
    return conn.connected and runner.live.is_set()


if __name__ == "__main__":
    main(build)
