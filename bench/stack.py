"""Benchmark of the platform's start: `stack_start`.

Ours: `homeport up`, the command `make run` runs (the embedded Postgres, NATS, nginx under the
gateway, the mail servers where they run, and every service), from stopped to every service
ready, on a data directory made once by a first start and stopped again. Ready is what the stack
says, then what each service says: the banner of `homeport up` (printed once every part answered
its health check and identity is ready) with no part "not healthy yet", then a 200 from the
/readyz of every service in `stack.json` (its start hooks done and its readiness checks passing:
projections caught up, the edge serving, ...). The clock starts just before the command is
spawned; the stop that follows is not counted.

Baseline, in the same rounds: the embedded Postgres and NATS alone (deploy/embedded.py, with
the settings the stack gives them), each on a data directory made once, started together, from
stopped to Postgres answering `SELECT 1` and NATS answering the PING of a signed-in client.

At least 5 rounds, interleaved (who goes first alternates); the medians are compared and the
target is ours/baseline <= 2. Each round of ours is also split by the stack's own log: the time
to its first server start (interpreter, imports, byte code), the servers, the services up to
the banner, and the wait for every /readyz after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import nats

from bench.common import Bench, BenchError, Benchmark, Result, say
from deploy.embedded import NatsServer, PostgresServer
from deploy.planning import MAX_CONNECTIONS
from deploy.state import read_state
from deploy.supervision import reap_leftovers
from libs.events.nats_access import SERVICE_USERS, read_credentials

__all__ = ["BENCHMARKS", "stack_start"]

_TARGET = 2.0  # ours/baseline, at most
_MIN_ROUNDS = 5
_ROOT = Path(__file__).resolve().parents[1]
_FIRST_DEADLINE_S = 300.0  # the first start makes the cluster, the roles, the schemas
_UP_DEADLINE_S = 120.0  # the stack gives its parts 60 s before it prints the banner anyway
_READY_DEADLINE_S = 60.0
_STOP_DEADLINE_S = 60.0
_POLL_S = 0.02  # /readyz of the services not ready yet, after the banner
_PROBE_TIMEOUT_S = 2.0
_BANNER = "Homeport is running"
_UNHEALTHY = "Not healthy yet:"
_BANNER_END = "Logs:"
_SLOWEST = 3  # services named in each round's split


@dataclass(frozen=True, slots=True)
class _Up:
    """One measured start of the stack (seconds from the spawn)."""

    ready: float  # every service's /readyz answered 200
    banner: float  # the stack printed that it runs
    pre: float | None  # to its first server start: interpreter, imports, lock, byte code
    servers: float | None  # from there to the last server (Postgres, NATS, ...) healthy
    services: float | None  # from there to the stack's "ready" log line
    slowest: tuple[tuple[str, float], ...]  # services by the time they logged "started"


@dataclass(frozen=True, slots=True)
class _Base:
    """One measured start of Postgres and NATS (seconds from the start)."""

    both: float
    postgres: float
    nats: float


def _ts(line: str) -> tuple[float, dict[str, Any]] | None:
    """(wall-clock time, record) of a JSON log line, None for anything else."""
    try:
        record = json.loads(line)
        return datetime.fromisoformat(record["ts"]).timestamp(), record
    except (ValueError, KeyError, TypeError):
        return None


def _records(path: Path, since: float) -> Iterable[tuple[float, dict[str, Any]]]:
    """The JSON log records of `path` written at `since` or later (the log is appended to)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return
    for line in text.splitlines():
        got = _ts(line)
        if got is not None and got[0] >= since - 0.001:
            yield got


class _Stack:
    """`homeport up` on one data directory, started and stopped as often as asked."""

    def __init__(self, root: Path) -> None:
        self.data = root / "data"
        self.err = root / "up.err"
        self.proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        script = Path(sys.executable).with_name("homeport")  # what `make run` runs
        command = [str(script)] if script.is_file() else [sys.executable, "-m", "cli.main"]
        self.argv = [*command, "up", "--data-dir", str(self.data)]
        # the stack's own defaults (Docker: the system's, the tests', or its own dockerd)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HP_")}

    async def start(self, http: aiohttp.ClientSession, deadline_s: float) -> _Up:
        """Spawn `homeport up`, wait for its banner, then for every service's /readyz."""
        if self.proc is not None:
            raise BenchError("the stack is running already: stop it first")
        err = open(self.err, "ab")  # the child gets its own copy; ours is closed at once
        try:
            wall, t0 = time.time(), time.perf_counter()
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                cwd=_ROOT,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                start_new_session=True,  # a Ctrl-C of ours reaches it only through stop()
            )
        finally:
            err.close()
        try:
            async with asyncio.timeout(deadline_s):
                await self._banner()
                banner = time.perf_counter() - t0
                ready = await self._every_service_ready(http) - t0
        except TimeoutError:
            raise BenchError(
                f"homeport up was not ready within {deadline_s:.0f} s: {self.tail()}"
            ) from None
        return self._split(wall, ready, banner)

    async def _banner(self) -> None:
        """Read the output of `homeport up` up to the end of its banner; then keep draining."""
        assert self.proc is not None and self.proc.stdout is not None
        out, seen, lines = self.proc.stdout, False, []
        while True:
            raw = await out.readline()
            if not raw:
                code = await self.proc.wait()
                raise BenchError(f"homeport up exited ({code}) before it was ready: {self.tail()}")
            line = raw.decode(errors="replace").strip()
            lines.append(line)
            seen = seen or line.startswith(_BANNER)
            if seen and line.startswith(_UNHEALTHY):
                raise BenchError(f"homeport up says it is not ready: {line}")
            if seen and line.startswith(_BANNER_END):
                break
        self._drain = asyncio.create_task(_drain(out), name="stack.stdout")

    async def _every_service_ready(self, http: aiohttp.ClientSession) -> float:
        """perf_counter() when the last service of `stack.json` answered /readyz with 200."""
        state = read_state(self.data)
        if state is None:
            raise BenchError(f"no stack.json in {self.data} after the banner")
        left = {
            str(p["name"]): str(p["health"]).removesuffix("/healthz") + "/readyz"
            for p in state.get("parts", [])
            if p.get("kind") == "service"
        }
        if not left:
            raise BenchError("stack.json lists no service: nothing to wait for")
        last: dict[str, str] = {}
        end = time.monotonic() + _READY_DEADLINE_S
        while True:
            names = list(left)
            answers = await asyncio.gather(*(_readyz(http, left[n]) for n in names))
            now = time.perf_counter()
            for name, (ok, detail) in zip(names, answers, strict=True):
                last[name] = detail
                if ok:
                    del left[name]
            if not left:
                return now
            if time.monotonic() > end:
                why = ", ".join(f"{n} ({last[n]})" for n in left)
                raise BenchError(f"not ready {_READY_DEADLINE_S:.0f} s after the banner: {why}")
            await asyncio.sleep(_POLL_S)

    def _split(self, wall: float, ready: float, banner: float) -> _Up:
        """Where the time went, from the stack's log and each service's "started" line."""
        state = read_state(self.data) or {}
        kinds = {str(p.get("name")): p.get("kind") for p in state.get("parts", [])}
        first = servers = services = None
        for ts, rec in _records(self.err, wall):
            event, part = rec.get("event"), rec.get("part")
            if event == "starting" and first is None:
                first = ts
            elif event == "healthy" and part in kinds and kinds[part] != "service":
                servers = ts if servers is None else max(servers, ts)
            elif event == "ready" and rec.get("logger") == "homeport.stack":
                services = ts
        started: dict[str, float] = {}
        for name, kind in kinds.items():
            if kind != "service":
                continue
            for ts, rec in _records(self.data / "logs" / f"{name}.log", wall):
                if rec.get("logger") != f"homeport.{name}" or name in started:
                    continue
                if rec.get("event") == "started":
                    started[name] = ts - wall
        slowest = sorted(started.items(), key=lambda kv: -kv[1])[:_SLOWEST]
        return _Up(
            ready,
            banner,
            None if first is None else first - wall,
            None if first is None or servers is None else servers - first,
            None if servers is None or services is None else services - servers,
            tuple(slowest),
        )

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.err.read_text(errors="replace")[-2000:]
        return "(no output)"

    async def stop(self) -> float:
        """SIGTERM (the stack stops its parts) and wait; what a failed stop left is stopped as
        the stack itself stops a killed run's leftovers. Returns the seconds it took."""
        t0 = time.perf_counter()
        proc, self.proc = self.proc, None
        try:
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), _STOP_DEADLINE_S)
                except TimeoutError:
                    say(f"  homeport up did not stop within {_STOP_DEADLINE_S:.0f} s: killing it")
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
            if proc is not None:
                await reap_leftovers(read_state(self.data))
        finally:
            if self._drain is not None:
                self._drain.cancel()
                await asyncio.gather(self._drain, return_exceptions=True)
                self._drain = None
        return time.perf_counter() - t0

    def cluster_outside(self) -> Path | None:
        """The cluster's folder when the stack had to keep it outside the data dir (state.py)."""
        with contextlib.suppress(OSError):
            return Path((self.data / "postgres" / "LOCATION").read_text().strip())
        return None


async def _drain(out: asyncio.StreamReader) -> None:
    while await out.read(1 << 16):
        pass


async def _readyz(http: aiohttp.ClientSession, url: str) -> tuple[bool, str]:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=_PROBE_TIMEOUT_S)) as r:
            return r.status == 200, f"HTTP {r.status}: {(await r.text())[:200]}"
    except (aiohttp.ClientError, TimeoutError) as e:
        return False, f"no answer: {e or type(e).__name__}"


class _Servers:
    """Postgres and NATS as the stack configures them, in their own directories."""

    def __init__(self, root: Path) -> None:
        self.pg = PostgresServer(
            root / "postgres",
            fsync=True,
            password=os.urandom(16).hex(),
            max_connections=MAX_CONNECTIONS,
        )
        self.nats = NatsServer(root / "nats")
        self.user = SERVICE_USERS[0]

    async def start(self) -> _Base:
        """Start both at once; each is timed to its first answer, the pair to the later one."""
        t0 = time.perf_counter()
        pg, nc = await asyncio.gather(self._postgres(t0), self._nats(t0))
        return _Base(max(pg, nc), pg, nc)

    async def _postgres(self, t0: float) -> float:
        await asyncio.to_thread(self.pg.start)
        conn = await asyncpg.connect(self.pg.dsn)
        try:
            if await conn.fetchval("SELECT 1") != 1:
                raise BenchError("Postgres answered SELECT 1 with something else")
        finally:
            await conn.close()
        return time.perf_counter() - t0

    async def _nats(self, t0: float) -> float:
        await asyncio.to_thread(self.nats.start)
        user, password = read_credentials(self.nats.credentials(self.user))
        nc = await nats.connect(
            self.nats.url, user=user, password=password, allow_reconnect=False, connect_timeout=5
        )
        try:
            await nc.flush(timeout=5)  # a PING, answered by a PONG
        finally:
            await nc.close()
        return time.perf_counter() - t0

    async def stop(self) -> None:
        await asyncio.gather(asyncio.to_thread(self.nats.stop), asyncio.to_thread(self.pg.stop))


def _s(x: float | None) -> str:
    return "?" if x is None else f"{x:.2f}"


def _report_up(r: int, up: _Up, stopped: float) -> None:
    slow = ", ".join(f"{n} {t:.2f}" for n, t in up.slowest) or "?"
    say(
        f"  round {r + 1}  ours     {up.ready:7.3f} s  (banner {up.banner:.2f}: before the first"
        f" server {_s(up.pre)}, servers {_s(up.servers)}, services {_s(up.services)};"
        f" /readyz after the banner {up.ready - up.banner:.2f}; last started: {slow};"
        f" stop {stopped:.1f})"
    )


async def stack_start(b: Bench) -> Result:
    rounds = max(b.cfg.rounds, _MIN_ROUNDS)
    root = Path(tempfile.mkdtemp(prefix="hp-bench-start-"))
    root.chmod(0o755)  # as root, the postgres user must reach its data dirs through this
    stack = _Stack(root / "stack")
    base = _Servers(root / "baseline")
    (root / "stack").mkdir()
    ours: list[_Up] = []
    baseline: list[_Base] = []
    try:
        async with aiohttp.ClientSession() as http:
            t0 = time.perf_counter()
            try:
                first = await stack.start(http, _FIRST_DEADLINE_S)
            finally:
                await stack.stop()
            await base.start()
            await base.stop()
            say(
                f"  data made once: the stack's first start took {first.ready:.1f} s (data in"
                f" {stack.data}); setup of both {time.perf_counter() - t0:.1f} s"
            )
            for r in range(rounds):
                for side in ("ours", "baseline") if r % 2 == 0 else ("baseline", "ours"):
                    if side == "ours":
                        try:
                            up = await stack.start(http, _UP_DEADLINE_S)
                        finally:
                            stopped = await stack.stop()
                        ours.append(up)
                        _report_up(r, up, stopped)
                    else:
                        try:
                            got = await base.start()
                        finally:
                            await base.stop()
                        baseline.append(got)
                        say(
                            f"  round {r + 1}  baseline {got.both:7.3f} s  (postgres"
                            f" {got.postgres:.3f}, nats {got.nats:.3f}, started together)"
                        )
    finally:
        with contextlib.suppress(Exception):
            await stack.stop()
        with contextlib.suppress(Exception):
            await base.stop()
        outside = stack.cluster_outside()
        if outside is not None:
            shutil.rmtree(outside, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    return _summary(ours, baseline)


def _median(xs: Iterable[float | None]) -> str:
    known = [x for x in xs if x is not None]
    return "?" if not known else f"{statistics.median(known):.2f}"


def _summary(ours: list[_Up], baseline: list[_Base]) -> Result:
    o = statistics.median(u.ready for u in ours)
    base = statistics.median(x.both for x in baseline)
    say(
        f"  median   ours     {o:7.3f} s  (banner {_median(u.banner for u in ours)}: before the"
        f" first server {_median(u.pre for u in ours)}, servers"
        f" {_median(u.servers for u in ours)}, services {_median(u.services for u in ours)};"
        f" /readyz after the banner {_median(u.ready - u.banner for u in ours)})"
    )
    say(
        f"  median   baseline {base:7.3f} s  (postgres"
        f" {statistics.median(x.postgres for x in baseline):.3f},"
        f" nats {statistics.median(x.nats for x in baseline):.3f})"
    )
    last: dict[str, list[float]] = {}
    for u in ours:
        for name, t in u.slowest:
            last.setdefault(name, []).append(t)
    if last:
        named = sorted(
            ((statistics.median(ts), n, len(ts)) for n, ts in last.items()), reverse=True
        )
        say(
            "  services last to log `started` (median s from the spawn, rounds among the last "
            f"{_SLOWEST}): " + ", ".join(f"{n} {t:.2f} ({k})" for t, n, k in named)
        )
    ratio = o / base
    say(f"  ratio    ours/baseline = {ratio:.3f}")
    return Result("stack_start", ratio, _TARGET, "<=")


BENCHMARKS: dict[str, Benchmark] = {
    # alone: it needs none of the harness's servers, and starts a whole platform of its own
    "stack_start": Benchmark("stack_start", stack_start, _TARGET, op="<=", alone=True),
}
