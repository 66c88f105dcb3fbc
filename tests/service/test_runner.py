"""The service lifecycle: probes, hooks in order, a bounded drain, crashes end the process."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from libs.service.config import ServiceConfig
from libs.service.metrics import EVENTS_APPENDED
from libs.service.runner import Service, ServiceStopping

REPO = Path(__file__).resolve().parents[2]


def config(**overrides: Any) -> ServiceConfig:
    """Settings of an in-process service: loopback, any free port, a short drain."""
    values: dict[str, Any] = {
        "database_url": "postgresql://unused",
        "nats_url": "nats://unused",
        "drain_seconds": 1.0,
    }
    return ServiceConfig(**{**values, **overrides})


async def poll(predicate: Callable[[], bool], deadline: float, what: str) -> None:
    """Wait until `predicate()` holds; fail naming `what` after `deadline` seconds."""
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline} s waiting for {what}")
        await asyncio.sleep(0.01)


@asynccontextmanager
async def running(svc: Service) -> AsyncIterator[asyncio.Task[None]]:
    """serve() in a task, past its start hooks; stopped and awaited on the way out."""
    up = asyncio.Event()

    async def mark_up() -> None:
        up.set()

    svc.on_start(mark_up)
    task = asyncio.create_task(svc.serve(), name=f"serve {svc.name}")
    try:
        await poll(lambda: up.is_set() or task.done(), 5, f"{svc.name} to start")
        assert not task.done(), f"{svc.name} ended at start, exit code {svc.exit_code}"
        yield task
    finally:
        svc.request_stop("test over")
        _, late = await asyncio.wait({task}, timeout=15)
        assert not late, f"{svc.name} did not stop within 15 s"
        if not task.cancelled():
            task.result()


async def get(http: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, str, str]:
    """Status, content type and body of a GET."""
    async with http.get(url, **kw) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.text()


def messages(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == f"homeport.{name}"]


# -- probes ---------------------------------------------------------------------------------


async def test_probes_answer_and_readiness_follows_its_checks() -> None:
    svc = Service("probe", config())
    db_ok = True

    async def db() -> bool:
        return db_ok

    svc.add_readiness_check("db", db)
    async with running(svc), aiohttp.ClientSession() as http:
        assert svc.port > 0, "the bound port of HP_HTTP_PORT=0"
        base = f"http://127.0.0.1:{svc.port}"
        status, ctype, body = await get(http, base + "/healthz")
        assert (status, ctype, json.loads(body)) == (
            200,
            "application/json; charset=utf-8",
            {"status": "ok", "service": "probe"},
        )
        status, _, body = await get(http, base + "/readyz")
        assert (status, json.loads(body)) == (
            200,
            {"status": "ready", "service": "probe", "checks": ["db"]},
        )

        EVENTS_APPENDED.labels(type="ProbeTested").inc()
        status, ctype, body = await get(http, base + "/metrics")
        assert status == 200
        assert ctype.startswith("text/plain; version=0.0.4")
        assert 'homeport_events_appended_total{type="ProbeTested"} 1.0' in body
        accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
        status, ctype, body = await get(http, base + "/metrics", headers=accept)
        assert ctype.startswith("application/openmetrics-text")
        assert body.endswith("# EOF\n")
        assert "homeport_events_appended" in body

        db_ok = False
        status, _, body = await get(http, base + "/readyz")
        assert (status, json.loads(body)) == (
            503,
            {"status": "not ready", "service": "probe", "failing": ["db"]},
        )


async def test_a_readiness_check_that_raises_or_hangs_counts_as_failing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    svc = Service("probe", config())
    svc.readiness_timeout = 0.2
    hung: list[bool] = []

    async def ok() -> bool:
        return True

    async def nats() -> bool:
        raise ConnectionError("nats: no servers available")

    async def slow() -> bool:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            hung.append(True)
            raise
        return True

    svc.add_readiness_check("db", ok)
    svc.add_readiness_check("nats", nats)
    svc.add_readiness_check("slow", slow)
    with pytest.raises(ValueError, match="already registered"):
        svc.add_readiness_check("db", ok)
    async with running(svc), aiohttp.ClientSession() as http:
        t0 = time.monotonic()
        status, _, body = await get(http, f"http://127.0.0.1:{svc.port}/readyz")
        took = time.monotonic() - t0
    assert (status, json.loads(body)["failing"]) == (503, ["nats", "slow"])
    assert took < 1.5, "the slow check was given readiness_timeout, not its 30 s"
    assert hung == [True], "the hung check was cancelled"
    logged = messages(caplog, "probe")
    assert any("nats" in m and "no servers available" in m for m in logged)
    assert any("slow gave no answer within 0.2 s" in m for m in logged)


# -- stop and drain -------------------------------------------------------------------------


async def test_stop_runs_hooks_in_reverse_drains_work_and_cancels_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    svc = Service("drainer", config(drain_seconds=0.6))
    order: list[str] = []

    def hook(what: str) -> Callable[[], Awaitable[None]]:
        async def fn() -> None:
            order.append(what)

        return fn

    async def short_job() -> None:
        async with svc.work("short-unit"):
            await asyncio.sleep(0.3)
            order.append("short done")

    async def long_job() -> None:
        # Run by a task the service does not own, as the bus runs its handlers.
        try:
            async with svc.work("long-unit"):
                await asyncio.sleep(30)
        except asyncio.CancelledError:
            order.append("long cancelled")
            raise

    async def idle_consumer() -> None:
        await asyncio.sleep(3600)

    async def start() -> None:
        svc.spawn(short_job(), "short")
        svc.spawn(idle_consumer(), "idle-consumer")

    svc.on_start(start)
    for n in ("a", "b"):
        svc.on_stop(hook(f"stop {n}"))
        svc.on_cleanup(hook(f"cleanup {n}"))

    async with running(svc) as serving, aiohttp.ClientSession() as http:
        outside = asyncio.create_task(long_job(), name="bus handler")
        try:
            await poll(lambda: len(svc._units) == 2, 2, "both units to begin")
            base = f"http://127.0.0.1:{svc.port}"
            assert (await get(http, base + "/readyz"))[0] == 200
            t0 = time.monotonic()
            svc.request_stop("test")
            status, _, body = await get(http, base + "/readyz")
            assert (status, json.loads(body)["status"]) == (503, "stopping")
            assert (await get(http, base + "/healthz"))[0] == 200, "alive while draining"
            await asyncio.wait_for(serving, 5)
            took = time.monotonic() - t0
        finally:
            outside.cancel()
            await asyncio.wait({outside}, timeout=2)

    assert svc.exit_code == 0
    assert 0.6 <= took < 0.6 + 1.0, took
    assert order == [
        "stop b",
        "stop a",
        "short done",
        "long cancelled",
        "cleanup b",
        "cleanup a",
    ]
    assert outside.cancelled()
    dropped = [r for r in caplog.records if "dropped_units" in r.__dict__]
    assert [r.__dict__["dropped_units"] for r in dropped] == [["long-unit"]]
    assert (
        "1 unit(s) of work unfinished after 0.6 s; cancelled: long-unit" in dropped[0].getMessage()
    )
    tasks = [r for r in caplog.records if "dropped_tasks" in r.__dict__]
    assert [r.__dict__["dropped_tasks"] for r in tasks] == [["idle-consumer"]]

    with pytest.raises(ServiceStopping):
        async with svc.work():
            pass
    late = asyncio.sleep(0)
    with pytest.raises(ServiceStopping):
        svc.spawn(late, "late")
    assert inspect.getcoroutinestate(late) == "CORO_CLOSED", (
        "the refused coroutine was closed, not left unawaited"
    )


async def test_work_that_arrives_during_the_drain_is_waited_for() -> None:
    """A subscription being drained still delivers; that work finishes before cleanup."""
    svc = Service("drainer", config(drain_seconds=2.0))
    order: list[str] = []

    async def delivered_late() -> None:
        async with svc.work("late-message"):
            await asyncio.sleep(0.2)
            order.append("late done")

    async def stop() -> None:
        svc.spawn(delivered_late(), "late")
        await asyncio.sleep(0.05)
        order.append("unsubscribed")

    async def cleanup() -> None:
        order.append("cleanup")

    svc.on_stop(stop)
    svc.on_cleanup(cleanup)
    async with running(svc):
        t0 = time.monotonic()
    took = time.monotonic() - t0
    assert order == ["unsubscribed", "late done", "cleanup"]
    assert took < 1.0, "the drain ended when the work did, not at drain_seconds"


async def test_cleanup_hooks_all_run_with_deadlines_and_errors_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    svc = Service("cleaner", config(drain_seconds=0.1))
    svc.hook_timeout = 0.2
    svc.cancel_grace = 0.5
    order: list[str] = []

    async def close_pool() -> None:
        order.append("pool closed")

    async def hang() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            order.append("hang cancelled")
            raise

    async def broken() -> None:
        order.append("broken")
        raise OSError("socket already closed")

    async def bad_stop() -> None:
        raise RuntimeError("unsubscribe failed")

    svc.on_stop(bad_stop)
    for fn in (close_pool, hang, broken):
        svc.on_cleanup(fn)
    async with running(svc):
        pass
    assert order == ["broken", "hang cancelled", "pool closed"]
    assert svc.exit_code == 0
    logged = messages(caplog, "cleaner")
    assert any("broken failed: OSError('socket already closed')" in m for m in logged)
    assert any("hang did not finish within 0.2 s" in m for m in logged)
    assert any("bad_stop failed: RuntimeError('unsubscribe failed')" in m for m in logged)


# -- failures -------------------------------------------------------------------------------


async def test_a_failed_start_cleans_up_and_exits_1(caplog: pytest.LogCaptureFixture) -> None:
    svc = Service("starter", config())
    calls: list[str] = []

    async def open_pool() -> None:
        calls.append("pool opened")

    async def connect_nats() -> None:
        raise ConnectionError("nats://127.0.0.1:4222 refused the connection")

    async def subscribe() -> None:
        calls.append("subscribed")

    async def unsubscribe() -> None:
        calls.append("unsubscribe")

    async def close_pool() -> None:
        calls.append("pool closed")

    for fn in (open_pool, connect_nats, subscribe):
        svc.on_start(fn)
    svc.on_stop(unsubscribe)
    svc.on_cleanup(close_pool)
    await asyncio.wait_for(svc.serve(), 10)

    assert svc.exit_code == 1
    assert calls == ["pool opened", "unsubscribe", "pool closed"]
    assert any("refused the connection" in m for m in messages(caplog, "starter"))
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", svc.port))
    with pytest.raises(RuntimeError, match="served already"):
        await svc.serve()


async def test_a_start_hook_past_its_deadline_fails_the_start() -> None:
    svc = Service("starter", config())
    svc.start_timeout = 0.2
    seen: list[str] = []

    async def connect() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("connect cancelled")
            raise

    async def cleanup() -> None:
        seen.append("cleanup")

    svc.on_start(connect)
    svc.on_cleanup(cleanup)
    await asyncio.wait_for(svc.serve(), 5)
    assert svc.exit_code == 1
    assert seen == ["connect cancelled", "cleanup"]


async def test_a_stop_during_start_is_a_clean_exit() -> None:
    svc = Service("starter", config())
    seen: list[str] = []
    entered = asyncio.Event()

    async def connect() -> None:
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("connect cancelled")
            raise

    async def cleanup() -> None:
        seen.append("cleanup")

    svc.on_start(connect)
    svc.on_cleanup(cleanup)
    task = asyncio.create_task(svc.serve())
    await asyncio.wait_for(entered.wait(), 5)
    svc.request_stop("SIGTERM")
    await asyncio.wait_for(task, 5)
    assert svc.exit_code == 0
    assert seen == ["connect cancelled", "cleanup"]


async def test_a_crashed_task_stops_the_service_with_exit_1(
    caplog: pytest.LogCaptureFixture,
) -> None:
    svc = Service("crasher", config())
    seen: list[str] = []

    async def consumer() -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("consumer lost its subscription")

    async def healthy() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append("healthy cancelled")
            raise

    async def start() -> None:
        svc.spawn(consumer(), "consumer")
        svc.spawn(healthy(), "healthy")

    async def cleanup() -> None:
        seen.append("cleanup")

    svc.on_start(start)
    svc.on_cleanup(cleanup)
    await asyncio.wait_for(svc.serve(), 5)
    assert svc.exit_code == 1
    assert svc.stop_reason == "task consumer crashed"
    assert seen == ["healthy cancelled", "cleanup"]
    crash = [r for r in caplog.records if r.getMessage().startswith("task consumer crashed")]
    assert crash and crash[0].exc_info is not None


async def test_a_port_in_use_fails_before_any_hook() -> None:
    calls: list[str] = []

    async def start() -> None:
        calls.append("start")

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        svc = Service("clash", config(http_port=taken.getsockname()[1]))
        svc.on_start(start)
        svc.on_cleanup(start)
        await asyncio.wait_for(svc.serve(), 5)
    assert svc.exit_code == 1
    assert calls == []


async def test_cancelling_serve_still_cleans_up() -> None:
    svc = Service("cancelled", config(drain_seconds=5.0))
    seen: list[str] = []

    async def job() -> None:
        try:
            async with svc.work("job"):
                await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("job cancelled")
            raise

    async def start() -> None:
        svc.spawn(job(), "job")

    async def cleanup() -> None:
        seen.append("cleanup")

    svc.on_start(start)
    svc.on_cleanup(cleanup)
    async with running(svc) as serving:
        t0 = time.monotonic()
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(serving, 5)
    assert time.monotonic() - t0 < 2, "no drain when cancelled"
    assert seen == ["job cancelled", "cleanup"]


# -- as a process ---------------------------------------------------------------------------


class Sample:
    """The sample service as a child process; stderr read as JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def started(self) -> int:
        """The bound port from the "started" line."""
        assert self.proc.stderr is not None
        async with asyncio.timeout(15):
            while line := (await self.proc.stderr.readline()).decode():
                self.lines.append(line)
                if json.loads(line).get("event") == "started":
                    return int(json.loads(line)["port"])
        raise AssertionError(f"exited before starting: {''.join(self.lines)}")

    async def finish(self, deadline: float) -> int:
        """Read the rest of stderr and the exit code within `deadline` seconds."""
        _, err = await asyncio.wait_for(self.proc.communicate(), deadline)
        self.lines.extend(err.decode().splitlines(keepends=True))
        assert self.proc.returncode is not None
        return self.proc.returncode

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.lines if x.startswith("{")]


@asynccontextmanager
async def sample(mode: str, marker: Path, **env: str) -> AsyncIterator[Sample]:
    """Start tests/service/sample_service.py; always killed and reaped on the way out."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("HP_")}
    base |= {
        "HP_DATABASE_URL": "postgresql://unused",
        "HP_NATS_URL": "nats://unused",
        "HP_HTTP_PORT": "0",
        "HP_DRAIN_SECONDS": "3",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.service.sample_service",
        mode,
        str(marker),
        cwd=REPO,
        env=base | env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    child = Sample(proc)
    try:
        yield child
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.communicate(), 10)


def notes(marker: Path) -> list[str]:
    return marker.read_text().splitlines() if marker.exists() else []


async def test_sigterm_lets_in_flight_work_finish_then_exits_0(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    async with sample("serve", marker) as child, aiohttp.ClientSession() as http:
        port = await child.started()
        base = f"http://127.0.0.1:{port}"
        request = asyncio.create_task(get(http, base + "/slow?seconds=1"))
        try:
            await poll(lambda: notes(marker) == ["begun"], 5, "the request to begin")
            t0 = time.monotonic()
            child.proc.send_signal(signal.SIGTERM)
            ready = 200
            while ready == 200 and not request.done():
                ready = (await get(http, base + "/readyz"))[0]
                await asyncio.sleep(0.02)
            answer = await asyncio.wait_for(request, 5)
        finally:
            request.cancel()
            await asyncio.wait({request}, timeout=2)
        code = await child.finish(3 + 2)
        took = time.monotonic() - t0
    assert (code, answer[0], answer[2]) == (0, 200, "done"), "".join(child.lines)
    assert ready == 503, "unready while draining"
    assert took < 3 + 2
    assert notes(marker) == ["begun", "finished", "cleanup"]
    events = [e["event"] for e in child.events()]
    assert events[-3:] == ["stop requested", "stopping", "stopped"]
    assert child.events()[-3]["reason"] == "SIGTERM"
    assert all(e["service"] == "sample" for e in child.events())


async def test_a_second_sigterm_cuts_the_drain_and_the_unit_is_dropped(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    async with sample("serve", marker) as child, aiohttp.ClientSession() as http:
        port = await child.started()
        base = f"http://127.0.0.1:{port}"
        request = asyncio.create_task(get(http, base + "/slow?seconds=30"))
        try:
            await poll(lambda: notes(marker) == ["begun"], 5, "the request to begin")
            child.proc.send_signal(signal.SIGTERM)
            while (await get(http, base + "/readyz"))[0] == 200:
                await asyncio.sleep(0.02)
            t0 = time.monotonic()
            child.proc.send_signal(signal.SIGTERM)
            code = await child.finish(3 + 2)
            took = time.monotonic() - t0
            done, _ = await asyncio.wait({request}, timeout=2)
            assert done, "the client saw its request end"
        finally:
            request.cancel()
            await asyncio.wait({request}, timeout=2)
    assert code == 0, "".join(child.lines)
    assert took < 2, "the second SIGTERM did not wait out drain_seconds=3"
    assert notes(marker) == ["begun", "cleanup"]
    dropped = [e for e in child.events() if "dropped_units" in e]
    assert [e["dropped_units"] for e in dropped] == [["slow-request"]]


async def test_a_service_process_runs_on_uvloop(tmp_path: Path) -> None:
    """Every service's loop is uvloop's (runner.py): the command path's socket work is
    measured quicker on it."""
    marker = tmp_path / "marker"
    async with sample("loop", marker) as child:
        code = await child.finish(10)  # it stops from its start hook: no "started" line
    assert code == 0, "".join(child.lines)
    assert notes(marker) == ["uvloop", "cleanup"]


async def test_a_crashed_task_makes_the_process_exit_1(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    async with sample("crash", marker) as child:
        await child.started()
        code = await child.finish(10)
    assert code == 1, "".join(child.lines)
    crash = [e for e in child.events() if e["event"].startswith("task consumer crashed")]
    assert crash and "consumer lost its subscription" in crash[0]["exc"]
    assert notes(marker) == ["cleanup"]


async def test_a_config_error_is_printed_plainly_with_exit_2(tmp_path: Path) -> None:
    env = {"HP_DATABASE_URL": "", "HP_HTTP_PORT": "eighty", "HP_LOG_LEVEL": "chatty"}
    async with sample("serve", tmp_path / "marker", **env) as child:
        code = await child.finish(10)
    text = "".join(child.lines)
    assert code == 2, text
    assert text.startswith("config error: 3 configuration problems:")
    for var in ("HP_DATABASE_URL", "HP_HTTP_PORT", "HP_LOG_LEVEL"):
        assert var in text
    assert "Traceback" not in text


# -- parts (Service.use) --------------------------------------------------------------------


def _part(name: str, log: list[str], *, fail: bool = False) -> Callable[[Service], Any]:
    @asynccontextmanager
    async def part(svc: Service) -> AsyncIterator[None]:
        log.append(f"enter {name}")
        if fail:
            raise RuntimeError(f"{name} cannot open")
        try:
            yield
        finally:
            log.append(f"exit {name}")

    return part


async def test_parts_enter_in_order_and_exit_in_reverse_before_cleanup() -> None:
    log: list[str] = []
    svc = Service("parts", config())
    svc.use(_part("store", log))
    svc.use(_part("bus", log))

    async def cleanup() -> None:
        log.append("cleanup")

    svc.on_cleanup(cleanup)
    async with running(svc):
        assert log == ["enter store", "enter bus"]
    assert log == ["enter store", "enter bus", "exit bus", "exit store", "cleanup"]
    assert svc.exit_code == 0


async def test_a_part_that_fails_to_open_stops_the_start_and_closes_the_ones_before() -> None:
    log: list[str] = []
    svc = Service("parts", config())
    svc.use(_part("store", log))
    svc.use(_part("bus", log, fail=True))
    svc.use(_part("never", log))
    await asyncio.wait_for(svc.serve(), 15)
    assert svc.exit_code == 1
    assert log == ["enter store", "enter bus", "exit store"]
