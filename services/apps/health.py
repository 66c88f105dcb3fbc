"""Health of installed apps: checks every `health_interval`, Docker's own events, resource use.

An installed, running app whose health check (GET healthCheckPath; 2xx/3xx is healthy) has
failed for `unhealthy_after` seconds is recorded `AppUnhealthy` once; its first healthy answer
after that records `AppRecovered`. A container that exits without being asked records `AppDied`,
one killed by the kernel for memory `AppOutOfMemory` (from Docker's events). Memory and CPU of
every app container are Prometheus gauges, and the latest round is kept for the `stats` query
(the gateway's metrics history asks it; no Docker call per query). So are the states the alert
rules of deploy/prometheus/ read: whether each app meant to run is up and judged unhealthy, and
counters of its deaths and out-of-memory kills.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple

from libs.events import context
from libs.events.context import Context
from libs.service.metrics import REGISTRY, Counter, Gauge
from services.apps import events as ev
from services.apps.catalog import Catalog, CatalogError
from services.apps.config import AppsConfig
from services.apps.container import ContainerRuntime, RuntimeFailure

if TYPE_CHECKING:
    import aiohttp
from services.apps.errors import ChangedMeanwhile
from services.apps.names import Names
from services.apps.state import Health, State
from services.apps.streams import AppStreams

__all__ = ["AppStats", "HealthMonitor", "Restarts", "docker_ready"]

log = logging.getLogger("services.apps.health")

APP_MEMORY = Gauge(
    "homeport_app_memory_bytes",
    "Memory an app's container uses now",
    ["app_id", "location"],
    registry=REGISTRY,
)
APP_MEMORY_LIMIT = Gauge(
    "homeport_app_memory_limit_bytes",
    "The memory limit of an app's container",
    ["app_id", "location"],
    registry=REGISTRY,
)
APP_CPU = Gauge(
    "homeport_app_cpu_seconds_total",
    "CPU time an app's container has used since it started",
    ["app_id", "location"],
    registry=REGISTRY,
)
# The states and counts the alert rules of deploy/prometheus/ read.
APP_UP = Gauge(
    "homeport_app_up",
    "1 when the container of an app meant to run is running, 0 when it is not (each health round)",
    ["app_id", "location"],
    registry=REGISTRY,
)
APP_UNHEALTHY = Gauge(
    "homeport_app_unhealthy",
    "1 when an app's health check has failed for unhealthy_after seconds (AppUnhealthy), else 0",
    ["app_id", "location"],
    registry=REGISTRY,
)
APP_DEATHS = Counter(
    "homeport_app_deaths",
    "Exits of an app's container nobody asked for (AppDied)",
    ["app_id", "location"],
    registry=REGISTRY,
)
APP_OOM_KILLS = Counter(
    "homeport_app_oom_kills",
    "Kills of an app's container by the kernel for memory (AppOutOfMemory)",
    ["app_id", "location"],
    registry=REGISTRY,
)


class _Installed(NamedTuple):
    """An installed app's row, as the checks need it."""

    app_id: str
    location: str
    running: bool
    health: str
    manifest_id: str
    version: str


@dataclass(frozen=True, slots=True)
class AppStats:
    """The resource use of one running app's container, as one stats round read it."""

    app_id: str
    location: str
    memory_bytes: int
    memory_limit: int
    cpu_seconds: float
    collected_at: datetime


class Restarts:
    """When a restart of each app was asked for (monotonic): its container's death that
    follows is that restart, not a death (commands.py records, the monitor asks)."""

    def __init__(self) -> None:
        self._asked: dict[str, float] = {}

    def asked(self, app_id: str) -> None:
        self._asked[app_id] = time.monotonic()

    def recent(self, app_id: str, within: float = 30.0) -> bool:
        when = self._asked.get(app_id)
        return when is not None and time.monotonic() - when < within


OOM_INCIDENT_S = 2.0  # Docker's oom events of one app this close together: one incident


class OomIncidents:
    """Docker's oom events of each app as incidents. containerd (1.6, cgroup v2) may tell one
    kill twice, 1-3 ms apart (3 of 8 kills of a 32 MiB container here): an event within
    OOM_INCIDENT_S of the app's last recorded one is that incident again, not another. A
    container killed again and again still has an incident recorded every OOM_INCIDENT_S."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._at: dict[str, float] = {}

    def new(self, app_id: str) -> bool:
        """Whether an oom event of `app_id` now is a new incident (then it is the last one)."""
        now = self._clock()
        last = self._at.get(app_id)
        if last is not None and now - last < OOM_INCIDENT_S:
            return False
        self._at[app_id] = now
        return True


@dataclass
class _Watch:
    failing_since: float | None = None
    failing_since_wall: str = ""
    reported: bool = False


INSTALLED_REFRESH_S = 300.0  # the installed apps asked again at least this often
CHANGED_S = 15.0  # ... and on every round for this long after this process appended


class HealthMonitor:
    """Runs the health loop, the Docker events loop and the stats loop until stopped."""

    def __init__(
        self,
        cfg: AppsConfig,
        apps: AppStreams,
        runtime: ContainerRuntime,
        catalog: Catalog,
        restarts: Restarts,
    ) -> None:
        self.cfg = cfg
        self._oom = OomIncidents()
        self._apps = apps
        self._runtime = runtime
        self._catalog = catalog
        self._restarts = restarts
        self._stop = asyncio.Event()
        self._watch: dict[str, _Watch] = {}
        self._latest: tuple[AppStats, ...] = ()
        self._installed_cache: list[_Installed] | None = None
        self._installed_at = 0.0
        self._appends_last = -1  # the store's append count when last looked at
        self._changed_at = 0.0

    def latest_stats(self) -> tuple[AppStats, ...]:
        """The last stats round: each running app whose container could be read."""
        return self._latest

    def stop(self) -> None:
        self._stop.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _installed(self) -> list[_Installed]:
        """The installed apps. Asked again while this process appended events in the last
        CHANGED_S seconds (every change to an app is an event this service appends; the margin
        covers an append whose transaction commits after a round has read), and at least every
        INSTALLED_REFRESH_S: at rest the service holds no database connection for this."""
        now = time.monotonic()
        appends = self._apps.store.appends
        if appends != self._appends_last:
            self._appends_last, self._changed_at = appends, now
        quiet = now - self._changed_at > CHANGED_S
        if (
            self._installed_cache is not None
            and quiet
            and now - self._installed_at < (INSTALLED_REFRESH_S)
        ):
            return self._installed_cache
        rows = await self._apps.store.pool.fetch(
            "SELECT app_id::text, location, running, health, manifest_id, version"
            " FROM apps.apps WHERE state = $1",
            State.installed.value,
        )
        self._installed_cache = [_Installed(*r.values()) for r in rows]
        self._installed_at = time.monotonic()
        return self._installed_cache

    async def _record(self, app_id: str, event: object) -> None:
        with context.use(Context(actor="system", correlation_id=f"health-{app_id}")):
            for _ in range(3):
                s = await self._apps.load(app_id)
                if not s.exists:
                    return
                try:
                    await self._apps.append(app_id, [event], s.version, state=s)
                    return
                except ChangedMeanwhile:
                    continue

    # -- health checks ----------

    async def run_checks(self) -> None:
        http = _Http()
        try:
            while not self._stop.is_set():
                try:
                    await self.check_all(http)
                except Exception:  # the loop outlives any one bad round
                    log.exception("health round failed")
                await self._sleep(self.cfg.health_interval)
        finally:
            await http.close()

    async def check_all(self, http: _Http) -> None:
        apps = await self._installed()
        alive = {a.app_id for a in apps}
        for gone in set(self._watch) - alive:
            del self._watch[gone]
        for app in apps:
            APP_DEATHS.labels(app.app_id, app.location)  # from 0: a first death is an increase
            APP_OOM_KILLS.labels(app.app_id, app.location)
            if app.running:
                await self.check(http, app)
        running = {(a.app_id, a.location) for a in apps if a.running}
        installed = {(a.app_id, a.location) for a in apps}
        for family, keep in (
            (APP_UP, running),
            (APP_UNHEALTHY, running),
            (APP_DEATHS, installed),
            (APP_OOM_KILLS, installed),
        ):
            for labels in _label_sets(family):
                if labels not in keep:  # removed, stopped by its user, or moved elsewhere
                    with contextlib.suppress(KeyError):
                        family.remove(*labels)

    async def check(self, http: _Http, app: _Installed) -> None:
        app_id, health = app.app_id, app.health
        ok, detail = await self._probe(http, app)
        w = self._watch.setdefault(app_id, _Watch())
        now = time.monotonic()
        if ok:
            w.failing_since = None
            w.reported = False
            APP_UNHEALTHY.labels(app_id, app.location).set(0)
            if health in (Health.unhealthy.value, Health.dead.value):
                await self._record(app_id, ev.AppRecovered(app_id=app_id))
            return
        if w.failing_since is None:
            w.failing_since = now
            w.failing_since_wall = datetime.now(UTC).isoformat()
        judged = health == Health.unhealthy.value  # recorded before (this process restarted)
        long = now - w.failing_since >= self.cfg.unhealthy_after
        APP_UNHEALTHY.labels(app_id, app.location).set(1 if judged or long else 0)
        if (
            not w.reported
            and health != Health.unhealthy.value
            and now - w.failing_since >= self.cfg.unhealthy_after
        ):
            w.reported = True
            unhealthy = ev.AppUnhealthy(
                app_id=app_id, since=w.failing_since_wall, detail=detail[:500]
            )
            await self._record(app_id, unhealthy)

    async def _probe(self, http: _Http, app: _Installed) -> tuple[bool, str]:
        """GET the app's health-check path (the read model names its version: no stream read)."""
        try:
            entry = self._catalog.entry(app.manifest_id, app.version, include_prereleases=True)
            state = await self._runtime.state(self._names(app.app_id).container)
        except (RuntimeFailure, CatalogError) as e:
            return False, f"could not inspect the app: {e}"
        APP_UP.labels(app.app_id, app.location).set(1 if state is not None and state.running else 0)
        if state is None or not state.running or not state.http_host_port:
            return False, "the container is not running"
        url = f"http://127.0.0.1:{state.http_host_port}{entry.manifest.health_check_path}"
        import aiohttp

        try:
            async with http.session().get(url, allow_redirects=False) as r:
                if 200 <= r.status < 400:
                    return True, ""
                return False, f"{entry.manifest.health_check_path} answered HTTP {r.status}"
        except (aiohttp.ClientError, TimeoutError) as e:
            return False, f"{entry.manifest.health_check_path} did not answer ({type(e).__name__})"

    # -- Docker events ----------------------------------------------------------------------------

    async def run_events(self) -> None:
        labels = {"homeport.prefix": self.cfg.name_prefix}
        while not self._stop.is_set():
            stream = self._runtime.events(labels)
            try:
                async for e in stream:
                    if self._stop.is_set():
                        break
                    await self.on_event(e.kind, e.labels.get("homeport.app", ""), e.exit_code)
            except RuntimeFailure as e:
                log.warning("Docker events stream ended (%s); following again", e)
            except Exception:
                log.exception("Docker events loop failed; following again")
            finally:
                close = getattr(stream, "aclose", None)
                if close is not None:  # ends the thread that reads Docker's stream, even when
                    await asyncio.shield(close())  # this loop is cancelled at shutdown
            await self._sleep(1.0)

    async def on_event(self, kind: str, app_id: str, exit_code: int | None) -> None:
        if not app_id:
            return
        s = await self._apps.load(app_id)
        if not s.exists or s.state is not State.installed:
            return  # an operation is replacing or removing the container
        if kind == "oom":
            if not self._oom.new(app_id):
                return  # the same kill told twice
            APP_OOM_KILLS.labels(app_id, s.location).inc()
            await self._record(
                app_id, ev.AppOutOfMemory(app_id=app_id, memory_bytes=s.memory_bytes)
            )
        elif kind == "die" and s.running and not self._restarts.recent(app_id):
            # a die within 30 s of a restart the user asked for is that restart, not a death
            APP_DEATHS.labels(app_id, s.location).inc()
            await self._record(app_id, ev.AppDied(app_id=app_id, exit_code=exit_code))

    def _names(self, app_id: str) -> Names:
        return Names(self.cfg.name_prefix, app_id)

    # -- resource use ----------

    async def run_stats(self) -> None:
        while not self._stop.is_set():
            try:
                await self.collect_stats()
            except Exception:
                log.exception("collecting app stats failed")
            await self._sleep(self.cfg.stats_interval)

    async def collect_stats(self) -> None:
        seen: set[tuple[str, str]] = set()
        found: list[AppStats] = []
        for app in await self._installed():
            app_id, location = app.app_id, app.location
            if not app.running:
                continue
            try:
                st = await self._runtime.stats(self._names(app_id).container)
            except RuntimeFailure:
                continue
            APP_MEMORY.labels(app_id, location).set(st.memory_bytes)
            APP_MEMORY_LIMIT.labels(app_id, location).set(st.memory_limit)
            APP_CPU.labels(app_id, location).set(st.cpu_seconds)
            seen.add((app_id, location))
            found.append(
                AppStats(
                    app_id=app_id,
                    location=location,
                    memory_bytes=st.memory_bytes,
                    memory_limit=st.memory_limit,
                    cpu_seconds=st.cpu_seconds,
                    collected_at=datetime.now(UTC),
                )
            )
        self._latest = tuple(found)  # replaced whole: a reader never sees half a round
        for gauge in (APP_MEMORY, APP_MEMORY_LIMIT, APP_CPU):
            for labels in list(_label_sets(gauge)):
                if labels not in seen:
                    with contextlib.suppress(KeyError):
                        gauge.remove(*labels)


def _label_sets(gauge: Gauge | Counter) -> set[tuple[str, str]]:
    out = set()
    for metric in gauge.collect():
        for sample in metric.samples:
            out.add((sample.labels["app_id"], sample.labels["location"]))
    return out


async def docker_ready(runtime: ContainerRuntime) -> bool:
    """The service's readiness check: raises (not ready) when dockerd does not answer."""
    await runtime.ping()
    return True


class _Http:
    """The health rounds' aiohttp session, opened when a running app is first checked: with no
    app running the apps service does not load aiohttp (~11 MiB) at all."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
