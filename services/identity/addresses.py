"""Client addresses and browser strings that expire (issue 16): identity owns the weeks' keys.

Events hold them only sealed to their week's key (libs/events/periods.py): `meta.ip` of every
event identity appends (the store seals it), and `ip`/`user_agent` of `SessionStarted` and
`LoginFailed` (sealed here), and `place` of `SessionStarted`. The read model keeps a plain copy
where a rule needs one (sessions, known addresses and places, failed sign-ins), unsealed as
events are applied, and for no longer than the retention period. Housekeeping makes the
coming weeks' keys and destroys the old ones; the `addresses` query reads sealed values back for
the activity log and notify's sign-in notices (the gateway holds no key; nor does notify).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

import asyncpg

from libs.events.handlers import query
from libs.events.periods import AddressReader, PeriodKeys, readable
from libs.service.config import AddressKeyFile, load_config
from services.identity.clock import Clock, utcnow

__all__ = ["ADDRESS_FIELDS", "Addresses", "keys_for_replay", "sealed", "unsealed"]

log = logging.getLogger(__name__)

# The fields of identity's events that hold a client's address or browser string (or, for
# `place`, a keyed hash of both: sealed all the same, so it expires with them).
ADDRESS_FIELDS = ("ip", "user_agent", "place")


def sealed(keys: PeriodKeys | None, value: str | None) -> str | None:
    """`value` sealed to this week's key (as is without keys: tests that do not care)."""
    if keys is None or not value or value.startswith("hp:sealed:"):
        return value
    return keys.seal(value)


def unsealed(keys: AddressReader | None, event: Any) -> Any:
    """A decoded event with its sealed address fields read back (None once expired)."""
    if not dataclasses.is_dataclass(event) or isinstance(event, type):
        return event
    changed = {
        name: readable(keys, value)
        for name in ADDRESS_FIELDS
        if isinstance(value := getattr(event, name, None), str) and value.startswith("hp:sealed:")
    }
    return dataclasses.replace(event, **changed) if changed else event


def keys_for_replay() -> PeriodKeys | None:
    """Identity's key file opened to read (HP_IP_KEYS or <HP_DATA_DIR>/ip-keys.json), or None
    where there is none: a rebuild then keeps no address of a sealed event."""
    path = load_config(AddressKeyFile).ip_keys_path
    return PeriodKeys(path, writer=False) if path.exists() else None


class Addresses:
    """The weeks' keys: made ahead and destroyed after `retention`; the `addresses` query."""

    def __init__(
        self,
        keys: PeriodKeys,
        pool: asyncpg.Pool,
        *,
        retention: timedelta,
        require_admin: Callable[[], Awaitable[str]],
        clock: Clock = utcnow,
    ) -> None:
        self.keys = keys
        self.pool = pool
        self.retention = retention
        self._require_admin = require_admin
        self.clock = clock

    async def prune(self) -> None:
        """Make this and next week's keys, destroy weeks past the retention period, and forget
        plain addresses the read model kept longer than it."""
        gone = await asyncio.to_thread(self.keys.housekeep, self.retention)
        if gone:
            log.info("client addresses of weeks %s have expired", ", ".join(gone))
        await self.pool.execute(
            "DELETE FROM identity.known_addresses WHERE last_at < $1", self.clock() - self.retention
        )
        await self.pool.execute(
            "DELETE FROM identity.known_places WHERE last_at < $1", self.clock() - self.retention
        )

    @query("addresses")
    async def addresses(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Sealed addresses read back for an administrator (the activity log) or the platform
        (notify's sign-in notices): the text, or None for one whose week's key is destroyed (or
        that is not an address identity sealed)."""
        await self._require_admin()
        return {"values": [readable(self.keys, v) for v in payload["values"]]}
