"""Commands and queries over NATS request/reply (libs.events.bus) against a real nats-server."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS

from libs.events import context
from libs.events.bus import (
    Bus,
    BusClient,
    BusError,
    Conflict,
    DeadlineExceeded,
    Forbidden,
    Internal,
    Invalid,
    NotFound,
    Unauthorized,
    Unavailable,
    error_from_wire,
)
from libs.events.context import Context
from libs.events.envelope import NewEvent
from libs.events.store import PostgresEventStore
from libs.service.metrics import REGISTRY
from tests.support.bus import ActorBus


class Rig:
    """NATS connections and buses of one test; all stopped and closed at teardown."""

    def __init__(self, url: str, service: str) -> None:
        self.url = url
        self.service = service
        self.conns: list[NATS] = []
        self.buses: list[Bus] = []

    async def connect(self) -> NATS:
        nc = await nats.connect(self.url, connect_timeout=2, max_reconnect_attempts=0)
        self.conns.append(nc)
        return nc

    async def bus(self, service: str | None = None, **kw: Any) -> Bus:
        """An unstarted Bus on a connection of its own (register handlers, then start())."""
        bus = Bus(await self.connect(), service or self.service, **kw)
        self.buses.append(bus)
        return bus

    async def client(self, default_timeout: float = 5.0) -> BusClient:
        return ActorBus(await self.connect(), default_timeout=default_timeout)

    async def close(self) -> None:
        for bus in self.buses:
            await bus.stop(grace=5)
        for nc in self.conns:
            await nc.close()


@pytest.fixture
async def rig(nats_url: str, uniq: str) -> AsyncIterator[Rig]:
    r = Rig(nats_url, f"t{uniq}")
    try:
        yield r
    finally:
        await r.close()


def wire(
    payload: Any = None, *, deadline_in: float = 5.0, omit: tuple[str, ...] = (), **over: Any
) -> bytes:
    """A request body as the contract spells it."""
    body: dict[str, Any] = {
        "actor": "tester",
        "correlation_id": f"c-{uuid.uuid4().hex[:8]}",
        "causation_id": None,
        "ip": None,
        "payload": {} if payload is None else payload,
        "deadline": time.time() + deadline_in,
        **over,
    }
    for key in omit:
        body.pop(key)
    return json.dumps(body).encode()


async def raw(
    nc: NATS, subject: str, body: bytes, timeout: float = 3.0, sender: str = "gateway"
) -> dict[str, Any]:
    """`body` sent to `subject` as `sender` (the gateway: `wire()`'s actor is a user)."""
    msg = await nc.request(f"{subject}.{sender}", body, timeout=timeout)
    reply = json.loads(msg.data)
    assert isinstance(reply, dict)
    return reply


async def eventually(check: Callable[[], bool], timeout: float = 3.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.01)


def errors_counted(subject: str, code: str) -> float:
    labels = {"subject": subject, "code": code}
    return REGISTRY.get_sample_value("homeport_handler_errors_total", labels) or 0.0


def latency_count(subject: str) -> float:
    labels = {"subject": subject}
    return REGISTRY.get_sample_value("homeport_handler_latency_seconds_count", labels) or 0.0


# -- round trips ----------------------------------------------------------------------------


async def test_command_and_query_round_trip(rig: Rig) -> None:
    bus = await rig.bus()

    @bus.command("create_user")
    async def create_user(payload: dict[str, Any]) -> Any:
        return {"created": payload["username"], "by": context.current().actor}

    @bus.query("ping")
    async def ping_query(payload: dict[str, Any]) -> Any:
        return "query"

    @bus.command("ping")
    async def ping_command(payload: dict[str, Any]) -> Any:
        return "command"

    await bus.start()
    client = await rig.client()
    ctx = Context(actor="alice")
    got = await client.command(rig.service, "create_user", {"username": "bob"}, ctx=ctx)
    assert got == {"created": "bob", "by": "alice"}
    assert await client.query(rig.service, "ping", {}) == "query"
    assert await client.command(rig.service, "ping", {}) == "command"

    # The wire as the contract spells it; request headers are not echoed into the reply
    # (nats-py's Msg.respond() would copy them).
    nc = rig.conns[-1]
    msg = await nc.request(
        f"hp.cmd.{rig.service}.create_user.gateway",
        wire({"username": "carol"}, actor="dave"),
        timeout=3,
        headers={"X-Probe": "1"},
    )
    assert json.loads(msg.data) == {"ok": True, "result": {"created": "carol", "by": "dave"}}
    assert not msg.headers
    assert latency_count(f"hp.cmd.{rig.service}.create_user") == 2


ERRORS: list[BusError] = [
    Invalid("username must be 3-32 lower-case letters", field="username"),
    Unauthorized("sign in first"),
    Forbidden("only admins may delete users"),
    NotFound("user bob not found"),
    Conflict("user bob exists already: pick another name"),
    Unavailable("the mail server is not answering"),
    DeadlineExceeded("gave up waiting for the certificate authority"),
    Internal("the handler said so"),
]


@pytest.mark.parametrize("error", ERRORS, ids=[e.code for e in ERRORS])
async def test_typed_errors_reach_the_caller(rig: Rig, error: BusError) -> None:
    bus = await rig.bus()

    @bus.command("fail")
    async def fail(payload: dict[str, Any]) -> Any:
        raise error

    await bus.start()
    subject = f"hp.cmd.{rig.service}.fail"
    client = await rig.client()
    with pytest.raises(BusError) as caught:
        await client.command(rig.service, "fail", {})
    got = caught.value
    assert type(got) is type(error)
    assert (got.code, got.message, got.field) == (error.code, error.message, error.field)

    reply = await raw(rig.conns[-1], subject, wire())
    assert reply == {
        "ok": False,
        "error": {"code": error.code, "message": error.message, "field": error.field},
    }
    assert errors_counted(subject, error.code) == 2


async def test_error_from_wire() -> None:
    for error in ERRORS:
        back = error_from_wire(error.to_wire())
        assert type(back) is type(error) and back.to_wire() == error.to_wire()
    teapot = error_from_wire({"code": "teapot", "message": "short and stout", "field": "spout"})
    assert isinstance(teapot, Internal)
    assert (teapot.code, teapot.message, teapot.field) == ("teapot", "short and stout", "spout")
    assert teapot.to_wire()["code"] == "teapot"
    assert Internal.code == "internal" and Internal("x").code == "internal"
    junk = error_from_wire({"code": 7, "message": None})
    assert isinstance(junk, Internal) and junk.code == "internal"


async def test_unexpected_exception_is_internal_and_logged_not_sent(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    bus = await rig.bus()

    @bus.command("explode")
    async def explode(payload: dict[str, Any]) -> Any:
        raise RuntimeError("cannot reach db.internal:5432 with password hunter2")

    @bus.query("set")
    async def not_json(payload: dict[str, Any]) -> Any:
        return {1, 2}

    @bus.query("nan")
    async def nan(payload: dict[str, Any]) -> Any:
        return float("nan")

    await bus.start()
    client = await rig.client()
    cid = "corr-explode-1"
    with caplog.at_level(logging.ERROR, logger="homeport.bus"):
        with pytest.raises(Internal) as caught:
            await client.command(rig.service, "explode", {}, ctx=Context(correlation_id=cid))
    err = caught.value
    assert err.code == "internal" and err.field is None
    assert cid in err.message
    assert "hunter2" not in err.message and "db.internal" not in err.message
    reply = await raw(rig.conns[-1], f"hp.cmd.{rig.service}.explode", wire())
    assert reply["ok"] is False and reply["error"]["code"] == "internal"
    assert "hunter2" not in json.dumps(reply) and "RuntimeError" not in json.dumps(reply)

    logged = [r for r in caplog.records if getattr(r, "correlation_id", None) == cid]
    assert logged, "the failure was not logged with its correlation id"
    assert logged[0].exc_info is not None and "hunter2" in str(logged[0].exc_info[1])

    for name in ("set", "nan"):
        with pytest.raises(Internal):
            await client.query(rig.service, name, {})
    assert errors_counted(f"hp.qry.{rig.service}.set", "internal") == 1


# -- deadlines ------------------------------------------------------------------------------


async def test_handler_past_its_deadline_is_cancelled_and_caller_gets_deadline_exceeded(
    rig: Rig,
) -> None:
    bus = await rig.bus()
    started, cancelled = asyncio.Event(), asyncio.Event()

    @bus.command("slow")
    async def slow(payload: dict[str, Any]) -> Any:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "too late"

    await bus.start()
    client = await rig.client()
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded) as caught:
        await client.command(rig.service, "slow", {}, timeout=0.3)
    elapsed = time.monotonic() - t0
    assert 0.25 <= elapsed < 1.5, elapsed
    assert f"hp.cmd.{rig.service}.slow" in caught.value.message
    assert started.is_set()
    # The server enforces the deadline too: the handler is cancelled, not left running.
    async with asyncio.timeout(2):
        await cancelled.wait()
    subject = f"hp.cmd.{rig.service}.slow"
    await eventually(lambda: errors_counted(subject, "deadline_exceeded") == 1)
    assert bus.in_flight == 0


async def test_request_past_its_deadline_is_not_run(rig: Rig) -> None:
    bus = await rig.bus()
    runs: list[dict[str, Any]] = []

    @bus.command("count")
    async def count(payload: dict[str, Any]) -> Any:
        runs.append(payload)
        return len(runs)

    await bus.start()
    nc = await rig.connect()
    subject = f"hp.cmd.{rig.service}.count"
    late = await raw(nc, subject, wire({"n": 1}, deadline_in=-1.0))
    assert late["ok"] is False and late["error"]["code"] == "deadline_exceeded"
    assert runs == []
    on_time = await raw(nc, subject, wire({"n": 2}))
    assert on_time == {"ok": True, "result": 1}
    assert runs == [{"n": 2}]


async def test_no_responders_is_unavailable_at_once(rig: Rig) -> None:
    client = await rig.client()
    t0 = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        await client.command(rig.service, "nobody_home", {}, timeout=5)
    assert time.monotonic() - t0 < 1.0
    assert f"hp.cmd.{rig.service}.nobody_home" in caught.value.message
    assert isinstance(caught.value.__cause__, nats.errors.NoRespondersError)


# -- who and why ----------------------------------------------------------------------------


async def test_context_reaches_the_meta_of_appended_events(rig: Rig, dsn: str) -> None:
    store = await PostgresEventStore.open(dsn, max_size=2)
    try:
        bus = await rig.bus()

        @bus.command("create_user")
        async def create_user(payload: dict[str, Any]) -> Any:
            stream = f"user-{payload['username']}"
            await store.append(stream, [NewEvent("UserCreated", {"name": payload["username"]})])
            return stream

        await bus.start()
        client = await rig.client()
        ctx = Context(
            actor="alice", correlation_id="corr-42", causation_id="evt-7", ip="203.0.113.9"
        )
        stream = await client.command(rig.service, "create_user", {"username": "bob"}, ctx=ctx)
        [event] = await store.read_stream(stream)
        assert event.meta["actor"] == "alice"
        assert event.meta["correlation_id"] == "corr-42"
        assert event.meta["causation_id"] == "evt-7"
        assert event.meta["ip"] == "203.0.113.9"

        # No ctx: the caller's current context is sent, with a fresh UUIDv7 correlation id.
        with context.use(Context(actor="bob", ip="198.51.100.1")):
            stream = await client.command(rig.service, "create_user", {"username": "eve"})
        [event] = await store.read_stream(stream)
        assert event.meta["actor"] == "bob" and event.meta["ip"] == "198.51.100.1"
        assert uuid.UUID(event.meta["correlation_id"]).version == 7
        assert "causation_id" not in event.meta
        assert context.current() == Context()  # nothing leaked into the caller's context
    finally:
        await store.close()


# -- load and lifecycle ---------------------------------------------------------------------


async def test_queue_group_shares_load_and_answers_each_request_once(rig: Rig) -> None:
    seen: dict[str, list[int]] = {"a": [], "b": []}
    for name in seen:
        bus = await rig.bus()

        @bus.command("work")
        async def work(payload: dict[str, Any], name: str = name) -> Any:
            seen[name].append(payload["n"])
            await asyncio.sleep(0.001)
            return {"by": name, "n": payload["n"]}

        await bus.start()
    client = await rig.client()
    results = await asyncio.gather(
        *(client.command(rig.service, "work", {"n": n}) for n in range(200))
    )
    assert [r["n"] for r in results] == list(range(200))
    handled = seen["a"] + seen["b"]
    assert sorted(handled) == list(range(200)), "a request was handled twice or not at all"
    assert seen["a"] and seen["b"], {k: len(v) for k, v in seen.items()}
    assert all(r["n"] in seen[r["by"]] for r in results)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "payload"),
        (b"\xff\xfe", "payload"),
        (b"[1, 2]", "payload"),
        (wire(omit=("payload",)), "payload"),
        (wire([1, 2]), "payload"),
        (wire(omit=("deadline",)), "deadline"),
        (wire(deadline="soon"), "deadline"),
        (wire(omit=("actor",)), "actor"),
        (wire(correlation_id=""), "correlation_id"),
        (wire(ip=5), "ip"),
        (wire(admin="yes"), "admin"),
        (wire(admin=1), "admin"),
    ],
    ids=[
        "not-json",
        "not-utf8",
        "not-an-object",
        "no-payload",
        "payload-not-object",
        "no-deadline",
        "deadline-not-number",
        "no-actor",
        "empty-correlation-id",
        "ip-not-text",
        "admin-not-bool",
        "admin-a-number",
    ],
)
async def test_bad_request_gets_invalid_and_the_bus_keeps_serving(
    rig: Rig, body: bytes, field: str
) -> None:
    bus = await rig.bus()
    runs: list[dict[str, Any]] = []

    @bus.command("do")
    async def do(payload: dict[str, Any]) -> Any:
        runs.append(payload)
        return "done"

    await bus.start()
    nc = await rig.connect()
    subject = f"hp.cmd.{rig.service}.do"
    reply = await raw(nc, subject, body)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "invalid" and reply["error"]["field"] == field
    assert runs == []
    assert await raw(nc, subject, wire({"x": 1})) == {"ok": True, "result": "done"}
    assert runs == [{"x": 1}]


async def test_stop_waits_for_in_flight_work_then_stops_answering(rig: Rig) -> None:
    bus = await rig.bus()
    started, release = asyncio.Event(), asyncio.Event()

    @bus.command("hold")
    async def hold(payload: dict[str, Any]) -> Any:
        started.set()
        await release.wait()
        return "finished"

    await bus.start()
    client = await rig.client()
    call = asyncio.create_task(client.command(rig.service, "hold", {}, timeout=10))
    try:
        async with asyncio.timeout(3):
            await started.wait()
        stopping = asyncio.create_task(bus.stop(grace=10))
        await asyncio.sleep(0.3)
        assert not stopping.done(), "stop() returned while a handler was still running"
        assert not call.done()
        release.set()
        async with asyncio.timeout(3):
            await stopping
        assert await call == "finished"
    finally:
        release.set()
        await asyncio.gather(call, return_exceptions=True)
    with pytest.raises(Unavailable):
        await client.command(rig.service, "hold", {}, timeout=2)


async def test_stop_cancels_what_outlives_the_grace_and_tells_the_caller(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    bus = await rig.bus()
    started, cancelled = asyncio.Event(), asyncio.Event()

    @bus.command("stuck")
    async def stuck(payload: dict[str, Any]) -> Any:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await bus.start()
    client = await rig.client()
    ctx = Context(correlation_id="corr-stuck")
    call = asyncio.create_task(client.command(rig.service, "stuck", {}, ctx=ctx, timeout=10))
    try:
        async with asyncio.timeout(3):
            await started.wait()
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="homeport.bus"):
            await bus.stop(grace=0.3)
        assert time.monotonic() - t0 < 2.0
        assert cancelled.is_set()
        with pytest.raises(Unavailable):  # told at once, not left waiting 10 s
            async with asyncio.timeout(2):
                await call
    finally:
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
    assert any("corr-stuck" in r.getMessage() for r in caplog.records)


async def test_too_many_in_flight_is_unavailable(rig: Rig) -> None:
    bus = await rig.bus(max_in_flight=1)
    started, release = asyncio.Event(), asyncio.Event()

    @bus.command("hold")
    async def hold(payload: dict[str, Any]) -> Any:
        started.set()
        await release.wait()
        return "finished"

    await bus.start()
    client = await rig.client()
    first = asyncio.create_task(client.command(rig.service, "hold", {}))
    try:
        async with asyncio.timeout(3):
            await started.wait()
        with pytest.raises(Unavailable) as caught:
            await client.command(rig.service, "hold", {}, timeout=2)
        assert "busy" in caught.value.message
        release.set()
        assert await first == "finished"
    finally:
        release.set()
        await asyncio.gather(first, return_exceptions=True)


async def test_work_tracks_each_request_until_its_reply(rig: Rig) -> None:
    log: list[str] = []

    @asynccontextmanager
    async def work() -> AsyncIterator[None]:
        log.append("enter")
        try:
            yield
        finally:
            log.append("exit")

    bus = await rig.bus(work=work)

    @bus.query("echo")
    async def echo(payload: dict[str, Any]) -> Any:
        log.append("handler")
        return payload

    await bus.start()
    client = await rig.client()
    assert await client.query(rig.service, "echo", {"a": 1}) == {"a": 1}
    await eventually(lambda: len(log) == 3)
    assert log == ["enter", "handler", "exit"]


async def test_names_are_validated(rig: Rig) -> None:
    nc = await rig.connect()
    for bad in ("Gateway", "gate.way", "gate way", "1st", "", "*", ">"):
        with pytest.raises(ValueError):
            Bus(nc, bad)
    bus = Bus(nc, rig.service)
    for bad in ("do.it", "Do", "do*", ">"):
        with pytest.raises(ValueError):
            bus.command(bad)
        with pytest.raises(ValueError):
            bus.query(bad)

    @bus.command("do")
    async def do(payload: dict[str, Any]) -> Any:
        return None

    with pytest.raises(ValueError):
        bus.command("do")
    client = BusClient(nc, sender="harness")
    for service, verb in (("svc.x", "do"), ("svc", ">"), ("svc", "a.b"), ("*", "do")):
        with pytest.raises(ValueError):
            await client.command(service, verb, {})
    with pytest.raises(ValueError):
        await client.command("svc", "do", {}, timeout=0)
