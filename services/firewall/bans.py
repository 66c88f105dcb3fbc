"""Keeps the kernel's ban sets true to the read model.

`BanEnforcer` adds every active ban not yet in the set, each `every` seconds, so a ban takes
effect within about that long of its event reaching the projection, and a restart re-applies
what is still running. An element is set for what remains of its ban, rounded up: the kernel
may end it late, never early.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from datetime import datetime

import asyncpg

from services.firewall.errors import NftError
from services.firewall.nft import BanSet
from services.firewall.projections import Clock, active_bans, utcnow

__all__ = ["BanEnforcer"]

log = logging.getLogger("services.firewall")


class BanEnforcer:
    """Puts the active bans of the read model into the kernel's set, until stopped."""

    def __init__(
        self, bans: BanSet, pool: asyncpg.Pool, *, every: float = 1.0, clock: Clock = utcnow
    ) -> None:
        self.bans = bans
        self.pool = pool
        self.every = every
        self.clock = clock
        self.applied: dict[str, datetime] = {}  # address -> end of the ban put in the set
        self._stop = asyncio.Event()

    async def reconcile(self) -> int:
        """Put every active ban not yet in the set into it; returns how many were added."""
        now = self.clock()
        added = 0
        for ip, until in (await active_bans(self.pool, now)).items():
            if self.applied.get(ip) == until:
                continue
            left = (until - now).total_seconds()
            if left <= 0:
                continue
            await self.bans.add(ip, math.ceil(left))
            self.applied[ip] = until
            log.info("address %s banned until %s", ip, until.isoformat())
            added += 1
        return added

    async def run(self) -> None:
        """Reconcile every `every` seconds until `stop()`; a failed round is logged, retried."""
        while not self._stop.is_set():
            try:
                await self.reconcile()
            except (NftError, OSError) as e:
                log.error("applying bans failed: %s", e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.every)

    def stop(self) -> None:
        self._stop.set()
