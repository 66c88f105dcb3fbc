"""python -m services.firewall: bans addresses with too many failed sign-ins (nftables).

The rest of the firewall (default-drop inbound, port openings) is not built yet; this service
owns only its table `inet homeport_ban`, and applies it only with HP_FIREWALL_APPLY=true (the
local stack leaves the host's packet filter alone and only records the bans).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from libs.events.wiring import Connections, connections, following, loop
from libs.service.config import load_config
from libs.service.runner import Service, main
from services.firewall.bans import BanEnforcer
from services.firewall.config import FirewallConfig
from services.firewall.nft import BanSet, Nft
from services.firewall.projections import BanProjection, address_keys

log = logging.getLogger("services.firewall")


def build(cfg: FirewallConfig | None = None) -> Service:
    """The firewall process: the ban projection, and the kernel's ban set when it applies."""
    cfg = cfg if cfg is not None else load_config(FirewallConfig)
    svc = Service("firewall", cfg)
    svc.use(partial(_parts, cfg))
    return svc


@asynccontextmanager
async def _parts(cfg: FirewallConfig, svc: Service) -> AsyncIterator[None]:
    async with connections(svc) as conn:
        at = {"stream": cfg.events_stream, "prefix": cfg.events_prefix}
        keys = await asyncio.to_thread(address_keys, cfg)  # identity's, read only
        async with following(svc, conn, BanProjection(cfg, addresses=keys), **at):
            async with _enforcing(cfg, svc, conn):
                yield


@asynccontextmanager
async def _enforcing(cfg: FirewallConfig, svc: Service, conn: Connections) -> AsyncIterator[None]:
    """With HP_FIREWALL_APPLY: install the table, then keep its ban sets true to the bans."""
    if not cfg.firewall_apply:
        yield
        return
    bans = BanSet(Nft(cfg.firewall_nft), cfg.firewall_table)
    await bans.install()
    log.info("nftables table inet %s installed", cfg.firewall_table)
    enforcer = BanEnforcer(bans, conn.store.pool, every=cfg.firewall_reconcile_seconds)
    async with loop(svc, "firewall.reconcile", enforcer.run(), enforcer.stop):
        yield


if __name__ == "__main__":
    main(build)
