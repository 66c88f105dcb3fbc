"""Egress rules for app containers: no link-local (cloud metadata) and no host loopback.

SECURITY.md "Isolation of apps": from inside an app container, 169.254.169.254 (cloud
metadata) and 169.254.170.2 (ECS task credentials) must be unreachable. What this module does:

- Backend: Docker 20.10 drives the `iptables` binary, which on Debian 12 is iptables-nft; so do
  we (the same binary, so our rules sit in the same nftables `ip` family as Docker's). No shell:
  every command is an argv list.
- One chain of ours, `HOMEPORT-EGRESS`, dropping packets to 169.254.0.0/16 and to 127.0.0.0/8,
  and packets leaving for another Docker bridge: one app never reaches another app's network,
  whether Docker's own DOCKER-ISOLATION rules are in place or not (a full test run once saw
  them missing for a moment while other networks came and went). Apps reach each other only
  through the edge (nginx on the host), which is not forwarded traffic. App networks have icc
  off, so traffic within one bridge is dropped by Docker anyway.
- The chain lives in the `mangle` table and is jumped to, as the first rule, from mangle's
  `FORWARD` (traffic to addresses off the host, and to another bridge) and `INPUT` (traffic to
  an address *on the host itself*, a 169.254 address on some host interface or any host
  address, which never passes FORWARD), for packets *arriving on a Docker bridge* (`-i br-+`,
  every user-defined network; app containers never join docker0). Why mangle and not Docker's
  `DOCKER-USER`: Docker never touches mangle, but it re-places its `FORWARD -j DOCKER-USER` jump
  on every network it creates by deleting it and inserting it again, and a packet sent in
  between passed FORWARD without DOCKER-USER (a full test run saw a container reach
  169.254.170.2 once while another test created a network). mangle's FORWARD and INPUT run
  before filter's, so every packet meets this chain first, whatever Docker is doing.
  Earlier versions jumped from filter `DOCKER-USER`/`INPUT`; `ensure()` takes those out.
- Host services that listen on loopback only (platform Postgres, NATS, service APIs) are not
  reachable from a container anyway: the container's 127.0.0.1 is its own, and packets to
  127/8 arriving on a bridge are martians (route_localnet is 0) — the 127/8 drop keeps it so
  even if route_localnet were switched on. tests/apps/test_isolation.py checks this at every
  host address a container can try.
- Containers get no IPv6 (app networks are created without it), so there are no v6 rules.

`ensure()` is idempotent (each rule is checked with `-C` before it is added) and can be called
at any time, e.g. at service start and after dockerd or a firewall reload restarted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["BLOCKED", "CHAIN", "EgressError", "EgressRules"]

log = logging.getLogger("homeport.egress")

CHAIN = "HOMEPORT-EGRESS"
BLOCKED = ("169.254.0.0/16", "127.0.0.0/8")
_DEADLINE_S = 20.0


class EgressError(Exception):
    """An iptables command failed; the message names it and says what to do."""


@dataclass(frozen=True)
class EgressRules:
    """The container egress rules, kept true by `ensure()`."""

    iptables: tuple[str, ...] = ("iptables",)
    chain: str = CHAIN
    interfaces: str = "br-+"  # packets arriving on any Docker bridge
    blocked: tuple[str, ...] = BLOCKED
    table: str = "mangle"

    async def _run(
        self, args: Sequence[str], check: bool = True, table: str | None = None
    ) -> tuple[int, str]:
        argv = [*self.iptables, "-w", "10", "-t", table or self.table, *args]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as e:
            raise EgressError(
                f"{argv[0]} could not be run ({e}): install iptables and run as root"
            ) from e
        try:
            out, err = await asyncio.wait_for(proc.communicate(), _DEADLINE_S)
        except TimeoutError as e:
            proc.kill()
            await proc.wait()
            raise EgressError(
                f"`{' '.join(argv)}` did not finish within {_DEADLINE_S:.0f}s: "
                "check what holds the xtables lock"
            ) from e
        code = proc.returncode if proc.returncode is not None else -1
        if check and code != 0:
            raise EgressError(
                f"`{' '.join(argv)}` failed ({err.decode(errors='replace').strip()}): "
                "run as root on the Docker host with iptables installed"
            )
        return code, out.decode(errors="replace")

    async def _ensure_chain(self, chain: str) -> None:
        code, _ = await self._run(["-S", chain], check=False)
        if code != 0:
            await self._run(["-N", chain])

    async def _ensure_rule(self, chain: str, rule: Sequence[str], insert: bool) -> None:
        code, _ = await self._run(["-C", chain, *rule], check=False)
        if code == 0:
            return
        if insert:
            await self._run(["-I", chain, "1", *rule])
        else:
            await self._run(["-A", chain, *rule])
        log.info("egress rule added: %s %s", chain, " ".join(rule))

    async def ensure(self) -> None:
        """Add whatever of the rules is missing (idempotent)."""
        await self._ensure_chain(self.chain)
        for dest in self.blocked:
            await self._ensure_rule(self.chain, ["-d", dest, "-j", "DROP"], insert=False)
        # To another bridge: only on the forwarded path (in INPUT there is no out interface).
        await self._ensure_rule(self.chain, ["-o", self.interfaces, "-j", "DROP"], insert=False)
        for hook in ("FORWARD", "INPUT"):
            await self._ensure_rule(hook, self._jump, insert=True)
        await self._remove_from("filter", ("INPUT", "DOCKER-USER"))  # where older versions put it

    @property
    def _jump(self) -> list[str]:
        return ["-i", self.interfaces, "-j", self.chain]

    async def _remove_from(self, table: str, hooks: Sequence[str]) -> None:
        if (await self._run(["-S", self.chain], check=False, table=table))[0] != 0:
            return
        for hook in hooks:
            while (await self._run(["-C", hook, *self._jump], check=False, table=table))[0] == 0:
                await self._run(["-D", hook, *self._jump], table=table)
        await self._run(["-F", self.chain], table=table)
        await self._run(["-X", self.chain], table=table)
        log.info("egress chain %s removed from the %s table", self.chain, table)

    async def remove(self) -> None:
        """Take the rules out again (uninstall); missing rules are fine."""
        await self._remove_from(self.table, ("FORWARD", "INPUT"))
        await self._remove_from("filter", ("INPUT", "DOCKER-USER"))

    async def dropped(self) -> dict[str, int]:
        """Packets dropped so far per blocked destination (both paths); {} without the chain."""
        if (await self._run(["-S", self.chain], check=False))[0] != 0:
            return {}
        _, out = await self._run(["-L", self.chain, "-n", "-v", "-x"])
        counts: dict[str, int] = {}
        for line in out.splitlines():
            cols = line.split()
            # pkts bytes target prot opt in out source destination
            if len(cols) >= 9 and cols[2] == "DROP" and cols[0].isdigit():
                counts[cols[8]] = counts.get(cols[8], 0) + int(cols[0])
        return counts
