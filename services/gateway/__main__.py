"""python -m services.gateway: the REST API and dashboard, the activity and tasks read models,
the metrics history, the bus queries `activity` and `edge_host`, and the edge (nginx)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from functools import partial

from libs.contracts.gateway import CONTRACT
from libs.events.wiring import connections, following, serve, worker
from libs.service.config import load_config
from libs.service.runner import Service, main
from services.gateway.api import ApiConfig, BusAuthenticator, ConnectionsBackend
from services.gateway.api.app import API_STATE, build_api, mount_api
from services.gateway.api.handlers.tasks import TASK_STREAMS, TaskStreams
from services.gateway.api.principals import IdentityChanges, PrincipalCache
from services.gateway.api.table import default_table
from services.gateway.config import GatewayConfig
from services.gateway.dashboard import add_dashboard
from services.gateway.edge.signin import EdgeAccess, EdgeSignIn, add_edge_signin
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
    api = build_api(default_table(), backend=backend, authenticator=BusAuthenticator(backend.bus),
                    config=api_cfg, principal_cache=cache)  # fmt: skip
    api[TASK_STREAMS] = streams = TaskStreams()  # open task event streams end before the drain
    add_dashboard(svc.http_app, cfg.dashboard_dir)
    mount_api(svc.http_app, api)
    access = EdgeAccess()  # the edge's rules (EdgeSync) for its sign-in (edge/signin.py)
    if cfg.edge:  # whoami through the principal cache
        signin = EdgeSignIn(access, api[API_STATE].authenticator, backend.bus, cfg.edge_https_port)
        add_edge_signin(svc.http_app, signin)
    svc.use(partial(_parts, cfg, backend, cache, streams, access))
    return svc


@asynccontextmanager
async def _parts(
    cfg: GatewayConfig, backend: ConnectionsBackend, cache: PrincipalCache, streams: TaskStreams,
    access: EdgeAccess, svc: Service,
) -> AsyncIterator[None]:  # fmt: skip
    async with connections(svc) as conn, backend.attached(conn):
        at = {"stream": cfg.events_stream, "prefix": cfg.events_prefix}
        history = metrics_history(cfg, conn)
        await history.setup()
        settings = edge_settings(cfg, svc.port)
        edge = EdgeSync(settings, conn.nc, access, conn.store) if cfg.edge else None
        # the activity log's sealed client addresses are read back by identity (no key here)
        # identity (names, addresses) and apps (titles) are asked as the caller being answered
        queries = Queries(conn.store.pool, edge, conn.client().query)
        async with (
            following(svc, conn, ActivityProjection(), **at),
            following(svc, conn, TaskProjection(), **at),
            worker(svc, "metrics.history", history, ready=lambda _: conn.connected),
            serve(svc, conn.nc, CONTRACT, queries),
            IdentityChanges(cache, conn.nc).following(),
            streams.serving(),
            worker(svc, "edge", edge, ready=EdgeSync.up) if edge else nullcontext(),
        ):
            yield


if __name__ == "__main__":
    main(build)
