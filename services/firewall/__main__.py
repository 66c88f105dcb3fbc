"""python -m services.firewall: the host's packet filter, owned by Homeport (nftables).

The service follows the events the rules derive from (rules.py: allow lists, the block list,
apps' ports, networks and addons, mail on; projections.py: bans from failed sign-ins), serves
the administrators' commands (commands.py), undoes allow-list trials not confirmed in time, and
keeps the container egress floor (libs/egress.py: no app reaches link-local, loopback or
another app's network) whatever else is configured.

The table `inet homeport` (ruleset.py) is applied only with HP_FIREWALL_APPLY=true: the local
stack leaves the host's inbound filter alone and only records what it would do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from libs.contracts.firewall import CONTRACT
from libs.egress import EgressRules
from libs.events.wiring import Connections, connections, following, loop, serve
from libs.service.config import load_config
from libs.service.runner import Service, main
from services.firewall.commands import Commands, Queries, Trials
from services.firewall.config import FirewallConfig
from services.firewall.enforce import Enforcer, rules_loader
from services.firewall.nft import Nft, Table
from services.firewall.projections import BanProjection, address_keys
from services.firewall.rules import RulesProjection
from services.firewall.ruleset import Opening, Rules
from services.firewall.sshd import SshdWatcher, identity_recorder

log = logging.getLogger("services.firewall")


def build(cfg: FirewallConfig | None = None) -> Service:
    """The firewall process: its projections, commands, and the kernel's table when it applies."""
    cfg = cfg if cfg is not None else load_config(FirewallConfig)
    svc = Service("firewall", cfg)
    svc.use(partial(_parts, cfg))
    return svc


@asynccontextmanager
async def _parts(cfg: FirewallConfig, svc: Service) -> AsyncIterator[None]:
    if cfg.firewall_egress:  # SECURITY.md "Isolation of apps": before anything else
        await EgressRules().ensure()
    async with connections(svc) as conn:
        at = {"stream": cfg.events_stream, "prefix": cfg.events_prefix}
        keys = await asyncio.to_thread(address_keys, cfg)  # identity's, read only
        async with (
            following(svc, conn, BanProjection(cfg, addresses=keys), **at),
            following(svc, conn, RulesProjection(), **at),
            _enforcing(cfg, svc, conn) as enforcer,
        ):

            def changed() -> None:  # a command changed the rules, maybe started a trial
                if enforcer is not None:
                    enforcer.nudge()
                trials.nudge()

            commands = Commands(
                conn.store, changed=changed, trial_seconds=cfg.firewall_trial_seconds
            )
            trials = Trials(commands)
            queries = Queries(
                conn.store.pool,
                rules=rules_loader(cfg, conn.store.pool),
                applied=partial(_applied, cfg, enforcer),
            )
            async with (
                loop(svc, "firewall.trials", trials.run(), trials.stop),
                serve(svc, conn.nc, CONTRACT, commands, queries),
                _watching_sshd(cfg, svc, conn),
            ):
                yield


@asynccontextmanager
async def _watching_sshd(
    cfg: FirewallConfig, svc: Service, conn: Connections
) -> AsyncIterator[None]:
    """With HP_FIREWALL_SSH_LOG: sshd's failed sign-ins to identity (LoginFailed, then bans)."""
    if not cfg.firewall_ssh_log:
        yield
        return
    watcher = SshdWatcher(cfg.firewall_ssh_log, identity_recorder(conn.client(default_timeout=5)))
    async with loop(svc, "firewall.sshd", watcher.run(), watcher.stop):
        yield


def _applied(cfg: FirewallConfig, enforcer: Enforcer | None) -> dict[str, Any]:
    if enforcer is None:
        return {"applying": False, "table": cfg.firewall_table}
    return {"applying": True, "table": cfg.firewall_table, **enforcer.last}


@asynccontextmanager
async def _enforcing(
    cfg: FirewallConfig, svc: Service, conn: Connections
) -> AsyncIterator[Enforcer | None]:
    """With HP_FIREWALL_APPLY: apply the table, then keep it true to the read models."""
    if not cfg.firewall_apply:
        yield None
        return
    table = Table(Nft(cfg.firewall_nft), cfg.firewall_table)
    pool = conn.store.pool
    host = [("ssh", p) for p in cfg.ports(cfg.firewall_ssh_ports)]
    host += [("edge", p) for p in cfg.ports(cfg.firewall_edge_ports)]
    fallback = Rules(
        openings=tuple(Opening("tcp", port, what) for what, port in host),
        ssh_ports=cfg.ports(cfg.firewall_ssh_ports),
    )
    enforcer = Enforcer(
        table,
        pool,
        rules_loader(cfg, pool),
        every=cfg.firewall_reconcile_seconds,
        fallback=fallback,
    )
    await enforcer.round()  # the table in force before the service answers
    log.info("nftables table inet %s in force", cfg.firewall_table)
    async with loop(svc, "firewall.reconcile", enforcer.run(), enforcer.stop):
        yield enforcer


if __name__ == "__main__":
    main(build)
