"""Runs the lifecycle operations of apps, step by step, each step recorded before the next.

`Engine.drive(app_id)` reads the app's stream, finds the operation in progress and the steps
already recorded, and runs the rest. Every step is idempotent (Docker objects have names derived
from the app id; addons are provisioned with the credentials already recorded), so a service
killed at any point and started again finishes the operation, or, for an update or restore
that cannot finish, rolls the app back to what it was (the snapshot taken first). Progress goes
to the operation's task (libs/events/tasks.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp

from libs.events import context
from libs.events.bus import BusClient, BusError
from libs.events.context import Context
from libs.events.envelope import uuid7
from libs.events.errors import ConcurrencyError
from libs.events.inline import append_inline
from libs.events.sealing import Keyring
from libs.events.store import PostgresEventStore
from libs.events.tasks import Task
from services.apps import events as ev
from services.apps.addons.postgresql import AddonError, AddonPostgres
from services.apps.base_image import ensure_base_image, ensure_busybox_image
from services.apps.catalog import Catalog, CatalogEntry, CatalogError
from services.apps.config import AppsConfig
from services.apps.manifest import Manifest
from services.apps.projections import AppsProjection
from services.apps.runtime import ContainerSpec, DockerRuntime, NetworkInfo, RuntimeFailure
from services.apps.state import AppState, State, app_origin, fold

__all__ = ["Engine", "Names", "OperationFailed"]

log = logging.getLogger("services.apps.engine")

# Steps of each operation with the percent reached when the step is done.
STEPS: dict[str, tuple[tuple[str, int], ...]] = {
    "install": (
        ("seed", 10),
        ("dns", 12),
        ("image", 45),
        ("network", 50),
        ("storage", 55),
        ("addons", 70),
        ("container", 80),
        ("ready", 100),
    ),
    "configure": (("dns", 20), ("addons", 30), ("container", 60), ("ready", 100)),
    "update": (("snapshot", 25), ("image", 60), ("container", 75), ("ready", 100)),
    "restore": (("image", 30), ("stop", 40), ("data", 70), ("container", 80), ("ready", 100)),
    "uninstall": (
        ("container", 30),
        ("dns", 40),
        ("addons", 60),
        ("storage", 80),
        ("network", 90),
        ("snapshots", 100),
    ),
}
_BUILD_STEP = re.compile(r"^Step (\d+)/(\d+) : ")
_FROM = re.compile(r"^\s*FROM\s+(\S+)", re.IGNORECASE | re.MULTILINE)
DEBIAN_BASE = "homeport/debian-base:bookworm"
BUSYBOX_BASE = "homeport/busybox:local"


class OperationFailed(Exception):
    """A step failed in a way worth telling the user: `code` for programs, message for people."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Names:
    """Docker object names of one app (derived from its id, so every step is idempotent)."""

    prefix: str
    app_id: str

    @property
    def container(self) -> str:
        return f"{self.prefix}-app-{self.app_id}"

    @property
    def network(self) -> str:
        return f"{self.prefix}-net-{self.app_id}"

    @property
    def volume(self) -> str:
        return f"{self.prefix}-data-{self.app_id}"


def image_tag(manifest: Manifest) -> str:
    """The local tag of an app version's image."""
    return f"homeport-app/{manifest.id}:{manifest.version}".replace("+", "_")


class Engine:
    """Drives operations; the commands (commands.py) only record requests and call `kick`."""

    def __init__(
        self,
        cfg: AppsConfig,
        store: PostgresEventStore,
        keyring: Keyring,
        runtime: DockerRuntime,
        catalog: Catalog,
        addon_pg: AddonPostgres | None,
        bus: BusClient | None,
        spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]],
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.keyring = keyring
        self.runtime = runtime
        self.catalog = catalog
        self.addon_pg = addon_pg
        self.bus = bus
        self._spawn = spawn
        self._locks: dict[str, asyncio.Lock] = {}
        self._again: set[str] = set()
        self._projection = AppsProjection()
        self._services: NetworkInfo | None = None
        self.restarted_at: dict[str, float] = {}  # app -> when a restart was asked (monotonic)
        self._step_end: dict[str, int] = {}  # task -> the percent its running step ends at
        self.snapshots_dir = cfg.apps_dir / "snapshots"
        self.base_cache = cfg.base_cache

    # -- reading and writing the stream ----------

    def names(self, app_id: str) -> Names:
        return Names(self.cfg.name_prefix, app_id)

    async def load(self, app_id: str) -> AppState:
        return fold(app_id, await self.store.read_stream(ev.app_stream(app_id)))

    async def append(self, app_id: str, new: list[Any], expected: int | None) -> None:
        """Append to the app's stream and update the read model in one transaction."""
        async with self.store.pool.acquire() as conn, conn.transaction():
            await append_inline(
                self.store, conn, self._projection, ev.app_stream(app_id), new, expected
            )

    def seal(self, app_id: str, value: str) -> str:
        return self.keyring.seal_for(ev.app_stream(app_id), value)

    def unseal(self, value: str) -> str:
        return self.keyring.unseal_str(value)

    # -- scheduling ----------

    def kick(self, app_id: str) -> None:
        """Run the app's pending operation in the background (once at a time per app)."""
        lock = self._locks.setdefault(app_id, asyncio.Lock())
        if lock.locked():
            self._again.add(app_id)  # the running drive looks again when it ends
            return
        self._spawn(self._drive_locked(app_id, lock), f"apps.drive.{app_id[:8]}")

    async def _drive_locked(self, app_id: str, lock: asyncio.Lock) -> None:
        async with lock:
            while True:
                self._again.discard(app_id)
                try:
                    await self.drive(app_id)
                except ConcurrencyError:
                    log.warning("app %s changed while its operation ran; looking again", app_id)
                    self._again.add(app_id)
                except Exception:
                    log.exception("driving app %s failed unexpectedly", app_id)
                if app_id not in self._again:
                    return

    def snapshot_in_background(self, app_id: str, task: Task) -> None:
        """Take a snapshot now (reason "manual"), after any operation running on the app."""
        lock = self._locks.setdefault(app_id, asyncio.Lock())
        self._spawn(self._snapshot_locked(app_id, task, lock), f"apps.snapshot.{app_id[:8]}")

    async def _snapshot_locked(self, app_id: str, task: Task, lock: asyncio.Lock) -> None:
        async with lock:
            s = await self.load(app_id)
            if s.state is not State.installed:
                await task.fail(f"the app is {s.state.value}; no snapshot taken", "not_installed")
                return
            await task.progress(10, "copying the app's data and dumping its database")
            snapshot_id = str(uuid7())
            try:
                size = await self._take_snapshot(s, "manual", snapshot_id)
            except (OperationFailed, RuntimeFailure, AddonError, CatalogError, OSError) as e:
                await task.fail(f"the snapshot failed: {e}"[:500], "snapshot_failed")
                return
            taken = ev.AppSnapshotTaken(
                app_id, snapshot_id, s.manifest_id, s.app_version, "manual", size
            )
            await self.append(app_id, [taken], None)
            await task.succeed("snapshot taken", {"snapshot_id": snapshot_id})

    async def resume_all(self) -> int:
        """At start: continue every operation a previous run left half-done."""
        rows = await self.store.pool.fetch(
            "SELECT app_id::text FROM apps.apps WHERE state LIKE 'pending_%'"
        )
        for r in rows:
            self.kick(r["app_id"])
        return len(rows)

    # -- the driver ----------

    async def drive(self, app_id: str) -> None:
        s = await self.load(app_id)
        op = s.operation
        if op is None or op.awaiting_approval:
            return
        request = await self._request_meta(app_id, op.task_id)
        with context.use(request):
            task = await Task.load(self.store, op.task_id)
            if task.ended:
                return
            try:
                await self._run_steps(s, task)
            except OperationFailed as e:
                await self._fail(app_id, task, e)
            except (RuntimeFailure, CatalogError, BusError, AddonError, OSError) as e:
                await self._fail(app_id, task, OperationFailed(str(e), "runtime"))

    async def _request_meta(self, app_id: str, task_id: str) -> Context:
        """The actor and correlation of the request that started this operation."""
        for e in reversed(await self.store.read_stream(ev.app_stream(app_id))):
            if e.data.get("task_id") == task_id:
                return Context(
                    str(e.meta.get("actor") or "system"),
                    str(e.meta.get("correlation_id") or task_id),
                    str(e.id),
                    e.meta.get("ip"),
                )
        return Context("system", task_id, None, None)

    async def _run_steps(self, s: AppState, task: Task) -> None:
        assert s.operation is not None
        kind = s.operation.kind
        before = 0
        for step, percent in STEPS[kind]:
            s = await self.load(s.app_id)
            if s.operation is None or s.operation.kind != kind:
                return  # someone else ended it
            start, before = before, percent
            if step in s.operation.steps:
                continue
            await task.progress(max(task.percent, start), _STEP_MESSAGES[kind][step])
            self._step_end[task.id] = percent
            detail = await getattr(self, f"_{kind}_{step}")(s, task) or {}
            s = await self.load(s.app_id)
            await self.append(
                s.app_id, [ev.AppStepCompleted(s.app_id, kind, step, detail)], s.version
            )
            await self._maybe_pause(kind, step)
            await task.progress(percent, _STEP_MESSAGES[kind][step])
        await self._finish(await self.load(s.app_id), task)

    async def _maybe_pause(self, kind: str, step: str) -> None:
        if self.cfg.apps_pause_after == f"{kind}:{step}":
            log.warning("HP_APPS_PAUSE_AFTER=%s:%s: pausing until killed (crash tests)", kind, step)
            await asyncio.Event().wait()

    async def _finish(self, s: AppState, task: Task) -> None:
        assert s.operation is not None
        kind = s.operation.kind
        done: Any
        if kind == "install":
            done = ev.AppInstalled(s.app_id, task.id, s.app_version)
            title = self._entry(s.manifest_id, s.app_version).manifest.title
            origin = app_origin(s.location, s.domain, self.cfg.edge_https_port)
            message = f"{title} is installed at {origin}"
        elif kind == "configure":
            done = ev.AppConfigured(s.app_id, task.id)
            message = "the new configuration is in effect"
        elif kind == "update":
            version = str(s.operation.detail["to_version"])
            done = ev.AppUpdated(s.app_id, task.id, version)
            message = f"updated to {version}"
        elif kind == "restore":
            snap = s.snapshot(str(s.operation.detail["snapshot_id"]))
            version = str(snap["version"]) if snap else s.app_version
            done = ev.AppRestored(
                s.app_id, task.id, str(s.operation.detail["snapshot_id"]), version
            )
            message = f"restored ({version})"
        else:
            done = ev.AppUninstalled(s.app_id, task.id)
            message = "uninstalled: container, data, addon databases and credentials are gone"
        await self.append(s.app_id, [done], s.version)
        if kind == "uninstall":
            await asyncio.to_thread(self.keyring.destroy_subject, ev.app_stream(s.app_id))
        self._step_end.pop(task.id, None)
        await task.succeed(message, {"app_id": s.app_id})

    async def _fail(self, app_id: str, task: Task, e: OperationFailed) -> None:
        s = await self.load(app_id)
        if s.operation is None:
            return
        kind = s.operation.kind
        step = next((n for n, _ in STEPS[kind] if n not in s.operation.steps), "end")
        log.warning("app %s: %s failed at %s: %s", app_id, kind, step, e.message)
        rolled_back = False
        message = e.message
        if kind in ("update", "configure"):
            try:
                rolled_back = await self._roll_back(s, task)
            except (OperationFailed, RuntimeFailure, AddonError, OSError) as err:
                message = f"{message}; rolling back failed too: {err}"
            if rolled_back:
                message = f"{message} (the app was rolled back to how it was before)"
        s = await self.load(app_id)
        failed = ev.AppOperationFailed(app_id, task.id, kind, step, message, e.code, rolled_back)
        await self.append(app_id, [failed], s.version)
        await task.fail(message[:500], e.code)

    async def _roll_back(self, s: AppState, task: Task) -> bool:
        """Bring the app back to its last good version (and data, for an update or restore)."""
        assert s.operation is not None
        await task.progress(task.percent, "rolling back")
        entry = self._entry(s.manifest_id, s.app_version)
        await self._build(entry, task)
        snapshot_id = s.operation.detail.get("snapshot_id")
        if s.operation.kind == "update" and snapshot_id and "container" in s.operation.steps:
            await self.runtime.stop(self.names(s.app_id).container)
            await self._put_back_data(s, str(snapshot_id))
        await self._create_container(s, entry.manifest)
        await self._wait_ready(s, entry.manifest)
        return True

    # -- shared pieces ----------

    def _entry(self, manifest_id: str, version: str | None) -> CatalogEntry:
        return self.catalog.entry(manifest_id, version, include_prereleases=True)

    async def _build(self, entry: CatalogEntry, task: Task) -> str:
        if entry.context is None:
            raise OperationFailed(
                f"{entry.manifest.id} {entry.manifest.version} names an image reference; this"
                " platform builds offline catalogs only",
                "image_unavailable",
            )
        await asyncio.to_thread(entry.verify)  # an altered entry is refused before it is built
        dockerfile = (entry.context / "Dockerfile").read_text()
        bases = set(_FROM.findall(dockerfile))

        title = f"{entry.manifest.title} {entry.manifest.version}"
        low, high = task.percent, max(task.percent, self._step_end.get(task.id, 0) - 1)

        async def say(line: str) -> None:
            log.debug("build %s: %s", entry.manifest.id, line)
            m = _BUILD_STEP.match(line)
            if m is not None:  # "Step 3/9 : RUN apt-get ...": progress within this step's share
                done, total = int(m.group(1)), max(1, int(m.group(2)))
                percent = low + (high - low) * (done - 1) // total
                await task.progress(max(task.percent, percent), f"building {title}: {line[:120]}")

        if DEBIAN_BASE in bases:
            await task.progress(task.percent, "preparing the Debian base image (first time only)")
            await ensure_base_image(self.cfg.docker_host, self.base_cache, say)
        if BUSYBOX_BASE in bases:
            await ensure_busybox_image(self.cfg.docker_host)
        await task.progress(task.percent, f"building {title}")
        return await self.runtime.build_image(image_tag(entry.manifest), entry.context, say)

    async def services(self) -> NetworkInfo:
        if self._services is None:
            self._services = await self.runtime.ensure_services_network(
                self.cfg.services_network, self.cfg.services_subnet
            )
        return self._services

    def _env(self, s: AppState) -> dict[str, str]:
        env = {
            "HOMEPORT_APP_ID": s.app_id,
            "HOMEPORT_APP_DOMAIN": f"{s.location}.{s.domain}",
            "HOMEPORT_APP_ORIGIN": app_origin(s.location, s.domain, self.cfg.edge_https_port),
        }
        for sealed in s.addons.values():
            env.update(json.loads(self.unseal(sealed)))
        for name, value in s.env.items():
            env[name] = self.unseal(value)
        return env

    def _spec(self, s: AppState, manifest: Manifest, env: Mapping[str, str]) -> ContainerSpec:
        names = self.names(s.app_id)
        return ContainerSpec(
            name=names.container,
            image=image_tag(manifest),
            network=names.network,
            env=dict(env),
            memory_bytes=s.memory_bytes,
            capabilities=tuple(manifest.capabilities),
            run_as_root=manifest.run_as_root,
            http_port=manifest.http_port,
            http_host_port=s.http_host_port,
            tcp_ports={p.container_port: p.container_port for p in manifest.tcp_ports},
            udp_ports={p.container_port: p.container_port for p in manifest.udp_ports},
            data_volume=names.volume if "localstorage" in manifest.addons else None,
            labels={
                "homeport.app": s.app_id,
                "homeport.prefix": self.cfg.name_prefix,
                "homeport.manifest": manifest.id,
                "homeport.version": str(manifest.version),
            },
        )

    async def _create_container(self, s: AppState, manifest: Manifest) -> dict[str, Any]:
        """Create (or keep) and start the container; its HTTP host port stays the same for
        the app's whole life, so the edge's upstream does not move."""
        name = self.names(s.app_id).container
        if s.http_host_port is None:  # chosen once: Docker would pick a new one at each start
            s = replace(s, http_host_port=_free_port())
        await self.runtime.create_container(self._spec(s, manifest, self._env(s)))
        if s.running:
            await self.runtime.start(name)
        return {"http_host_port": s.http_host_port}

    async def _wait_ready(self, s: AppState, manifest: Manifest) -> None:
        """Until the health check answers 2xx/3xx; fail early if the container stops."""
        name = self.names(s.app_id).container
        if not s.running:
            return
        deadline = time.monotonic() + self.cfg.ready_timeout
        last = "no answer yet"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            while time.monotonic() < deadline:
                st = await self.runtime.state(name)
                if st is None or (not st.running and st.status in ("exited", "dead")):
                    tail = "\n".join((await self.runtime.logs(name, 20)) if st else [])
                    raise OperationFailed(
                        f"the app's container stopped (exit code {st.exit_code if st else '?'})"
                        f" before it answered its health check; last log lines:\n{tail}"[:2000],
                        "app_crashed",
                    )
                if st.http_host_port:
                    url = f"http://127.0.0.1:{st.http_host_port}{manifest.health_check_path}"
                    try:
                        async with http.get(url, allow_redirects=False) as r:
                            if 200 <= r.status < 400:
                                return
                            last = f"HTTP {r.status}"
                    except (aiohttp.ClientError, TimeoutError) as e:
                        last = type(e).__name__
                # most apps answer within a second: look often at first, then less
                waited = time.monotonic() - (deadline - self.cfg.ready_timeout)
                await asyncio.sleep(0.02 if waited < 3 else 0.25)
        raise OperationFailed(
            f"the app did not answer {manifest.health_check_path} healthily within"
            f" {self.cfg.ready_timeout:.0f} s (last: {last})",
            "not_ready",
        )

    def _snapshot_dir(self, app_id: str, snapshot_id: str) -> Path:
        return self.snapshots_dir / app_id / snapshot_id

    async def _take_snapshot(self, s: AppState, reason: str, snapshot_id: str) -> int:
        """Volume and addon database dumps into the snapshot folder; returns its size."""
        names = self.names(s.app_id)
        manifest = self._entry(s.manifest_id, s.app_version).manifest
        folder = self._snapshot_dir(s.app_id, snapshot_id)
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True, mode=0o700)
        if "localstorage" in manifest.addons:
            await self.runtime.export_volume(names.volume, partial / "data.tar")
        if "postgresql" in manifest.addons:
            await self._pg().dump(s.app_id, partial / "postgresql.dump")
        meta = {"manifest_id": s.manifest_id, "version": s.app_version, "reason": reason}
        (partial / "snapshot.json").write_text(json.dumps(meta))
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        return sum(p.stat().st_size for p in folder.iterdir())

    async def _put_back_data(
        self, s: AppState, snapshot_id: str, source: str | None = None
    ) -> None:
        """The app's volume and database replaced by a snapshot's (of `source`, for a clone)."""
        folder = self._snapshot_dir(source or s.app_id, snapshot_id)
        if not folder.is_dir():
            raise OperationFailed(f"snapshot {snapshot_id} has no files at {folder}", "no_snapshot")
        if (folder / "data.tar").exists():
            await self.runtime.import_volume(self.names(s.app_id).volume, folder / "data.tar")
        if (folder / "postgresql.dump").exists():
            await self._pg().restore(s.app_id, folder / "postgresql.dump")

    def _pg(self) -> AddonPostgres:
        if self.addon_pg is None:
            raise OperationFailed(
                "the postgresql addon is not set up: set HP_ADDON_PG_DSN for the apps service",
                "addon_unavailable",
            )
        return self.addon_pg

    # -- install ----------

    async def _install_seed(self, s: AppState, task: Task) -> dict[str, Any]:
        if s.clone_of is None:
            return {}
        source = await self.load(s.clone_of)
        if not source.exists:
            raise OperationFailed(f"the app to clone ({s.clone_of}) is gone", "no_source")
        snapshot_id = s.seed_snapshot or str(uuid7())
        size = await self._take_snapshot(source, "clone", snapshot_id)
        taken = ev.AppSnapshotTaken(
            source.app_id, snapshot_id, source.manifest_id, source.app_version, "clone", size
        )
        await self.append(source.app_id, [taken], None)
        return {"snapshot_id": snapshot_id}

    # DNS: an app on a domain the dns service manages gets an A (and AAAA) record pointing at
    # the domain's server address, owned by the app. A record Homeport did not create at that
    # name fails the install, naming the record (the dns service refuses to overwrite it).

    async def _dns_domain(self, domain: str) -> dict[str, Any] | None:
        """The dns service's view of `domain`, or None when it does not manage it."""
        if self.bus is None or domain == self.cfg.default_domain:
            return None
        try:
            view: dict[str, Any] = await self.bus.query("dns", "domain", {"domain": domain})
        except BusError as e:
            if e.code == "not_found":
                return None
            raise OperationFailed(
                f"the dns service could not be asked about {domain}: {e.message}",
                "dns_unavailable",
            ) from e
        return view

    async def _point(self, s: AppState, location: str) -> dict[str, Any]:
        view = await self._dns_domain(s.domain)
        if view is None:
            return {}
        name = f"{location}.{s.domain}"
        for rtype, address in (("A", view.get("server_ipv4")), ("AAAA", view.get("server_ipv6"))):
            if not address:
                continue
            payload = {"name": name, "type": rtype, "values": [address], "owner": f"app-{s.app_id}"}
            try:
                await self.bus.command("dns", "set_record", payload, timeout=60)  # type: ignore[union-attr]
            except BusError as e:
                code = "dns_conflict" if e.code == "conflict" else "dns_failed"
                raise OperationFailed(f"{name}: {e.message}", code) from e
            # until the zone's authoritative servers all answer it: a CA checks it next
            wait = {"name": name, "type": rtype, "values": [address], "deadline_s": 300}
            try:
                await self.bus.command("dns", "wait_record", wait, timeout=320)  # type: ignore[union-attr]
            except BusError as e:
                raise OperationFailed(f"{name}: {e.message}", "dns_propagation") from e
        return {"dns_name": name}

    async def _unpoint(self, s: AppState, location: str) -> None:
        view = await self._dns_domain(s.domain)
        if view is None or self.bus is None:
            return
        name = f"{location}.{s.domain}"
        for rtype in ("A", "AAAA"):
            payload = {"name": name, "type": rtype, "owner": f"app-{s.app_id}"}
            try:
                await self.bus.command("dns", "remove_record", payload, timeout=60)
            except BusError as e:
                if e.code != "not_found":
                    raise OperationFailed(f"{name}: {e.message}", "dns_failed") from e

    async def _install_dns(self, s: AppState, task: Task) -> dict[str, Any]:
        return await self._point(s, s.location)

    async def _configure_dns(self, s: AppState, task: Task) -> dict[str, Any]:
        new = self._configured(s).location
        if new == s.location:
            return {}
        detail = await self._point(s, new)
        await self._unpoint(s, s.location)
        return detail

    async def _uninstall_dns(self, s: AppState, task: Task) -> dict[str, Any]:
        await self._unpoint(s, s.location)
        return {}

    async def _install_image(self, s: AppState, task: Task) -> dict[str, Any]:
        entry = self._entry(s.manifest_id, s.app_version)
        return {"image": await self._build(entry, task)}

    async def _install_network(self, s: AppState, task: Task) -> dict[str, Any]:
        await self.services()
        net = await self.runtime.ensure_network(
            self.names(s.app_id).network, {"homeport.app": s.app_id}
        )
        return {"subnet": net.subnet}

    async def _install_storage(self, s: AppState, task: Task) -> dict[str, Any]:
        manifest = self._entry(s.manifest_id, s.app_version).manifest
        if "localstorage" not in manifest.addons:
            return {}
        owner = None if manifest.run_as_root else (1000, 1000)
        await self.runtime.ensure_volume(
            self.names(s.app_id).volume, {"homeport.app": s.app_id}, owner
        )
        return {}

    async def _install_addons(self, s: AppState, task: Task) -> dict[str, Any]:
        manifest = self._entry(s.manifest_id, s.app_version).manifest
        net = await self.runtime.ensure_network(
            self.names(s.app_id).network, {"homeport.app": s.app_id}
        )
        for addon in ("postgresql", "ldap", "sendmail"):
            if addon not in manifest.addons:
                continue
            s = await self.load(s.app_id)
            existing = s.addons.get(addon)
            creds = await self._provision(s, addon, net, existing)
            if existing is None:
                sealed = self.seal(s.app_id, json.dumps(creds))
                await self.append(
                    s.app_id, [ev.AddonProvisioned(s.app_id, addon, sealed)], s.version
                )
        s = await self.load(s.app_id)
        seed = self._seed(s)
        if seed is not None:
            await task.progress(task.percent, "copying the data of the cloned app")
            await self._put_back_data(s, seed[1], source=seed[0])
        return {}

    def _seed(self, s: AppState) -> tuple[str, str] | None:
        """(app, snapshot) whose data a clone starts with, once the seed step recorded it."""
        if s.clone_of is None or s.operation is None:
            return None
        snapshot_id = s.operation.detail.get("snapshot_id")
        return (s.clone_of, str(snapshot_id)) if snapshot_id else None

    async def _provision(
        self, s: AppState, addon: str, net: NetworkInfo, existing: str | None
    ) -> dict[str, str]:
        old = json.loads(self.unseal(existing)) if existing else None
        services = await self.services()
        if addon == "postgresql":
            password = old["HOMEPORT_POSTGRESQL_PASSWORD"] if old else None
            pg = await self._pg().provision(s.app_id, net.subnet, password)
            return pg.env()
        if addon == "ldap":
            if old is not None:
                return dict(old)
            return await self._ldap_register(s, services)
        # sendmail: credentials recorded now; the mail service makes them deliver
        if old is not None:
            return dict(old)
        return {
            "HOMEPORT_MAIL_SMTP_SERVER": services.gateway,
            "HOMEPORT_MAIL_SMTP_PORT": "2525",
            "HOMEPORT_MAIL_SMTP_USERNAME": f"app-{s.app_id}",
            "HOMEPORT_MAIL_SMTP_PASSWORD": secrets.token_urlsafe(24),
            "HOMEPORT_MAIL_FROM": f"{s.location}.app@{s.domain}",
        }

    async def _ldap_register(self, s: AppState, services: NetworkInfo) -> dict[str, str]:
        if self.bus is None:
            raise OperationFailed("the ldap addon needs the identity service", "addon_unavailable")
        endpoint = await self.bus.query("identity", "ldap_endpoint", {})
        if services.gateway not in endpoint.get("hosts", []):
            raise OperationFailed(
                f"the identity LDAP endpoint does not listen on {services.gateway} (the services"
                " network's address): set HP_LDAP_HOST for the identity service to include it",
                "addon_unavailable",
            )
        reg = await self.bus.command(
            "identity", "ldap_register_app", {"app_id": s.app_id, "access": _ldap_access(s.access)}
        )
        port = str(endpoint["port"])
        return {
            "HOMEPORT_LDAP_HOST": services.gateway,
            "HOMEPORT_LDAP_PORT": port,
            "HOMEPORT_LDAP_URL": f"ldap://{services.gateway}:{port}",
            "HOMEPORT_LDAP_BIND_DN": reg["bind_dn"],
            "HOMEPORT_LDAP_BIND_PASSWORD": reg["password"],
            "HOMEPORT_LDAP_USERS_BASE_DN": reg["users_dn"],
            "HOMEPORT_LDAP_GROUPS_BASE_DN": reg["groups_dn"],
        }

    async def _install_container(self, s: AppState, task: Task) -> dict[str, Any]:
        manifest = self._entry(s.manifest_id, s.app_version).manifest
        return await self._create_container(s, manifest)

    async def _install_ready(self, s: AppState, task: Task) -> dict[str, Any]:
        manifest = self._entry(s.manifest_id, s.app_version).manifest
        await self._wait_ready(s, manifest)
        return {}

    # -- configure ----------

    def _configured(self, s: AppState) -> AppState:
        """The state as it will be once the pending configuration is in effect."""
        assert s.operation is not None
        d = s.operation.detail
        return replace(
            s,
            location=d.get("location") or s.location,
            access=d["access"] if d.get("access") is not None else s.access,
            memory_bytes=d.get("memory_bytes") or s.memory_bytes,
            env=d["env"] if d.get("env") is not None else s.env,
        )

    async def _configure_addons(self, s: AppState, task: Task) -> dict[str, Any]:
        assert s.operation is not None
        if s.operation.detail.get("access") is None or "ldap" not in s.addons or self.bus is None:
            return {}
        await self.bus.command(
            "identity",
            "ldap_set_app_access",
            {"app_id": s.app_id, "access": _ldap_access(s.operation.detail["access"])},
        )
        return {}

    async def _configure_container(self, s: AppState, task: Task) -> dict[str, Any]:
        manifest = self._entry(s.manifest_id, s.app_version).manifest
        return await self._create_container(self._configured(s), manifest)

    async def _configure_ready(self, s: AppState, task: Task) -> dict[str, Any]:
        manifest = self._entry(s.manifest_id, s.app_version).manifest
        await self._wait_ready(self._configured(s), manifest)
        return {}

    # -- update ----------

    async def _update_snapshot(self, s: AppState, task: Task) -> dict[str, Any]:
        snapshot_id = str(uuid7())
        size = await self._take_snapshot(s, "update", snapshot_id)
        taken = ev.AppSnapshotTaken(
            s.app_id, snapshot_id, s.manifest_id, s.app_version, "update", size
        )
        await self.append(s.app_id, [taken], s.version)
        return {"snapshot_id": snapshot_id}

    def _target(self, s: AppState) -> CatalogEntry:
        assert s.operation is not None
        return self._entry(s.manifest_id, str(s.operation.detail["to_version"]))

    async def _update_image(self, s: AppState, task: Task) -> dict[str, Any]:
        return {"image": await self._build(self._target(s), task)}

    async def _update_container(self, s: AppState, task: Task) -> dict[str, Any]:
        return await self._create_container(s, self._target(s).manifest)

    async def _update_ready(self, s: AppState, task: Task) -> dict[str, Any]:
        await self._wait_ready(s, self._target(s).manifest)
        return {}

    # -- restore ----------

    def _restore_entry(self, s: AppState) -> CatalogEntry:
        assert s.operation is not None
        snap = s.snapshot(str(s.operation.detail["snapshot_id"]))
        if snap is None:
            raise OperationFailed("that snapshot is not one of this app's", "no_snapshot")
        return self._entry(s.manifest_id, str(snap["version"]))

    async def _restore_image(self, s: AppState, task: Task) -> dict[str, Any]:
        return {"image": await self._build(self._restore_entry(s), task)}

    async def _restore_stop(self, s: AppState, task: Task) -> dict[str, Any]:
        await self.runtime.stop(self.names(s.app_id).container)
        return {}

    async def _restore_data(self, s: AppState, task: Task) -> dict[str, Any]:
        assert s.operation is not None
        await self._put_back_data(s, str(s.operation.detail["snapshot_id"]))
        return {}

    async def _restore_container(self, s: AppState, task: Task) -> dict[str, Any]:
        return await self._create_container(s, self._restore_entry(s).manifest)

    async def _restore_ready(self, s: AppState, task: Task) -> dict[str, Any]:
        await self._wait_ready(s, self._restore_entry(s).manifest)
        return {}

    # -- uninstall ----------

    async def _uninstall_container(self, s: AppState, task: Task) -> dict[str, Any]:
        await self.runtime.remove_container(self.names(s.app_id).container)
        return {}

    async def _uninstall_addons(self, s: AppState, task: Task) -> dict[str, Any]:
        if self.addon_pg is not None and await self.addon_pg.exists(s.app_id):
            await self.addon_pg.deprovision(s.app_id)
        if "ldap" in s.addons and self.bus is not None:
            await self.bus.command("identity", "ldap_remove_app", {"app_id": s.app_id})
        return {}

    async def _uninstall_storage(self, s: AppState, task: Task) -> dict[str, Any]:
        await self.runtime.remove_volume(self.names(s.app_id).volume)
        return {}

    async def _uninstall_network(self, s: AppState, task: Task) -> dict[str, Any]:
        await self.runtime.remove_network(self.names(s.app_id).network)
        return {}

    async def _uninstall_snapshots(self, s: AppState, task: Task) -> dict[str, Any]:
        await asyncio.to_thread(shutil.rmtree, self.snapshots_dir / s.app_id, True)
        return {}


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ldap_access(access: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "all_users": bool(access.get("all_users")),
        "user_ids": list(access.get("user_ids", [])),
        "groups": list(access.get("groups", [])),
    }


_STEP_MESSAGES: dict[str, dict[str, str]] = {
    "install": {
        "seed": "copying the app to clone",
        "dns": "pointing the app's name at this server",
        "image": "building the app's image",
        "network": "creating the app's network",
        "storage": "creating the app's data volume",
        "addons": "setting up the app's database, directory and mail accounts",
        "container": "creating the app's container",
        "ready": "starting the app and waiting for it to answer",
    },
    "configure": {
        "dns": "moving the app's DNS record",
        "addons": "updating who may sign in",
        "container": "recreating the container with the new settings",
        "ready": "waiting for the app to answer",
    },
    "update": {
        "snapshot": "taking a snapshot of the app's data",
        "image": "building the new version",
        "container": "replacing the container",
        "ready": "waiting for the new version to answer",
    },
    "restore": {
        "image": "building the snapshot's version",
        "stop": "stopping the app",
        "data": "putting back the snapshot's data",
        "container": "recreating the container",
        "ready": "waiting for the app to answer",
    },
    "uninstall": {
        "container": "removing the container",
        "dns": "removing the app's DNS record",
        "addons": "dropping the app's database and accounts",
        "storage": "deleting the app's data",
        "network": "removing the app's network",
        "snapshots": "deleting the app's snapshots",
    },
}
