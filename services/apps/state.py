"""One app's state, folded from its stream: what users see and what a resumed operation needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from libs.events.envelope import RecordedEvent

__all__ = [
    "AppState",
    "Health",
    "Operation",
    "State",
    "app_origin",
    "evolve",
    "fold",
    "fold_more",
]


class State(StrEnum):
    pending_install = "pending_install"
    pending_configure = "pending_configure"
    pending_update = "pending_update"
    pending_restore = "pending_restore"
    pending_uninstall = "pending_uninstall"
    error = "error"
    installed = "installed"
    uninstalled = "uninstalled"


class Health(StrEnum):
    unknown = "unknown"
    healthy = "healthy"
    unhealthy = "unhealthy"
    dead = "dead"


_PENDING = {
    "install": State.pending_install,
    "configure": State.pending_configure,
    "update": State.pending_update,
    "restore": State.pending_restore,
    "rebuild": State.pending_restore,  # a restore onto a new machine
    "uninstall": State.pending_uninstall,
}


@dataclass(frozen=True)
class Operation:
    """The operation in progress (or the failed one a repair retries)."""

    kind: str  # install, configure, update, restore, uninstall
    task_id: str
    steps: frozenset[str] = frozenset()
    detail: dict[str, Any] = field(default_factory=dict)  # the request's own fields
    awaiting_approval: bool = False


@dataclass(frozen=True)
class AppState:
    app_id: str
    version: int = 0  # stream version
    manifest_id: str = ""
    app_version: str = ""
    location: str = ""
    domain: str = ""
    access: dict[str, Any] = field(default_factory=dict)
    memory_bytes: int = 0
    env: dict[str, str] = field(default_factory=dict)  # sealed values
    state: State = State.pending_install
    running: bool = True
    health: Health = Health.unknown
    operation: Operation | None = None
    failed: Operation | None = None  # the last failed operation (repair retries it)
    error: str | None = None
    addons: dict[str, str] = field(default_factory=dict)  # addon -> sealed credentials
    snapshots: tuple[dict[str, Any], ...] = ()
    clone_of: str | None = None
    seed_snapshot: str | None = None
    from_snapshot: str | None = None  # an install seeded by a backup (<snapshots>/incoming/)
    http_host_port: int | None = None  # the app's HTTP port on 127.0.0.1
    # where the edge reaches the app: <its address in its network>:<port>; None: the host port
    upstream: str | None = None
    # the server's ports the app publishes (all IPv4 addresses): manifest port name -> port
    tcp_ports: dict[str, int] = field(default_factory=dict)
    udp_ports: dict[str, int] = field(default_factory=dict)
    # The last operation that ended well (its outcome recorded): its task may still have to
    # say so, if the service stopped in between (services/apps/operations/driver.py).
    done: Operation | None = None

    @property
    def exists(self) -> bool:
        return self.version > 0 and self.state is not State.uninstalled

    @property
    def can_snapshot(self) -> bool:
        """Installed, or with an update waiting for approval (nothing changed yet)."""
        waiting = self.operation is not None and self.operation.awaiting_approval
        return self.state is State.installed or waiting

    def snapshot(self, snapshot_id: str) -> dict[str, Any] | None:
        return next((s for s in self.snapshots if s["snapshot_id"] == snapshot_id), None)

    @property
    def held_locations(self) -> frozenset[str]:
        """The locations the app holds on its domain: its own, and from the moment a
        configuration that moves it is accepted until it ends, the one it moves to (also while
        that configuration failed and waits for a repair). None once uninstalled."""
        if self.version == 0 or self.state is State.uninstalled:
            return frozenset()
        held = {self.location}
        for op in (self.operation, self.failed):
            if op is not None and op.kind == "configure" and op.detail.get("location"):
                held.add(str(op.detail["location"]))
        return frozenset(held)

    @property
    def held_ports(self) -> frozenset[tuple[str, int]]:
        """The (protocol, host port) pairs the app holds: its own, and from the moment a
        configuration that changes them is accepted until it ends, the new ones too (also
        while that configuration failed and waits for a repair). None once uninstalled."""
        if self.version == 0 or self.state is State.uninstalled:
            return frozenset()
        held = {("tcp", p) for p in self.tcp_ports.values()}
        held |= {("udp", p) for p in self.udp_ports.values()}
        for op in (self.operation, self.failed):
            if op is not None and op.kind == "configure":
                for protocol in ("tcp", "udp"):
                    ports = op.detail.get(f"{protocol}_ports") or {}
                    held |= {(protocol, int(p)) for p in ports.values()}
        return frozenset(held)


def _op_done(s: AppState, state: State, d: dict[str, Any], **changes: Any) -> AppState:
    done = Operation(s.operation.kind, d["task_id"]) if s.operation is not None else None
    return replace(s, state=state, operation=None, failed=None, error=None, done=done, **changes)


def fold(app_id: str, events: Sequence[RecordedEvent]) -> AppState:
    """The state after `events` (the whole stream, in order)."""
    return fold_more(AppState(app_id), events)


def fold_more(s: AppState, events: Sequence[RecordedEvent]) -> AppState:
    """The state after `events`, the ones that follow `s` in its stream, in order."""
    for ev in events:
        s = evolve(s, ev.type, ev.data, ev.version)
    return s


def evolve(s: AppState, type_: str, data: dict[str, Any], version: int) -> AppState:
    """The state after one event, the stream's `version`th."""
    return replace(_apply(s, type_, data), version=version)


def _apply(s: AppState, type_: str, d: dict[str, Any]) -> AppState:
    op = s.operation
    if type_ == "AppInstallRequested":
        return replace(
            s,
            manifest_id=d["manifest_id"],
            app_version=d["version"],
            location=d["location"],
            domain=d["domain"],
            access=d["access"],
            memory_bytes=d["memory_bytes"],
            env=d["env"],
            state=State.pending_install,
            operation=Operation("install", d["task_id"], detail=dict(d)),
            clone_of=d.get("clone_of"),
            seed_snapshot=d.get("snapshot_id") or d.get("from_snapshot"),
            from_snapshot=d.get("from_snapshot"),
            tcp_ports=dict(d.get("tcp_ports") or {}),
            udp_ports=dict(d.get("udp_ports") or {}),
        )
    if type_ == "AppStepCompleted" and op is not None:
        detail = {**op.detail, **d.get("detail", {})}
        step = d.get("detail", {})
        return replace(
            s,
            operation=replace(op, steps=op.steps | {d["step"]}, detail=detail),
            http_host_port=step.get("http_host_port", s.http_host_port),
            upstream=step.get("upstream", s.upstream),
        )
    if type_ == "AddonProvisioned":
        return replace(s, addons={**s.addons, d["addon"]: d["credentials"]})
    if type_ == "AppInstalled":
        return _op_done(
            s, State.installed, d, app_version=d["version"], running=True, health=Health.healthy
        )
    if type_ == "AppOperationFailed":
        failed = op or Operation(d["operation"], d["task_id"])
        if d["rolled_back"]:
            return replace(
                s, state=State.installed, operation=None, failed=None, error=d["message"]
            )
        return replace(s, state=State.error, operation=None, failed=failed, error=d["message"])
    if type_ == "AppRepairRequested":
        base = s.failed or Operation(d["operation"], d["task_id"])
        resumed = replace(base, task_id=d["task_id"])
        return replace(s, state=_PENDING[resumed.kind], operation=resumed, failed=None, error=None)
    if type_ == "AppConfigureRequested":
        return replace(
            s,
            state=State.pending_configure,
            operation=Operation("configure", d["task_id"], detail=dict(d)),
        )
    if type_ == "AppConfigured" and op is not None:
        det = op.detail
        return _op_done(
            s,
            State.installed,
            d,
            location=det.get("location") or s.location,
            access=det.get("access") if det.get("access") is not None else s.access,
            memory_bytes=det.get("memory_bytes") or s.memory_bytes,
            env=det.get("env") if det.get("env") is not None else s.env,
            tcp_ports=det["tcp_ports"] if det.get("tcp_ports") is not None else s.tcp_ports,
            udp_ports=det["udp_ports"] if det.get("udp_ports") is not None else s.udp_ports,
        )
    if type_ == "AppRunStateChanged":
        return replace(s, running=d["running"])
    if type_ == "AppUpdateRequested":
        return replace(
            s,
            state=State.pending_update,
            operation=Operation(
                "update", d["task_id"], detail=dict(d), awaiting_approval=d["needs_approval"]
            ),
        )
    if type_ == "AppUpdateApproved" and op is not None:
        return replace(s, operation=replace(op, awaiting_approval=False))
    if type_ == "AppSnapshotTaken":
        snap = {k: d[k] for k in ("snapshot_id", "manifest_id", "version", "reason", "size_bytes")}
        snap["task_id"] = d.get("task_id")
        return replace(s, snapshots=(*s.snapshots, snap))
    if type_ == "AppSnapshotForgotten":
        kept = tuple(x for x in s.snapshots if x["snapshot_id"] != d["snapshot_id"])
        return replace(s, snapshots=kept)
    if type_ == "AppUpdated":
        return _op_done(s, State.installed, d, app_version=d["version"], health=Health.healthy)
    if type_ == "AppRestoreRequested":
        return replace(
            s,
            state=State.pending_restore,
            operation=Operation("restore", d["task_id"], detail=dict(d)),
        )
    if type_ == "AppRestored":
        return _op_done(s, State.installed, d, app_version=d["version"], health=Health.healthy)
    if type_ == "AppRebuildRequested":
        # rebuilt with the snapshot's version: the install steps read it from app_version
        return replace(
            s,
            app_version=d["version"],
            state=State.pending_restore,
            operation=Operation("rebuild", d["task_id"], detail=dict(d)),
            failed=None,
            error=None,
        )
    if type_ == "AppRebuilt":
        return _op_done(s, State.installed, d, health=Health.healthy)
    if type_ == "AppUninstallRequested":
        return replace(
            s,
            state=State.pending_uninstall,
            operation=Operation("uninstall", d["task_id"], detail=dict(d)),
            failed=None,
        )
    if type_ == "AppUninstalled":
        return _op_done(s, State.uninstalled, d, addons={})
    if type_ == "AppUnhealthy":
        return replace(s, health=Health.unhealthy)
    if type_ == "AppRecovered":
        return replace(s, health=Health.healthy)
    if type_ == "AppDied":
        return replace(s, health=Health.dead)
    return s


def app_origin(location: str, domain: str, https_port: int = 443) -> str:
    """The origin an app is reached at: https://<location>.<domain>[:port]."""
    port = "" if https_port == 443 else f":{https_port}"
    return f"https://{location}.{domain}{port}"
