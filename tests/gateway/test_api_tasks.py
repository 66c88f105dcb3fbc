"""Tasks: the reporter services use, the gateway's projection, GET /tasks/{id} and its SSE steps.

The end-to-end tests run the real gateway with a real relay between Postgres and JetStream, so
a step a service reports reaches the client the way it does in production.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client as NATS

from libs.events.envelope import NewEvent
from libs.events.errors import ConcurrencyError, EventStoreError
from libs.events.projection import ProjectionRunner, known_projections, replay_by_name
from libs.events.store import PostgresEventStore
from libs.events.tasks import Task, TaskEnded, task_stream
from services.gateway.api import default_table
from services.gateway.api.handlers.tasks import TASK_STREAMS, TaskStreams
from services.gateway.api.openapi import openapi_document
from services.gateway.tasks import TaskProjection
from tests.gateway.apikit import (
    Cast,
    Client,
    Gateway,
    api_app_of,
    make_cast,
    running_gateway,
    serve_api,
)
from tests.identity.kit import running_identity
from tests.support.bus import relaying
from tests.support.waits import wait_until

UNKNOWN = "0190a000-0000-7000-8000-000000000000"


# -- reading Server-Sent Events ------------------------------------------------------------


@dataclass
class Sse:
    """One block of an event stream: an event, a retry hint, or a comment."""

    id: str | None = None
    event: str | None = None
    data: Any = None
    retry: int | None = None
    comment: str | None = None


def _field(block: Sse, line: str) -> None:
    name, _, value = line.partition(":")
    value = value.removeprefix(" ")
    if name == "id":
        block.id = value
    elif name == "event":
        block.event = value
    elif name == "data":
        block.data = json.loads(value)
    elif name == "retry":
        block.retry = int(value)
    else:
        raise AssertionError(f"unexpected SSE field {line!r}")


def parse_sse(body: bytes) -> list[Sse]:
    """Every block of a complete stream."""
    out: list[Sse] = []
    for chunk in body.decode().split("\n\n"):
        if not chunk:
            continue
        block = Sse()
        for line in chunk.split("\n"):
            if line.startswith(":"):
                block.comment = line[1:].strip()
            else:
                _field(block, line)
        out.append(block)
    return out


async def next_sse(r: aiohttp.ClientResponse, within: float = 10.0) -> Sse | None:
    """The next block of a live stream; None once the server has closed it."""
    block = Sse()
    seen = False
    async with asyncio.timeout(within):
        while True:
            raw = await r.content.readline()
            if not raw:
                return block if seen else None
            line = raw.decode().rstrip("\n")
            if not line:
                if seen:
                    return block
                continue
            seen = True
            if line.startswith(":"):
                block.comment = line[1:].strip()
            else:
                _field(block, line)


async def next_event(r: aiohttp.ClientResponse, within: float = 10.0) -> Sse | None:
    """The next event (retry hints and heartbeats skipped); None once the stream has ended."""
    while True:
        block = await next_sse(r, within)
        if block is None or block.event is not None:
            return block


def steps(blocks: list[Sse]) -> list[tuple[str | None, int, str]]:
    return [(b.event, b.data["percent"], b.data["message"]) for b in blocks if b.event]


# -- helpers --------------------------------------------------------------------------------


def auth(who: str) -> dict[str, str]:
    return {"Cookie": f"__Host-hp_session={who}"}


async def wait_for_task(client: Client, session: str, task_id: str, **want: Any) -> dict[str, Any]:
    """The task as GET shows it to the holder of `session`, once it shows `want`."""
    seen: dict[str, Any] = {}

    async def shows() -> bool:
        a = await client.call("GET", f"/api/v1/tasks/{task_id}", session=session)
        seen.update(status=a.status, body=a.body)
        return a.status == 200 and all(a.body.get(k) == v for k, v in want.items())

    await wait_until(shows, 20, f"task {task_id} to show {want} (last: {seen})")
    body: dict[str, Any] = seen["body"]
    return body


@asynccontextmanager
async def gateway_with_relay(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
    nc: NATS,
    store: PostgresEventStore,
) -> AsyncIterator[tuple[Gateway, Cast]]:
    """The real identity (with root, alice and bob), the relay and the real gateway."""
    async with running_identity(
        monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path
    ) as ident:
        cast = await make_cast(ident, bob=True)
        async with (
            relaying(dsn, nats_url, uniq),
            running_gateway(
                monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path
            ) as gw,
        ):
            yield gw, cast


# -- the reporter ---------------------------------------------------------------------------


async def test_the_reporter_records_steps_and_refuses_bad_ones(store: PostgresEventStore) -> None:
    t = await Task.start(
        store, kind="backup.run", title="Back up Blog", owner="u-alice", target="app-blog"
    )
    assert uuid.UUID(t.id).version == 7
    await t.progress(0, "Preparing")
    await t.progress(40, "Copying files")
    for bad in (101, -1, 39, True, 50.5, "60"):
        with pytest.raises(ValueError, match="percent"):
            await t.progress(bad, "Copying")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="message"):
        await t.progress(50, "   ")
    await t.progress(40, "Still copying")  # the same percent again is a step too
    with pytest.raises(ValueError, match="result"):
        await t.succeed("done", result={"blob": "x" * 5000})
    with pytest.raises(ValueError, match="code"):
        await t.fail("it broke", code="Disk Full")
    await t.succeed("Backup done", result={"backup_id": "b-1"})
    assert t.ended and t.percent == 100
    for late in (t.progress(100, "again"), t.succeed("again"), t.fail("no", code="late")):
        with pytest.raises(TaskEnded):
            await late

    recorded = await store.read_stream(task_stream(t.id))
    assert [(e.type, e.data) for e in recorded] == [
        (
            "TaskStarted",
            {
                "task_id": t.id,
                "kind": "backup.run",
                "title": "Back up Blog",
                "owner": "u-alice",
                "target": "app-blog",
            },
        ),
        ("TaskProgressed", {"task_id": t.id, "percent": 0, "message": "Preparing"}),
        ("TaskProgressed", {"task_id": t.id, "percent": 40, "message": "Copying files"}),
        ("TaskProgressed", {"task_id": t.id, "percent": 40, "message": "Still copying"}),
        ("TaskSucceeded", {"task_id": t.id, "message": "Backup done",
                           "result": {"backup_id": "b-1"}}),
    ]  # fmt: skip
    assert recorded[0].meta["summary"] == f"backup.run task {t.id[:8]} started"

    # start refuses what would make a bad task
    for kwargs, field in (
        ({"kind": "Backup Run"}, "kind"),
        ({"title": ""}, "title"),
        ({"owner": "two words"}, "owner"),
        ({"target": "not a stream"}, "target"),
    ):
        args = {"kind": "backup.run", "title": "t", "owner": "system", **kwargs}
        with pytest.raises(ValueError, match=field):
            await Task.start(store, **args)


async def test_a_resumed_reporter_goes_on_and_a_second_writer_is_refused(
    store: PostgresEventStore,
) -> None:
    t = await Task.start(store, kind="app.update", title="Update Blog", owner="system")
    await t.progress(30, "Pulling")
    resumed = await Task.load(store, t.id)
    assert (resumed.id, resumed.percent, resumed.ended) == (t.id, 30, False)
    with pytest.raises(ValueError, match="fall"):
        await resumed.progress(20, "Pulling")
    await resumed.progress(70, "Restarting")
    with pytest.raises(ConcurrencyError):
        await t.progress(80, "Restarting")  # the first reporter is behind: it may not write
    await resumed.fail("the new image does not start: see the app's log", code="app_unhealthy")
    assert (await Task.load(store, t.id)).ended
    with pytest.raises(ValueError, match="UUID"):
        await Task.load(store, "nope")
    with pytest.raises(EventStoreError, match="no task"):
        await Task.load(store, UNKNOWN)


# -- the API, end to end --------------------------------------------------------------------


async def test_a_task_as_its_owner_sees_it_live(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
    nc: NATS,
    store: PostgresEventStore,
) -> None:
    async with gateway_with_relay(monkeypatch, dsn, nats_url, uniq, tmp_path, nc, store) as (
        gw,
        cast,
    ):
        client = gw.client
        alice = cast.session_alice
        t = await Task.start(
            store, kind="app.install", title="Install Blog", owner=cast.alice_id, target="app-blog"
        )
        await t.progress(10, "Downloading the image")
        task = await wait_for_task(client, alice, t.id, percent=10)
        assert task == {
            "task_id": t.id,
            "kind": "app.install",
            "title": "Install Blog",
            "owner": cast.alice_id,
            "target": "app-blog",
            "state": "running",
            "percent": 10,
            "message": "Downloading the image",
            "result": None,
            "error_code": None,
            "started_at": task["started_at"],
            "updated_at": task["updated_at"],
            "finished_at": None,
        }
        assert task["started_at"] <= task["updated_at"]

        url = f"{client.base}/api/v1/tasks/{t.id}/events"
        async with client.http.get(url, headers=auth(alice)) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "text/event-stream; charset=utf-8"
            assert r.headers["Cache-Control"] == "no-store"
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            first = await next_sse(r)
            assert first is not None and first.retry == 2000
            live = [await next_event(r)]  # the step so far
            await t.progress(60, "Starting the container")
            live.append(await next_event(r))
            await t.succeed("Blog is running", result={"url": "https://blog.example.test"})
            live.append(await next_event(r))
            assert await next_event(r) is None  # the stream ends after the final step
        got = [b for b in live if b is not None]
        assert steps(got) == [
            ("progress", 10, "Downloading the image"),
            ("progress", 60, "Starting the container"),
            ("succeeded", 100, "Blog is running"),
        ]
        ids = [int(b.id or 0) for b in got]
        assert ids == sorted(ids) and len(set(ids)) == 3
        assert got[2].data["result"] == {"url": "https://blog.example.test"}
        assert "error_code" not in got[2].data and "result" not in got[0].data

        # later: the whole history at once, then the end
        a = await client.call("GET", f"/api/v1/tasks/{t.id}/events", session=alice)
        assert a.status == 200
        assert steps(parse_sse(a.body)) == steps(got)
        # Last-Event-ID resumes after the step it names, without repeating it
        for seen, rest in ((got[0], got[1:]), (got[1], got[2:]), (got[2], [])):
            a = await client.call(
                "GET", f"/api/v1/tasks/{t.id}/events", session=alice,
                headers={"Last-Event-ID": seen.id or ""},
            )  # fmt: skip
            assert a.status == 200
            assert [b.id for b in parse_sse(a.body) if b.event] == [b.id for b in rest]
        a = await client.call(
            "GET", f"/api/v1/tasks/{t.id}/events", session=alice,
            headers={"Last-Event-ID": "3 OR 1=1"},
        )  # fmt: skip
        assert a.status == 400 and a.problem["field"] == "Last-Event-ID"

        done = await wait_for_task(client, alice, t.id, state="succeeded")
        assert done["percent"] == 100 and done["message"] == "Blog is running"
        assert done["result"] == {"url": "https://blog.example.test"}
        assert done["finished_at"] is not None and done["error_code"] is None

        # who may look: the owner (by session or token) and admins; others do not see it
        for creds in ({"token": cast.token_alice}, {"token": cast.token_root}):
            for path in (f"/api/v1/tasks/{t.id}", f"/api/v1/tasks/{t.id}/events"):
                a = await client.call("GET", path, **creds)
                assert a.status == 200, (path, creds, a.body)
        for path in (f"/api/v1/tasks/{t.id}", f"/api/v1/tasks/{t.id}/events"):
            foreign = await client.call("GET", path, session=cast.session_bob)
            unknown = await client.call(
                "GET", path.replace(t.id, UNKNOWN), session=cast.session_bob
            )
            assert foreign.status == unknown.status == 404
            assert foreign.problem["field"] == unknown.problem["field"] == "task_id"
            assert foreign.problem["detail"].replace(t.id, UNKNOWN) == unknown.problem["detail"]
            a = await client.call("GET", path.replace(t.id, UNKNOWN), token=cast.token_root)
            assert a.status == 404 and a.problem["code"] == "not_found"
            a = await client.call("GET", path.replace(t.id, "not-a-task"), session=cast.session_bob)
            assert a.status == 400 and a.problem["field"] == "task_id"
            a = await client.call("GET", path)
            assert a.status == 401 and a.problem["code"] == "unauthorized"


async def test_a_failed_task_and_its_stream(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
    nc: NATS,
    store: PostgresEventStore,
) -> None:
    """A failure ends the stream too; the percent stays where the work stopped."""
    async with gateway_with_relay(monkeypatch, dsn, nats_url, uniq, tmp_path, nc, store) as (
        gw,
        cast,
    ):
        client = gw.client
        alice = cast.session_alice
        t = await Task.start(store, kind="cert.order", title="Certificate", owner=cast.alice_id)
        await wait_for_task(client, alice, t.id, state="running", percent=0, message="started")
        url = f"{client.base}/api/v1/tasks/{t.id}/events"
        async with client.http.get(url, headers=auth(alice)) as r:
            assert r.status == 200
            await t.progress(40, "Waiting for DNS")
            await t.fail("the DNS record did not appear within 5 minutes", code="dns_timeout")
            got = [await next_event(r), await next_event(r)]
            assert await next_event(r) is None
        shown = [
            (b.event, {k: v for k, v in b.data.items() if k != "occurred_at"}) for b in got if b
        ]
        assert shown == [
            ("progress", {"percent": 40, "message": "Waiting for DNS"}),
            ("failed", {"percent": 40, "error_code": "dns_timeout",
                        "message": "the DNS record did not appear within 5 minutes"}),
        ]  # fmt: skip
        assert all(b and b.data["occurred_at"] for b in got)
        task = await wait_for_task(client, alice, t.id, state="failed")
        assert (task["percent"], task["error_code"], task["result"]) == (40, "dns_timeout", None)
        assert task["finished_at"] is not None


async def test_streams_end_when_the_client_leaves_or_the_gateway_stops(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
    nc: NATS,
    store: PostgresEventStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="homeport")
    async with gateway_with_relay(monkeypatch, dsn, nats_url, uniq, tmp_path, nc, store) as (
        gw,
        cast,
    ):
        client = gw.client
        alice = cast.session_alice
        streams = api_app_of(gw.svc.http_app)[TASK_STREAMS]
        t = await Task.start(store, kind="app.install", title="Install Wiki", owner=cast.alice_id)
        await t.progress(5, "Downloading")
        await wait_for_task(client, alice, t.id, percent=5)
        url = f"{client.base}/api/v1/tasks/{t.id}/events"
        # the client goes away in the middle: the gateway closes its side
        async with client.http.get(url, headers=auth(alice)) as r:
            assert (await next_event(r)) is not None
            assert streams.open == 1

        async def closed() -> bool:
            return streams.open == 0

        await wait_until(closed, 5, "the gateway to notice the client left")
        # the gateway stops while a client follows a running task: its stream ends at once
        async with client.http.get(url, headers=auth(alice)) as r:
            assert (await next_event(r)) is not None
            gw.svc.request_stop("test: stop while streaming")
            assert await next_event(r, within=5) is None
        assert streams.open == 0
    # the streams ended before the database went away: nothing went wrong on the way out (the
    # identity service's own stop is not this test's business: it reports its cancelled loop)
    trouble = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and not r.name.startswith("homeport.identity")
    ]
    assert trouble == []


async def test_heartbeats_head_replay_and_a_rogue_step(
    nc: NATS, store: PostgresEventStore, dsn: str, cast: Cast
) -> None:
    """Through the API alone (projection caught up by hand): heartbeats while nothing happens,
    HEAD, `homeport replay tasks`, and steps written after the end are not shown."""
    assert known_projections()["tasks"] is TaskProjection
    runner = ProjectionRunner(TaskProjection(), store)
    await runner.setup()
    t = await Task.start(store, kind="app.install", title="Install Chat", owner=cast.alice_id)
    await t.progress(20, "Downloading")
    await runner.catch_up()

    def quick(api: Any) -> None:
        api[TASK_STREAMS] = TaskStreams(poll=0.05, heartbeat=0.2)

    alice = cast.session_alice
    async with serve_api(nc, pool=store.pool, api_hook=quick) as client:
        url = f"{client.base}/api/v1/tasks/{t.id}/events"
        async with client.http.get(url, headers=auth(alice)) as r:
            assert (await next_event(r)) is not None
            beat = await next_sse(r, within=2)
            assert beat is not None and beat.comment == "keep-alive" and beat.event is None
        async with client.http.head(url, headers=auth(alice)) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
            assert await r.read() == b""

        await t.succeed("Chat is running")
        await store.append(
            task_stream(t.id),
            [NewEvent("TaskProgressed", {"task_id": t.id, "percent": 10, "message": "rogue"})],
        )
        await runner.catch_up()
        before = await client.call("GET", f"/api/v1/tasks/{t.id}", session=alice)
        history = await client.call("GET", f"/api/v1/tasks/{t.id}/events", session=alice)
        assert before.body["state"] == "succeeded" and before.body["percent"] == 100
        assert steps(parse_sse(history.body)) == [
            ("progress", 20, "Downloading"),
            ("succeeded", 100, "Chat is running"),
        ]
        # a rebuild from the event store gives the same answers
        assert await replay_by_name("tasks", dsn) == 4
        after = await client.call("GET", f"/api/v1/tasks/{t.id}", session=alice)
        again = await client.call("GET", f"/api/v1/tasks/{t.id}/events", session=alice)
        assert after.body == before.body
        assert again.body == history.body


async def test_a_task_just_started_is_waited_for_and_an_unknown_one_is_not(
    nc: NATS, store: PostgresEventStore, cast: Cast
) -> None:
    """A client that asks right after the 202 can be ahead of the tasks read model: the API
    waits a moment for a task whose id was made just now, never for any other id."""
    runner = ProjectionRunner(TaskProjection(), store)
    await runner.setup()
    alice = cast.session_alice
    async with serve_api(nc, pool=store.pool) as client:
        t = await Task.start(store, kind="app.install", title="Install Chat", owner=cast.alice_id)

        async def later() -> None:
            await asyncio.sleep(0.6)
            await runner.catch_up()

        catching_up = asyncio.create_task(later())
        loop = asyncio.get_running_loop()
        started = loop.time()
        view = await client.call("GET", f"/api/v1/tasks/{t.id}", session=alice)
        assert view.status == 200 and view.body["title"] == "Install Chat"
        assert loop.time() - started >= 0.5  # it was not there when asked
        await catching_up
        url = f"{client.base}/api/v1/tasks/{t.id}/events"
        async with client.http.head(url, headers=auth(alice)) as r:
            assert r.status == 200

        for unknown in (UNKNOWN, str(uuid.uuid4())):  # an old UUIDv7, not a UUIDv7
            started = loop.time()
            a = await client.call("GET", f"/api/v1/tasks/{unknown}", session=alice)
            assert a.status == 404 and loop.time() - started < 0.5


def test_the_event_stream_is_documented_as_such() -> None:
    doc = openapi_document(default_table(), version="1", prefix="/api/v1")
    events = doc["paths"]["/tasks/{task_id}/events"]["get"]
    assert set(events["responses"]["200"]["content"]) == {"text/event-stream"}
    assert "Last-Event-ID" in events["description"]
    assert {"401", "404", "400"} <= set(events["responses"])
    task = doc["paths"]["/tasks/{task_id}"]["get"]
    schema = task["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["properties"]["state"]["enum"] == ["running", "succeeded", "failed"]
    assert task["parameters"][0]["schema"] == {
        "type": "string",
        "format": "uuid",
        "description": "a task id (UUID)",
    }
