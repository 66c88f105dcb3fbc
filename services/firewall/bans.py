"""Bans of addresses that fail to sign in too often, and their nftables set.

`BanProjection` follows `LoginFailed` events (identity writes them with the client address) and
decides bans in SQL from the events' own times, so replaying the log gives the same bans: an
address with `failures` failures within `window` (counting only failures after its last ban
began) is banned for `base * 2^(strikes - 1)`, strikes being 1 for its first ban.

`BanSet` keeps the nftables table `inet <table>` true to the active bans: two sets with
timeouts (the kernel removes an element when its ban ends) and an input-hook chain dropping
their sources, plus the SSH rule (more than 5 new connections in 10 s from one address are
dropped). It only ever touches its own table. A reconcile loop adds every active ban not yet
in the set each second, so a ban takes effect within about a second of its event reaching the
projection, and a restart re-applies what is still running.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import asyncpg

from libs.events.envelope import RecordedEvent
from libs.events.projection import Projection, register_projection

__all__ = ["BanProjection", "BanSet", "NftError", "ruleset"]

log = logging.getLogger("services.firewall")


@register_projection
class BanProjection(Projection):
    """Failed sign-ins per address, and the bans they earn (schema `firewall`)."""

    name: ClassVar[str] = "firewall_bans"
    schema: ClassVar[str] = "firewall"
    subject: ClassVar[str] = "signin.LoginFailed"
    migrations: ClassVar[Path | None] = Path(__file__).parent / "migrations"

    def __init__(
        self, failures: int | None = None, window: int | None = None, base: int | None = None
    ) -> None:
        # `homeport replay firewall_bans` builds it without arguments: the same HP_* settings
        # as the service then apply, so a rebuild decides the same bans.
        self.failures = failures or _setting("HP_BAN_FAILURES", 5)
        self.window = window or _setting("HP_BAN_WINDOW_SECONDS", 600)
        self.base = base or _setting("HP_BAN_SECONDS", 600)

    def wants(self, event: RecordedEvent) -> bool:
        return event.type == "LoginFailed"

    async def reset(self, conn: asyncpg.Connection) -> None:
        await conn.execute("TRUNCATE firewall.failures, firewall.bans")

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        for event in events:
            ip = _address(event)
            if ip is None:
                continue
            await conn.execute(
                "INSERT INTO firewall.failures (ip, at) VALUES ($1, $2)", ip, event.recorded_at
            )
            await conn.execute(_BAN, ip, event.recorded_at, self.window, self.failures, self.base)
        await conn.execute(
            "DELETE FROM firewall.failures WHERE at < $1::timestamptz - make_interval(secs => $2)",
            datetime.now(UTC),
            self.window,
        )


# One statement: ban `ip` at `at` unless it is banned then, if it has enough failures in the
# window since its last ban began; the length doubles with each earlier ban.
_BAN = """
WITH last AS (
    SELECT max(since) AS since, count(*) AS strikes, max(until) AS until
    FROM firewall.bans WHERE ip = $1::inet
), recent AS (
    SELECT count(*) AS n FROM firewall.failures, last
    WHERE ip = $1::inet AND at > $2::timestamptz - make_interval(secs => $3::int)
      AND at <= $2::timestamptz AND (last.since IS NULL OR at > last.since)
)
INSERT INTO firewall.bans (ip, since, until, strikes)
SELECT $1::inet, $2::timestamptz,
       $2::timestamptz + make_interval(secs => $5::int * power(2, last.strikes)),
       last.strikes + 1
FROM last, recent
WHERE recent.n >= $4::int AND (last.until IS NULL OR last.until <= $2::timestamptz)
ON CONFLICT DO NOTHING
"""


def _setting(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw.strip().isdigit() and int(raw) > 0 else default


def _address(event: RecordedEvent) -> str | None:
    """The client address of a failure, if it is a valid IP address (it reaches nft)."""
    raw = event.data.get("ip") or event.meta.get("ip")
    if not isinstance(raw, str):
        return None
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return None


class NftError(Exception):
    """nft refused a command; the message is nft's own."""


# SSH: more than 5 new connections within 10 s from one address are dropped (SECURITY.md).
_SSH = "tcp dport { 22, 202 } ct state new"
_OVER = "limit rate over 5/minute burst 5 packets"  # 5 at once, then one per 12 s


def ruleset(table: str) -> str:
    """The whole table, as an `nft -f` script that replaces any earlier version of it."""
    return f"""table inet {table}
delete table inet {table}
table inet {table} {{
    set banned4 {{ type ipv4_addr; flags timeout; }}
    set banned6 {{ type ipv6_addr; flags timeout; }}
    set ssh4 {{ type ipv4_addr; size 65535; flags dynamic, timeout; timeout 1m; }}
    set ssh6 {{ type ipv6_addr; size 65535; flags dynamic, timeout; timeout 1m; }}
    chain input {{
        type filter hook input priority filter - 10; policy accept;
        ip saddr @banned4 drop
        ip6 saddr @banned6 drop
        {_SSH} add @ssh4 {{ ip saddr {_OVER} }} drop
        {_SSH} add @ssh6 {{ ip6 saddr {_OVER} }} drop
    }}
}}
"""


class BanSet:
    """The nftables side: install the table, add bans, read what is there."""

    def __init__(self, nft: Sequence[str], table: str) -> None:
        self.nft = list(nft)
        self.table = table
        self.applied: dict[str, datetime] = {}  # address -> end of the ban put in the set

    async def _run(self, *args: str, stdin: str | None = None) -> str:
        proc = await asyncio.create_subprocess_exec(
            *self.nft,
            *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
        if proc.returncode != 0:
            raise NftError(f"nft {' '.join(args)} failed: {err.decode(errors='replace').strip()}")
        return out.decode()

    async def install(self) -> None:
        """Check the table with `nft -c`, then replace it atomically (`nft -f`)."""
        script = ruleset(self.table)
        await self._run("-c", "-f", "-", stdin=script)
        await self._run("-f", "-", stdin=script)
        self.applied.clear()

    async def ban(self, ip: str, until: datetime) -> None:
        left = (until - datetime.now(UTC)).total_seconds()
        if left <= 0:
            return
        seconds = math.ceil(left)  # never shorter than the ban: the kernel may end it late
        family = "banned6" if ipaddress.ip_address(ip).version == 6 else "banned4"
        element = f"{{ {ip} timeout {seconds}s }}"
        await self._run("add", "element", "inet", self.table, family, element)
        self.applied[ip] = until

    async def elements(self) -> dict[str, int]:
        """Address -> seconds its ban was set for, as the kernel holds them now."""
        out: dict[str, int] = {}
        for name in ("banned4", "banned6"):
            doc = json.loads(await self._run("-j", "list", "set", "inet", self.table, name))
            for item in doc.get("nftables", []):
                for elem in item.get("set", {}).get("elem", []):
                    if isinstance(elem, dict) and "elem" in elem:
                        out[str(elem["elem"]["val"])] = int(elem["elem"].get("timeout", 0))
        return out

    async def reconcile(self, pool: asyncpg.Pool) -> int:
        """Put every active ban not yet in the set into it; returns how many were added."""
        rows = await pool.fetch(
            "SELECT host(ip) AS ip, max(until) AS until FROM firewall.bans"
            " WHERE until > now() GROUP BY ip"
        )
        added = 0
        for r in rows:
            if self.applied.get(r["ip"]) != r["until"]:
                await self.ban(r["ip"], r["until"])
                log.info("address %s banned until %s", r["ip"], r["until"].isoformat())
                added += 1
        return added
