"""python -m services.dns: domains, their DNS providers and the records Homeport owns.

At start it opens the keyring (the provider credentials are sealed in the events), sets up its
read model (schema `dns`, written inline with the events) and serves its commands and queries.
Providers are built from a domain's recorded config for each use and closed after it, so
nothing is left open at shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from libs.contracts.dns import CONTRACT
from libs.events.projection import ProjectionRunner
from libs.events.wiring import connections, opened_keyring, serve
from libs.service.config import load_config
from libs.service.runner import Service, main
from services.dns.commands import Commands
from services.dns.config import DnsConfig
from services.dns.projections import DnsProjection
from services.dns.queries import Queries

__all__ = ["build"]


def build(cfg: DnsConfig | None = None) -> Service:
    """The dns process: its read model and its bus on the service lifecycle."""
    cfg = cfg if cfg is not None else load_config(DnsConfig)
    svc = Service("dns", cfg)
    svc.use(partial(_parts, cfg))
    return svc


@asynccontextmanager
async def _parts(cfg: DnsConfig, svc: Service) -> AsyncIterator[None]:
    async with connections(svc) as conn, opened_keyring(cfg.keyring) as keys:
        await ProjectionRunner(DnsProjection(), conn.store).setup()
        commands = Commands(cfg, conn.store, keys, conn.client(default_timeout=cfg.apps_timeout))
        async with serve(svc, conn.nc, CONTRACT, commands, Queries(conn.store.pool)):
            yield


if __name__ == "__main__":
    main(build)
