"""The relay and JetStream-fed projections against real Postgres and nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import nats.js.errors
import pytest

from deploy.embedded import NatsServer
from libs.events.envelope import NewEvent
from libs.events.projection import ProjectionRunner
from libs.events.relay import Relay, _Acks, ensure_stream
from libs.events.store import PostgresEventStore
from tests.events.relaykit import Applied, applied_report, write_events
from tests.support.bus import connect
from tests.support.waits import wait_until

REPO = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def running(*runners: Relay | ProjectionRunner) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(r.run()) for r in runners]
    try:
        yield
    finally:
        for r in runners:
            r.stop()
        done, pending = await asyncio.wait(tasks, timeout=15)
        for t in pending:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        assert not pending, "relay/projection did not stop within 15 s"


async def test_relay_publishes_in_order_with_ids_and_subjects(
    store: PostgresEventStore, nats_url: str, uniq: str, tmp_path: Path
) -> None:
    stream, prefix = f"EV_{uniq}", f"t{uniq}.evt"
    first = await store.append(
        "app-one", [NewEvent("AppInstalled", {"n": 1}), NewEvent("AppStarted", {"n": 2})]
    )
    await store.append("user-two", [NewEvent("UserCreated", {"n": 3})])
    nc = await connect(nats_url)
    try:
        relay = Relay(store, nc, stream=stream, prefix=prefix, window=8)
        async with running(relay):
            await wait_until(lambda: _at(relay, 3), 20, "relay to publish 3 events")
        js = nc.jetstream()
        info = await js.stream_info(stream)
        assert info.state.messages == 3
        msgs = [await js.get_msg(stream, seq=s) for s in (1, 2, 3)]
        assert [m.subject for m in msgs] == [
            f"{prefix}.app.AppInstalled",
            f"{prefix}.app.AppStarted",
            f"{prefix}.user.UserCreated",
        ]
        events = await store.read_all(0, 10)
        assert [m.headers["Nats-Msg-Id"] for m in msgs] == [str(e.id) for e in events]
        assert [m.headers["Hp-Position"] for m in msgs] == ["1", "2", "3"]
        assert first.positions == (1, 2)
        cp = await store.pool.fetchval(
            "SELECT position FROM events.relay_checkpoint WHERE name = 'relay'"
        )
        assert cp == 3
        # A second relay run publishes nothing again.
        relay2 = Relay(store, nc, stream=stream, prefix=prefix)
        async with running(relay2):
            await asyncio.wait_for(relay2.ready.wait(), 10)
            await asyncio.sleep(0.5)
        assert (await js.stream_info(stream)).state.messages == 3
        await js.delete_stream(stream)
    finally:
        await nc.close()


async def _at(relay: Relay, position: int) -> bool:
    return relay.position >= position


async def test_projection_catches_up_from_postgres_then_follows_jetstream(
    store: PostgresEventStore, nats_url: str, uniq: str, tmp_path: Path, dsn: str
) -> None:
    stream, prefix = f"EV_{uniq}", f"t{uniq}.evt"
    await write_events(store, 300)
    nc = await connect(nats_url)
    try:
        proj = ProjectionRunner(
            Applied(tmp_path / "m"), store, nc, stream=stream, prefix=prefix, batch=50
        )
        relay = Relay(store, nc, stream=stream, prefix=prefix)
        async with running(relay, proj):
            await asyncio.wait_for(proj.live.wait(), 20)
            await write_events(store, 700, pause=0.002)
            head = await store.head()
            await wait_until(lambda: _cp(proj, head), 30, "projection to reach the head")
        rows, distinct, positions = await applied_report(dsn)
        assert rows == distinct == 1000
        assert positions == list(range(1, 1001))
        # rebuild from Postgres gives the same read model
        assert await proj.rebuild() == 1000
        assert (await applied_report(dsn))[2] == list(range(1, 1001))
        await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


async def _cp(proj: ProjectionRunner, head: int) -> bool:
    return await proj.checkpoint() >= head


async def test_nats_down_for_a_while_loses_nothing_and_applies_nothing_twice(
    store: PostgresEventStore, uniq: str, tmp_path: Path, dsn: str
) -> None:
    server = NatsServer(tmp_path / "nats", harness=True)
    server.start()
    nc_relay = nc_proj = None
    try:
        stream, prefix = f"EV_{uniq}", f"t{uniq}.evt"
        nc_relay, nc_proj = await connect(server.harness_url), await connect(server.harness_url)
        relay = Relay(store, nc_relay, stream=stream, prefix=prefix, window=64, ack_timeout=1.0)
        proj = ProjectionRunner(
            Applied(tmp_path / "m"),
            store,
            nc_proj,
            stream=stream,
            prefix=prefix,
            batch=100,
            fetch_timeout=0.5,
        )
        async with running(relay, proj):
            writer = asyncio.create_task(write_events(store, 4000, writers=8, pause=0.02))
            await wait_until(lambda: _applied_some(proj), 30, "the projection to apply events")
            await asyncio.to_thread(server.stop)
            await asyncio.sleep(3)  # events keep being committed while NATS is down
            assert not writer.done(), "the writer finished before NATS came back; slow it down"
            await asyncio.to_thread(server.start)
            await writer
            head = await store.head()
            assert head == 4000
            await wait_until(lambda: _cp(proj, head), 60, "projection to reach the head")
        rows, distinct, positions = await applied_report(dsn)
        assert (rows, distinct) == (4000, 4000), "an event was lost or applied twice"
        assert positions == list(range(1, 4001))
        js = nc_relay.jetstream()
        info = await js.stream_info(stream)
        assert info.state.messages == 4000, "the stream holds a duplicate or misses an event"
    finally:
        server.start() if server.pid is None else None
        for nc in (nc_relay, nc_proj):
            if nc is not None:
                await nc.close()
        server.stop()


async def _applied_some(proj: ProjectionRunner) -> bool:
    return proj.applied > 200


async def test_relay_killed_with_sigkill_restarts_without_loss_or_duplicates(
    store: PostgresEventStore, nats_url: str, uniq: str, tmp_path: Path, dsn: str
) -> None:
    stream, prefix = f"EV_{uniq}", f"t{uniq}.evt"
    env = {
        **os.environ,
        "HP_DATABASE_URL": dsn,
        "HP_NATS_URL": nats_url,
        "HP_HTTP_PORT": "0",
        "HP_EVENTS_STREAM": stream,
        "HP_EVENTS_PREFIX": prefix,
        "HP_RELAY_WINDOW": "64",
        "HP_KEYRING": str(tmp_path / "keyring.json"),
        "HP_DATA_DIR": str(tmp_path),
    }

    async def start() -> asyncio.subprocess.Process:
        with open(tmp_path / "relay.log", "ab") as log:
            return await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "libs.events.relay",
                env=env,
                cwd=REPO,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
            )

    nc = await connect(nats_url)
    procs: list[asyncio.subprocess.Process] = []
    try:
        js = nc.jetstream()
        proj = ProjectionRunner(
            Applied(tmp_path / "m"),
            store,
            nc,
            stream=stream,
            prefix=prefix,
            batch=100,
            fetch_timeout=0.5,
        )
        async with running(proj):
            writer = asyncio.create_task(write_events(store, 6000, writers=8, pause=0.002))
            procs.append(await start())

            async def stream_has(n: int) -> bool:
                try:
                    return (await js.stream_info(stream)).state.messages >= n
                except Exception:
                    return False

            await wait_until(lambda: stream_has(500), 30, "the relay to publish 500 events")
            procs[0].send_signal(signal.SIGKILL)
            assert await procs[0].wait() == -signal.SIGKILL
            killed_at = (await js.stream_info(stream)).state.messages
            await asyncio.sleep(1.0)
            procs.append(await start())
            await writer
            assert killed_at < 6000, "the relay finished before it was killed"
            head = await store.head()
            await wait_until(lambda: _cp(proj, head), 60, "projection to reach the head")
        rows, distinct, positions = await applied_report(dsn)
        assert (rows, distinct) == (6000, 6000)
        assert positions == list(range(1, 6001))
        info = await js.stream_info(stream)
        assert info.state.messages == 6000
        await js.delete_stream(stream)
    finally:
        for p in procs:
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(p.wait(), 15)
                except TimeoutError:
                    p.kill()
                    await p.wait()
        await nc.close()
    assert procs[-1].returncode == 0, (tmp_path / "relay.log").read_text()[-3000:]


async def test_relay_reports_its_lag_in_events_and_seconds(
    store: PostgresEventStore, nats_url: str, uniq: str
) -> None:
    from libs.service.metrics import RELAY_LAG_EVENTS, RELAY_LAG_SECONDS

    await write_events(store, 5, writers=1)
    await asyncio.sleep(0.3)
    nc = await connect(nats_url)
    try:
        relay = Relay(store, nc, stream=f"EV_{uniq}", prefix=f"t{uniq}.evt")
        await relay._update_lag()  # nothing published yet
        assert RELAY_LAG_EVENTS.get() == 5
        assert RELAY_LAG_SECONDS.get() >= 0.3
        async with running(relay):
            await wait_until(lambda: _at(relay, 5), 20, "relay to publish 5 events")
            await asyncio.sleep(0.2)
            assert RELAY_LAG_EVENTS.get() == 0
            assert RELAY_LAG_SECONDS.get() == 0
        await nc.jetstream().delete_stream(f"EV_{uniq}")
    finally:
        await nc.close()


async def _lock_holders(dsn: str) -> list[int]:
    """Backends of this test's database holding an advisory lock (the relay's)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
            " WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()"
        )
    finally:
        await conn.close()
    return [r["pid"] for r in rows]


async def test_relay_losing_its_lock_connection_takes_the_lock_again_and_loses_nothing(
    store: PostgresEventStore, nats_url: str, uniq: str, dsn: str
) -> None:
    """The lock's connection also LISTENs: when Postgres drops it, the relay takes the lock on
    a new connection and goes on publishing, nothing lost or sent twice."""
    stream, prefix = f"EV_{uniq}", f"t{uniq}.evt"
    await write_events(store, 40)
    nc = await connect(nats_url)
    try:
        relay = Relay(store, nc, stream=stream, prefix=prefix, window=8)
        async with running(relay):
            await wait_until(lambda: _at(relay, 40), 20, "relay to publish 40 events")
            [holder] = await _lock_holders(dsn)
            conn = await asyncpg.connect(dsn)
            try:
                assert await conn.fetchval("SELECT pg_terminate_backend($1)", holder)
            finally:
                await conn.close()
            await write_events(store, 60)

            async def relocked() -> bool:
                held = await _lock_holders(dsn)
                return len(held) == 1 and held != [holder]

            await wait_until(relocked, 20, "the relay to hold its lock on a new connection")
            await wait_until(lambda: _at(relay, 100), 20, "relay to publish all 100 events")
        js = nc.jetstream()
        assert (await js.stream_info(stream)).state.messages == 100
        msgs = [await js.get_msg(stream, seq=s) for s in range(1, 101)]
        assert [int(m.headers["Hp-Position"]) for m in msgs] == list(range(1, 101))
        await js.delete_stream(stream)
    finally:
        await nc.close()


async def test_relay_takes_a_fresh_connection_once_quiet_after_a_burst(
    store: PostgresEventStore, nats_url: str, uniq: str, dsn: str
) -> None:
    """A backend that served a burst keeps the buffers it read mapped: once caught up and quiet
    (`fresh_after`), the relay holds its lock and LISTEN on a new backend, once per burst (not
    again and again at rest), and what comes next is still published in order."""
    stream, prefix = f"EV_{uniq}", f"t{uniq}.evt"
    await write_events(store, 50)
    nc = await connect(nats_url)
    try:
        relay = Relay(
            store, nc, stream=stream, prefix=prefix, window=8, poll_interval=0.05, fresh_after=0.3
        )
        async with running(relay):
            await wait_until(lambda: _at(relay, 50), 20, "relay to publish 50 events")
            [busy] = await _lock_holders(dsn)

            async def fresh_holder() -> bool:
                held = await _lock_holders(dsn)
                return len(held) == 1 and held != [busy]

            await wait_until(fresh_holder, 20, "the relay to hold its lock on a fresh backend")
            [rested] = await _lock_holders(dsn)
            conn = await asyncpg.connect(dsn)
            try:  # the busy backend is gone, not parked in the pool
                assert not await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", busy
                )
            finally:
                await conn.close()
            taken = relay.connections
            await asyncio.sleep(1.2)  # four times fresh_after at rest: no new connection
            assert relay.connections == taken
            assert await _lock_holders(dsn) == [rested]

            await write_events(store, 10)  # a NOTIFY on the fresh connection wakes the relay
            await wait_until(lambda: _at(relay, 60), 20, "relay to publish 60 events")

            async def fresh_again() -> bool:
                return relay.connections == taken + 1

            await wait_until(fresh_again, 20, "a fresh connection after the burst")
        js = nc.jetstream()
        msgs = [await js.get_msg(stream, seq=s) for s in range(1, 61)]
        assert [int(m.headers["Hp-Position"]) for m in msgs] == list(range(1, 61))
        assert (await js.stream_info(stream)).state.messages == 60
        await js.delete_stream(stream)
    finally:
        await nc.close()


async def test_the_relays_acks_say_where_each_publish_went_or_why_not(
    nats_url: str, uniq: str
) -> None:
    """The relay's own JetStream publishing (`_Acks`), each case as the server answers it: stored
    at a sequence, a duplicate absorbed, a wrong expected sequence refused, no stream for the
    subject; an abandoned publish's ack sets nothing, and its counter is never used again."""
    stream, prefix = f"EV_{uniq}", f"t{uniq}.evt"
    nc = await connect(nats_url)
    acks = _Acks(nc)
    try:
        await ensure_stream(nc.jetstream(), stream, prefix)

        def headers(msg_id: str, last: int) -> dict[str, str]:
            return {"Nats-Msg-Id": msg_id, "Nats-Expected-Last-Sequence": str(last)}

        subject = f"{prefix}.app.AppInstalled"
        first = await acks.publish(subject, b"{}", headers("a", 0))
        second = await acks.publish(subject, b"{}", headers("b", 1))
        assert await asyncio.wait_for(first, 5) == (1, False)
        assert await asyncio.wait_for(second, 5) == (2, False)
        again = await acks.publish(subject, b"{}", headers("a", 2))  # msg id "a" again
        assert await asyncio.wait_for(again, 5) == (1, True)
        wrong = await acks.publish(subject, b"{}", headers("c", 7))
        with pytest.raises(nats.js.errors.APIError) as refused:
            await asyncio.wait_for(wrong, 5)
        assert "wrong last sequence" in str(refused.value)
        nowhere = await acks.publish(f"nostream{uniq}.x", b"{}", headers("d", 0))
        with pytest.raises(nats.js.errors.NoStreamResponseError):
            await asyncio.wait_for(nowhere, 5)

        abandoned = await acks.publish(subject, b"{}", headers("e", 2))
        acks.abandon()  # before its ack is read: the ack, when it comes, sets nothing
        assert abandoned.done()  # cancelled (or, had its ack been read first, acked)
        after = await acks.publish(subject, b"{}", headers("f", 3))
        assert await asyncio.wait_for(after, 5) == (4, False)  # "e" was stored at 3
        assert acks._waiting == {}
        info = await nc.jetstream().stream_info(stream)
        assert info.state.messages == 4
        await nc.jetstream().delete_stream(stream)
    finally:
        await acks.close()
        await nc.close()
