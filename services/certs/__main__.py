"""python -m services.certs: ACME orders and renewals, fallback and custom certificates.

At start it sets up its read model, rewrites every certificate's files from the events (so a
lost certs_dir heals), serves its bus, then runs the renewal loop, which first resumes any
order a previous run left without an outcome.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from libs.contracts.certs import CONTRACT
from libs.events.projection import ProjectionRunner
from libs.events.wiring import connections, loop, opened_keyring, serve
from libs.service.config import load_config
from libs.service.runner import Service, main
from services.certs.commands import Commands
from services.certs.config import CertsConfig
from services.certs.dns01 import BusTxtPublisher
from services.certs.engine import Engine
from services.certs.projections import CertsProjection
from services.certs.queries import Queries
from services.certs.store import CertFiles, TokenFiles

__all__ = ["build"]


def build(cfg: CertsConfig | None = None) -> Service:
    """The certs process: engine, bus and renewal loop on the service lifecycle."""
    cfg = cfg if cfg is not None else load_config(CertsConfig)
    svc = Service("certs", cfg)
    svc.use(partial(_parts, cfg))
    return svc


@asynccontextmanager
async def _parts(cfg: CertsConfig, svc: Service) -> AsyncIterator[None]:
    async with connections(svc) as conn, opened_keyring(cfg.keyring) as keys:
        await ProjectionRunner(CertsProjection(), conn.store).setup()
        files = CertFiles(cfg.certs_dir)
        txt = BusTxtPublisher(conn.client())
        engine = Engine(cfg, conn.store, keys, files, TokenFiles(cfg.acme_dir), txt, svc.spawn)
        commands = Commands(engine, conn.store.pool, files, cfg.renew_days)
        queries = Queries(conn.store.pool, files)
        async with (
            engine.running(),
            serve(svc, conn.nc, CONTRACT, commands, queries),
            loop(svc, "certs.renewals", engine.run_renewals(), engine.stop),
        ):
            yield


if __name__ == "__main__":
    main(build)
