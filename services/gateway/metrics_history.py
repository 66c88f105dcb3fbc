"""The metrics history the dashboard graphs: system memory, CPU and disk, and each app's memory.

Every `metrics_interval` seconds a worker samples the host (/proc/meminfo: MemTotal minus
MemAvailable; /proc/stat: the busy share of CPU time since the previous sample; statvfs of the
data directory) and the apps service's `stats` query (the memory of each running app, as its
stats loop last read it; skipped when apps does not answer), writes one row per value into
`gateway.metric_samples`, and deletes rows older than `metrics_retention_days` in the same
transaction. The system values are also Prometheus gauges on the gateway's /metrics.

`history()` answers a range downsampled in SQL: samples averaged into `date_bin` buckets of a
fixed step per range, at most MAX_POINTS buckets (the last one still filling).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from libs.events.bus import BusClient, BusError, Invalid
from libs.events.context import Context
from libs.events.migrations import migrate
from libs.events.nats_access import GATEWAY
from libs.events.wiring import Connections
from libs.service.metrics import REGISTRY, Gauge
from services.gateway.config import GatewayConfig

__all__ = [
    "APP_MEMORY",
    "MAX_POINTS",
    "MIGRATIONS",
    "RANGES",
    "SYSTEM_METRICS",
    "MetricsHistory",
    "SystemSampler",
    "history",
    "metrics_history",
]

log = logging.getLogger("homeport.gateway.metrics")

MIGRATIONS = Path(__file__).parent / "migrations_metrics"
SYSTEM_METRICS: Mapping[str, str] = {
    "system_memory_used_bytes": "Memory in use on the host (MemTotal - MemAvailable)",
    "system_memory_total_bytes": "Memory of the host (MemTotal)",
    "system_cpu_busy_ratio": "Share of CPU time the host spent busy since the previous sample",
    "system_disk_used_bytes": "Space used on the file system of the data directory",
    "system_disk_total_bytes": "Size of the file system of the data directory",
}
APP_MEMORY = "app_memory_bytes"
# range -> seconds; the step is range / MAX_POINTS: 10 s, 1 min, 4 min, 28 min.
RANGES: Mapping[str, int] = {"1h": 3600, "6h": 6 * 3600, "24h": 24 * 3600, "7d": 7 * 86400}
MAX_POINTS = 360
APPS_TIMEOUT = 5.0  # seconds for the apps service to answer `stats`
STALE_STATS = 300.0  # seconds: app stats older than this (apps' loop stuck) are not sampled

_GAUGES = {
    name: Gauge(f"homeport_{name}", doc, registry=REGISTRY) for name, doc in SYSTEM_METRICS.items()
}
_HISTORY_SQL = """
SELECT metric, app_id, location,
       extract(epoch FROM date_bin(make_interval(secs => $2), at, TIMESTAMPTZ 'epoch'))::bigint
           AS bucket,
       avg(value) AS value
FROM gateway.metric_samples
WHERE metric = ANY($1::text[]) AND at >= $3
GROUP BY metric, app_id, location, bucket
ORDER BY metric, location, app_id, bucket
"""


# -- the host (the only code here that reads /proc and the file system) ----------------------


@dataclass(frozen=True, slots=True)
class _CpuTimes:
    busy: int
    total: int


class SystemSampler:
    """Reads memory, CPU and disk use of the host; CPU needs two samples (the first has none)."""

    def __init__(self, data_dir: Path, proc: Path = Path("/proc")) -> None:
        self.data_dir = data_dir
        self.proc = proc
        self._cpu: _CpuTimes | None = None

    def sample(self) -> dict[str, float]:
        """The system metrics readable now, by name (blocking: call it in a thread)."""
        out: dict[str, float] = {}
        try:
            total, available = self._meminfo()
            out["system_memory_used_bytes"] = float(max(0, total - available))
            out["system_memory_total_bytes"] = float(total)
        except (OSError, ValueError) as e:
            log.debug("no memory sample: cannot read %s/meminfo (%s)", self.proc, e)
        try:
            cpu, before = self._cpu_times(), self._cpu
            self._cpu = cpu
            if before is not None and cpu.total > before.total:
                share = (cpu.busy - before.busy) / (cpu.total - before.total)
                out["system_cpu_busy_ratio"] = min(1.0, max(0.0, share))
        except (OSError, ValueError) as e:
            log.debug("no CPU sample: cannot read %s/stat (%s)", self.proc, e)
        try:
            st = os.statvfs(_existing(self.data_dir))
            out["system_disk_used_bytes"] = float((st.f_blocks - st.f_bfree) * st.f_frsize)
            out["system_disk_total_bytes"] = float(st.f_blocks * st.f_frsize)
        except OSError as e:
            log.debug("no disk sample: cannot stat the file system of %s (%s)", self.data_dir, e)
        return out

    def _meminfo(self) -> tuple[int, int]:
        """MemTotal and MemAvailable, in bytes."""
        found: dict[str, int] = {}
        with (self.proc / "meminfo").open() as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("MemTotal", "MemAvailable"):
                    value, *unit = rest.split()
                    found[name] = int(value) * (1024 if unit == ["kB"] else 1)
        if len(found) != 2:
            raise ValueError("MemTotal or MemAvailable is missing")
        return found["MemTotal"], found["MemAvailable"]

    def _cpu_times(self) -> _CpuTimes:
        """Busy and total jiffies of all CPUs (idle and iowait are not busy; guest time is
        already counted in user and nice)."""
        with (self.proc / "stat").open() as f:
            first = f.readline().split()
        if not first or first[0] != "cpu" or len(first) < 5:
            raise ValueError("the first line is not the cpu summary")
        times = [int(v) for v in first[1:9]]
        idle = times[3] + (times[4] if len(times) > 4 else 0)
        return _CpuTimes(busy=sum(times) - idle, total=sum(times))


def _existing(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists (the data directory may not yet)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# -- the worker -------------------------------------------------------------------------------


class MetricsHistory:
    """Samples every `interval` seconds into gateway.metric_samples until stopped."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        bus: BusClient,
        sampler: SystemSampler,
        *,
        interval: float,
        retention_days: int,
    ) -> None:
        self.pool = pool
        self.bus = bus
        self.sampler = sampler
        self.interval = interval
        self.retention_days = retention_days
        self._stop = asyncio.Event()

    async def setup(self) -> None:
        """Create or migrate the table (component gateway.metrics)."""
        async with self.pool.acquire() as conn:
            await migrate(conn, "gateway.metrics", MIGRATIONS)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            began = loop.time()
            try:
                await self.sample_once()
            except Exception:  # the loop outlives a bad round (Postgres restarting, ...)
                log.exception("sampling the metrics history failed; trying again next interval")
            wait = max(0.0, self.interval - (loop.time() - began))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), wait)

    async def sample_once(self) -> None:
        """One round: sample, set the gauges, write the rows and prune, in one transaction."""
        at = datetime.now(UTC)
        system = await asyncio.to_thread(self.sampler.sample)
        for name, value in system.items():
            _GAUGES[name].set(value)
        rows: list[tuple[str, str | None, str | None, float]] = [
            (name, None, None, value) for name, value in system.items()
        ]
        rows += [(APP_MEMORY, a, loc, mem) for a, loc, mem in await self._app_memory()]
        async with self.pool.acquire() as conn, conn.transaction():
            if rows:
                await conn.execute(
                    "INSERT INTO gateway.metric_samples (at, metric, app_id, location, value)"
                    " SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[],"
                    " $5::float8[])",
                    at,
                    *map(list, zip(*rows, strict=True)),
                )
            await conn.execute(
                "DELETE FROM gateway.metric_samples WHERE at < $1",
                at - timedelta(days=self.retention_days),
            )

    async def _app_memory(self) -> list[tuple[str, str, float]]:
        """(app id, location, memory bytes) of each running app; none when apps is silent."""
        ctx = Context(GATEWAY, f"metrics-{uuid.uuid4()}")
        try:
            reply = await self.bus.query("apps", "stats", {}, ctx=ctx, timeout=APPS_TIMEOUT)
        except BusError as e:
            log.debug("no app memory this round: apps did not answer stats (%s)", e.code)
            return []
        items = reply.get("items") if isinstance(reply, dict) else None
        out: list[tuple[str, str, float]] = []
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict):
                continue
            app_id, location, memory = (item.get(k) for k in ("app_id", "location", "memory_bytes"))
            if (
                isinstance(app_id, str)
                and isinstance(location, str)
                and isinstance(memory, int | float)
                and not isinstance(memory, bool)
                and math.isfinite(memory)
                and _fresh(item.get("collected_at"))
            ):
                out.append((app_id, location, float(memory)))
        return out


def _fresh(collected_at: object) -> bool:
    """Whether apps read these stats within STALE_STATS seconds."""
    if not isinstance(collected_at, str):
        return False
    try:
        when = datetime.fromisoformat(collected_at)
    except ValueError:
        return False
    if when.tzinfo is None:
        return False
    return (datetime.now(UTC) - when).total_seconds() <= STALE_STATS


def metrics_history(cfg: GatewayConfig, conn: Connections) -> MetricsHistory:
    """The gateway's sampling worker over its connections (call `setup()` before running it)."""
    return MetricsHistory(
        conn.store.pool,
        BusClient(conn.nc, sender=GATEWAY, default_timeout=APPS_TIMEOUT),
        SystemSampler(cfg.data_dir),
        interval=cfg.metrics_interval,
        retention_days=cfg.metrics_retention_days,
    )


# -- the history ------------------------------------------------------------------------------


async def history(pool: asyncpg.Pool, range_name: str) -> dict[str, Any]:
    """The samples of the last `range_name` (a key of RANGES), averaged per step: every system
    series (empty when nothing was sampled) and one series per app and location."""
    seconds = RANGES.get(range_name)
    if seconds is None:
        raise Invalid(f"range must be one of {', '.join(RANGES)}", field="range")
    step = seconds // MAX_POINTS
    now = datetime.now(UTC).timestamp()
    since = datetime.fromtimestamp((now // step - (MAX_POINTS - 1)) * step, UTC)
    rows = await pool.fetch(_HISTORY_SQL, [*SYSTEM_METRICS, APP_MEMORY], step, since)
    series: dict[tuple[str, str | None, str | None], list[list[float]]] = {
        (name, None, None): [] for name in SYSTEM_METRICS
    }
    for r in rows:
        value = float(r["value"])
        value = round(value, 4) if r["metric"] == "system_cpu_busy_ratio" else float(round(value))
        series.setdefault((r["metric"], r["app_id"], r["location"]), []).append(
            [int(r["bucket"]), value]
        )
    out: list[dict[str, Any]] = []
    for (metric, app_id, location), points in series.items():
        entry: dict[str, Any] = {"metric": metric}
        if metric == APP_MEMORY:
            entry.update(app_id=app_id, location=location)
        entry["points"] = points
        out.append(entry)
    return {"range": range_name, "step_seconds": step, "series": out}
