"""Keeps the kernel's table true to the read models, each round of `every` seconds.

When the rules' revision moved (an allow list, the block list, an app's ports or network, mail
on or off) the whole table is rendered again, bans included, and replaced in one `nft -f` (one
transaction): a table nft refuses is never applied, the one in force stays, and
the refusal is kept for the status view and retried on the next change. Between changes only
new bans are added to their set (bans.py), which costs one small nft command each.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from libs.service.runner import wait_events
from services.firewall.bans import BanEnforcer
from services.firewall.config import FirewallConfig
from services.firewall.errors import NftError
from services.firewall.nft import Table
from services.firewall.projections import Clock, active_bans, utcnow
from services.firewall.rules import load_rules, revision
from services.firewall.ruleset import Rules, render

__all__ = ["Enforcer", "rules_loader"]

log = logging.getLogger("services.firewall")


def rules_loader(
    cfg: FirewallConfig, pool: asyncpg.Pool, clock: Clock = utcnow
) -> Callable[[], Any]:
    """An async callable giving the Rules in force now, bans included."""

    async def load(blocked: bool = True) -> Rules:
        now = clock()
        bans = {
            ip: math.ceil((until - now).total_seconds())
            for ip, until in (await active_bans(pool, now)).items()
        }
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            return await load_rules(
                conn,
                ssh_ports=cfg.ports(cfg.firewall_ssh_ports),
                edge_ports=cfg.ports(cfg.firewall_edge_ports),
                services_gateway=cfg.firewall_services_gateway,
                addon_ports=cfg.addon_ports(),
                bans={ip: s for ip, s in bans.items() if s > 0},
                blocked=blocked,
            )

    return load


class Enforcer:
    """Applies the rules when they change, and new bans in between, until stopped."""

    def __init__(
        self,
        table: Table,
        pool: asyncpg.Pool,
        rules: Callable[..., Any],
        *,
        every: float = 1.0,
        clock: Clock = utcnow,
        fallback: Rules | None = None,
    ) -> None:
        self.table = table
        # applied when the first table of this process is refused and none of ours is in
        # force: the host is never left open (SSH and the edge only, everything else dropped)
        self.fallback = fallback if fallback is not None else Rules()
        self.pool = pool
        self.rules = rules
        self.every = every
        self.clock = clock
        self.bans = BanEnforcer(table, pool, every=every, clock=clock)
        self.revision: int | None = None  # of the table in force
        self.failed: int | None = None  # a revision nft refused (not tried again)
        self.last: dict[str, Any] = {"revision": None, "at": None, "ok": None, "error": None}
        self._stop = asyncio.Event()
        self._nudge = asyncio.Event()

    def nudge(self) -> None:
        """Start the next round now (a command changed the rules)."""
        self._nudge.set()

    async def apply(self, rev: int | None = None) -> bool:
        """Render and apply the whole table (of the rules' revision `rev`, read when not
        given); False when nft refused it (the old one stays)."""
        rev = rev if rev is not None else await revision(self.pool)
        rules: Rules = await self.rules()
        script = await asyncio.to_thread(render, self.table.table, rules)
        started = time.monotonic()
        at = self.clock().isoformat()
        try:
            await self.table.apply(script)
        except NftError as e:
            self.failed = rev
            self.last = {"revision": rev, "at": at, "ok": False, "error": e.message}
            if self.revision is None and not await self._in_force():
                await self.table.apply(render(self.table.table, self.fallback))
                self.last["fallback"] = True
                log.error(
                    "the firewall rules were refused and none were in force: only SSH and the"
                    " edge are open until this is fixed: %s",
                    e.message,
                )
                return False
            log.error("the new firewall rules were refused, the old ones stay: %s", e.message)
            return False
        self.revision, self.failed = rev, None
        # the bans in force are in the table: the ban enforcer need not add them again
        self.bans.applied = dict(await active_bans(self.pool, self.clock()))
        self.last = {
            "revision": rev,
            "at": at,
            "ok": True,
            "error": None,
            "seconds": round(time.monotonic() - started, 3),
            "open": len(rules.openings),
            "blocked": len(rules.blocked),
        }
        log.info(
            "firewall table %s applied (revision %d, %d openings, %d blocked entries)",
            self.table.table,
            rev,
            len(rules.openings),
            len(rules.blocked),
        )
        return True

    async def _in_force(self) -> bool:
        try:
            await self.table.listing()
        except NftError:
            return False
        return True

    async def round(self) -> None:
        rev = await revision(self.pool)
        if rev != self.revision and rev != self.failed:
            await self.apply(rev)
        else:
            await self.bans.reconcile()

    async def run(self) -> None:
        """A round every `every` seconds (or at once when nudged) until `stop()`."""
        while not self._stop.is_set():
            self._nudge.clear()
            try:
                await self.round()
            except (NftError, OSError, asyncpg.PostgresError) as e:
                log.error("applying the firewall failed: %s", e)
            await wait_events((self._stop, self._nudge), self.every)

    def stop(self) -> None:
        self._stop.set()
