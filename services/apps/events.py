"""The events of the apps service: stream `app-<instance uuid>` holds one installed app's life.

An operation (install, configure, update, restore, rebuild, uninstall) starts with its
`...Requested` event, records each step it finished (`AppStepCompleted`, `AddonProvisioned`,
`AppSnapshotTaken`), and ends with exactly one outcome (`AppInstalled`, `AppConfigured`,
`AppUpdated`, `AppRestored`, `AppRebuilt`, `AppUninstalled` or `AppOperationFailed`). A
restarted service reads the stream and resumes the steps not yet recorded (every step is
idempotent).
Credentials and environment values are sealed with the app's own key (subject `app-<id>`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from libs.events.registry import REGISTRY

__all__ = [
    "APP_CATEGORY",
    "SETTINGS_STREAM",
    "SUBNETS_STREAM",
    "AddonProvisioned",
    "AppAutoUpdateSet",
    "AppAutoUpdateStarted",
    "AppConfigureRequested",
    "AppConfigured",
    "AppDied",
    "AppInstallRequested",
    "AppInstalled",
    "AppOperationFailed",
    "AppOutOfMemory",
    "AppRebuildRequested",
    "AppRebuilt",
    "AppRecovered",
    "AppRepairRequested",
    "AppRestoreRequested",
    "AppRestored",
    "AppRunStateChanged",
    "AppSnapshotForgotten",
    "AppSnapshotTaken",
    "AppStepCompleted",
    "AppUnhealthy",
    "AppUninstallRequested",
    "AppUninstalled",
    "AppUpdateApproved",
    "AppUpdateRequested",
    "AppUpdated",
    "AppsAutoUpdateSet",
    "SubnetTaken",
    "app_stream",
]

APP_CATEGORY = "app"
# The service's settings (automatic updates): last one of each kind wins (autoupdate.py).
SETTINGS_STREAM = "apps-settings"
# The subnets given to app networks, in the order given (subnets.py): never one again before
# every other subnet of the pool has been given since.
SUBNETS_STREAM = "apps-subnets"


def app_stream(app_id: str) -> str:
    """`app-<uuid>`."""
    return f"{APP_CATEGORY}-{app_id}"


def _short(app_id: str) -> str:
    return app_id[:8]


@REGISTRY.event("AppInstallRequested")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppInstallRequested:
    app_id: str
    manifest_id: str
    version: str
    location: str
    domain: str
    access: dict[str, Any]  # {all_users: bool, groups: [...], user_ids: [...]}
    memory_bytes: int
    env: dict[str, str]  # user-set variables, each value sealed
    task_id: str
    clone_of: str | None = None  # the app whose snapshot seeds this one
    snapshot_id: str | None = None
    # a snapshot folder under <snapshots>/incoming/ (a backup) that seeds this one
    from_snapshot: str | None = None
    # the server's ports the app publishes: manifest port name -> host port (every one of the
    # manifest's tcpPorts / udpPorts), each on all IPv4 addresses
    tcp_ports: dict[str, int] = field(default_factory=dict)
    udp_ports: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        return f"install of {self.manifest_id} {self.version} at {self.location} requested"


@REGISTRY.event("AppStepCompleted")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppStepCompleted:
    app_id: str
    operation: str
    step: str
    detail: dict[str, Any]

    def summary(self) -> str:
        return f"app {_short(self.app_id)}: {self.operation} step {self.step} done"


@REGISTRY.event("AddonProvisioned")
@dataclass(frozen=True, slots=True, kw_only=True)
class AddonProvisioned:
    app_id: str
    addon: str
    credentials: str  # sealed JSON object: the HOMEPORT_* variables this addon gives the app

    def summary(self) -> str:
        return f"app {_short(self.app_id)}: {self.addon} addon provisioned"


@REGISTRY.event("AppInstalled")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppInstalled:
    app_id: str
    task_id: str
    version: str

    def summary(self) -> str:
        return f"app {_short(self.app_id)} installed ({self.version})"


@REGISTRY.event("AppOperationFailed")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppOperationFailed:
    app_id: str
    task_id: str
    operation: str
    step: str
    message: str
    code: str
    rolled_back: bool  # the app is back as it was before the operation (state installed)

    def summary(self) -> str:
        return f"app {_short(self.app_id)}: {self.operation} failed at {self.step} ({self.code})"


@REGISTRY.event("AppConfigureRequested")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppConfigureRequested:
    app_id: str
    task_id: str
    location: str | None
    access: dict[str, Any] | None
    memory_bytes: int | None
    env: dict[str, str] | None  # the whole new set, values sealed
    # the whole new set of host ports (name -> port), or None: unchanged
    tcp_ports: dict[str, int] | None = None
    udp_ports: dict[str, int] | None = None

    def summary(self) -> str:
        return f"app {_short(self.app_id)}: configuration change requested"


@REGISTRY.event("AppConfigured")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppConfigured:
    app_id: str
    task_id: str

    def summary(self) -> str:
        return f"app {_short(self.app_id)} configured"


@REGISTRY.event("AppRunStateChanged")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppRunStateChanged:
    app_id: str
    running: bool  # what the user wants: the service brings the container there
    restart: bool  # a restart was asked (running stays true)

    def summary(self) -> str:
        what = "restart" if self.restart else ("start" if self.running else "stop")
        return f"app {_short(self.app_id)}: {what}"


@REGISTRY.event("AppUpdateRequested")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppUpdateRequested:
    app_id: str
    task_id: str
    from_version: str
    to_version: str
    needs_approval: bool

    def summary(self) -> str:
        return f"app {_short(self.app_id)}: update {self.from_version} -> {self.to_version}"


@REGISTRY.event("AppUpdateApproved")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppUpdateApproved:
    app_id: str
    task_id: str

    def summary(self) -> str:
        return f"app {_short(self.app_id)}: update approved"


@REGISTRY.event("AppSnapshotTaken")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppSnapshotTaken:
    app_id: str
    snapshot_id: str
    manifest_id: str
    version: str
    reason: str  # "update", "manual", "clone", "backup"
    size_bytes: int
    task_id: str | None = None  # the task of a snapshot asked for by itself

    def summary(self) -> str:
        return f"app {_short(self.app_id)}: snapshot {_short(self.snapshot_id)} ({self.reason})"


@REGISTRY.event("AppSnapshotForgotten")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppSnapshotForgotten:
    app_id: str
    snapshot_id: str

    def summary(self) -> str:
        return f"app {_short(self.app_id)}: snapshot {_short(self.snapshot_id)} forgotten"


@REGISTRY.event("AppRebuildRequested")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppRebuildRequested:
    """A platform restored onto a new machine: the app is made again (network, volume,
    addons, image, container) with the data of a snapshot the restore put in place."""

    app_id: str
    task_id: str
    snapshot_id: str
    version: str  # the snapshot's version: the one rebuilt

    def summary(self) -> str:
        return f"app {_short(self.app_id)}: rebuild from {_short(self.snapshot_id)} requested"


@REGISTRY.event("AppRebuilt")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppRebuilt:
    app_id: str
    task_id: str
    snapshot_id: str
    version: str

    def summary(self) -> str:
        return f"app {_short(self.app_id)} rebuilt ({self.version})"


@REGISTRY.event("AppUpdated")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppUpdated:
    app_id: str
    task_id: str
    version: str

    def summary(self) -> str:
        return f"app {_short(self.app_id)} updated to {self.version}"


@REGISTRY.event("AppRestoreRequested")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppRestoreRequested:
    app_id: str
    task_id: str
    snapshot_id: str

    def summary(self) -> str:
        return f"app {_short(self.app_id)}: restore of {_short(self.snapshot_id)} requested"


@REGISTRY.event("AppRestored")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppRestored:
    app_id: str
    task_id: str
    snapshot_id: str
    version: str

    def summary(self) -> str:
        return f"app {_short(self.app_id)} restored ({self.version})"


@REGISTRY.event("AppUninstallRequested")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppUninstallRequested:
    app_id: str
    task_id: str

    def summary(self) -> str:
        return f"app {_short(self.app_id)}: uninstall requested"


@REGISTRY.event("AppUninstalled")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppUninstalled:
    app_id: str
    task_id: str

    def summary(self) -> str:
        return f"app {_short(self.app_id)} uninstalled"


@REGISTRY.event("AppRepairRequested")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppRepairRequested:
    app_id: str
    task_id: str
    operation: str  # the failed operation tried again

    def summary(self) -> str:
        return f"app {_short(self.app_id)}: repair ({self.operation}) requested"


@REGISTRY.event("AppUnhealthy")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppUnhealthy:
    app_id: str
    since: str  # ISO time of the first failed check in this run
    detail: str

    def summary(self) -> str:
        return f"app {_short(self.app_id)} unhealthy"


@REGISTRY.event("AppRecovered")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppRecovered:
    app_id: str

    def summary(self) -> str:
        return f"app {_short(self.app_id)} healthy again"


@REGISTRY.event("AppDied")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppDied:
    app_id: str
    exit_code: int | None

    def summary(self) -> str:
        return f"app {_short(self.app_id)} died (exit {self.exit_code})"


@REGISTRY.event("AppOutOfMemory")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppOutOfMemory:
    app_id: str
    memory_bytes: int

    def summary(self) -> str:
        return f"app {_short(self.app_id)} ran out of memory"


@REGISTRY.event("AppsAutoUpdateSet")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppsAutoUpdateSet:
    """Automatic app updates on or off and their nightly window (stream `apps-settings`)."""

    enabled: bool
    window_start: str  # HH:MM, the server's time zone
    window_end: str  # HH:MM; before window_start: the window spans midnight

    def summary(self) -> str:
        if not self.enabled:
            return "automatic app updates: off"
        return f"automatic app updates: nightly {self.window_start}-{self.window_end}"


@REGISTRY.event("AppAutoUpdateSet")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppAutoUpdateSet:
    """One app updated automatically or not (stream `apps-settings`; default: it is)."""

    app_id: str
    enabled: bool

    def summary(self) -> str:
        return f"app {_short(self.app_id)}: automatic updates {'on' if self.enabled else 'off'}"


@REGISTRY.event("AppAutoUpdateStarted")
@dataclass(frozen=True, slots=True, kw_only=True)
class AppAutoUpdateStarted:
    """Recorded with the `AppUpdateRequested` the nightly window made (actor "system")."""

    app_id: str
    task_id: str
    from_version: str
    to_version: str
    night: str  # the date (YYYY-MM-DD) the window started on: one try per app and night
    reason: str = "automatic"

    def summary(self) -> str:
        return (
            f"app {_short(self.app_id)}: automatic update {self.from_version} ->"
            f" {self.to_version} started"
        )


@REGISTRY.event("SubnetTaken")
@dataclass(frozen=True, slots=True, kw_only=True)
class SubnetTaken:
    """A subnet of the app pool given to an app network (stream `apps-subnets`), before the
    network is made: the edge may send that app's traffic to its container's address there."""

    network: str
    subnet: str

    def summary(self) -> str:
        return f"subnet {self.subnet} given to network {self.network}"
