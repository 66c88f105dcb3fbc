"""The embedded stack's Postgres clusters are sized for a small server (idle_memory benchmark)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from deploy.embedded import EmbeddedError, PostgresServer
from deploy.planning import MAX_CONNECTIONS
from tests.support.servers import started


@pytest.fixture(scope="module")
def small_pg(tmp_root: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_root / "pg-small", fsync=False, max_connections=MAX_CONNECTIONS)
    yield from started(server, "postgres", EmbeddedError)


async def test_the_stack_postgres_allows_fewer_connections_and_runs_no_replication_launcher(
    small_pg: PostgresServer,
) -> None:
    conn = await asyncpg.connect(small_pg.dsn)
    try:
        assert await conn.fetchval("SHOW max_connections") == str(MAX_CONNECTIONS)
        assert await conn.fetchval("SHOW jit") == "off"  # as the server's units
        # the background workers start just after the server takes connections: a loaded
        # machine can ask before them (a CI run did), so ask until they are there (10 s)
        wanted = {"checkpointer", "walwriter", "autovacuum launcher"}
        deadline = time.monotonic() + 10
        while True:
            rows = await conn.fetch("SELECT backend_type FROM pg_stat_activity")
            kinds = {r["backend_type"] for r in rows}
            if wanted <= kinds or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    assert "logical replication launcher" not in kinds
    assert wanted <= kinds, kinds
    assert MAX_CONNECTIONS >= 8 * 10, "8 processes: pools of 5, projection stores of 2, listeners"
