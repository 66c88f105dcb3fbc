"""Command handlers of the apps service: decide against the app's stream, record, hand over.

The payload's shape is checked by the bus against libs/contracts/apps.py before a handler
runs; the rules here need the catalog or the app's state (a reserved or taken location, an
env name the platform sets or the container needs, a domain that is not the platform's, who may
open a single-user app, a host port the manifest does not declare, the platform's or another
app's). A request is checked before it is refused as busy: a wrong one gets
400 naming its field, also while the app is busy. A lifecycle command records its
request (and starts the task that reports its progress) and returns at once with
`{app_id, task_id}`; the driver (services/apps/operations/) does the work in the background.
Start, stop and restart record the wanted run state and apply it before answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from libs.contracts.common import MAX_ENV, RESERVED_LOCATIONS, env_name_problem
from libs.contracts.firewall import PLATFORM_PORTS
from libs.events import context
from libs.events.envelope import uuid7
from libs.events.handlers import command
from libs.events.sealing import Keyring
from libs.events.tasks import Task
from services.apps import events as ev
from services.apps.catalog import Catalog, CatalogError
from services.apps.config import AppsConfig
from services.apps.container import ContainerRuntime
from services.apps.errors import (
    AppConflict,
    AppNotFound,
    ChangedMeanwhile,
    InvalidRequest,
    LocationTaken,
    OperationFailed,
    PeerUnavailable,
    PortTaken,
)
from services.apps.health import Restarts
from services.apps.manifest import Manifest
from services.apps.names import Names
from services.apps.operations import Driver
from services.apps.semver import Version
from services.apps.snapshots import FolderProblem
from services.apps.spare import SpareNetwork
from services.apps.state import AppState, State
from services.apps.streams import AppStreams

__all__ = ["Commands"]

EVERYONE: dict[str, Any] = {"all_users": True}


def _location(value: str, field: str = "location") -> str:
    """A location the contract's grammar let through, unless the platform keeps it."""
    if value in RESERVED_LOCATIONS:
        raise InvalidRequest(f"{field} {value!r} is reserved for the platform", field=field)
    return value


def _env_changes(value: Mapping[str, str | None], field: str = "env") -> dict[str, str | None]:
    """NAME: text sets a variable, NAME: null removes one; names like SHELL variables, none the
    platform sets or the container needs (libs/contracts/common.py; the values' shape is the
    contract's)."""
    if len(value) > MAX_ENV:
        raise InvalidRequest(f"{field} may hold at most {MAX_ENV} variables", field=field)
    for name in value:
        problem = env_name_problem(name)
        if problem is not None:
            where = f"{field}.{name[:64]}"
            raise InvalidRequest(f"{where}: {problem}", field=where)
    return dict(value)


def _access(
    value: Mapping[str, Any] | None, manifest: Manifest, field: str = "access"
) -> dict[str, Any]:
    """{all_users, groups, user_ids}; a single-user app has exactly one user and nothing else."""
    if value is None:
        value = EVERYONE
    all_users = bool(value.get("all_users", False))
    lists: dict[str, list[str]] = {}
    for name in ("groups", "user_ids"):
        checked = []
        for item in value.get(name, []):
            try:
                checked.append(str(uuid.UUID(item)))
            except ValueError:
                raise InvalidRequest(
                    f"{field}.{name} must hold ids (UUIDs)", field=f"{field}.{name}"
                ) from None
        lists[name] = list(dict.fromkeys(checked))
    if manifest.single_user and (all_users or lists["groups"] or len(lists["user_ids"]) != 1):
        raise InvalidRequest(
            f"{manifest.title} is a single-user app: give exactly one user in user_ids",
            field=f"{field}.user_ids",
        )
    if not all_users and not lists["groups"] and not lists["user_ids"]:
        raise InvalidRequest(
            f"{field}: nobody could open the app; set all_users or name groups or users",
            field=field,
        )
    if manifest.sign_in == "none" and not all_users:
        # nothing would ask who is there: a list would only look like protection
        raise InvalidRequest(
            f"{field}: {manifest.title} is public by nature (it signs nobody in), so it cannot "
            "be limited to some users; set all_users",
            field=field,
        )
    return {"all_users": all_users, **lists}


# What the platform's own TCP ports are for (libs/contracts/firewall.py PLATFORM_PORTS).
_PLATFORM_USES = {
    22: "SSH",
    202: "SSH",
    80: "the edge's HTTP",
    443: "the edge's HTTPS",
    25: "mail (SMTP)",
    465: "mail (submissions)",
    587: "mail (submission)",
    993: "mail (IMAPS)",
    4190: "mail (ManageSieve)",
}
PROTOCOLS = ("tcp", "udp")
# protocol -> {manifest port name: host port}; None: unchanged (configure)
HostPorts = dict[str, dict[str, int] | None]


def _host_ports(
    payload: Mapping[str, Any],
    manifest: Manifest,
    current: Mapping[str, Mapping[str, int]] | None = None,
) -> HostPorts:
    """The host ports of `tcp_ports` / `udp_ports` (NAME: port; the contract checked each is
    1-65535). Install and clone (`current` None): every port the manifest declares, a name left
    out at its defaultHostPort. Configure: the app's `current` ports with the ones named
    changed; None when the field is left out or changes nothing. Each port once per protocol,
    no TCP port of the platform's own; whose ports are taken is `_ports_free`'s to say."""
    out: HostPorts = {}
    for protocol in PROTOCOLS:
        field = f"{protocol}_ports"
        given: dict[str, int] = dict(payload.get(field) or {})
        declared = manifest.ports_of(protocol)
        for name in given:
            if name not in declared:
                where = f"{field}.{name[:64]}"
                known = ", ".join(declared) or "none"
                raise InvalidRequest(
                    f"{where}: {manifest.title} has no {protocol.upper()} port called"
                    f" {name[:64]!r} (its {field}: {known})",
                    field=where,
                )
        if current is not None:
            if payload.get(field) is None:
                out[protocol] = None
                continue
            kept = {n: p for n, p in current[protocol].items() if n in declared and n not in given}
            ports = {**kept, **given}
            out[protocol] = None if ports == dict(current[protocol]) else ports
        else:
            kept = {}
            for name, spec in declared.items():
                if name not in given and spec.default_host_port is None:
                    raise InvalidRequest(
                        f"{field}.{name}: choose the server's port for {spec.title or name}"
                        f" (container port {spec.container_port}/{protocol}); {manifest.title}"
                        " suggests none",
                        field=f"{field}.{name}",
                    )
                if name not in given and spec.default_host_port is not None:
                    kept[name] = spec.default_host_port
            ports = {**kept, **given}
            out[protocol] = ports
        _each_once(ports, kept, field)
        if protocol == "tcp":
            for name, port in sorted(ports.items()):
                if port in PLATFORM_PORTS:
                    use = _PLATFORM_USES.get(port, "its own services")
                    raise InvalidRequest(
                        f"{field}.{name}: port {port}/tcp is the platform's own, for {use};"
                        " choose another",
                        field=f"{field}.{name}",
                    )
    return out


def _bound(protocol: str, port: int) -> bool:
    """Whether something on this server already listens on `port` (any address, IPv4 or
    IPv6): Docker could not publish the app there, so the request is refused up front. Only
    "in use" counts; a port this process may not bind (below 1024) is Docker's to take."""
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):  # noqa: S104
        try:
            sock = socket.socket(family, kind)
        except OSError:
            continue  # no IPv6 on this host
        try:
            if kind == socket.SOCK_STREAM:  # connections in TIME_WAIT do not count
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return True
        finally:
            sock.close()
    return False


def _each_once(ports: Mapping[str, int], kept: Mapping[str, int], field: str) -> None:
    """One name per port: the one asked for second (after those kept) is named."""
    seen: dict[int, str] = {}
    for name in [*sorted(kept), *sorted(n for n in ports if n not in kept)]:
        port = ports[name]
        if port in seen:
            raise InvalidRequest(
                f"{field}.{name}: port {port} is also {field}.{seen[port]}'s; give each port once",
                field=f"{field}.{name}",
            )
        seen[port] = name


class Commands:
    """The command side: each `@command` method is one bus command of the apps service."""

    def __init__(
        self,
        cfg: AppsConfig,
        apps: AppStreams,
        keys: Keyring,
        catalog: Catalog,
        runtime: ContainerRuntime,
        driver: Driver,
        restarts: Restarts,
        spare: SpareNetwork | None = None,
    ) -> None:
        """`spare`: the id (its network made ahead) the next install or clone takes."""
        self.cfg = cfg
        self.apps = apps
        self.keys = keys
        self.catalog = catalog
        self.runtime = runtime
        self.driver = driver
        self.restarts = restarts
        self.spare = spare
        self._snapshot_lock = asyncio.Lock()

    # -- helpers ----------

    @contextlib.contextmanager
    def _new_app_id(self) -> Iterator[str]:
        """A new app's id: the spare's (its network made ahead), given back if the block fails,
        which it must do before anything of the app is recorded."""
        app_id = self.spare.take() if self.spare else str(uuid.uuid4())
        try:
            yield app_id
        except BaseException:
            if self.spare:
                self.spare.give_back(app_id)
            raise

    def _manifest(self, manifest_id: str, version: str | None, field: str) -> Manifest:
        try:
            entry = self.catalog.entry(manifest_id, version)
        except CatalogError as e:
            raise AppNotFound(str(e), field=field) from None
        return entry.manifest

    async def _existing(self, payload: Mapping[str, Any]) -> AppState:
        app_id = str(uuid.UUID(payload["app_id"]))
        s = await self.apps.load(app_id)
        if not s.exists:
            raise AppNotFound(f"no app {app_id}", field="app_id")
        return s

    def _idle(self, s: AppState, doing: str) -> None:
        if s.operation is not None:
            raise AppConflict(
                f"the app is busy ({s.operation.kind}, task {s.operation.task_id}); {doing}"
                " once it has finished"
            )

    def _seal(self, app_id: str, value: str) -> str:
        return self.keys.seal_for(ev.app_stream(app_id), value)

    async def _start_task(self, kind: str, title: str, app_id: str) -> Task:
        return await Task.start(
            self.apps.store,
            kind=f"app.{kind}",
            title=title,
            owner=context.current().actor,
            target=ev.app_stream(app_id),
        )

    async def _record(
        self,
        s: AppState,
        new: list[Any],
        task: Task | None = None,
        ports: HostPorts | None = None,
    ) -> None:
        try:
            await self.apps.append(s.app_id, new, s.version, state=s)
        except ChangedMeanwhile:
            if task is not None:
                await task.fail("the app changed at the same time; nothing was done", "conflict")
            raise
        except LocationTaken:
            if task is not None:
                await task.fail("that location is taken", "location_taken")
            raise
        except PortTaken:  # another app took one of them at the same time (apps.ports)
            if task is not None:
                await task.fail("a port asked for is taken", "port_taken")
            if ports is not None:
                await self._ports_free(s.app_id, ports)  # names the port and who has it
            raise

    async def _location_free(self, domain: str, location: str, app_id: str | None = None) -> None:
        """A clear refusal before a task is started; the primary key of apps.locations decides
        (a command racing this one fails when it records, services/apps/projections.py)."""
        taken = await self.apps.store.pool.fetchval(
            "SELECT app_id::text FROM apps.locations WHERE domain = $1 AND location = $2",
            domain,
            location,
        )
        if taken is not None and taken != app_id:
            raise LocationTaken(f"{location}.{domain} is taken by another app")

    async def _ports_free(self, app_id: str, ports: HostPorts) -> None:
        """A clear refusal naming the port and the app that has it (or is taking it: a pending
        install or configuration), or whose edge port it is; the primary key of apps.ports
        decides a race (services/apps/projections.py)."""
        asked = {p: ports[p] or {} for p in PROTOCOLS}
        if not any(asked.values()):
            return
        rows = await self.apps.store.pool.fetch(
            "SELECT p.protocol, p.host_port, a.location, a.domain FROM apps.ports p"
            " JOIN apps.apps a ON a.app_id = p.app_id WHERE p.app_id <> $1::uuid"
            " AND ((p.protocol = 'tcp' AND p.host_port = ANY($2::int[]))"
            " OR (p.protocol = 'udp' AND p.host_port = ANY($3::int[])))",
            app_id,
            list(asked["tcp"].values()),
            list(asked["udp"].values()),
        )
        holders = {
            (r["protocol"], r["host_port"]): f"the app at {r['location']}.{r['domain']}"
            for r in rows
        }
        edges = await self.apps.store.pool.fetch(
            "SELECT http_port, location, domain, app_id::text FROM apps.apps"
            " WHERE state <> 'uninstalled' AND http_port = ANY($1::int[])",
            list(asked["tcp"].values()),
        )
        for r in edges:  # the edge reaches that app on 127.0.0.1:<http_port>
            whose = "this app" if r["app_id"] == app_id else f"{r['location']}.{r['domain']}"
            holders.setdefault(("tcp", r["http_port"]), f"the edge's way to {whose}")
        own = {
            (r["protocol"], r["host_port"])
            for r in await self.apps.store.pool.fetch(
                "SELECT protocol, host_port FROM apps.ports WHERE app_id = $1::uuid", app_id
            )
        }
        for protocol in PROTOCOLS:
            for name, port in sorted(asked[protocol].items()):
                holder = holders.get((protocol, port))
                if holder is None and (protocol, port) not in own and _bound(protocol, port):
                    holder = "another program on this server"
                if holder is not None:
                    field = f"{protocol}_ports.{name}"
                    raise PortTaken(
                        f"{field}: port {port}/{protocol} is taken by {holder}; choose another",
                        field=field,
                    )

    async def _domain(self, domain: str) -> str:
        """`domain` if it is one of the platform's: the local (or default) domain, or one the
        dns service manages. Nothing else could be pointed at this server, or served."""
        if domain in (self.cfg.local_domain, self.cfg.default_domain):
            return domain
        try:
            view = await self.driver.tools.peers.dns_domain(domain)
        except OperationFailed as e:
            raise PeerUnavailable(f"{e.message}; try again once it answers") from None
        if view is None:
            raise InvalidRequest(
                f"domain {domain!r} is not one of this platform's domains: add it under Domains"
                f" first, or leave domain out to use {self.cfg.default_domain}",
                field="domain",
            )
        return domain

    def _platform_ok(self, manifest: Manifest) -> None:
        if manifest.min_platform_version is None:
            return
        if manifest.min_platform_version > Version.parse(self.cfg.platform_version):
            raise AppConflict(
                f"{manifest.title} {manifest.version} needs Homeport"
                f" {manifest.min_platform_version} or newer (this is"
                f" {self.cfg.platform_version})",
                field="version",
            )

    # -- install and clone ----------

    @command("install")
    async def install(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        version = payload.get("version")
        seed = None
        if payload.get("from_snapshot"):
            seed = str(uuid.UUID(payload["from_snapshot"]))
            meta = await self._foreign_folder(
                self.driver.tools.snapshots.incoming(seed), seed, "from_snapshot"
            )
            version = version or meta["version"]
            if (meta["manifest_id"], meta["version"]) != (payload["manifest_id"], version):
                raise InvalidRequest(
                    f"from_snapshot {seed} holds {meta['manifest_id']} {meta['version']}, not"
                    f" {payload['manifest_id']} {version}",
                    field="from_snapshot",
                )
        field = "version" if version else "manifest_id"
        manifest = self._manifest(payload["manifest_id"], version, field)
        location = _location(payload["location"])
        access = _access(payload.get("access"), manifest)
        memory = payload.get("memory_bytes") or manifest.memory_limit
        env = _env_changes(payload.get("env", {}))
        ports = _host_ports(payload, manifest)
        domain = await self._domain(payload.get("domain") or self.cfg.default_domain)
        self._platform_ok(manifest)
        await self._location_free(domain, location)
        with self._new_app_id() as app_id:
            await self._ports_free(app_id, ports)
            task = await self._start_task("install", f"Install {manifest.title}", app_id)
            sealed = {k: self._seal(app_id, v) for k, v in env.items() if v is not None}
        request = ev.AppInstallRequested(
            app_id=app_id,
            manifest_id=manifest.id,
            version=str(manifest.version),
            location=location,
            domain=domain,
            access=access,
            memory_bytes=memory,
            env=sealed,
            task_id=task.id,
            from_snapshot=seed,
            tcp_ports=ports["tcp"] or {},
            udp_ports=ports["udp"] or {},
        )
        await self._record(AppState(app_id), [request], task, ports)
        self.driver.kick(app_id)
        return {"app_id": app_id, "task_id": task.id}

    @command("clone")
    async def clone(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        source = await self._existing(payload)
        location = _location(payload["location"])
        manifest = self._manifest(source.manifest_id, source.app_version, "app_id")
        domain = source.domain
        if payload.get("domain"):
            domain = await self._domain(payload["domain"])
        ports = _host_ports(payload, manifest)
        if source.state is not State.installed:
            raise AppConflict(f"only an installed app can be cloned (it is {source.state.value})")
        await self._location_free(domain, location)
        with self._new_app_id() as app_id:
            await self._ports_free(app_id, ports)
            task = await self._start_task(
                "install", f"Clone {manifest.title} to {location}", app_id
            )
            env = {k: self._seal(app_id, self.keys.unseal_str(v)) for k, v in source.env.items()}
        request = ev.AppInstallRequested(
            app_id=app_id,
            manifest_id=source.manifest_id,
            version=source.app_version,
            location=location,
            domain=domain,
            access=source.access,
            memory_bytes=source.memory_bytes,
            env=env,
            task_id=task.id,
            clone_of=source.app_id,
            tcp_ports=ports["tcp"] or {},
            udp_ports=ports["udp"] or {},
        )
        await self._record(AppState(app_id), [request], task, ports)
        self.driver.kick(app_id)
        return {"app_id": app_id, "task_id": task.id}

    # -- configure ----------

    @command("configure")
    async def configure(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        s = await self._existing(payload)
        # the request is checked first: a wrong one is refused as such, even while busy
        manifest = self._manifest(s.manifest_id, s.app_version, "app_id")
        location = _location(payload["location"]) if "location" in payload else None
        access = _access(payload["access"], manifest) if "access" in payload else None
        memory = None
        if "memory_bytes" in payload:
            memory = payload["memory_bytes"] or manifest.memory_limit
        changes = _env_changes(payload["env"]) if "env" in payload else {}
        env = self._merged_env(s, changes) if changes else None
        ports = _host_ports(payload, manifest, {"tcp": s.tcp_ports, "udp": s.udp_ports})
        unchanged = ports["tcp"] is None and ports["udp"] is None
        if location is None and access is None and memory is None and env is None and unchanged:
            raise InvalidRequest(
                "nothing to change: give location, access, memory_bytes, env, tcp_ports or"
                " udp_ports"
            )
        self._idle(s, "change its settings")
        if s.state is not State.installed:
            raise AppConflict(f"the app is {s.state.value}: repair or uninstall it first")
        if location is not None:
            await self._location_free(s.domain, location, s.app_id)
        await self._ports_free(s.app_id, ports)
        task = await self._start_task("configure", f"Configure {manifest.title}", s.app_id)
        request = ev.AppConfigureRequested(
            app_id=s.app_id,
            task_id=task.id,
            location=location,
            access=access,
            memory_bytes=memory,
            env=env,
            tcp_ports=ports["tcp"],
            udp_ports=ports["udp"],
        )
        await self._record(s, [request], task, ports)
        self.driver.kick(s.app_id)
        return {"app_id": s.app_id, "task_id": task.id}

    def _merged_env(self, s: AppState, changes: Mapping[str, str | None]) -> dict[str, str]:
        """The app's sealed variables with `changes` applied; names not named are kept."""
        env = dict(s.env)
        for name, value in changes.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = self._seal(s.app_id, value)
        if len(env) > MAX_ENV:
            raise InvalidRequest(f"env: an app may have at most {MAX_ENV} variables", field="env")
        return env

    # -- run state ----------

    async def _run_state(
        self, payload: Mapping[str, Any], running: bool, restart: bool
    ) -> dict[str, Any]:
        s = await self._existing(payload)
        self._idle(s, "start, stop or restart it")
        if s.state is not State.installed:
            raise AppConflict(f"the app is {s.state.value}: repair or uninstall it first")
        changed = ev.AppRunStateChanged(app_id=s.app_id, running=running, restart=restart)
        await self._record(s, [changed])
        name = Names(self.cfg.name_prefix, s.app_id).container
        if restart:
            self.restarts.asked(s.app_id)
            await self.runtime.restart(name)
        elif running:
            await self.runtime.start(name)
        else:
            await self.runtime.stop(name)
        state = await self.runtime.state(name)
        return {"app_id": s.app_id, "running": bool(state and state.running)}

    @command("start")
    async def start(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        return await self._run_state(payload, True, False)

    @command("stop")
    async def stop(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        return await self._run_state(payload, False, False)

    @command("restart")
    async def restart(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        return await self._run_state(payload, True, True)

    # -- update ----------

    @command("update")
    async def update(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        s = await self._existing(payload)
        target = self._manifest(s.manifest_id, payload.get("version"), "version")
        return await self.start_update(s, target)

    async def start_update(
        self,
        s: AppState,
        target: Manifest,
        *,
        title: str = "",
        also: Callable[[str], Sequence[object]] | None = None,
    ) -> dict[str, Any]:
        """Request the update of `s` to `target` as the current context's actor; `also(task_id)`
        gives events recorded with the request (the nightly window's, autoupdate.py)."""
        self._idle(s, "update it")
        if s.state is not State.installed:
            raise AppConflict(f"the app is {s.state.value}: repair it first")
        if target.version <= Version.parse(s.app_version):
            raise AppConflict(
                f"{target.version} is not newer than the installed {s.app_version}",
                field="version",
            )
        self._platform_ok(target)
        task = await self._start_task(
            "update", title or f"Update {target.title} to {target.version}", s.app_id
        )
        request = ev.AppUpdateRequested(
            app_id=s.app_id,
            task_id=task.id,
            from_version=s.app_version,
            to_version=str(target.version),
            needs_approval=target.update_needs_approval,
        )
        await self._record(s, [request, *(also(task.id) if also else ())], task)
        if target.update_needs_approval:
            await task.progress(0, "waiting for an administrator to approve the update")
        else:
            self.driver.kick(s.app_id)
        return {"app_id": s.app_id, "task_id": task.id, "needs_approval": request.needs_approval}

    @command("approve_update")
    async def approve_update(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        s = await self._existing(payload)
        op = s.operation
        if op is None or op.kind != "update" or not op.awaiting_approval:
            raise AppConflict("the app has no update waiting for approval")
        await self._record(s, [ev.AppUpdateApproved(app_id=s.app_id, task_id=op.task_id)])
        self.driver.kick(s.app_id)
        return {"app_id": s.app_id, "task_id": op.task_id}

    # -- restore, snapshot, uninstall, repair ----------

    @command("restore")
    async def restore(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        s = await self._existing(payload)
        snapshot_id = str(uuid.UUID(payload["snapshot_id"]))
        snap = s.snapshot(snapshot_id)
        if snap is None or snap["reason"] == "clone":
            raise AppNotFound("no such snapshot of this app", field="snapshot_id")
        self._manifest(s.manifest_id, str(snap["version"]), "snapshot_id")
        self._idle(s, "restore it")
        task = await self._start_task(
            "restore", f"Restore {s.location} to {snap['version']}", s.app_id
        )
        request = ev.AppRestoreRequested(app_id=s.app_id, task_id=task.id, snapshot_id=snapshot_id)
        await self._record(s, [request], task)
        self.driver.kick(s.app_id)
        return {"app_id": s.app_id, "task_id": task.id}

    @command("snapshot")
    async def snapshot(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """A snapshot now (after any operation running); with a caller's `snapshot_id`, the
        same id again answers the first call's task instead of taking a second one."""
        s = await self._existing(payload)
        reason = str(payload.get("reason", "manual"))
        asked = payload.get("snapshot_id")
        snapshot_id = str(uuid.UUID(asked)) if asked else str(uuid7())
        async with self._snapshot_lock:
            s = await self.apps.load(s.app_id)
            if asked:
                known = self.driver.snapshot_tasks.get(snapshot_id)
                if known is None and (snap := s.snapshot(snapshot_id)) is not None:
                    # one taken by an operation (an update's, a clone's) is not this request's
                    known = (s.app_id if snap.get("task_id") else "", str(snap.get("task_id")))
                if known is not None:
                    if known[0] != s.app_id:
                        raise AppConflict(
                            f"snapshot {snapshot_id} is another app's or an operation's: choose"
                            " a new id",
                            field="snapshot_id",
                        )
                    return {"app_id": s.app_id, "task_id": known[1], "snapshot_id": snapshot_id}
                await self._snapshot_id_free(snapshot_id)
            if not s.can_snapshot:
                raise AppConflict(
                    f"the app is {s.state.value}: only an installed app has a snapshot"
                )
            task = await self._start_task("snapshot", f"Snapshot of {s.location}", s.app_id)
            self.driver.snapshot_in_background(s.app_id, task, snapshot_id, reason)
        return {"app_id": s.app_id, "task_id": task.id, "snapshot_id": snapshot_id}

    async def _snapshot_id_free(self, snapshot_id: str) -> None:
        taken = await self.apps.store.pool.fetchval(
            "SELECT app_id::text FROM apps.snapshots WHERE snapshot_id = $1", snapshot_id
        )
        if taken is not None:
            raise AppConflict(
                f"snapshot {snapshot_id} is another app's: choose a new id", field="snapshot_id"
            )

    @command("forget_snapshot")
    async def forget_snapshot(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """A snapshot's folder deleted and its record dropped, unless an operation needs it."""
        s = await self._existing(payload)
        snapshot_id = str(uuid.UUID(payload["snapshot_id"]))
        if s.snapshot(snapshot_id) is None:
            raise AppNotFound(
                f"snapshot {snapshot_id} is not one of this app's", field="snapshot_id"
            )
        await self._not_in_use(s, snapshot_id)
        await self._record(s, [ev.AppSnapshotForgotten(app_id=s.app_id, snapshot_id=snapshot_id)])
        await self.driver.tools.snapshots.forget(s.app_id, snapshot_id)
        return {"app_id": s.app_id, "snapshot_id": snapshot_id}

    async def _not_in_use(self, s: AppState, snapshot_id: str) -> None:
        """Refused while the app's operation in progress (or failed, to be repaired) uses the
        snapshot (an update's, to roll back), or a clone of it still has to copy it."""
        users = [s]
        rows = await self.apps.store.pool.fetch(
            "SELECT app_id::text FROM apps.apps WHERE clone_of = $1"
            " AND state NOT IN ('installed', 'uninstalled')",
            s.app_id,
        )
        users += [await self.apps.load(r["app_id"]) for r in rows]
        for user in users:
            for op in (user.operation, user.failed):
                if op is not None and op.detail.get("snapshot_id") == snapshot_id:
                    raise AppConflict(
                        f"snapshot {snapshot_id} is in use by the {op.kind} in progress (task"
                        f" {op.task_id}); forget it once that has ended",
                        field="snapshot_id",
                    )

    @command("adopt_snapshot")
    async def adopt_snapshot(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """A snapshot folder the backup service put in the app's snapshots recorded (reason
        "backup"), once checked: then `restore` can bring it back."""
        s = await self._existing(payload)
        snapshot_id = str(uuid.UUID(payload["snapshot_id"]))
        answer = {"app_id": s.app_id, "snapshot_id": snapshot_id}
        if s.snapshot(snapshot_id) is not None:
            return answer
        await self._snapshot_id_free(snapshot_id)
        folder = self.driver.tools.snapshots.folder(s.app_id, snapshot_id)
        meta = await self._foreign_folder(folder, snapshot_id, "snapshot_id")
        if meta["manifest_id"] != s.manifest_id:
            raise InvalidRequest(
                f"snapshot {snapshot_id} is of {meta['manifest_id'][:200]}, not of this app"
                f" ({s.manifest_id})",
                field="snapshot_id",
            )
        taken = ev.AppSnapshotTaken(
            app_id=s.app_id,
            snapshot_id=snapshot_id,
            manifest_id=s.manifest_id,
            version=meta["version"],
            reason="backup",
            size_bytes=int(meta["size_bytes"]),
        )
        await self._record(s, [taken])
        return answer

    async def _foreign_folder(self, folder: Any, snapshot_id: str, field: str) -> dict[str, Any]:
        """The snapshot.json (with `size_bytes`) of a folder another service wrote, checked:
        known regular files only, a manifest and version the catalog has."""
        snapshots = self.driver.tools.snapshots
        try:
            meta, size = await asyncio.to_thread(snapshots.check_folder, folder)
        except (FolderProblem, OSError) as e:
            raise InvalidRequest(f"{field} {snapshot_id}: {e}", field=field) from None
        try:
            self.driver.tools.entry(meta["manifest_id"], meta["version"])
        except CatalogError:
            raise InvalidRequest(
                f"{field} {snapshot_id}: the catalog has no {meta['manifest_id'][:200]}"
                f" {meta['version'][:50]}",
                field=field,
            ) from None
        return {**meta, "size_bytes": size}

    @command("uninstall")
    async def uninstall(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        s = await self._existing(payload)
        waiting = s.operation is not None and s.operation.awaiting_approval
        if not waiting:  # an update waiting for approval may be dropped; other work not
            self._idle(s, "uninstall it")
        task = await self._start_task("uninstall", f"Uninstall {s.location}", s.app_id)
        if s.operation is not None:  # an update waiting for approval is dropped
            old = await Task.load(self.apps.store, s.operation.task_id)
            if not old.ended:
                await old.fail("the app was uninstalled instead", "cancelled")
        await self._record(s, [ev.AppUninstallRequested(app_id=s.app_id, task_id=task.id)], task)
        self.driver.kick(s.app_id)
        return {"app_id": s.app_id, "task_id": task.id}

    @command("repair")
    async def repair(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        s = await self._existing(payload)
        if s.state is not State.error or s.failed is None:
            raise AppConflict(f"the app is {s.state.value}; only an app in error can be repaired")
        task = await self._start_task("repair", f"Repair {s.location} ({s.failed.kind})", s.app_id)
        request = ev.AppRepairRequested(app_id=s.app_id, task_id=task.id, operation=s.failed.kind)
        await self._record(s, [request], task)
        self.driver.kick(s.app_id)
        return {"app_id": s.app_id, "task_id": task.id}
