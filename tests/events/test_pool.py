"""The store's pool resets only connections that took session state (libs/events/pool.py):
a session advisory lock left behind, by an error, a cancellation or a forgotten unlock, is
released as its connection returns, and every session lock in the code is marked first."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.events.pool import keep_session_state, open_pool
from libs.events.store import PostgresEventStore

ROOT = Path(__file__).resolve().parents[2]
KEY = 4242


async def advisory_locks(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
                " WHERE l.locktype = 'advisory' AND a.datname = current_database()"
                " AND l.granted AND a.pid <> pg_backend_pid()"
            )
        )
    finally:
        await conn.close()


async def test_an_unmarked_connection_comes_back_without_a_reset_round_trip(dsn: str) -> None:
    pool = await open_pool(dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("SET application_name = 'kept'")
        async with pool.acquire() as conn:
            # no RESET ALL ran: the one query was not followed by another
            assert await conn.fetchval("SHOW application_name") == "kept"
            keep_session_state(conn)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW application_name") != "kept"  # the full reset ran
            assert conn.session_state is False
    finally:
        await pool.close()


async def test_a_lock_left_behind_is_released_as_its_connection_returns(dsn: str) -> None:
    pool = await open_pool(dsn, min_size=1, max_size=1)
    try:
        # forgotten
        async with pool.acquire() as conn:
            keep_session_state(conn)
            await conn.execute("SELECT pg_advisory_lock($1)", KEY)
        assert await advisory_locks(dsn) == 0

        # an error between lock and unlock
        try:
            async with pool.acquire() as conn:
                keep_session_state(conn)
                await conn.execute("SELECT pg_advisory_lock($1)", KEY)
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        assert await advisory_locks(dsn) == 0

        # a cancellation while the lock is held
        held = asyncio.Event()

        async def hold() -> None:
            async with pool.acquire() as conn:
                keep_session_state(conn)
                await conn.execute("SELECT pg_advisory_lock($1)", KEY)
                held.set()
                await asyncio.sleep(60)

        task = asyncio.create_task(hold())
        await asyncio.wait_for(held.wait(), 10)
        assert await advisory_locks(dsn) == 1
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert await advisory_locks(dsn) == 0

        # a transaction left open is rolled back (by asyncpg itself), unmarked too
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("SELECT pg_advisory_xact_lock($1)", KEY)
        assert await advisory_locks(dsn) == 0
    finally:
        await pool.close()


async def test_the_store_migrates_under_a_marked_lock_and_holds_none_after(dsn: str) -> None:
    store = await PostgresEventStore.open(dsn, max_size=2)
    try:
        assert await advisory_locks(dsn) == 0
        async with store.pool.acquire() as conn:
            assert conn.session_state is False  # reset on its way back
    finally:
        await store.close()


def test_every_session_advisory_lock_is_marked_first() -> None:
    """A session lock taken without keep_session_state would outlive its user in the pool."""
    lock = re.compile(r"pg_(try_)?advisory_lock(_shared)?\(")
    unmarked = []
    for path in sorted([*ROOT.glob("libs/**/*.py"), *ROOT.glob("services/**/*.py")]):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if lock.search(line) and not any(
                "keep_session_state(" in before for before in lines[max(0, i - 3) : i]
            ):
                unmarked.append(f"{path.relative_to(ROOT)}:{i + 1}: {line.strip()}")
    assert not unmarked, "session advisory locks not marked with keep_session_state:\n" + (
        "\n".join(unmarked)
    )


# -- how long a connection outlives its use (pool.py `_Uses`) ----------------------------------


class Backends:
    """The Postgres backends of this test's database, seen from a connection of its own."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def count(self) -> int:
        return int(
            await self.conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
        )

    async def settle_at(self, want: int, within: float = 5.0) -> int:
        """The count once it is `want`, or what it is after `within` s (a closed socket
        takes its backend a few ms to leave)."""
        end = asyncio.get_running_loop().time() + within
        while (n := await self.count()) != want and asyncio.get_running_loop().time() < end:
            await asyncio.sleep(0.02)
        return n


@pytest.fixture
async def backends(dsn: str) -> AsyncIterator[Backends]:
    conn = await asyncpg.connect(dsn)
    try:
        yield Backends(conn)
    finally:
        await conn.close()


async def test_a_lone_use_after_a_quiet_closes_its_connection_soon_after(
    dsn: str, backends: Backends
) -> None:
    """A service's round at rest (a few queries every 15-60 s) keeps no backend for the
    pool's idle time: here 30 s, and the connection goes within a second."""
    pool = await open_pool(dsn, min_size=0, max_size=2, quick_close_s=0.2, idle_s=30)
    try:
        assert await pool.fetchval("SELECT 1") == 1
        assert await pool.fetchval("SELECT 2") == 2  # the same burst, the same connection
        assert await backends.count() == 1
        assert await backends.settle_at(0, within=3) == 0
        assert await pool.fetchval("SELECT 3") == 3  # the next use opens one again
    finally:
        await pool.close()


async def test_a_pool_asked_again_soon_keeps_its_connection_for_the_idle_time(
    dsn: str, backends: Backends
) -> None:
    """A user at work (a use within idle_s of the last) finds a connection open: it is kept
    idle_s after each use, then closed."""
    pool = await open_pool(dsn, min_size=0, max_size=2, quick_close_s=0.1, idle_s=1.5)
    try:
        await pool.fetchval("SELECT 1")  # after a quiet: closed 0.1 s after
        assert await backends.settle_at(0, within=3) == 0
        await pool.fetchval("SELECT 2")  # asked again within idle_s: a busy spell
        await asyncio.sleep(0.6)  # six times the quick close
        assert await backends.count() == 1
        await pool.fetchval("SELECT 3")  # still busy: the same connection, no new one
        assert await backends.count() == 1
        assert await backends.settle_at(0, within=4) == 0  # idle_s unused: closed
    finally:
        await pool.close()


async def test_a_connection_taken_again_before_its_close_is_never_cut_in_use(
    dsn: str, backends: Backends
) -> None:
    pool = await open_pool(dsn, min_size=0, max_size=1, quick_close_s=0.2, idle_s=30)
    try:
        await pool.fetchval("SELECT 1")  # a lone use: its close is due in 0.2 s
        async with pool.acquire() as conn:  # taken again at once: the same burst
            await asyncio.sleep(0.5)  # past the close that was due
            assert await conn.fetchval("SELECT 2") == 2
            assert await backends.count() == 1
        assert await backends.settle_at(0, within=3) == 0  # its own release's close
    finally:
        await pool.close()


async def test_the_pools_floor_is_never_closed(dsn: str, backends: Backends) -> None:
    pool = await open_pool(dsn, min_size=1, max_size=2, quick_close_s=0.1, idle_s=30)
    try:
        await pool.fetchval("SELECT 1")
        await asyncio.sleep(0.5)
        assert await backends.count() == 1
        assert await pool.fetchval("SELECT 2") == 2
    finally:
        await pool.close()


_STEP = st.tuples(
    st.sampled_from([0.0, 0.03, 0.12, 0.3]),  # pause before the step (quick 0.05, idle 0.2)
    st.integers(min_value=1, max_value=3),  # uses at once
    st.sampled_from([0.0, 0.08]),  # how long each holds its connection
)


@settings(
    max_examples=12,
    deadline=None,
    # each example opens its own pool and ends with no backend: the database is fit to reuse
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(_STEP, min_size=1, max_size=6))
async def test_whatever_the_pattern_of_uses_no_query_fails_and_the_backends_go(
    dsn: str, backends: Backends, steps: list[tuple[float, int, float]]
) -> None:
    """Property: bursts, pauses and uses at once in any order: every query answers (no
    connection is closed under a user), and once the pool rests, no backend is left."""
    pool = await open_pool(dsn, min_size=0, max_size=3, quick_close_s=0.05, idle_s=0.2)
    try:

        async def use(hold: float) -> int:
            async with pool.acquire() as conn:
                await asyncio.sleep(hold)
                return int(await conn.fetchval("SELECT 7"))

        for pause, at_once, hold in steps:
            await asyncio.sleep(pause)
            assert await asyncio.gather(*(use(hold) for _ in range(at_once))) == [7] * at_once
        assert await backends.settle_at(0, within=3) == 0
    finally:
        await pool.close()
