"""The relay: publishes committed events, in position order, from Postgres to JetStream.

Why nothing is lost, reordered or doubled in the stream:
- Postgres is the record; the relay only reads it (in position order, which never skips).
- Normally one relay publishes at a time: it holds a session advisory lock in Postgres; a second
  one waits. A relay killed with -9 loses its connection and with it the lock. Correctness does
  not rest on the lock (it is lost if Postgres restarts): the sequence check below refuses
  whatever a second publisher would send out of turn.
- Every message carries `Nats-Expected-Last-Sequence`: the stream sequence it must follow.
  If one message of a pipelined window is not stored (a disconnect, a timeout), every later
  one is refused by the server too, so the stream never has a hole.
- At start and after any error the relay reconciles: it reads the stream's last message and
  resumes after the position in its `Hp-Position` header, so it does not re-publish what
  JetStream already holds. `Nats-Msg-Id` (the event id) lets JetStream absorb a duplicate
  anyway, and consumers skip positions at or below their checkpoint.
- The relay's own checkpoint (`events.relay_checkpoint`) is written after acks; it serves
  monitoring (lag) and a stream whose last message has aged out.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import asyncpg
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api

from libs.events.envelope import RecordedEvent, dumps
from libs.events.nats_access import DEFAULT_PREFIX, DEFAULT_STREAM
from libs.events.pool import keep_session_state
from libs.events.store import NOTIFY_CHANNEL, PostgresEventStore
from libs.events.wiring import Connections, connections, worker
from libs.service.config import ServiceConfig, load_config
from libs.service.metrics import RELAY_LAG_EVENTS, RELAY_LAG_SECONDS
from libs.service.runner import Service, main

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_STREAM",
    "Relay",
    "RelayConfig",
    "RelayError",
    "decode_event",
    "encode_event",
    "ensure_stream",
    "subject_for",
]

log = logging.getLogger("homeport.relay")

POSITION_HEADER = "Hp-Position"
_NO_RESPONDERS = "503"  # the Status header of a publish no stream took
_LOCK_KEY = 0x48505245  # "HPRE"
_TRANSIENT = (
    nats.errors.Error,
    nats.js.errors.Error,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    ConnectionError,
    OSError,
    TimeoutError,
)


# The wire body is built by Postgres (the same fields as `encode_event`), so the relay neither
# decodes nor re-encodes event data.
# A page as it goes on the wire, made by Postgres: the subject (`$3` is the prefix), the
# message id and position as text, the body as UTF-8 bytes (asyncpg hands bytea over as is).
_WIRE_SQL = (
    "SELECT position, position::text AS at, id::text AS id, "
    "$3 || '.' || split_part(stream, '-', 1) || '.' || type AS subject, "
    "convert_to(json_build_object("
    "'id', id, 'stream', stream, 'version', version, 'position', position, 'type', type, "
    "'schema', schema, 'data', data, 'meta', meta, 'recorded_at', recorded_at)::text, 'UTF8') "
    "AS body FROM events.events WHERE position > $1 ORDER BY position LIMIT $2"
)


class RelayError(Exception):
    """The stream does not hold what the relay published (another writer, a wiped stream)."""


def subject_for(prefix: str, event: RecordedEvent) -> str:
    """`hp.evt.<category>.<Type>`."""
    return f"{prefix}.{event.category}.{event.type}"


def encode_event(event: RecordedEvent) -> bytes:
    """The JSON body of a relayed event: the whole envelope."""
    return dumps(
        {
            "id": str(event.id),
            "stream": event.stream,
            "version": event.version,
            "position": event.position,
            "type": event.type,
            "schema": event.schema,
            "data": event.data,
            "meta": event.meta,
            "recorded_at": event.recorded_at.isoformat(),
        }
    ).encode()


def decode_event(body: bytes) -> RecordedEvent:
    """The inverse of `encode_event` (the hash is not relayed: verify it in Postgres)."""
    import uuid

    d = json.loads(body)
    return RecordedEvent(
        position=int(d["position"]),
        id=uuid.UUID(d["id"]),
        stream=d["stream"],
        version=int(d["version"]),
        type=d["type"],
        schema=int(d["schema"]),
        data=d["data"],
        meta=d["meta"],
        recorded_at=datetime.fromisoformat(d["recorded_at"]),
        hash=b"",
    )


async def ensure_stream(
    js: JetStreamContext, stream: str = DEFAULT_STREAM, prefix: str = DEFAULT_PREFIX
) -> api.StreamInfo:
    """Create the events stream if missing (file storage, 2 min de-duplication window)."""
    try:
        return await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        pass
    try:
        return await js.add_stream(
            name=stream,
            subjects=[f"{prefix}.>"],
            storage=api.StorageType.FILE,
            duplicate_window=120.0,
            discard=api.DiscardPolicy.OLD,
        )
    except nats.js.errors.BadRequestError:
        # Created by someone else in between.
        return await js.stream_info(stream)


class _Fresh(Exception):
    """Caught up and quiet after publishing: take a fresh connection (see `fresh_after`)."""


class _Resync(Exception):
    """JetStream absorbed a duplicate: its sequence did not move, so every publish sent after it
    expects a sequence the stream will not have. Reconcile at once instead of timing out."""


_Ack = tuple[int, bool]  # the stream sequence JetStream stored a message at; a duplicate?


@dataclass(slots=True)
class _Pending:
    position: int
    seq: int
    future: asyncio.Future[_Ack]


class _Acks:
    """JetStream publishes whose acks come back to an inbox of our own, each matched to the
    future `publish` returned by a counter in the reply subject.

    What `js.publish_async` does, minus what the relay does not need per message: it bounds
    its window itself (no semaphore acquired under `wait_for`), a counter names the reply (no
    NUID and random token), the ack is a tuple (no PubAck), nothing runs when a future ends.
    The counter never goes back, so a late ack of an abandoned publish finds nothing to set.
    """

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = ""
        self._sub: Subscription | None = None
        self._waiting: dict[str, asyncio.Future[_Ack]] = {}
        self._sent = 0

    async def publish(
        self, subject: str, body: bytes, headers: dict[str, str]
    ) -> asyncio.Future[_Ack]:
        if self._sub is None:
            self._prefix = self._nc.new_inbox() + "."
            self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._received)
        self._sent += 1
        token = str(self._sent)
        future: asyncio.Future[_Ack] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        await self._nc.publish(subject, body, reply=self._prefix + token, headers=headers)
        return future

    async def _received(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get(api.Header.STATUS) == _NO_RESPONDERS:
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            reply = json.loads(msg.data)
            error = reply.get("error")
            if error is not None:
                # from_error raises the error it makes (js.publish_async's own handler lets it
                # escape, and that future then waits for its timeout)
                nats.js.errors.APIError.from_error(error)
                raise nats.js.errors.APIError(**error)
            future.set_result((int(reply["seq"]), bool(reply.get("duplicate", False))))
        except nats.js.errors.APIError as e:
            future.set_exception(e)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            # transient for the relay: it reconciles with the stream and goes on
            future.set_exception(nats.errors.Error(f"an ack it cannot read: {e}"))

    def abandon(self) -> None:
        """Forget every publish not acknowledged yet (their acks, if any come, are ignored)."""
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()

    async def close(self) -> None:
        self.abandon()
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):  # the connection is gone already
                await sub.unsubscribe()


class Relay:
    """Follows the event store and publishes each committed event once, in order."""

    def __init__(
        self,
        store: PostgresEventStore,
        nc: NATS,
        *,
        name: str = "relay",
        stream: str = DEFAULT_STREAM,
        prefix: str = DEFAULT_PREFIX,
        window: int = 256,
        page_size: int = 1000,
        ack_timeout: float = 5.0,
        checkpoint_every: float = 0.5,
        poll_interval: float = 1.0,
        fresh_after: float = 15.0,
    ) -> None:
        self.store = store
        self.nc = nc
        self.js = nc.jetstream()  # stream info and reconcile; publishes go through `_acks`
        self._acks = _Acks(nc)
        self.name = name
        self.stream = stream
        self.prefix = prefix
        self.window = max(window, 1)
        self.page_size = page_size
        self.ack_timeout = ack_timeout
        self.checkpoint_every = checkpoint_every
        self.poll_interval = poll_interval
        # A backend that served a burst (the catch-up at start, a busy minute) keeps what it
        # touched: the shared buffers of every page it read stay mapped and its heap stays
        # grown, about 7 MiB of Postgres at rest for nothing. So once the relay has published on
        # a connection and then been caught up and quiet for `fresh_after` seconds, it hands
        # that connection back closed and takes a fresh one (lock and LISTEN included); at rest
        # that happens once per burst. 0 turns it off.
        self.fresh_after = fresh_after
        self.connections = 0  # database connections taken for the lock (a fresh one counts)
        self.position = 0  # last position confirmed stored in the stream
        self.published = 0  # messages acked in this run
        self._seq = 0  # the stream's last sequence as far as we know
        self._pending: collections.deque[_Pending] = collections.deque()
        self._saved = -1
        self._saved_at = 0.0
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()  # set once the lock is held and the first reconcile done

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Hold the relay lock, then publish until `stop()`; transient errors are retried.

        The lock's connection also LISTENs for new events (one connection at rest instead of
        two). When it is lost, so is the lock: the relay takes both again before going on."""
        try:
            await self._run()
        finally:
            await self._acks.close()

    async def _run(self) -> None:
        delay = 0.2
        while not self._stop.is_set():
            try:
                async with self.store.pool.acquire() as lock_conn:
                    keep_session_state(lock_conn)
                    self.connections += 1
                    while not await lock_conn.fetchval(
                        "SELECT pg_try_advisory_lock($1)", _LOCK_KEY
                    ):
                        if await self._sleep(1.0):
                            return
                    delay = 0.2
                    fresh = False
                    try:
                        await self._loop(lock_conn)
                    except _Fresh:
                        fresh = True
                    finally:
                        await self._save_checkpoint(force=True, quiet=True)
                        if not lock_conn.is_closed():
                            await lock_conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
                            if fresh:  # closed: the pool opens a new backend on the next acquire
                                await lock_conn.close(timeout=5)
            except _TRANSIENT as e:  # the lock's connection went away: take the lock again
                self._abandon_pending()
                log.warning(
                    "relay lost its database connection; taking the lock again",
                    extra={"error": f"{type(e).__name__}: {e}", "position": self.position},
                )
                if await self._sleep(delay):
                    return
                delay = min(delay * 2, 5.0)

    async def _loop(self, lock_conn: Any) -> None:
        delay = 0.2
        while not self._stop.is_set():
            if lock_conn.is_closed():
                raise ConnectionError("the relay lock's connection was closed")
            try:
                await ensure_stream(self.js, self.stream, self.prefix)
                await self._reconcile()
                self.ready.set()
                delay = 0.2
                await self._pump(lock_conn)
            except _Resync:
                self._abandon_pending()
            except _TRANSIENT as e:
                self._abandon_pending()
                if lock_conn.is_closed():
                    raise
                log.warning(
                    "relay interrupted; reconciling and resuming",
                    extra={"error": f"{type(e).__name__}: {e}", "position": self.position},
                )
                if await self._sleep(delay):
                    return
                delay = min(delay * 2, 5.0)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True when stopped."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _reconcile(self) -> None:
        """Resume after the last event the stream holds (or our checkpoint if it aged out)."""
        info = await self.js.stream_info(self.stream)
        self._seq = info.state.last_seq
        checkpoint = int(
            await self.store.pool.fetchval(
                "SELECT coalesce("
                "(SELECT position FROM events.relay_checkpoint WHERE name = $1), 0)",
                self.name,
            )
        )
        if self._seq == 0:
            self.position = 0  # a new (or wiped) stream gets the whole history
        else:
            try:
                last = await self.js.get_msg(self.stream, seq=self._seq)
                header = (last.headers or {}).get(POSITION_HEADER)
                if header is None:
                    raise RelayError(
                        f"the last message of stream {self.stream} has no {POSITION_HEADER} "
                        "header: something else publishes into it; give the relay its own stream"
                    )
                self.position = int(header)
            except nats.js.errors.NotFoundError:
                self.position = checkpoint
        head = await self.store.head()
        if self.position > head:
            raise RelayError(
                f"stream {self.stream} holds position {self.position} but the event store ends "
                f"at {head}: the stream belongs to another event store; delete it to re-publish"
            )
        log.info("relay resumes", extra={"position": self.position, "stream_seq": self._seq})

    async def _pump(self, listener: Any) -> None:
        """Publish pages of committed events; between pages wait for NOTIFY (or poll)."""
        wake = asyncio.Event()

        def woken(*_: object) -> None:
            wake.set()

        await listener.add_listener(NOTIFY_CHANNEL, woken)
        try:
            sent = self.position  # the last position handed to NATS (confirmed or not)
            ahead: asyncio.Future[list[asyncpg.Record]] | None = None
            published_here = False  # on this connection (see `fresh_after`)
            quiet_since = time.monotonic()
            try:
                while not self._stop.is_set():
                    wake.clear()
                    if ahead is None:  # on the listening connection: at rest the only one
                        rows = await listener.fetch(_WIRE_SQL, sent, self.page_size, self.prefix)
                    else:
                        rows, ahead = await ahead, None
                    if rows:
                        published_here, quiet_since = True, time.monotonic()
                    elif (
                        published_here
                        and self.fresh_after > 0
                        and time.monotonic() - quiet_since >= self.fresh_after
                    ):
                        raise _Fresh
                    if len(rows) == self.page_size:  # read the next page while this one goes out
                        ahead = asyncio.ensure_future(
                            self.store.pool.fetch(
                                _WIRE_SQL, rows[-1]["position"], self.page_size, self.prefix
                            )
                        )
                    if rows:
                        sent = await self._publish_rows(rows)
                    if len(rows) == self.page_size:
                        # Keep the window full across pages; confirm what is already acked.
                        if self._pending:
                            await self._confirm(block=False)
                        await self._save_checkpoint(force=False)
                        continue
                    while self._pending:
                        await self._confirm(block=True)
                    await self._update_lag(listener)
                    await self._save_checkpoint(force=False)
                    waiters = {
                        asyncio.ensure_future(wake.wait()),
                        asyncio.ensure_future(self._stop.wait()),
                    }
                    try:
                        await asyncio.wait(
                            waiters, timeout=self.poll_interval, return_when=asyncio.FIRST_COMPLETED
                        )
                    finally:
                        for w in waiters:
                            w.cancel()
                        await asyncio.gather(*waiters, return_exceptions=True)
            finally:
                if ahead is not None:
                    ahead.cancel()
                    await asyncio.gather(ahead, return_exceptions=True)
            await self._save_checkpoint(force=True)
        finally:
            if not listener.is_closed():
                with contextlib.suppress(*_TRANSIENT, asyncpg.PostgresError):
                    await asyncio.shield(listener.remove_listener(NOTIFY_CHANNEL, woken))

    async def _publish_rows(self, rows: Sequence[asyncpg.Record]) -> int:
        """Pipeline a page into JetStream, at most `window` unconfirmed; returns the last sent."""
        position = self.position
        publish, pending = self._acks.publish, self._pending
        for position, at, msg_id, subject, body in rows:
            if len(pending) >= self.window:
                await self._confirm(block=True)
            self._seq += 1
            headers = {
                "Nats-Msg-Id": msg_id,
                "Nats-Expected-Last-Sequence": str(self._seq - 1),
                POSITION_HEADER: at,
            }
            pending.append(_Pending(position, self._seq, await publish(subject, body, headers)))
        return int(position)

    async def _confirm(self, *, block: bool) -> None:
        """Take every acknowledged publish off the front (waiting for the oldest if `block`)."""
        if block and not self._pending[0].future.done():
            await asyncio.wait_for(asyncio.shield(self._pending[0].future), self.ack_timeout)
        while self._pending and self._pending[0].future.done():
            p = self._pending.popleft()
            seq, duplicate = p.future.result()
            if duplicate:
                log.info("duplicate absorbed by JetStream", extra={"position": p.position})
            elif seq != p.seq:
                raise RelayError(
                    f"stream {self.stream} stored position {p.position} at sequence "
                    f"{seq}, expected {p.seq}: another publisher writes into the stream"
                )
            self.position = p.position
            self.published += 1
            if duplicate:  # the stream's sequence did not move
                if self._pending:
                    # What is in flight expects the wrong sequence: reconcile, and from no
                    # older a checkpoint than this.
                    await self._save_checkpoint(force=True)
                    raise _Resync
                self._seq -= 1

    def _abandon_pending(self) -> None:
        """Drop unconfirmed publishes; the next reconcile decides what to send again."""
        self._acks.abandon()
        while self._pending:
            p = self._pending.popleft()
            if not p.future.done():
                p.future.cancel()
            elif not p.future.cancelled():
                p.future.exception()  # mark retrieved

    async def _save_checkpoint(self, *, force: bool, quiet: bool = False) -> None:
        now = time.monotonic()
        if self.position == self._saved or (
            not force and now - self._saved_at < self.checkpoint_every
        ):
            return
        try:
            await self.store.pool.execute(
                "INSERT INTO events.relay_checkpoint (name, position) VALUES ($1, $2) "
                "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position",
                self.name,
                self.position,
            )
        except (asyncpg.PostgresError, *_TRANSIENT):
            if not quiet:
                raise
            return
        self._saved, self._saved_at = self.position, now

    async def _update_lag(self, conn: Any = None) -> None:
        """Lag in events (head - published) and in seconds (age of the first unpublished);
        asked on `conn` (the listening connection in the pump) or the pool."""
        row = await (conn if conn is not None else self.store.pool).fetchrow(
            "SELECT h.position AS head, (SELECT e.recorded_at FROM events.events e "
            "WHERE e.position = $1) AS next_at FROM events.head h",
            self.position + 1,
        )
        behind = max(int(row["head"]) - self.position, 0) if row else 0
        RELAY_LAG_EVENTS.set(behind)
        if behind and row is not None and row["next_at"] is not None:
            age = (datetime.now(UTC) - row["next_at"]).total_seconds()
            RELAY_LAG_SECONDS.set(max(age, 0.0))
        else:
            RELAY_LAG_SECONDS.set(0)


# -- the relay process: python -m libs.events.relay ---------------------------------------


@dataclass(frozen=True)
class RelayConfig(ServiceConfig):
    """The relay's settings beyond every service's (HP_EVENTS_STREAM, ...)."""

    events_stream: str = DEFAULT_STREAM
    events_prefix: str = DEFAULT_PREFIX
    relay_window: int = 256


def build(cfg: RelayConfig | None = None) -> Service:
    """The relay process: one Relay worker on the service lifecycle."""
    cfg = cfg if cfg is not None else load_config(RelayConfig)
    svc = Service("relay", cfg)
    svc.use(partial(_parts, cfg))
    return svc


@asynccontextmanager
async def _parts(cfg: RelayConfig, svc: Service) -> AsyncIterator[None]:
    async with connections(svc, pool_size=3) as conn:
        relay = Relay(
            conn.store,
            conn.nc,
            stream=cfg.events_stream,
            prefix=cfg.events_prefix,
            window=cfg.relay_window,
        )
        ready = partial(_relay_ready, conn)
        async with worker(svc, "relay", relay, ready=ready):
            yield


def _relay_ready(conn: Connections, relay: Relay) -> bool:
    return conn.connected and relay.ready.is_set()


if __name__ == "__main__":
    main(build)
