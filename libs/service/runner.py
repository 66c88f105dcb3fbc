"""The lifecycle of a service process: HTTP probes, start hooks, drain on SIGTERM, cleanup.

Order of a stop (SIGTERM, SIGINT, `request_stop`, a crashed task, a failed start):
1. `stopping` is set, so /readyz answers 503 and load balancers stop sending work;
2. `on_stop` hooks run, last registered first: they stop taking new work (unsubscribe);
3. in-flight `work()` units get until `drain_seconds` after the stop to finish;
4. units still running are cancelled, then the spawned tasks still running; both are logged
   by name, so an operator sees what was dropped;
5. `on_cleanup` hooks run, last registered first, each with a deadline; errors are logged;
6. the HTTP site stops.
Hooks of every kind run even after a partial start, so they must tolerate one.
A second SIGTERM/SIGINT cuts steps 2 and 3 short.

Parts (`use`): a service declares its resources once, as async context managers, in the manner
of aiohttp's cleanup contexts. They are entered at start in the order declared and exited in
reverse at step 2, so a part that takes work (a bus, a loop) and is nested inside the parts it
uses (the store, NATS) stops taking work and drains before they close. A part that fails to
enter stops the start; the parts already entered are exited.

HTTP: the probes (/healthz, /readyz, /metrics) are served by libs.service.probes unless the
service asks for `http_app` (routes of its own: the gateway), so most services never import
aiohttp. While the service runs, free C heap pages are handed back to the system every
`heap_trim_interval` seconds (glibc malloc_trim): memory at rest is what issue 15 measures.

The event loop is uvloop's (libuv): a command crosses two services, NATS and Postgres, and
each hop is socket reads and writes the loop does. Measured on `command_latency_vs_parts`
(per-hop timestamps, same hour): each NATS hop 25-35 us quicker, each SQL round trip 25-33 us,
the whole command 2.30 -> 2.13 ms at the median; the services' CPU per command about a fifth
less. Code that runs in-process under pytest gets asyncio's own loop: both are tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import uvloop

from libs.service.config import ConfigError, ServiceConfig
from libs.service.logs import configure_logging
from libs.service.metrics import render_metrics
from libs.service.probes import ProbeResponse, ProbeServer

if TYPE_CHECKING:
    from aiohttp import web

__all__ = [
    "Service",
    "ServiceStopping",
    "main",
    "run_on_service_loop",
    "service_loop",
    "wait_events",
]

T = TypeVar("T")
Hook = Callable[[], Awaitable[None]]
Check = Callable[[], Awaitable[bool]]
Part = Callable[["Service"], AbstractAsyncContextManager[Any]]


class ServiceStopping(RuntimeError):
    """Work was offered after the drain ended: the service takes no more."""


@dataclass(frozen=True, eq=False)
class _Unit:
    """One unit of in-flight work: its name and the task running it."""

    name: str
    task: asyncio.Task[Any] | None


class Service:
    """One service process: probes on HTTP, hooks run in order, tracked tasks, a bounded drain."""

    # Deadlines, in seconds; instances may override them before serve().
    start_timeout: float = 60.0  # each on_start hook
    readiness_timeout: float = 2.0  # each readiness check, per /readyz request
    hook_timeout: float = 10.0  # each on_cleanup hook; on_stop hooks get drain_seconds + this
    cancel_grace: float = 2.0  # for cancelled units and tasks to unwind
    http_shutdown: float = 1.0  # for open HTTP requests when the site stops
    heap_trim_interval: float = 60.0  # free C heap pages go back to the system this often

    def __init__(self, name: str, config: ServiceConfig) -> None:
        self.name = name
        self.config = config
        self.log = logging.getLogger(f"homeport.{name}")
        self._http_app: web.Application | None = None
        self.port = 0
        self.stopping = False
        self.exit_code = 0
        self.stop_reason = ""
        self._start_hooks: list[Hook] = []
        self._stop_hooks: list[Hook] = []
        self._cleanup_hooks: list[Hook] = []
        self._checks: dict[str, Check] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._units: dict[int, _Unit] = {}
        self._unit_ids = itertools.count()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()
        self._started = False
        self._served = False
        self._taking_work = True
        self._tasks_closed = False
        self._deadline = 0.0
        self._pending_stop: list[Hook] = []
        self._pending_cleanup: list[Hook] | None = None
        self._stopped_logged = False
        self._parts = AsyncExitStack()
        self._parts_declared = False

    @property
    def http_app(self) -> web.Application:
        """The aiohttp application serving the probes, for a service with routes of its own.

        Made (and aiohttp imported) on first use, before serve(); a service that never asks for
        it answers its probes with the small ProbeServer and does not load aiohttp at all.
        """
        if self._http_app is None:
            if self._served:
                raise RuntimeError(f"service {self.name} is served already: add routes before")
            from aiohttp import web

            app = web.Application()
            for path, probe in self._probes().items():
                app.router.add_get(path, _aiohttp_handler(probe))
            self._http_app = app
        return self._http_app

    def _probes(self) -> dict[str, Callable[[Mapping[str, str]], Awaitable[ProbeResponse]]]:
        return {"/healthz": self._healthz, "/readyz": self._readyz, "/metrics": self._metrics}

    # -- wiring ---------------------------------------------------------------------------

    def on_start(self, fn: Hook) -> None:
        """Run `fn` at start, after the hooks registered before it (open pools, subscribe)."""
        self._start_hooks.append(fn)

    def on_stop(self, fn: Hook) -> None:
        """Run `fn` when a stop begins, before the drain, in reverse order (stop taking work)."""
        self._stop_hooks.append(fn)

    def on_cleanup(self, fn: Hook) -> None:
        """Run `fn` after the drain, in reverse order (close connections and pools)."""
        self._cleanup_hooks.append(fn)

    def use(self, part: Part) -> None:
        """Enter `part(self)` at start, after the parts and hooks declared before it; exit the
        parts in reverse when a stop begins (before the drain and the cleanup hooks)."""
        if not self._parts_declared:
            self._parts_declared = True
            self.on_stop(self._exit_parts)

        async def enter() -> None:
            await self._parts.enter_async_context(part(self))

        enter.__qualname__ = f"use({getattr(part, '__qualname__', repr(part))})"
        self.on_start(enter)

    async def _exit_parts(self) -> None:
        await self._parts.aclose()

    def add_readiness_check(self, name: str, fn: Check) -> None:
        """/readyz answers 200 only while `fn` returns True within `readiness_timeout`."""
        if name in self._checks:
            raise ValueError(f"readiness check {name!r} is already registered on {self.name}")
        self._checks[name] = fn

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run `coro` in a tracked task; if it crashes, the service stops with exit code 1."""
        if self._tasks_closed:
            coro.close()
            raise ServiceStopping(f"service {self.name} is stopping: cannot start task {name}")
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def work(self, name: str = "") -> AbstractAsyncContextManager[None]:
        """Wrap one unit of work (a handler call): a stop waits for it up to drain_seconds."""
        return self._unit(name)

    def request_stop(self, reason: str = "") -> None:
        """Begin the stop (idempotent): probes go unready, hooks run, work drains."""
        if self._stop.is_set():
            return
        self.stop_reason = reason
        self.log.info("stop requested", extra={"reason": reason})
        self._stop.set()

    # -- running --------------------------------------------------------------------------

    def run(self) -> int:
        """Log JSON lines, serve until SIGTERM/SIGINT; the exit code (0 clean, 1 failed)."""
        configure_logging(self.name, self.config.log_level)
        try:
            run_on_service_loop(self._serve_with_signals())
        except Exception:
            self.log.exception("service %s failed", self.name)
            return 1
        return self.exit_code

    async def serve(self) -> None:
        """The whole lifecycle: listen, start, wait for a stop, drain, clean up; see exit_code."""
        if self._served:
            raise RuntimeError(f"service {self.name} was served already: build a new one")
        self._served = True
        host = self.config.http_host
        site = _AiohttpSite(self._http_app, self) if self._http_app is not None else None
        probes = ProbeServer(self._probes()) if site is None else None
        try:
            if site is not None:
                await site.start(host, self.config.http_port)
            else:
                assert probes is not None
                await probes.start(host, self.config.http_port)
        except OSError as e:
            self.log.error(
                "cannot listen on %s:%d: %s (check HP_HTTP_HOST and HP_HTTP_PORT)",
                host,
                self.config.http_port,
                e,
            )
            self.exit_code = 1
            await self._stop_http(site, probes)
            return
        self.port = site.port if site is not None else probes.port if probes is not None else 0
        try:
            if await self._start():
                self._started = True
                # What start made (modules, tables, pools) lives as long as the service: out
                # of the collector's way, so a full collection per request burst scans only
                # what requests made (shorter pauses: the p99 of issue 20's command bench).
                gc.collect()
                gc.freeze()
                self.log.info("started", extra={"host": host, "port": self.port})
                trimmer = _HeapTrimmer(asyncio.get_running_loop(), self.heap_trim_interval)
                # The one wait without a deadline: the life of the service.
                try:
                    await self._stop.wait()
                finally:
                    trimmer.cancel()
            await self._shutdown()
        except asyncio.CancelledError:
            # Cancelled from outside (not the usual way to stop): shut down without a drain.
            self.request_stop("serve() cancelled")
            self._hurry.set()
            await self._shutdown()
            raise
        finally:
            await self._stop_http(site, probes)

    async def _serve_with_signals(self) -> None:
        loop = asyncio.get_running_loop()
        sigs = (signal.SIGTERM, signal.SIGINT)
        for sig in sigs:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await self.serve()
        finally:
            for sig in sigs:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self._stop.is_set():
            self.request_stop(sig.name)
        elif not self._hurry.is_set():
            self.log.warning("second %s: cutting the drain short", sig.name)
            self._hurry.set()

    async def _start(self) -> bool:
        """Run the start hooks in order; False if one failed or timed out, or a stop came."""
        for fn in list(self._start_hooks):
            if self._stop.is_set():
                return False
            outcome = await self._run_hook("start", fn, self.start_timeout, self._stop)
            if outcome != "ok":
                if outcome != "interrupted":
                    self.exit_code = 1
                    self.request_stop(f"start hook {_hook_name(fn)} {outcome}")
                return False
        return not self._stop.is_set()

    async def _shutdown(self) -> None:
        """Steps 1-5 of a stop; entered again after a cancel, it goes on where it was."""
        loop = asyncio.get_running_loop()
        if not self.stopping:
            self.stopping = True
            self._deadline = loop.time() + self.config.drain_seconds
            self._pending_stop = list(reversed(self._stop_hooks))
            self.log.info(
                "stopping",
                extra={"reason": self.stop_reason, "drain_seconds": self.config.drain_seconds},
            )
        while self._pending_stop:
            fn = self._pending_stop.pop(0)
            timeout = self.config.drain_seconds + self.hook_timeout
            await self._run_hook("stop", fn, timeout, self._hurry)
        await self._drain(self._deadline)
        if self._pending_cleanup is None:
            self._pending_cleanup = list(reversed(self._cleanup_hooks))
        while self._pending_cleanup:
            fn = self._pending_cleanup.pop(0)
            await self._run_hook("cleanup", fn, self.hook_timeout)
        if not self._stopped_logged:
            self._stopped_logged = True
            self.log.info("stopped", extra={"exit_code": self.exit_code})

    async def _drain(self, deadline: float) -> None:
        """Wait for the units of work until `deadline`, then cancel them and the tasks."""
        loop = asyncio.get_running_loop()
        while self._units and not self._hurry.is_set() and loop.time() < deadline:
            await wait_events([self._idle, self._hurry], deadline - loop.time())
        # No await from here until the cancels are sent: nothing can slip in between.
        self._taking_work = False
        self._tasks_closed = True
        me = asyncio.current_task()
        units = list(self._units.values())
        victims = {u.task for u in units if u.task is not None and u.task is not me}
        if units:
            self.log.warning(
                "drain ended with %d unit(s) of work unfinished after %.1f s; cancelled: %s",
                len(units),
                self.config.drain_seconds,
                ", ".join(u.name for u in units),
                extra={"dropped_units": [u.name for u in units]},
            )
        tasks = [t for t in self._tasks if not t.done() and t is not me]
        if tasks:
            names = sorted(t.get_name() for t in tasks)
            self.log.warning(
                "cancelled %d task(s) still running: %s",
                len(tasks),
                ", ".join(names),
                extra={"dropped_tasks": names},
            )
        stuck = await _cancel_all(victims | set(tasks), self.cancel_grace)
        if stuck:
            self.log.error(
                "%d task(s) ignored cancellation for %.1f s: %s",
                len(stuck),
                self.cancel_grace,
                ", ".join(sorted(t.get_name() for t in stuck)),
            )

    async def _run_hook(
        self, kind: str, fn: Hook, within: float, until: asyncio.Event | None = None
    ) -> str:
        """Run one hook in a task with a deadline: "ok", "failed", "timed out" or "interrupted"."""
        name = _hook_name(fn)
        task = asyncio.create_task(_call(fn), name=f"{self.name} {kind} hook {name}")
        try:
            await wait_events([until] if until is not None else [], within, task)
        finally:
            cut = not task.done()
            if cut:
                await _cancel_all({task}, self.cancel_grace)
        exc = task.exception() if task.done() and not task.cancelled() else None
        if cut:
            if until is not None and until.is_set():
                self.log.warning("%s hook %s interrupted by a stop", kind, name)
                return "interrupted"
            self.log.error("%s hook %s did not finish within %.1f s", kind, name, within)
            if not task.done():
                self.log.error("%s hook %s ignores cancellation: left running", kind, name)
            return "timed out"
        if exc is not None:
            self.log.error("%s hook %s failed: %r", kind, name, exc, exc_info=exc)
            return "failed"
        if task.cancelled():
            self.log.error("%s hook %s was cancelled", kind, name)
            return "failed"
        return "ok"

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        name = task.get_name()
        if task.cancelled():
            if not self._tasks_closed:
                self.log.warning("task %s was cancelled while the service runs", name)
            return
        exc = task.exception()
        if exc is None:
            return
        if isinstance(exc, ServiceStopping) and not self._taking_work:
            self.log.info("task %s ended: %s", name, exc)
            return
        self.log.error("task %s crashed: %r", name, exc, exc_info=exc, extra={"task": name})
        self.exit_code = 1
        self.request_stop(f"task {name} crashed")

    @contextlib.asynccontextmanager
    async def _unit(self, name: str) -> AsyncIterator[None]:
        if not self._taking_work:
            raise ServiceStopping(f"service {self.name} is stopping and takes no more work")
        task = asyncio.current_task()
        label = name or (task.get_name() if task is not None else "work")
        key = next(self._unit_ids)
        self._units[key] = _Unit(label, task)
        self._idle.clear()
        try:
            yield
        finally:
            del self._units[key]
            if not self._units:
                self._idle.set()

    async def _stop_http(self, site: _AiohttpSite | None, probes: ProbeServer | None) -> None:
        if probes is not None:
            stop = probes.stop(self.http_shutdown)
        elif site is not None:
            stop = site.stop()
        else:
            return
        task = asyncio.create_task(stop, name=f"{self.name} http cleanup")
        await wait_events([], self.http_shutdown + self.cancel_grace, task)
        if not task.done():
            self.log.error("the HTTP site did not stop in time")
            await _cancel_all({task}, self.cancel_grace)
        elif not task.cancelled() and task.exception() is not None:
            self.log.error("the HTTP site did not stop cleanly", exc_info=task.exception())

    # -- HTTP probes ------------------------------------------------------------------------

    async def _healthz(self, headers: Mapping[str, str]) -> ProbeResponse:
        return _json(200, {"status": "ok", "service": self.name})

    async def _readyz(self, headers: Mapping[str, str]) -> ProbeResponse:
        if self.stopping or not self._started:
            status = "stopping" if self.stopping else "starting"
            return _json(503, {"status": status, "service": self.name, "failing": []})
        names = list(self._checks)
        results = await asyncio.gather(*(self._check(n, f) for n, f in self._checks.items()))
        failing = [n for n, ok in zip(names, results, strict=True) if not ok]
        if failing or self.stopping:
            status = "stopping" if self.stopping else "not ready"
            return _json(503, {"status": status, "service": self.name, "failing": failing})
        return _json(200, {"status": "ready", "service": self.name, "checks": names})

    async def _check(self, name: str, fn: Check) -> bool:
        try:
            async with asyncio.timeout(self.readiness_timeout):
                return bool(await fn())
        except TimeoutError:
            self.log.warning(
                "readiness check %s gave no answer within %.1f s", name, self.readiness_timeout
            )
        except Exception as e:
            self.log.warning("readiness check %s failed: %r", name, e)
        return False

    async def _metrics(self, headers: Mapping[str, str]) -> ProbeResponse:
        body, content_type = render_metrics(headers.get("Accept", ""))
        return 200, content_type, body


def _json(status: int, body: object) -> ProbeResponse:
    return status, "application/json; charset=utf-8", json.dumps(body).encode()


def _aiohttp_handler(
    probe: Callable[[Mapping[str, str]], Awaitable[ProbeResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    from aiohttp import web

    async def handle(request: web.Request) -> web.StreamResponse:
        status, content_type, body = await probe(request.headers)
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    return handle


class _AiohttpSite:
    """The aiohttp server of a service with routes of its own (see Service.http_app)."""

    def __init__(self, app: web.Application, service: Service) -> None:
        from aiohttp import web

        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=service.http_shutdown)
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        from aiohttp import web

        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        await self._runner.cleanup()


class _HeapTrimmer:
    """Calls glibc's malloc_trim(0) now and every `interval` s while the service runs.

    Imports and the first requests leave free pages scattered in the C heap that glibc keeps
    (it returns only the top of the heap by itself): ~1 MiB per process at rest. A no-op where
    there is no malloc_trim (another libc).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self._loop = loop
        self._interval = interval
        self._handle: asyncio.TimerHandle | None = None
        self._trim = _malloc_trim()
        self._run()

    def _run(self) -> None:
        if self._trim is None:
            return
        self._trim(0)
        if self._interval > 0:
            self._handle = self._loop.call_later(self._interval, self._run)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        import ctypes

        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (ImportError, OSError, AttributeError):
        return None
    return trim


def main(build: Callable[[], Service]) -> None:
    """Entry point of `python -m services.<name>`: build, run, exit with its code (2: config)."""
    try:
        service = build()
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    sys.exit(service.run())


async def _call(fn: Hook) -> None:
    await fn()


def _hook_name(fn: Hook) -> str:
    return str(getattr(fn, "__qualname__", None) or repr(fn))


def service_loop() -> asyncio.AbstractEventLoop:
    """A new event loop of the kind every service runs on (uvloop's, see the module)."""
    return uvloop.new_event_loop()


def run_on_service_loop(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(coro)` on the services' kind of loop (`service_loop`)."""
    with asyncio.Runner(loop_factory=service_loop) as runner:
        return runner.run(coro)


async def wait_events(
    events: Collection[asyncio.Event], within: float, task: asyncio.Task[Any] | None = None
) -> None:
    """Return when `task` ends, one of `events` is set, or after `within` s."""
    if any(e.is_set() for e in events) or (task is not None and task.done()):
        return
    waiters = {asyncio.create_task(e.wait()) for e in events}
    try:
        aws: set[asyncio.Task[Any]] = set(waiters)
        if task is not None:
            aws.add(task)
        await asyncio.wait(aws, timeout=max(0.0, within), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        if waiters:
            # Event.wait() ends at once on cancel; the bound only guards against the absurd.
            await asyncio.wait(waiters, timeout=1.0)


async def _cancel_all(tasks: Collection[asyncio.Task[Any]], grace: float) -> set[asyncio.Task[Any]]:
    """Cancel `tasks`, wait up to `grace` s for them to end; the ones that did not."""
    pending = {t for t in tasks if not t.done()}
    for t in pending:
        t.cancel()
    if not pending:
        return set()
    _, stuck = await asyncio.wait(pending, timeout=grace)
    return stuck
