"""Command handlers of the apps service: validate, decide against the app's stream, record.

A lifecycle command records its request (and starts the task that reports its progress) and
returns at once with `{app_id, task_id}`; the engine does the work in the background. Start,
stop and restart record the wanted run state and apply it before answering.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg

from libs.events import context
from libs.events.bus import Conflict, Invalid, NotFound
from libs.events.errors import ConcurrencyError
from libs.events.tasks import Task
from services.apps import events as ev
from services.apps.catalog import Catalog, CatalogError
from services.apps.engine import Engine
from services.apps.manifest import Manifest
from services.apps.semver import Version
from services.apps.state import AppState, State

__all__ = ["Commands", "check_env", "check_location"]

LOCATION = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
RESERVED_LOCATIONS = frozenset({"my", "www", "mail", "autoconfig", "autodiscover"})
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_ENV = 100
MAX_ENV_VALUE = 4096
MIN_MEMORY = 32 * 1024 * 1024
MAX_MEMORY = 64 * 1024 * 1024 * 1024
MAX_IDS = 1000


def _fields(payload: Mapping[str, Any], allowed: set[str]) -> None:
    for name in payload:
        if name not in allowed:
            raise Invalid(f"unknown field {name!r}", field=str(name)[:64])


def _str(payload: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    value = payload.get(name)
    if value is None:
        if required:
            raise Invalid(f"{name} is required", field=name)
        return None
    if not isinstance(value, str) or not value or len(value) > 200:
        raise Invalid(f"{name} must be text of 1 to 200 characters", field=name)
    return value


def _app_id(payload: Mapping[str, Any], name: str = "app_id") -> str:
    value = payload.get(name)
    try:
        return str(uuid.UUID(str(value))) if isinstance(value, str) else _raise(name)
    except ValueError:
        return _raise(name)


def _raise(name: str) -> str:
    raise Invalid(f"{name} must be an app id (a UUID)", field=name)


def check_location(value: object, field: str = "location") -> str:
    """A DNS label: 1-63 lower-case letters, digits and inner '-'; not a reserved name."""
    if not isinstance(value, str) or not LOCATION.match(value):
        raise Invalid(
            f"{field} must be a DNS label: 1 to 63 lower-case letters, digits or '-', not"
            " starting or ending with '-'",
            field=field,
        )
    if value in RESERVED_LOCATIONS:
        raise Invalid(f"{field} {value!r} is reserved for the platform", field=field)
    return value


def check_env(value: object, field: str = "env") -> dict[str, str]:
    """Environment variables: names like SHELL variables, not HOMEPORT_*; text values."""
    changes = _env_changes(value, field, removals=False)
    return {name: item for name, item in changes.items() if item is not None}


def _env_changes(
    value: object, field: str = "env", *, removals: bool = True
) -> dict[str, str | None]:
    """Changes of environment variables: NAME: text sets one, NAME: null (with `removals`)
    removes one."""
    if not isinstance(value, dict):
        raise Invalid(f"{field} must be an object of NAME: value", field=field)
    if len(value) > MAX_ENV:
        raise Invalid(f"{field} may hold at most {MAX_ENV} variables", field=field)
    out: dict[str, str | None] = {}
    for name, item in value.items():
        where = f"{field}.{str(name)[:64]}"
        if not isinstance(name, str) or not ENV_NAME.match(name):
            raise Invalid(
                f"{where}: a variable name is a letter or '_', then letters, digits or '_'"
                " (at most 64)",
                field=where,
            )
        if name.upper().startswith("HOMEPORT_"):
            raise Invalid(f"{where}: HOMEPORT_* variables are set by the platform", field=where)
        if item is None and removals:
            out[name] = None
            continue
        if not isinstance(item, str) or len(item) > MAX_ENV_VALUE or "\x00" in item:
            raise Invalid(
                f"{where} must be text of at most {MAX_ENV_VALUE} characters", field=where
            )
        out[name] = item
    return out


def check_access(value: object, manifest: Manifest, field: str = "access") -> dict[str, Any]:
    """{all_users, groups, user_ids}; a single-user app has exactly one user and nothing else."""
    if value is None:
        value = {"all_users": True}
    if not isinstance(value, dict):
        raise Invalid(f"{field} must be an object {{all_users, groups, user_ids}}", field=field)
    _fields(value, {"all_users", "groups", "user_ids"})
    all_users = value.get("all_users", False)
    if not isinstance(all_users, bool):
        raise Invalid(f"{field}.all_users must be true or false", field=f"{field}.all_users")
    lists: dict[str, list[str]] = {}
    for name in ("groups", "user_ids"):
        items = value.get(name, [])
        if not isinstance(items, list) or len(items) > MAX_IDS:
            raise Invalid(f"{field}.{name} must be a list of ids", field=f"{field}.{name}")
        checked = []
        for item in items:
            try:
                checked.append(str(uuid.UUID(item)) if isinstance(item, str) else _raise(name))
            except (ValueError, Invalid):
                raise Invalid(
                    f"{field}.{name} must hold ids (UUIDs)", field=f"{field}.{name}"
                ) from None
        lists[name] = list(dict.fromkeys(checked))
    if manifest.single_user and (all_users or lists["groups"] or len(lists["user_ids"]) != 1):
        raise Invalid(
            f"{manifest.title} is a single-user app: give exactly one user in user_ids",
            field=f"{field}.user_ids",
        )
    if not all_users and not lists["groups"] and not lists["user_ids"]:
        raise Invalid(
            f"{field}: nobody could open the app; set all_users or name groups or users",
            field=field,
        )
    return {"all_users": all_users, **lists}


def check_memory(value: object, manifest: Manifest, field: str = "memory_bytes") -> int:
    if value is None:
        return manifest.memory_limit
    if not isinstance(value, int) or isinstance(value, bool):
        raise Invalid(f"{field} must be a whole number of bytes", field=field)
    if not MIN_MEMORY <= value <= MAX_MEMORY:
        raise Invalid(f"{field} must be between 32 MiB and 64 GiB (in bytes)", field=field)
    return value


class Commands:
    """The command side: each method is one bus command of the apps service."""

    def __init__(self, engine: Engine, catalog: Catalog) -> None:
        self.engine = engine
        self.catalog = catalog
        self.store = engine.store

    # -- helpers ----------

    def _manifest(self, manifest_id: str, version: str | None, field: str) -> Manifest:
        try:
            entry = self.catalog.entry(manifest_id, version)
        except CatalogError as e:
            raise NotFound(str(e), field=field) from None
        return entry.manifest

    async def _existing(self, app_id: str) -> AppState:
        s = await self.engine.load(app_id)
        if not s.exists:
            raise NotFound(f"no app {app_id}", field="app_id")
        return s

    def _idle(self, s: AppState, doing: str) -> None:
        if s.operation is not None:
            raise Conflict(
                f"the app is busy ({s.operation.kind}, task {s.operation.task_id}); {doing}"
                " once it has finished"
            )

    async def _start_task(self, kind: str, title: str, app_id: str) -> Task:
        return await Task.start(
            self.store,
            kind=f"app.{kind}",
            title=title,
            owner=context.current().actor,
            target=ev.app_stream(app_id),
        )

    async def _record(self, s: AppState, new: list[Any], task: Task | None = None) -> None:
        try:
            await self.engine.append(s.app_id, new, s.version)
        except ConcurrencyError:
            if task is not None:
                await task.fail("the app changed at the same time; nothing was done", "conflict")
            raise Conflict("the app was changed at the same time; look again and retry") from None
        except asyncpg.UniqueViolationError:
            if task is not None:
                await task.fail("that location is taken", "location_taken")
            raise Conflict("that location is taken on this domain", field="location") from None

    async def _location_free(self, domain: str, location: str, app_id: str | None = None) -> None:
        taken = await self.store.pool.fetchval(
            "SELECT app_id::text FROM apps.apps WHERE domain = $1 AND location = $2"
            " AND state <> 'uninstalled'",
            domain,
            location,
        )
        if taken is not None and taken != app_id:
            raise Conflict(f"{location}.{domain} is taken by another app", field="location")

    # -- install and clone ----------

    async def install(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        _fields(
            payload,
            {"manifest_id", "version", "location", "domain", "access", "memory_bytes", "env"},
        )
        manifest_id = _str(payload, "manifest_id")
        assert manifest_id is not None
        version = _str(payload, "version", required=False)
        manifest = self._manifest(manifest_id, version, "version" if version else "manifest_id")
        location = check_location(payload.get("location"))
        domain = self._domain(payload)
        access = check_access(payload.get("access"), manifest)
        memory = check_memory(payload.get("memory_bytes"), manifest)
        env = check_env(payload.get("env", {}))
        self._platform_ok(manifest)
        await self._location_free(domain, location)
        app_id = str(uuid.uuid4())
        task = await self._start_task("install", f"Install {manifest.title}", app_id)
        sealed = {k: self.engine.seal(app_id, v) for k, v in env.items()}
        request = ev.AppInstallRequested(
            app_id,
            manifest.id,
            str(manifest.version),
            location,
            domain,
            access,
            memory,
            sealed,
            task.id,
        )
        await self._record(AppState(app_id), [request], task)
        self.engine.kick(app_id)
        return {"app_id": app_id, "task_id": task.id}

    def _domain(self, payload: Mapping[str, Any]) -> str:
        value = payload.get("domain")
        if value is None:
            return self.engine.cfg.default_domain
        label = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
        if not isinstance(value, str) or not re.fullmatch(rf"{label}(\.{label})*", value):
            raise Invalid("domain must be a lower-case domain name", field="domain")
        return value

    def _platform_ok(self, manifest: Manifest) -> None:
        if manifest.min_platform_version is None:
            return
        if manifest.min_platform_version > Version.parse(self.engine.cfg.platform_version):
            raise Conflict(
                f"{manifest.title} {manifest.version} needs Homeport"
                f" {manifest.min_platform_version} or newer (this is"
                f" {self.engine.cfg.platform_version})",
                field="version",
            )

    async def clone(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        _fields(payload, {"app_id", "location", "domain"})
        source = await self._existing(_app_id(payload))
        if source.state is not State.installed:
            raise Conflict(f"only an installed app can be cloned (it is {source.state.value})")
        location = check_location(payload.get("location"))
        domain = self._domain(payload) if "domain" in payload else source.domain
        await self._location_free(domain, location)
        manifest = self._manifest(source.manifest_id, source.app_version, "app_id")
        app_id = str(uuid.uuid4())
        task = await self._start_task("install", f"Clone {manifest.title} to {location}", app_id)
        env = {k: self.engine.seal(app_id, self.engine.unseal(v)) for k, v in source.env.items()}
        request = ev.AppInstallRequested(
            app_id,
            source.manifest_id,
            source.app_version,
            location,
            domain,
            source.access,
            source.memory_bytes,
            env,
            task.id,
            clone_of=source.app_id,
        )
        await self._record(AppState(app_id), [request], task)
        self.engine.kick(app_id)
        return {"app_id": app_id, "task_id": task.id}

    # -- configure ----------

    async def configure(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        _fields(payload, {"app_id", "location", "access", "memory_bytes", "env"})
        s = await self._existing(_app_id(payload))
        self._idle(s, "change its settings")
        if s.state is not State.installed:
            raise Conflict(f"the app is {s.state.value}: repair or uninstall it first")
        manifest = self._manifest(s.manifest_id, s.app_version, "app_id")
        location = None
        if "location" in payload:
            location = check_location(payload["location"])
            await self._location_free(s.domain, location, s.app_id)
        access = check_access(payload["access"], manifest) if "access" in payload else None
        memory = (
            check_memory(payload["memory_bytes"], manifest) if "memory_bytes" in payload else None
        )
        changes = _env_changes(payload["env"]) if "env" in payload else {}
        env = self._merged_env(s, changes) if changes else None
        if location is None and access is None and memory is None and env is None:
            raise Invalid("nothing to change: give location, access, memory_bytes or env")
        task = await self._start_task("configure", f"Configure {manifest.title}", s.app_id)
        request = ev.AppConfigureRequested(s.app_id, task.id, location, access, memory, env)
        await self._record(s, [request], task)
        self.engine.kick(s.app_id)
        return {"app_id": s.app_id, "task_id": task.id}

    def _merged_env(self, s: AppState, changes: Mapping[str, str | None]) -> dict[str, str]:
        """The app's sealed variables with `changes` applied; names not named are kept."""
        env = dict(s.env)
        for name, value in changes.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = self.engine.seal(s.app_id, value)
        if len(env) > MAX_ENV:
            raise Invalid(f"env: an app may have at most {MAX_ENV} variables", field="env")
        return env

    # -- run state ----------

    async def _run_state(
        self, payload: Mapping[str, Any], running: bool, restart: bool
    ) -> dict[str, Any]:
        _fields(payload, {"app_id"})
        s = await self._existing(_app_id(payload))
        self._idle(s, "start, stop or restart it")
        if s.state is not State.installed:
            raise Conflict(f"the app is {s.state.value}: repair or uninstall it first")
        await self._record(s, [ev.AppRunStateChanged(s.app_id, running, restart)])
        name = self.engine.names(s.app_id).container
        runtime = self.engine.runtime
        if restart:
            self.engine.restarted_at[s.app_id] = time.monotonic()
            await runtime.restart(name)
        elif running:
            await runtime.start(name)
        else:
            await runtime.stop(name)
        state = await runtime.state(name)
        return {"app_id": s.app_id, "running": bool(state and state.running)}

    async def start(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        return await self._run_state(payload, True, False)

    async def stop(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        return await self._run_state(payload, False, False)

    async def restart(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        return await self._run_state(payload, True, True)

    # -- update ----------

    async def update(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        _fields(payload, {"app_id", "version"})
        s = await self._existing(_app_id(payload))
        self._idle(s, "update it")
        if s.state is not State.installed:
            raise Conflict(f"the app is {s.state.value}: repair it first")
        version = _str(payload, "version", required=False)
        target = self._manifest(s.manifest_id, version, "version")
        if target.version <= Version.parse(s.app_version):
            raise Conflict(
                f"{target.version} is not newer than the installed {s.app_version}", field="version"
            )
        self._platform_ok(target)
        task = await self._start_task(
            "update", f"Update {target.title} to {target.version}", s.app_id
        )
        request = ev.AppUpdateRequested(
            s.app_id, task.id, s.app_version, str(target.version), target.update_needs_approval
        )
        await self._record(s, [request], task)
        if target.update_needs_approval:
            await task.progress(0, "waiting for an administrator to approve the update")
        else:
            self.engine.kick(s.app_id)
        return {"app_id": s.app_id, "task_id": task.id, "needs_approval": request.needs_approval}

    async def approve_update(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        _fields(payload, {"app_id"})
        s = await self._existing(_app_id(payload))
        op = s.operation
        if op is None or op.kind != "update" or not op.awaiting_approval:
            raise Conflict("the app has no update waiting for approval")
        await self._record(s, [ev.AppUpdateApproved(s.app_id, op.task_id)])
        self.engine.kick(s.app_id)
        return {"app_id": s.app_id, "task_id": op.task_id}

    # -- restore, uninstall, repair ----------

    async def restore(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        _fields(payload, {"app_id", "snapshot_id"})
        s = await self._existing(_app_id(payload))
        self._idle(s, "restore it")
        snapshot_id = _app_id(payload, "snapshot_id")
        snap = s.snapshot(snapshot_id)
        if snap is None or snap["reason"] == "clone":
            raise NotFound("no such snapshot of this app", field="snapshot_id")
        self._manifest(s.manifest_id, str(snap["version"]), "snapshot_id")
        task = await self._start_task(
            "restore", f"Restore {s.location} to {snap['version']}", s.app_id
        )
        await self._record(s, [ev.AppRestoreRequested(s.app_id, task.id, snapshot_id)], task)
        self.engine.kick(s.app_id)
        return {"app_id": s.app_id, "task_id": task.id}

    async def snapshot(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        _fields(payload, {"app_id"})
        s = await self._existing(_app_id(payload))
        if s.state is not State.installed:
            raise Conflict(f"the app is {s.state.value}: only an installed app has a snapshot")
        task = await self._start_task("snapshot", f"Snapshot of {s.location}", s.app_id)
        self.engine.snapshot_in_background(s.app_id, task)
        return {"app_id": s.app_id, "task_id": task.id}

    async def uninstall(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        _fields(payload, {"app_id"})
        s = await self._existing(_app_id(payload))
        waiting = s.operation is not None and s.operation.awaiting_approval
        if not waiting:  # an update waiting for approval may be dropped; other work not
            self._idle(s, "uninstall it")
        task = await self._start_task("uninstall", f"Uninstall {s.location}", s.app_id)
        if s.operation is not None:  # an update waiting for approval is dropped
            old = await Task.load(self.store, s.operation.task_id)
            if not old.ended:
                await old.fail("the app was uninstalled instead", "cancelled")
        await self._record(s, [ev.AppUninstallRequested(s.app_id, task.id)], task)
        self.engine.kick(s.app_id)
        return {"app_id": s.app_id, "task_id": task.id}

    async def repair(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        _fields(payload, {"app_id"})
        s = await self._existing(_app_id(payload))
        if s.state is not State.error or s.failed is None:
            raise Conflict(f"the app is {s.state.value}; only an app in error can be repaired")
        task = await self._start_task("repair", f"Repair {s.location} ({s.failed.kind})", s.app_id)
        await self._record(s, [ev.AppRepairRequested(s.app_id, task.id, s.failed.kind)], task)
        self.engine.kick(s.app_id)
        return {"app_id": s.app_id, "task_id": task.id}
