"""JetStream drops a copy the relay publishes again, by its `Nats-Msg-Id` (the event id).

The relay resumes after the position in the stream's last message; when that message cannot
be read (aged out, deleted by hand) it resumes from its own checkpoint, which lags behind the
stream (it is written after acks, at most every `checkpoint_every` seconds). It then publishes
again what the stream already holds: each copy goes out on the wire, and the stream keeps none.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from libs.events.envelope import NewEvent
from libs.events.relay import Relay
from libs.events.store import PostgresEventStore
from tests.support.bus import connect
from tests.support.waits import wait_until


@asynccontextmanager
async def _running(relay: Relay) -> AsyncIterator[Relay]:
    task = asyncio.create_task(relay.run(), name="relay under test")
    try:
        yield relay
    finally:
        relay.stop()
        await asyncio.wait_for(task, 15)


async def _stored(js: JetStreamContext, stream: str) -> list[tuple[int, str, str]]:
    """(sequence, Hp-Position, Nats-Msg-Id) of every message the stream holds."""
    info = await js.stream_info(stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            m = await js.get_msg(stream, seq=seq)
        except nats.js.errors.NotFoundError:
            continue
        headers = m.headers or {}
        out.append((seq, headers["Hp-Position"], headers["Nats-Msg-Id"]))
    return out


async def test_a_relay_resuming_from_a_lagging_checkpoint_is_absorbed_by_message_id(
    store: PostgresEventStore, nats_url: str, uniq: str
) -> None:
    stream, prefix = f"EV_{uniq}", f"t{uniq}.evt"
    await store.append("app-one", [NewEvent("AppInstalled", {}), NewEvent("AppStarted", {})])
    await store.append("user-two", [NewEvent("UserCreated", {})])
    ids = [str(e.id) for e in await store.read_all(0, 10)]
    nc = await connect(nats_url)
    try:
        js = nc.jetstream()
        async with _running(Relay(store, nc, stream=stream, prefix=prefix)) as first:
            await wait_until(lambda: _at(first, 3), 20, "the relay to publish 3 events")
        assert await _stored(js, stream) == [(1, "1", ids[0]), (2, "2", ids[1]), (3, "3", ids[2])]

        # The last message is gone, and the relay's checkpoint lags behind the stream.
        await js.delete_msg(stream, 3)
        await store.pool.execute(
            "UPDATE events.relay_checkpoint SET position = 1 WHERE name = 'relay'"
        )
        on_the_wire: list[tuple[str, str]] = []

        async def seen(msg: Msg) -> None:
            headers = msg.headers or {}
            on_the_wire.append((headers.get("Hp-Position", ""), headers.get("Nats-Msg-Id", "")))

        sub = await nc.subscribe(f"{prefix}.>", cb=seen)
        try:
            async with _running(Relay(store, nc, stream=stream, prefix=prefix)) as second:
                await wait_until(lambda: _at(second, 3), 20, "the relay to publish again")
                await wait_until(lambda: _has(on_the_wire, 2), 10, "the copies on the wire")
                # Each is published again (a publish sent behind a duplicate, with a sequence
                # the stream no longer expects, goes out once more after the relay resyncs).
                assert sorted({p for p, _ in on_the_wire}) == ["2", "3"], "published again"
                assert await _stored(js, stream) == [(1, "1", ids[0]), (2, "2", ids[1])]
                assert (await js.stream_info(stream)).state.last_seq == 3, "no copy stored"
                assert set(on_the_wire) == {("2", ids[1]), ("3", ids[2])}, "by their event ids"

                # And the relay goes on: a new event is stored once, after them.
                new = await store.append("app-one", [NewEvent("AppStopped", {})])
                await wait_until(lambda: _at(second, 4), 20, "the relay to publish event 4")
        finally:
            await sub.unsubscribe()
        new_id = str((await store.read_all(3, 1))[0].id)
        assert new.positions == (4,)
        assert await _stored(js, stream) == [
            (1, "1", ids[0]),
            (2, "2", ids[1]),
            (4, "4", new_id),
        ]
        await js.delete_stream(stream)
    finally:
        await nc.close()


async def _at(relay: Relay, position: int) -> bool:
    return relay.position >= position


async def _has(items: list[tuple[str, str]], n: int) -> bool:
    return len(items) >= n
