"""python -m services.notify: alerts, the notification centre, and the platform's own mail.

The service follows the events alerts derive from into its read model (projections.py), looks
at the conditions every round (evaluate.py: facts, disk and memory, bans and updates asked of
their services), records alerts opening and clearing, and delivers each notification by mail
(through the mail service) and push (apprise) to the administrators who want it (dispatch.py).
Identity asks it for the mails of invitations and password resets (commands.py `email`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from libs.contracts.notify import CONTRACT
from libs.events.wiring import connections, following, loop, opened_keyring, serve
from libs.service.config import load_config
from libs.service.runner import Service, main
from services.notify.commands import Commands, DashboardOrigin, Queries
from services.notify.config import NotifyConfig
from services.notify.dispatch import Dispatcher
from services.notify.evaluate import Evaluator
from services.notify.projections import NotifyProjection

__all__ = ["build"]

log = logging.getLogger("services.notify")


def build(cfg: NotifyConfig | None = None) -> Service:
    cfg = cfg if cfg is not None else load_config(NotifyConfig)
    svc = Service("notify", cfg)
    svc.use(partial(_parts, cfg))
    return svc


@asynccontextmanager
async def _parts(cfg: NotifyConfig, svc: Service) -> AsyncIterator[None]:
    async with (
        connections(svc) as conn,
        opened_keyring(cfg.keyring) as keys,
        following(
            svc,
            conn,
            NotifyProjection(),
            stream=cfg.events_stream,
            prefix=cfg.events_prefix,
        ),
    ):
        bus = conn.client(default_timeout=10)
        origin = DashboardOrigin(cfg, bus)
        dispatcher = Dispatcher(cfg, conn.store, bus, keys, origin=origin)
        evaluator = Evaluator(cfg, conn.store, bus, changed=dispatcher.nudge, keys=keys)
        async with (
            loop(svc, "notify.alerts", evaluator.run(), evaluator.stop),
            loop(svc, "notify.dispatch", dispatcher.run(), dispatcher.stop),
            serve(
                svc,
                conn.nc,
                CONTRACT,
                Commands(cfg, conn.store, bus, keys, origin),
                Queries(conn.store.pool, keys),
            ),
        ):
            yield


if __name__ == "__main__":
    main(build)
