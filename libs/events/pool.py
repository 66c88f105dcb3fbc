"""The store's connection pool, and the one thing its connections may keep between uses.

asyncpg resets a connection each time it returns to the pool (`SELECT pg_advisory_unlock_all();
CLOSE ALL; UNLISTEN *; RESET ALL`): one more round trip after every query or transaction. Our
code keeps no session state on pooled connections (no SET, LISTEN or WITH HOLD cursor; listeners
use connections of their own), except session advisory locks (migrations, projection setup and
rebuild, the relay's lock). So the pool resets only a connection marked with
`keep_session_state`, called *before* such a lock is taken: a lock a crash, an error or a
cancellation leaves behind is released as the connection comes back, whatever the code around
it did. asyncpg itself still rolls back a transaction left open and drops Python-side listeners.
"""

from __future__ import annotations

from typing import Any

import asyncpg

__all__ = [
    "IDLE_CONNECTION_S",
    "StoreConnection",
    "keep_session_state",
    "open_pool",
    "reset_connection",
]

# A pooled connection unused this long is closed (above min_size). Most services' periodic
# work (the edge's 30 s safety poll, dns and backup rounds) comes every 30-60 s: with 5 s, a
# backend lives ~5 s of each period instead of all of it (measured: 6 backends at rest -> 2,
# ~2.5 MiB each); the next query opens one again in a few ms.
IDLE_CONNECTION_S = 5.0


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


async def open_pool(dsn: str, *, min_size: int, max_size: int) -> asyncpg.Pool:
    """A pool of StoreConnections that resets only what keeps session state."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        connection_class=StoreConnection,
        reset=reset_connection,
        # an idle connection costs a Postgres backend (~2-3 MiB): close it after
        # IDLE_CONNECTION_S unused, down to min_size (asyncpg's default waits 300 s)
        max_inactive_connection_lifetime=IDLE_CONNECTION_S,
    )
    return pool
