"""Shared pieces of the benchmarks: configuration, servers, rounds, medians, RSS, results."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import asyncpg

from deploy.embedded import NatsServer, PostgresServer

__all__ = [
    "Bench",
    "BenchConfig",
    "BenchError",
    "Benchmark",
    "Comparison",
    "Cpu",
    "Result",
    "RssSampler",
    "Run",
    "Servers",
    "create_database",
    "elapsed_since",
    "interleave",
    "rss_mib",
    "say",
    "servers",
    "tree_cpu",
]


class BenchError(Exception):
    """A benchmark could not run (bad configuration, a server that did not do its part)."""


def say(text: str = "") -> None:
    """Print a line at once (benchmarks are long; output must not sit in a buffer)."""
    print(text, flush=True)


def _env_int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise BenchError(
            f"{name}={raw!r} is not a whole number: set it to e.g. {default}"
        ) from None
    if value < minimum:
        raise BenchError(f"{name}={value} is too small: it must be at least {minimum}")
    return value


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """Sizes of the runs, read once from HP_BENCH_* variables."""

    rounds: int = 5
    replay_rounds: int = 5  # issue 20: medians of at least 5 rounds, replays too
    writers: int = 8
    appends_per_writer: int = 1000
    replay_events: int = 1_000_000
    relay_events: int = 50_000
    relay_window: int = 256
    http_seconds: int = 5
    http_connections: int = 32
    commands: int = 1000

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BenchConfig:
        d = cls()
        return cls(
            rounds=_env_int(env, "HP_BENCH_ROUNDS", d.rounds, 1),
            replay_rounds=_env_int(env, "HP_BENCH_REPLAY_ROUNDS", d.replay_rounds, 1),
            writers=d.writers,
            appends_per_writer=_env_int(env, "HP_BENCH_APPENDS", d.appends_per_writer, 10),
            replay_events=_env_int(env, "HP_BENCH_REPLAY_EVENTS", d.replay_events, 1000),
            relay_events=_env_int(env, "HP_BENCH_RELAY_EVENTS", d.relay_events, 1000),
            relay_window=_env_int(env, "HP_BENCH_RELAY_WINDOW", d.relay_window, 1),
            http_seconds=_env_int(env, "HP_BENCH_HTTP_SECONDS", d.http_seconds, 1),
            http_connections=_env_int(env, "HP_BENCH_HTTP_CONNECTIONS", d.http_connections, 1),
            commands=_env_int(env, "HP_BENCH_COMMANDS", d.commands, 100),
        )


# -- servers ------------------------------------------------------------------------------


@dataclass(slots=True)
class Servers:
    """Postgres (fsync on) and, when asked for, NATS with JetStream, in one temp directory."""

    root: Path
    pg: PostgresServer
    nats: NatsServer | None = None

    @property
    def nats_url(self) -> str:
        if self.nats is None:
            raise BenchError("this run started no nats-server: declare needs_nats on the bench")
        return self.nats.harness_url


@contextlib.contextmanager
def servers(*, with_nats: bool) -> Iterator[Servers]:
    """Start the servers the way the tests do; stop them and remove the directory at the end."""
    root = Path(tempfile.mkdtemp(prefix="hp-bench-"))
    root.chmod(0o755)  # as root, the postgres user must reach its data dir through this
    pg = PostgresServer(root / "pg", fsync=True)
    nats: NatsServer | None = NatsServer(root / "nats", harness=True) if with_nats else None
    started: list[PostgresServer | NatsServer] = []
    try:
        pg.start()
        started.append(pg)
        if nats is not None:
            nats.start()
            started.append(nats)
        yield Servers(root, pg, nats)
    finally:
        for server in reversed(started):
            with contextlib.suppress(Exception):
                server.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class Bench:
    """What every benchmark gets: the sizes and the running servers."""

    cfg: BenchConfig
    own: Servers | None  # None for the benchmarks that run alone (`Benchmark.alone`)

    @property
    def servers(self) -> Servers:
        if self.own is None:
            raise BenchError("this benchmark runs alone: the harness started no server for it")
        return self.own

    async def database(self, name: str) -> str:
        pg = self.servers.pg
        return await create_database(pg.dsn, name, pg.dsn_for)


@dataclass(frozen=True, slots=True)
class Benchmark:
    """A named benchmark, the ratio it must reach (`ours/baseline <op> target`), what it needs."""

    name: str
    run: Callable[[Bench], Awaitable[Result]]
    target: float
    needs_nats: bool = False
    op: str = ">="
    # Runs after the harness's own Postgres and NATS are stopped: a memory benchmark measures
    # PSS, and another process of the same binary would take half of the shared pages.
    alone: bool = False


async def create_database(admin_dsn: str, name: str, dsn_for: Callable[[str], str]) -> str:
    """A fresh, empty database `name` (dropped first if a previous run left it)."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return dsn_for(name)


# -- rounds and results -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """One measured run: how many operations took how long."""

    ops: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.ops / self.seconds


def tree_cpu(root: int | None) -> float:
    """CPU seconds of process `root` and its descendants (live ones, plus reaped children)."""
    if root is None:
        return 0.0
    parent_of: dict[int, int] = {}
    ticks: dict[int, int] = {}
    reaped = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        parent_of[pid] = int(fields[1])
        ticks[pid] = int(fields[11]) + int(fields[12])
        if pid == root:
            reaped = int(fields[13]) + int(fields[14])
    total, todo = reaped, [root]
    children: dict[int, list[int]] = {}
    for pid, ppid in parent_of.items():
        children.setdefault(ppid, []).append(pid)
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo.extend(children.get(pid, ()))
    return total / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Cpu:
    """CPU seconds used so far by this process, the Postgres server and the NATS server."""

    python: float
    postgres: float
    nats: float

    @classmethod
    def now(cls, srv: Servers) -> Cpu:
        return cls(
            time.process_time(),
            tree_cpu(srv.pg.pid),
            tree_cpu(srv.nats.pid if srv.nats is not None else None),
        )

    def per_op_us(self, before: Cpu, ops: int) -> Cpu:
        k = 1e6 / max(ops, 1)
        return Cpu(
            (self.python - before.python) * k,
            (self.postgres - before.postgres) * k,
            (self.nats - before.nats) * k,
        )


async def interleave(
    rounds: int,
    srv: Servers,
    ours: Callable[[int], Awaitable[Run]],
    base: Callable[[int], Awaitable[Run]],
    unit: str,
) -> Comparison:
    """Measure ours and the baseline `rounds` times each, alternating which goes first."""
    cmp = Comparison(unit, with_nats=srv.nats is not None)
    for r in range(rounds):
        order = (("ours", ours), ("baseline", base))
        if r % 2:
            order = order[::-1]
        for side, fn in order:
            before = Cpu.now(srv)
            run = await fn(r)
            cpu = Cpu.now(srv).per_op_us(before, run.ops)
            cmp.add(side, run, cpu)
            say(f"  round {r + 1}  {side:<8} {run.rate:>12,.0f} {unit}  ({cmp.cpu_text(cpu)})")
    return cmp


@dataclass(slots=True)
class Comparison:
    """Per-round rates (and CPU per operation) of ours and of the baseline."""

    unit: str
    with_nats: bool = False
    ours: list[float] = field(default_factory=list)
    base: list[float] = field(default_factory=list)
    ours_cpu: list[Cpu] = field(default_factory=list)
    base_cpu: list[Cpu] = field(default_factory=list)

    def add(self, side: str, run: Run, cpu: Cpu) -> None:
        if side == "ours":
            self.ours.append(run.rate)
            self.ours_cpu.append(cpu)
        else:
            self.base.append(run.rate)
            self.base_cpu.append(cpu)

    @property
    def ratio(self) -> float:
        """Median rate of ours over median rate of the baseline."""
        return statistics.median(self.ours) / statistics.median(self.base)

    def cpu_text(self, cpu: Cpu) -> str:
        text = f"cpu/op: python {cpu.python:.1f} us, postgres {cpu.postgres:.1f} us"
        return text + (f", nats {cpu.nats:.1f} us" if self.with_nats else "")

    def report(self) -> None:
        for side, xs, cpus in (
            ("ours", self.ours, self.ours_cpu),
            ("baseline", self.base, self.base_cpu),
        ):
            med = Cpu(
                statistics.median(c.python for c in cpus),
                statistics.median(c.postgres for c in cpus),
                statistics.median(c.nats for c in cpus),
            )
            say(
                f"  median   {side:<8} {statistics.median(xs):>12,.0f} {self.unit}"
                f"  ({1e6 / statistics.median(xs):,.1f} us/op wall; {self.cpu_text(med)})"
            )
        say(f"  ratio    ours/baseline = {self.ratio:.3f}")


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one benchmark: the ratio against its target, plus any other misses."""

    name: str
    ratio: float | None
    target: float
    op: str = ">="
    misses: tuple[str, ...] = ()

    @property
    def met(self) -> bool:
        if self.ratio is None or self.misses:
            return False
        return self.ratio >= self.target if self.op == ">=" else self.ratio <= self.target

    @property
    def line(self) -> str:
        figure = "error" if self.ratio is None else f"{self.ratio:.2f}"
        return f"RESULT {self.name} {figure} (target {self.op} {self.target:g})"


# -- memory -------------------------------------------------------------------------------


def rss_mib() -> float:
    """This process's resident set size (VmRSS) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError("/proc/self/status has no VmRSS line: the replay bench needs Linux")


class RssSampler:
    """Samples VmRSS every `interval` seconds in a task while in `async with`; keeps the peak."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.start = 0.0
        self.peak = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mib())
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> RssSampler:
        self.start = self.peak = rss_mib()
        self._task = asyncio.create_task(self._run(), name="rss-sampler")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.peak = max(self.peak, rss_mib())


def elapsed_since(t0: float) -> float:
    """Seconds since `t0` (a perf_counter reading), never zero."""
    return max(time.perf_counter() - t0, 1e-9)
