"""The store's connection pool, and the one thing its connections may keep between uses.

asyncpg resets a connection each time it returns to the pool (`SELECT pg_advisory_unlock_all();
CLOSE ALL; UNLISTEN *; RESET ALL`): one more round trip after every query or transaction. Our
code keeps no session state on pooled connections (no SET, LISTEN or WITH HOLD cursor; listeners
use connections of their own), except session advisory locks (migrations, projection setup and
rebuild, the relay's lock). So the pool resets only a connection marked with
`keep_session_state`, called *before* such a lock is taken: a lock a crash, an error or a
cancellation leaves behind is released as the connection comes back, whatever the code around
it did. asyncpg itself still rolls back a transaction left open and drops Python-side listeners.

A connection's life after use depends on how the pool is used (`_Uses`). A pool asked again
within IDLE_CONNECTION_S of its last use is at work (a user clicking through the dashboard,
commands coming): its connections stay that long, and the next query finds one open. A use
after a longer quiet (a service's round at rest: every 15-60 s) closes its connection
QUICK_CLOSE_S after, instead of keeping a Postgres backend (~3.5 MiB) for IDLE_CONNECTION_S of
every round; the first query of a busy spell pays a new connection (~7.5 ms), as it did.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import asyncpg

__all__ = [
    "IDLE_CONNECTION_S",
    "QUICK_CLOSE_S",
    "StoreConnection",
    "keep_session_state",
    "open_pool",
    "reset_connection",
]

# A pooled connection unused this long is closed (above min_size) while the pool is at work.
# Most services' periodic work (the edge's 30 s safety poll, dns and backup rounds) comes every
# 15-60 s: with 5 s, a backend lived ~5 s of each period instead of all of it (measured: 6
# backends at rest -> 2); a lone use now closes its connection after QUICK_CLOSE_S (`_Uses`):
# 1.54 -> 0.36 backends beyond the relay's at rest, a sample every 0.5 s for 90 s.
IDLE_CONNECTION_S = 5.0
# A use after a quiet longer than IDLE_CONNECTION_S closes its connection this long after, unless
# the pool is asked again meanwhile; also the gap that ends a burst of queries (one round's).
QUICK_CLOSE_S = 0.5


class StoreConnection(asyncpg.Connection):  # type: ignore[misc]  # asyncpg is untyped
    """A pooled connection that knows whether it holds session state."""

    session_state = False

    def mark_session_state(self) -> None:
        self.session_state = True


def keep_session_state(conn: Any) -> None:
    """Call before taking a session advisory lock on `conn` (pooled or not): a pooled
    connection is then fully reset when it returns to the pool."""
    mark = getattr(conn, "mark_session_state", None)  # a pool proxy passes it on
    if mark is not None:
        mark()


async def reset_connection(conn: asyncpg.Connection) -> None:
    """The pool's reset: the full one only for a connection marked by keep_session_state."""
    if getattr(conn, "session_state", False):
        await conn.execute(conn.get_reset_query())
        conn.session_state = False


class _Uses:
    """When the pool's connections are taken and given back: a use is part of a busy spell
    (the pool was last used at most `idle` s before) or a lone one, whose connection is closed
    `quick` s after it comes back unless it is taken again (or is one of min_size's)."""

    def __init__(self, *, quick: float, idle: float) -> None:
        self.quick = quick
        self.idle = idle
        self.pool: asyncpg.Pool | None = None
        self.last_back = -math.inf  # loop time a connection last came back
        self.takes = 0  # connections taken so far
        self.busy = False  # the burst of uses under way follows another within `idle` s

    async def taken(self, _proxy: Any) -> None:  # the pool's `setup`: at every acquire
        self.takes += 1
        gap = asyncio.get_running_loop().time() - self.last_back
        pool = self.pool
        # a new burst: a pause longer than a burst's gaps, and no other connection out (this
        # one counts as idle until setup returns)
        if gap > self.quick and pool is not None and pool.get_size() == pool.get_idle_size():
            self.busy = gap <= self.idle

    async def back(self, conn: Any) -> None:  # the pool's `reset`: at every release
        await reset_connection(conn)
        loop = asyncio.get_running_loop()
        self.last_back = loop.time()
        if not self.busy:
            loop.call_later(self.quick, self._close_if_unused, conn, self.takes)

    def _close_if_unused(self, conn: StoreConnection, takes: int) -> None:
        pool = self.pool
        if pool is None or pool.is_closing() or conn.is_closed():
            return
        if self.takes != takes or self.busy or pool.get_size() <= pool.get_min_size():
            return  # taken since (this one, LIFO, or another): asyncpg's idle timeout decides
        conn.terminate()  # idle in the pool: asyncpg's own idle timeout does the same


async def open_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    quick_close_s: float = QUICK_CLOSE_S,
    idle_s: float = IDLE_CONNECTION_S,
) -> asyncpg.Pool:
    """A pool of StoreConnections that resets only what keeps session state and closes a
    lone use's connection soon after (`_Uses`)."""
    uses = _Uses(quick=quick_close_s, idle=idle_s)
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        connection_class=StoreConnection,
        setup=uses.taken,
        reset=uses.back,
        # an idle connection costs a Postgres backend (~3.5 MiB): close it after
        # IDLE_CONNECTION_S unused, down to min_size (asyncpg's default waits 300 s)
        max_inactive_connection_lifetime=idle_s,
    )
    uses.pool = pool
    return pool
