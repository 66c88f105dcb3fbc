"""The firewall's read model: failed sign-ins per address and the bans they earn.

`BanProjection` follows `LoginFailed` events (identity writes them with the client address) and
decides bans in SQL from the events' own times, so replaying the log gives the same bans: an
address with `failures` failures within `window` (counting only failures after its last ban
began) is banned for `base * 2^(strikes - 1)`, strikes being 1 for its first ban.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import asyncpg

from libs.events.envelope import RecordedEvent
from libs.events.periods import AddressReader, PeriodKeys, readable
from libs.events.projection import Projection, register_projection
from libs.service.config import AddressKeyFile, ServiceConfig, load_config
from libs.service.metrics import REGISTRY, Gauge
from services.firewall.config import BanPolicy
from services.firewall.rules import RulesProjection

# RulesProjection is registered here too: `homeport replay firewall` finds projections by
# importing each service's `projections` module.
__all__ = ["BanProjection", "Clock", "RulesProjection", "active_bans", "address_keys", "utcnow"]

Clock = Callable[[], datetime]
# No address in a label: addresses are personal data, kept sealed and forgotten by time.
BANS_ACTIVE = Gauge(
    "homeport_firewall_bans_active",
    "Addresses banned now (each enforcement round)",
    registry=REGISTRY,
)


def utcnow() -> datetime:
    """The wall clock, timezone-aware (the default `Clock`)."""
    return datetime.now(UTC)


@register_projection
class BanProjection(Projection):
    """Failed sign-ins per address, and the bans they earn (schema `firewall`)."""

    name: ClassVar[str] = "firewall_bans"
    schema: ClassVar[str] = "firewall"
    subject: ClassVar[str] = "signin.LoginFailed"
    migrations: ClassVar[Path | None] = Path(__file__).parent / "migrations"

    def __init__(
        self,
        policy: BanPolicy,
        *,
        clock: Clock = utcnow,
        addresses: AddressReader | None = None,
    ) -> None:
        """`addresses`: identity's weeks' keys, read only; a failure whose address cannot be
        read (its week's key destroyed, or no keys given) earns no ban."""
        self.failures = policy.ban_failures
        self.window = policy.ban_window_seconds
        self.base = policy.ban_seconds
        self.clock = clock  # only prunes failures too old to count; decisions use event times
        self.addresses = addresses

    @classmethod
    def for_replay(cls) -> BanProjection:
        """`homeport replay firewall_bans`: the same HP_BAN_* settings and key file as the
        service's, so a rebuild decides the same bans while the weeks' keys exist."""
        policy = load_config(BanPolicy)
        return cls(policy, addresses=address_keys(load_config(AddressKeyFile)))

    def wants(self, event: RecordedEvent) -> bool:
        return event.type == "LoginFailed"

    async def reset(self, conn: asyncpg.Connection) -> None:
        await conn.execute("TRUNCATE firewall.failures, firewall.bans")

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        for event in events:
            ip = _address(event, self.addresses)
            if ip is None:
                continue
            await conn.execute(
                "INSERT INTO firewall.failures (ip, at) VALUES ($1, $2)", ip, event.recorded_at
            )
            await conn.execute(_BAN, ip, event.recorded_at, self.window, self.failures, self.base)
        await conn.execute(
            "DELETE FROM firewall.failures WHERE at < $1::timestamptz - make_interval(secs => $2)",
            self.clock(),
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


async def active_bans(pool: asyncpg.Pool, at: datetime) -> dict[str, datetime]:
    """Address -> end of its latest ban, for every address banned at `at`."""
    rows = await pool.fetch(
        "SELECT host(ip) AS ip, max(until) AS until FROM firewall.bans"
        " WHERE until > $1::timestamptz GROUP BY ip",
        at,
    )
    BANS_ACTIVE.set(len(rows))
    return {r["ip"]: r["until"] for r in rows}


def address_keys(cfg: AddressKeyFile | ServiceConfig) -> PeriodKeys:
    """Identity's key file opened to read (no keys while it does not exist)."""
    return PeriodKeys(cfg.ip_keys_path, writer=False)


def _address(event: RecordedEvent, addresses: AddressReader | None) -> str | None:
    """The client address of a failure, if it is a valid IP address (it reaches nft); sealed
    ones read back while their week's key exists (bans look at the last minutes only)."""
    raw = readable(addresses, event.data.get("ip") or event.meta.get("ip"))
    if raw is None:
        return None
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return None
