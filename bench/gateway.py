"""The gateway and identity benchmarks: an authenticated read under load, and one command's
latency, each against raw baselines measured in the same run.

Identity and the gateway run as child processes (`python -m services.identity`,
`python -m services.gateway`), started from their real `build()` the way the platform starts
them: each has its own event loop and interpreter, as in production, and neither shares a loop
(or a GIL) with the load generator or with the bench's own clients. In one process with the
bench, the client's work would be charged to the services and their CPU could not be told
apart. The baseline servers (`bench.bare`) are child processes too, and every side is loaded
by the same `wrk` with the same settings.

The relay is not started: identity writes its read model in the command's own transaction, so
neither measurement waits for it, and the gateway is ready without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import resource
import signal
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api
from prometheus_client.parser import text_string_to_metric_families

from bench.common import Bench, BenchConfig, BenchError, Benchmark, Result, say, tree_cpu
from deploy.embedded import EmbeddedError, astop, find_binary, free_port
from libs.events.envelope import dumps, uuid7
from services.gateway.api.auth import SESSION_COOKIE

__all__ = ["BENCHMARKS"]

# Targets (issue 20, raised from 0.3 and 3.0).
_READ_VS_BARE = 0.6  # ours/baseline req/s, at least
_COMMAND_VS_PARTS = 2.0  # p99 of the command / sum of the p99s of its parts, at most

_ROOT = Path(__file__).resolve().parent.parent
_API = "/api/v1"
_READY_DEADLINE = 60.0
_STOP_DEADLINE = 15.0
_ADMIN = {"username": "root", "email": "root@example.test", "password": "correct horse battery"}
_USER = {"username": "alice", "email": "alice@example.test", "password": "purple staple lantern"}
_WARM_COMMANDS = 100


# -- child processes ------------------------------------------------------------------------


@dataclass(slots=True)
class _Child:
    """A server we started: its process, port and log file."""

    name: str
    proc: asyncio.subprocess.Process
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n    ".join(text[-lines:]) or "(empty log)"


async def _spawn(
    name: str, argv: Sequence[str], env: Mapping[str, str], log: Path, port: int = 0
) -> _Child:
    """Start `argv` in its own session, output to `log`; `port` is where it will listen."""
    with open(log, "ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=dict(env),
            cwd=_ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    return _Child(name, proc, port, log)


async def _wait_ready(child: _Child, path: str, headers: Mapping[str, str] | None = None) -> None:
    """Until `GET path` answers 200; BenchError with the log's tail if it exits or times out."""
    end = time.monotonic() + _READY_DEADLINE
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < end:
            if child.proc.returncode is not None:
                raise BenchError(
                    f"{child.name} exited with code {child.proc.returncode} before it was "
                    f"ready; its log {child.log}:\n    {child.tail()}"
                )
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(child.url + path, headers=headers) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise BenchError(
        f"{child.name} was not ready within {_READY_DEADLINE:.0f} s; its log {child.log}:\n"
        f"    {child.tail()}"
    )


@contextlib.asynccontextmanager
async def _children() -> AsyncIterator[list[_Child]]:
    """Children appended to the list are stopped (SIGTERM, then SIGKILL) when the block ends."""
    started: list[_Child] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            await astop(child.proc, signal.SIGTERM, _STOP_DEADLINE)
            if child.proc.returncode not in (0, -signal.SIGTERM):
                say(f"  note: {child.name} exited with code {child.proc.returncode} at stop")


def _service_env(b: Bench, dsn: str, tag: str, port: int) -> dict[str, str]:
    """The environment of a service child: ours, less every HP_* variable, plus its settings.

    HP_PUBLIC_ORIGIN stays unset; cookie requests say `Sec-Fetch-Site: same-origin`, as the
    dashboard's browser does, for the CSRF check.
    """
    data = b.servers.root / tag
    data.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HP_")}
    env.update(
        HP_DATABASE_URL=dsn,
        HP_NATS_URL=b.servers.nats_url,
        HP_KEYRING=str(data / "keyring.json"),
        HP_DATA_DIR=str(data),
        HP_HTTP_PORT=str(port),
        HP_DRAIN_SECONDS="2",
        HP_EVENTS_STREAM=f"BENCH_{tag.upper()}_EVENTS",
        HP_EVENTS_PREFIX=f"bench{tag}.evt",
    )
    return env


@dataclass(slots=True)
class _Platform:
    """Identity and the gateway over one database, set up, with an admin signed in."""

    dsn: str
    identity: _Child
    gateway: _Child
    cookie: str
    admin_id: str
    http: aiohttp.ClientSession

    @property
    def headers(self) -> dict[str, str]:
        return {"Cookie": f"{SESSION_COOKIE}={self.cookie}", "Sec-Fetch-Site": "same-origin"}

    async def call(self, method: str, path: str, body: Any = None, want: int = 200) -> Any:
        headers = self.headers if self.cookie else {}
        async with self.http.request(
            method, self.gateway.url + _API + path, json=body, headers=headers
        ) as r:
            raw = await r.read()
            if r.status != want:
                raise BenchError(
                    f"{method} {_API}{path} answered {r.status}, expected {want}: {raw[:300]!r}"
                )
            if path == "/session":
                self.cookie = r.cookies[SESSION_COOKIE].value
            return await r.json() if raw else None


def _service_argv(name: str, tag: str) -> list[str]:
    """`python -m services.<name>`, under pyinstrument when HP_BENCH_PROFILE names a folder."""
    folder = os.environ.get("HP_BENCH_PROFILE", "")
    if not folder:
        return [sys.executable, "-m", f"services.{name}"]
    if importlib.util.find_spec("pyinstrument") is None:
        raise BenchError(
            "HP_BENCH_PROFILE is set but pyinstrument is missing: "
            "`.venv/bin/pip install pyinstrument`, or unset HP_BENCH_PROFILE"
        )
    out = Path(folder).resolve() / f"{tag}-{name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    say(f"  profiling {name} with pyinstrument into {out} (slows it down)")
    profiler = [sys.executable, "-m", "pyinstrument", "-r", "text", "-o", str(out)]
    return [*profiler, "-m", f"services.{name}"]


@contextlib.asynccontextmanager
async def _platform(b: Bench, tag: str) -> AsyncIterator[_Platform]:
    dsn = await b.database(f"bench_{tag}")
    async with _children() as children, aiohttp.ClientSession() as http:
        for name in ("identity", "gateway"):
            port = free_port()
            env = _service_env(b, dsn, tag, port)
            log = b.servers.root / tag / f"{name}.log"
            child = await _spawn(name, _service_argv(name, tag), env, log, port)
            children.append(child)
            # One after the other: each migrates its schemas at start.
            await _wait_ready(child, "/readyz")
        identity, gateway = children
        p = _Platform(dsn, identity, gateway, "", "", http)
        # identity wrote the one-time setup token into its data dir at start
        token = (b.servers.root / tag / "setup-token").read_text(encoding="ascii").strip()
        setup = {**_ADMIN, "setup_token": token}
        p.admin_id = (await p.call("POST", "/setup", setup, want=201))["user_id"]
        login = {k: _ADMIN[k] for k in ("username", "password")}
        await p.call("POST", "/session", login)
        yield p


# -- CPU per request ------------------------------------------------------------------------


def _children_cpu() -> float:
    """CPU seconds of our reaped children (wrk, once waited for)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class _CpuMeter:
    """CPU seconds of named processes (and their descendants) between two readings."""

    def __init__(self, pids: Mapping[str, int | None]) -> None:
        self.pids = dict(pids)
        self._before: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        out = {name: tree_cpu(pid) for name, pid in self.pids.items()}
        out["wrk"] = _children_cpu()
        return out

    def start(self) -> None:
        self._before = self._read()

    def per_op_us(self, ops: int) -> dict[str, float]:
        after = self._read()
        k = 1e6 / max(ops, 1)
        return {name: (after[name] - self._before[name]) * k for name in after}


def _cpu_text(cpu: Mapping[str, float]) -> str:
    parts = ", ".join(f"{name} {us:,.0f}" for name, us in cpu.items())
    return f"cpu us/req: {parts}; total {sum(cpu.values()):,.0f}"


# -- wrk ------------------------------------------------------------------------------------

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass(frozen=True, slots=True)
class _Load:
    """What one wrk run measured."""

    requests: int
    rate: float
    p50: float  # seconds
    p99: float
    errors: str


def _duration(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if m is None:
        raise BenchError(f"wrk printed a latency {text!r} this bench cannot read")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _parse_wrk(out: str) -> _Load:
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    total = re.search(r"^\s*(\d+) requests in", out, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not (rate and total and p50 and p99):
        raise BenchError(f"wrk printed output this bench cannot read:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise BenchError(f"{bad.group(1)} answers were not 2xx: the session or server failed")
    socket = re.search(r"Socket errors: (.*)", out)
    return _Load(
        int(total.group(1)),
        float(rate.group(1)),
        _duration(p50.group(1)),
        _duration(p99.group(1)),
        socket.group(1) if socket else "",
    )


async def _wrk(url: str, headers: Mapping[str, str], seconds: int, connections: int) -> _Load:
    """One wrk run: one thread (the machine has few cores), `connections` keep-alive sockets."""
    try:
        wrk = find_binary("wrk")
    except EmbeddedError as e:
        raise BenchError("wrk not found: `make bench` installs it (Debian package wrk)") from e
    argv = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    proc = await asyncio.create_subprocess_exec(
        *argv, url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
    finally:
        await astop(proc, signal.SIGTERM, 5)
    if proc.returncode != 0:
        raise BenchError(f"wrk exited with code {proc.returncode}:\n{out.decode(errors='replace')}")
    return _parse_wrk(out.decode(errors="replace"))


# -- identity's handler metrics -------------------------------------------------------------


async def _handler_times(http: aiohttp.ClientSession, url: str) -> dict[str, tuple[float, int]]:
    """(seconds, count) of each bus subject in a service's handler-latency histogram."""
    async with http.get(url + "/metrics") as r:
        text = await r.text()
    out: dict[str, tuple[float, int]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "homeport_handler_latency_seconds":
            continue
        for s in family.samples:
            subject = s.labels.get("subject", "")
            total, count = out.get(subject, (0.0, 0))
            if s.name.endswith("_sum"):
                out[subject] = (s.value, count)
            elif s.name.endswith("_count"):
                out[subject] = (total, int(s.value))
    return out


def _handler_means(
    before: Mapping[str, tuple[float, int]], after: Mapping[str, tuple[float, int]]
) -> dict[str, float]:
    """Mean seconds per call of each subject called between two scrapes."""
    means: dict[str, float] = {}
    for subject, (total, count) in after.items():
        t0, c0 = before.get(subject, (0.0, 0))
        if count > c0:
            means[subject.rsplit(".", 1)[-1]] = (total - t0) / (count - c0)
    return means


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


# -- gateway_read_vs_bare -------------------------------------------------------------------


@dataclass(slots=True)
class _Side:
    """One server under load: where wrk sends to, and its rounds."""

    label: str
    url: str
    headers: Mapping[str, str]
    meter: _CpuMeter
    loads: list[_Load] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(x.rate for x in self.loads)

    async def round(self, r: int, cfg: BenchConfig) -> None:
        self.meter.start()
        load = await _wrk(self.url, self.headers, cfg.http_seconds, cfg.http_connections)
        cpu = self.meter.per_op_us(load.requests)
        self.loads.append(load)
        self.cpu.append(cpu)
        errors = f"; socket errors: {load.errors}" if load.errors else ""
        say(
            f"  round {r + 1}  {self.label:<8} {load.rate:>9,.0f} req/s  p50 {_ms(load.p50)}, "
            f"p99 {_ms(load.p99)}  ({_cpu_text(cpu)}){errors}"
        )

    def report(self) -> None:
        p50 = statistics.median(x.p50 for x in self.loads)
        p99 = statistics.median(x.p99 for x in self.loads)
        cpu = {k: statistics.median(c[k] for c in self.cpu) for k in self.cpu[0]}
        say(
            f"  median   {self.label:<8} {self.rate:>9,.0f} req/s  p50 {_ms(p50)}, "
            f"p99 {_ms(p99)}  ({_cpu_text(cpu)})"
        )


async def _baselines(b: Bench, dsn: str, children: list[_Child]) -> tuple[_Child, _Child]:
    """The bare server, and the floor server with its responder; each ready."""
    folder = b.servers.root / "read"
    argv = [sys.executable, "-m", "bench.bare"]
    port = free_port()
    bare = await _spawn(
        "bare aiohttp", [*argv, "http", str(port)], os.environ, folder / "bare.log", port
    )
    children.append(bare)
    responder = await _spawn(
        "floor responder",
        [*argv, "responder", b.servers.nats_url, dsn],
        os.environ,
        folder / "responder.log",
    )
    children.append(responder)
    port = free_port()
    floor = await _spawn(
        "floor",
        [*argv, "floor", str(port), b.servers.nats_url],
        os.environ,
        folder / "floor.log",
        port,
    )
    children.append(floor)
    await _wait_ready(bare, _API + "/profile")
    return bare, floor


async def gateway_read_vs_bare(b: Bench) -> Result:
    cfg = b.cfg
    srv = b.servers
    async with _platform(b, "read") as p, _children() as children:
        bare, floor = await _baselines(b, p.dsn, children)
        responder = children[1]
        await _wait_ready(floor, _API + "/profile", p.headers)
        path = _API + "/profile"
        body = await p.call("GET", "/profile")
        async with p.http.get(bare.url + path) as resp:
            bare_body = await resp.read()
        say(
            f"  GET {path}: wrk, 1 thread, {cfg.http_connections} connections, "
            f"{cfg.http_seconds} s a round; ours: gateway -> its principal cache (1 s), on a "
            "miss the whoami query (with the profile) over NATS -> identity -> Postgres "
            f"(answer {len(dumps(body))} bytes of JSON); "
            f"baseline: bare aiohttp handler in its own process ({len(bare_body)} bytes); "
            "floor (not in the ratio): the same two NATS round trips and two queries with "
            "nothing else (bench/bare.py)"
        )
        pg, ns = srv.pg.pid, srv.nats.pid if srv.nats else None
        meter = _CpuMeter(
            {"gateway": p.gateway.pid, "identity": p.identity.pid, "postgres": pg, "nats": ns}
        )
        ours = _Side("ours", p.gateway.url + path, p.headers, meter)
        meter = _CpuMeter(
            {"floor": floor.pid, "responder": responder.pid, "postgres": pg, "nats": ns}
        )
        low = _Side("floor", floor.url + path, p.headers, meter)
        base = _Side("baseline", bare.url + path, {}, _CpuMeter({"bare": bare.pid}))
        sides = [ours, low, base]
        for side in sides:  # warm-up
            await _wrk(side.url, side.headers, 2, cfg.http_connections)
        before = await _handler_times(p.http, p.identity.url)
        for r in range(cfg.rounds):
            for side in sides[r % 3 :] + sides[: r % 3]:
                await side.round(r, cfg)
        after = await _handler_times(p.http, p.identity.url)
        for side in sides:
            side.report()
        ratio = ours.rate / base.rate
        say(
            f"  ratio    ours/baseline = {ratio:.3f}  (ours/floor {ours.rate / low.rate:.3f}, "
            f"floor/baseline {low.rate / base.rate:.3f})"
        )
        means = _handler_means(before, after)
        say(
            "  identity handler time per call (its own histogram, all rounds): "
            + ", ".join(f"{k} {_ms(v)}" for k, v in sorted(means.items()))
        )
        return Result("gateway_read_vs_bare", ratio, _READ_VS_BARE)


# -- command_latency_vs_parts ---------------------------------------------------------------

_PARTS_TABLE = """
CREATE TABLE bench_parts (
    position    bigserial PRIMARY KEY,
    id          uuid NOT NULL UNIQUE,
    stream      text NOT NULL,
    version     integer NOT NULL,
    type        text NOT NULL,
    data        jsonb NOT NULL,
    meta        jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (stream, version)
)
"""
_PARTS_INSERT = (
    "INSERT INTO bench_parts (id, stream, version, type, data, meta) "
    "VALUES ($1, $2, $3, $4, $5, $6)"
)
_RR_SUBJECT = "bench.rr.identity.disable_user"
_JS_STREAM = "BENCH_PARTS"
_JS_SUBJECT = "bench.parts.user.UserDisabled"


def _p99(xs: Sequence[float]) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[98]


@dataclass(slots=True)
class _Command:
    """Disable, then enable, one user through the gateway: one command per call."""

    p: _Platform
    user_id: str
    conn: asyncpg.Connection
    disabled: bool = False

    async def __call__(self) -> float:
        verb = "enable" if self.disabled else "disable"
        url = f"{self.p.gateway.url}{_API}/users/{self.user_id}/{verb}"
        t0 = time.perf_counter()
        async with self.p.http.post(url, headers=self.p.headers) as r:
            raw = await r.read()
        dt = time.perf_counter() - t0
        if r.status != 204:
            raise BenchError(f"POST {url} answered {r.status}, expected 204: {raw[:300]!r}")
        self.disabled = not self.disabled
        # The read model is written in the command's transaction: visible at the answer.
        seen = await self.conn.fetchval(
            "SELECT disabled FROM identity.users WHERE user_id = $1", uuid.UUID(self.user_id)
        )
        if seen is not self.disabled:
            raise BenchError(f"after {verb} answered, identity.users says disabled={seen}")
        return dt


@dataclass(slots=True)
class _Parts:
    """The raw parts of a command: an INSERT and commit, a request/reply, a JetStream ack."""

    conn: asyncpg.Connection
    nc: NATS
    stream: str = field(default_factory=lambda: f"user-{uuid.uuid4()}")
    version: int = 0

    @property
    def user_id(self) -> str:
        return self.stream.removeprefix("user-")

    async def insert(self) -> float:
        self.version += 1
        data = dumps({"user_id": self.user_id})
        meta = dumps({"actor": self.user_id, "correlation_id": str(uuid7()), "ip": None})
        t0 = time.perf_counter()
        await self.conn.execute(
            _PARTS_INSERT, uuid7(), self.stream, self.version, "UserDisabled", data, meta
        )
        return time.perf_counter() - t0

    async def request(self) -> float:
        body = dumps(
            {
                "actor": self.user_id,
                "correlation_id": str(uuid7()),
                "causation_id": None,
                "ip": "127.0.0.1",
                "payload": {"user_id": self.user_id},
                "deadline": time.time() + 60,
            }
        ).encode()
        t0 = time.perf_counter()
        reply = await self.nc.request(_RR_SUBJECT, body, timeout=5)
        dt = time.perf_counter() - t0
        if not reply.data:
            raise BenchError("the trivial responder answered nothing")
        return dt

    async def publish(self) -> float:
        body = dumps(
            {
                "id": str(uuid7()),
                "stream": self.stream,
                "version": self.version,
                "position": self.version,
                "type": "UserDisabled",
                "schema": 1,
                "data": {"user_id": self.user_id},
                "meta": {"actor": self.user_id, "correlation_id": str(uuid7())},
                "recorded_at": "2025-01-01T00:00:00+00:00",
            }
        ).encode()
        js = self.nc.jetstream()
        t0 = time.perf_counter()
        await js.publish(_JS_SUBJECT, body, headers={"Nats-Msg-Id": str(uuid7())})
        return time.perf_counter() - t0


@contextlib.asynccontextmanager
async def _responder(url: str) -> AsyncIterator[NATS]:
    """A trivial responder on its own connection: answers every request with a fixed reply."""
    nc = await nats.connect(url, name="hp-bench-responder", connect_timeout=5)
    reply = dumps({"ok": True, "result": {}}).encode()

    async def respond(msg: Msg) -> None:
        await msg.respond(reply)

    try:
        await nc.subscribe(_RR_SUBJECT, queue="hp.bench", cb=respond)
        await nc.flush()
        yield nc
    finally:
        await nc.close()


_Op = Callable[[], Awaitable[float]]


async def _interleaved(ops: Mapping[str, _Op], n: int) -> dict[str, list[float]]:
    """`n` iterations of every op, one at a time, the order rotating each iteration: all of
    them see the same moments of a noisy machine."""
    names = list(ops)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(n):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(await ops[name]())
    return times


async def command_latency_vs_parts(b: Bench) -> Result:
    cfg = b.cfg
    n = cfg.commands
    dsn = await b.database("bench_parts")
    async with (
        _platform(b, "command") as p,
        _responder(b.servers.nats_url),
        contextlib.AsyncExitStack() as stack,
    ):
        user_id = (await p.call("POST", "/users", _USER, want=201))["user_id"]
        identity_db = await asyncpg.connect(p.dsn)
        stack.push_async_callback(identity_db.close)
        conn = await asyncpg.connect(dsn)
        stack.push_async_callback(conn.close)
        await conn.execute(_PARTS_TABLE)
        nc = await nats.connect(b.servers.nats_url, name="hp-bench", connect_timeout=5)
        stack.push_async_callback(nc.close)
        js = nc.jetstream()
        await js.add_stream(
            api.StreamConfig(
                name=_JS_STREAM, subjects=["bench.parts.>"], storage=api.StorageType.FILE
            )
        )
        stack.push_async_callback(js.delete_stream, _JS_STREAM)
        parts = _Parts(conn, nc)
        ops: dict[str, _Op] = {
            "command": _Command(p, user_id, identity_db),
            "insert": parts.insert,
            "request": parts.request,
            "publish": parts.publish,
        }
        say(
            f"  {n} iterations a round, each one command and one of each part, one at a time "
            f"in rotating order; command: POST {_API}/users/{{id}}/disable and /enable "
            "alternating (no password hashing), answered after identity appended the event "
            "and updated its read model in one transaction (checked after each answer); parts: "
            "asyncpg INSERT (autocommit) into a table like events.events, NATS request/reply "
            "to a trivial responder, JetStream publish awaiting its ack (file storage)"
        )
        await _interleaved(ops, _WARM_COMMANDS)
        p50s: dict[str, list[float]] = {name: [] for name in ops}
        p99s: dict[str, list[float]] = {name: [] for name in ops}
        before = await _handler_times(p.http, p.identity.url)
        for r in range(cfg.rounds):
            times = await _interleaved(ops, n)
            for name, xs in times.items():
                p50s[name].append(statistics.median(xs))
                p99s[name].append(_p99(xs))
            say(
                f"  round {r + 1}  "
                + "; ".join(
                    f"{name} p50 {_ms(p50s[name][-1])} p99 {_ms(p99s[name][-1])}" for name in ops
                )
            )
        after = await _handler_times(p.http, p.identity.url)
        med50 = {name: statistics.median(xs) for name, xs in p50s.items()}
        med99 = {name: statistics.median(xs) for name, xs in p99s.items()}
        for name in ops:
            say(f"  median   {name:<8} p50 {_ms(med50[name])}, p99 {_ms(med99[name])}")
        parts99 = sum(med99[name] for name in ops if name != "command")
        parts50 = sum(med50[name] for name in ops if name != "command")
        ratio = med99["command"] / parts99
        say(
            f"  ratio    command p99 / (insert + request + publish p99 = {_ms(parts99)}) "
            f"= {ratio:.3f}  (same with p50s, not the target: {med50['command'] / parts50:.2f})"
        )
        means = _handler_means(before, after)
        say(
            "  identity handler time per call (its own histogram, all rounds): "
            + ", ".join(f"{k} {_ms(v)}" for k, v in sorted(means.items()))
        )
        return Result("command_latency_vs_parts", ratio, _COMMAND_VS_PARTS, "<=")


BENCHMARKS: dict[str, Benchmark] = {
    bm.name: bm
    for bm in (
        Benchmark("gateway_read_vs_bare", gateway_read_vs_bare, _READ_VS_BARE, needs_nats=True),
        Benchmark(
            "command_latency_vs_parts",
            command_latency_vs_parts,
            _COMMAND_VS_PARTS,
            needs_nats=True,
            op="<=",
        ),
    )
}
