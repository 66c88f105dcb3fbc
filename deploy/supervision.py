"""Supervision of the local stack's child processes: start, watch, restart with backoff,
health probes, and the stop (SIGTERM, then SIGKILL after a deadline).

Each part is a `Part` (what `stack.json` says about it) driven through a `Runner`: Postgres
and NATS from deploy.embedded, the stack's own dockerd, or a service as `python -m <module>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from deploy.embedded import DockerDaemon, EmbeddedError, NatsServer, PostgresServer, docker_answers
from deploy.forkserver import Forked, Forkserver, ForkserverError
from deploy.state import now, process_alive, start_time

__all__ = [
    "HEALTH_TIMEOUT_S",
    "READY_DEADLINE_S",
    "STOP_DEADLINE_S",
    "Backoff",
    "DockerRunner",
    "Part",
    "PartKind",
    "PartState",
    "Runner",
    "ServerRunner",
    "ServiceRunner",
    "Supervisor",
    "probe",
    "reap_leftovers",
]

log = logging.getLogger("homeport.stack")

RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
RESTART_RESET_S = 60.0  # a part that stayed up this long starts its backoff over
STOP_DEADLINE_S = 15.0  # SIGTERM, then SIGKILL after this long
READY_DEADLINE_S = 60.0
HEALTH_TIMEOUT_S = 2.0
# A part's health check until it first passes: the banner waits for the last one, so the poll is
# short; a check costs a refused connection (~0.1 ms of CPU) or one local request (~0.3 ms).
_HEALTH_POLL_S = 0.05
_DOCKER_POLL_S = 0.25  # whether the stack's own dockerd still runs, for the life of the stack


class PartKind(StrEnum):
    POSTGRES = "postgres"
    NATS = "nats"
    DOCKER = "docker"
    ADDON_POSTGRES = "addon_postgres"
    SERVICE = "service"


class PartState(StrEnum):
    PENDING = "pending"
    IDLE = "idle"  # started on demand (the addon Postgres): not asked for yet
    STARTING = "starting"  # process started, health not yet confirmed
    RUNNING = "running"  # answered its health check since it was (re)started
    BACKOFF = "backoff"  # exited unexpectedly, waiting to be restarted
    STOPPING = "stopping"
    STOPPED = "stopped"


class Backoff:
    """Restart delays: 0.5 s doubling to 30 s; starts over after a run of 60 s or more."""

    def __init__(
        self,
        first: float = RESTART_MIN_S,
        cap: float = RESTART_MAX_S,
        reset_after: float = RESTART_RESET_S,
    ) -> None:
        self.first, self.cap, self.reset_after = first, cap, reset_after
        self._next = first

    def delay(self, up_for: float) -> float:
        """The wait before the next start, given how long the last run lasted."""
        if up_for >= self.reset_after:
            self._next = self.first
        d = self._next
        self._next = min(self._next * 2, self.cap)
        return d


async def probe(health: str, deadline_s: float = HEALTH_TIMEOUT_S) -> tuple[bool, str]:
    """Check one health address: `tcp://host:port` connects, `unix://path` is a dockerd that
    answers, `http://…` must answer 200 (one plain request: the stack and `homeport status` do
    without aiohttp's client)."""
    if health.startswith("unix://"):
        ok = await asyncio.to_thread(docker_answers, Path(health.removeprefix("unix://")))
        return ok, "answering" if ok else "not answering"
    if health.startswith("tcp://"):
        host, _, port = health.removeprefix("tcp://").rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), deadline_s)
        except (OSError, TimeoutError) as e:
            return False, f"no connection: {e or type(e).__name__}"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True, "accepting connections"
    return await _http_probe(health, deadline_s)


async def _http_probe(url: str, deadline_s: float) -> tuple[bool, str]:
    """GET `url` (http://, one request on its own connection) and read the status line; the
    services' probes answer HTTP/1.1 (libs/service/probes.py, or aiohttp's server)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return False, f"not an http:// address: {url}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
    try:
        async with asyncio.timeout(deadline_s):
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
            try:
                writer.write(request.encode("ascii"))
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError, ValueError, UnicodeEncodeError) as e:
        return False, f"no answer: {e or type(e).__name__}"
    version, _, rest = line.decode("latin-1").partition(" ")
    status = rest[:3]
    if not version.startswith("HTTP/1.") or not status.isdigit():
        return False, f"no answer: not HTTP ({line[:40]!r})"
    return status == "200", f"HTTP {status}"


# -- runners ------------------------------------------------------------------------------


class Runner(Protocol):
    """How the supervisor drives one part's process."""

    @property
    def pid(self) -> int | None: ...

    async def start(self) -> None: ...

    async def wait(self) -> int: ...

    async def stop(self, deadline_s: float) -> bool: ...


class ServerRunner:
    """Postgres or NATS from deploy.embedded (blocking calls run in a worker thread)."""

    def __init__(self, server: PostgresServer | NatsServer) -> None:
        self.server = server

    @property
    def pid(self) -> int | None:
        return self.server.pid

    async def start(self) -> None:
        await asyncio.to_thread(self.server.start)

    async def wait(self) -> int:
        """Wait for the server to exit, through a pidfd (it is a `subprocess.Popen` child)."""
        pid = self.server.pid
        if pid is None:
            raise EmbeddedError("server not started")
        code = self.server.poll()
        if code is not None:
            return code
        fd = os.pidfd_open(pid)  # an unreaped (zombie) child still has its pid
        loop = asyncio.get_running_loop()
        exited = asyncio.Event()
        try:
            loop.add_reader(fd, exited.set)
            try:
                await exited.wait()
            finally:
                loop.remove_reader(fd)
        finally:
            os.close(fd)
        code = self.server.poll()
        return -1 if code is None else code

    async def stop(self, deadline_s: float) -> bool:
        await asyncio.to_thread(self.server.stop, deadline_s)
        return False


class DockerRunner:
    """The stack's own dockerd (deploy.embedded.DockerDaemon) as a supervised child."""

    def __init__(self, daemon: DockerDaemon) -> None:
        self.daemon = daemon

    @property
    def pid(self) -> int | None:
        return self.daemon.pid() if self.daemon.poll() is None else None

    async def start(self) -> None:
        await asyncio.to_thread(self.daemon.start)

    async def wait(self) -> int:
        while True:
            code = self.daemon.poll()
            if code is not None or self.daemon.pid() is None:
                return -1 if code is None else code
            await asyncio.sleep(_DOCKER_POLL_S)

    async def stop(self, deadline_s: float) -> bool:
        await asyncio.to_thread(self.daemon.stop, deadline_s)
        return False


class ServiceRunner:
    """`python -m <module>` in its own session (so a terminal's Ctrl-C reaches only the stack):
    forked from `forkserver` when there is one (deploy/forkserver.py), else its own process
    (also when the fork server cannot start it: the service still runs, warned about)."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        *,
        module: str | None = None,
        forkserver: Forkserver | None = None,
    ) -> None:
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.module = module
        self.forkserver = forkserver
        if forkserver is not None and module is None:
            raise ValueError("a service forked from the fork server needs its module")
        self._proc: asyncio.subprocess.Process | None = None
        self._forked: Forked | None = None

    @property
    def pid(self) -> int | None:
        if self._forked is not None:
            return None if self._forked.exited.done() else self._forked.pid
        if self._proc is None or self._proc.returncode is not None:
            return None
        return self._proc.pid

    async def start(self) -> None:
        self._drop_forked()
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            if self.forkserver is not None:
                try:
                    module = str(self.module)
                    self._forked = await self.forkserver.spawn(module, self.env, fd, os.getcwd())
                except ForkserverError as e:
                    log.warning(
                        "the fork server could not start it: started on its own",
                        extra={"service_module": self.module, "error": str(e)},
                    )
                else:
                    return
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                start_new_session=True,
            )
        finally:
            os.close(fd)

    def _drop_forked(self) -> None:
        if self._forked is not None:
            self._forked.close()
            self._forked = None

    async def wait(self) -> int:
        if self._forked is not None:
            return await asyncio.shield(self._forked.exited)
        assert self._proc is not None
        return await self._proc.wait()

    def _signal(self, sig: int) -> None:
        if self._forked is not None:
            self._forked.signal(sig)
        elif self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    async def stop(self, deadline_s: float) -> bool:
        """SIGTERM, then SIGKILL after `deadline_s`; True when it had to be killed."""
        if self._forked is None and self._proc is None:
            return False
        self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.wait(), deadline_s)
        except TimeoutError:
            self._signal(signal.SIGKILL)
            await self.wait()
            return True
        return False


@dataclass
class Part:
    """One supervised process and what `stack.json` says about it."""

    name: str
    kind: PartKind
    port: int
    url: str
    health: str
    log: Path
    runner: Runner = field(repr=False)
    module: str | None = None
    monitor_port: int | None = None
    state: PartState = PartState.PENDING
    pid: int | None = None
    proc_start: int | None = None
    restarts: int = 0
    last_exit: int | None = None
    since: str | None = None
    healthy: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind.value,
            "module": self.module,
            "pid": self.pid,
            "proc_start": self.proc_start,
            "port": self.port,
            "url": self.url,
            "health": self.health,
            "state": self.state.value,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "since": self.since,
            "log": str(self.log),
        }
        if self.monitor_port is not None:
            out["monitor_port"] = self.monitor_port
        return out


# -- the supervisor -----------------------------------------------------------------------


class Supervisor:
    """Keeps parts running until `stopping` is set; `save` records each change of state."""

    def __init__(self, stopping: asyncio.Event, save: Callable[[], None]) -> None:
        self.stopping = stopping
        self.save = save

    def mark_started(self, part: Part) -> None:
        part.pid = part.runner.pid
        part.proc_start = None if part.pid is None else start_time(part.pid)
        part.state = PartState.STARTING
        part.since = now()
        self.save()
        log.info("started", extra={"part": part.name, "pid": part.pid, "port": part.port})

    def mark_healthy(self, part: Part) -> None:
        part.state = PartState.RUNNING
        part.healthy.set()
        self.save()
        log.info("healthy", extra={"part": part.name, "pid": part.pid})

    async def supervise(self, part: Part, *, started: bool) -> None:
        """Keep `part` running: restart it with backoff whenever it exits on its own."""
        backoff = Backoff()
        while not self.stopping.is_set():
            up_since = time.monotonic()
            if not started:
                part.state = PartState.STARTING
                self.save()
                log.info("starting", extra={"part": part.name, "port": part.port})
                try:
                    await part.runner.start()
                except (EmbeddedError, OSError) as e:
                    log.error("could not start", extra={"part": part.name, "error": str(e)})
                else:
                    started = True
                    self.mark_started(part)
            code: int | None = None
            if started:
                code = await self._watch(part)
                if self.stopping.is_set():
                    return
                part.pid = part.proc_start = None
                part.last_exit = code
            started = False
            delay = backoff.delay(time.monotonic() - up_since)
            part.state = PartState.BACKOFF
            part.since = now()
            self.save()
            log.warning(
                "exited unexpectedly, restarting",
                extra={
                    "part": part.name,
                    "exit_code": code,
                    "restart_in_s": delay,
                    "restart": part.restarts + 1,
                    "log": str(part.log),
                },
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            if self.stopping.is_set():
                return
            part.restarts += 1

    async def _watch(self, part: Part) -> int | None:
        """Wait until `part` exits (its code) or the stack stops (None); mark it healthy."""
        exited = asyncio.ensure_future(part.runner.wait())
        stopping = asyncio.ensure_future(self.stopping.wait())
        checks = asyncio.ensure_future(self._until_healthy(part))
        try:
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (exited, stopping, checks):
                t.cancel()
            await asyncio.gather(exited, stopping, checks, return_exceptions=True)
        if exited.cancelled() or exited.exception() is not None:
            return None
        return exited.result()

    async def _until_healthy(self, part: Part) -> None:
        if part.state is PartState.RUNNING:
            return
        t0, warned = time.monotonic(), False
        while True:
            ok, detail = await probe(part.health)
            if ok:
                self.mark_healthy(part)
                return
            if not warned and time.monotonic() - t0 > READY_DEADLINE_S:
                warned = True
                log.warning(
                    "not healthy yet",
                    extra={"part": part.name, "detail": detail, "log": str(part.log)},
                )
            await asyncio.sleep(_HEALTH_POLL_S)

    async def shutdown(self, parts: list[Part]) -> None:
        """Services first (together), then the addon Postgres, Docker, NATS, Postgres."""
        services = [p for p in parts if p.kind is PartKind.SERVICE]
        await asyncio.gather(*(self._stop_part(p) for p in services))
        for kind in (PartKind.ADDON_POSTGRES, PartKind.DOCKER, PartKind.NATS, PartKind.POSTGRES):
            for p in parts:
                if p.kind is kind:
                    await self._stop_part(p)

    async def _stop_part(self, part: Part) -> None:
        if part.runner.pid is not None:
            part.state = PartState.STOPPING
            self.save()
            log.info("stopping", extra={"part": part.name, "pid": part.runner.pid})
            try:
                killed = await part.runner.stop(STOP_DEADLINE_S)
            except (EmbeddedError, OSError) as e:
                log.error("could not stop", extra={"part": part.name, "error": str(e)})
                return
            if killed:
                log.warning(
                    "did not stop in time, killed",
                    extra={"part": part.name, "deadline_s": STOP_DEADLINE_S},
                )
        part.pid = part.proc_start = None
        part.state = PartState.STOPPED
        part.since = now()
        self.save()


async def reap_leftovers(previous: dict[str, Any] | None) -> None:
    """Stop processes a previous stack left behind when it was killed without a clean stop."""
    left: list[tuple[str, int, int | None]] = []
    for p in (previous or {}).get("parts", []):
        if not isinstance(p, dict) or not isinstance(p.get("pid"), int):
            continue
        if process_alive(p["pid"], p.get("proc_start")):
            left.append((str(p.get("name")), p["pid"], p.get("proc_start")))
    if not left:
        return
    for name, pid, _ in left:
        log.warning("stopping a leftover of an earlier run", extra={"part": name, "pid": pid})
        sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + STOP_DEADLINE_S
    # Not our children: /proc is all there is to watch.
    while time.monotonic() < deadline and any(process_alive(p, s) for _, p, s in left):  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    for name, pid, started in left:
        if process_alive(pid, started):
            log.warning("leftover did not stop, killing", extra={"part": name, "pid": pid})
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
