"""python -m services.firewall: bans addresses with too many failed sign-ins (nftables).

The rest of the firewall (default-drop inbound, port openings) is not built yet; this service
owns only its table `inet homeport_ban`, and applies it only with HP_FIREWALL_APPLY=true (the
local stack leaves the host's packet filter alone and only records the bans).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from libs.events.projection import ProjectionRunner
from libs.events.wiring import EventServiceKit
from libs.service.config import load_config
from libs.service.runner import Service, main
from services.firewall.bans import BanProjection, BanSet, NftError
from services.firewall.config import FirewallConfig

log = logging.getLogger("services.firewall")
RECONCILE_EVERY = 1.0  # seconds: a ban reaches the kernel within about this after its event


def build() -> Service:
    cfg = load_config(FirewallConfig)
    svc = Service("firewall", cfg)
    kit = EventServiceKit(svc)
    projection = BanProjection(cfg.ban_failures, cfg.ban_window_seconds, cfg.ban_seconds)
    kit.add_worker(
        "projection.firewall_bans",
        lambda: ProjectionRunner(
            projection, kit.store, kit.nc, stream=cfg.events_stream, prefix=cfg.events_prefix
        ),
        ready=lambda r: r.live.is_set(),
        prepare=ProjectionRunner.setup,
    )
    if not cfg.firewall_apply:
        return svc
    bans = BanSet(cfg.firewall_nft, cfg.firewall_table)
    stopping = asyncio.Event()

    async def install() -> None:
        await bans.install()
        log.info("nftables table inet %s installed", cfg.firewall_table)
        svc.spawn(reconcile_loop(), "firewall.reconcile")

    async def reconcile_loop() -> None:
        while not stopping.is_set():
            try:
                await bans.reconcile(kit.store.pool)
            except (NftError, OSError) as e:
                log.error("applying bans failed: %s", e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), RECONCILE_EVERY)

    async def stop() -> None:
        stopping.set()

    svc.on_start(install)
    svc.on_stop(stop)
    return svc


if __name__ == "__main__":
    main(build)
