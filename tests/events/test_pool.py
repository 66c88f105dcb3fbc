"""The store's pool resets only connections that took session state (libs/events/pool.py):
a session advisory lock left behind, by an error, a cancellation or a forgotten unlock, is
released as its connection returns, and every session lock in the code is marked first."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import asyncpg

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
