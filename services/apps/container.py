"""The container runtime port: what the apps service asks of whatever runs app containers.

`ContainerRuntime` is everything the apps service uses of a runtime (images, networks, volumes,
containers, logs, stats, events). `services/apps/runtime.py` (`DockerRuntime`) implements it on
one dockerd; a second runtime (a container orchestrator) implements the same Protocol and runs
the contract suite in tests/apps/test_runtime_contract.py. The values crossing the port are the
frozen dataclasses below, never a driver's objects, and every failure is a `RuntimeFailure`
whose message names the object and says what to do (`RuntimeNotFound` when the object named
does not exist).

What every runtime promises for an app container (SECURITY.md "Isolation of apps"): read-only
root file system with writable tmpfs at /tmp and /run, the data volume (if any) read-write at
`DATA_PATH`, user 1000:1000 unless `run_as_root`, no capabilities but the spec's, no new
privileges, the memory limit without swap, the pids limit, the HTTP port published on
127.0.0.1 only (at `http_host_port` when the spec names one), restarted when it dies unless
stopped, and its log kept in bounds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Protocol, TypeVar

__all__ = [
    "APP_OWNER",
    "DATA_PATH",
    "ContainerRuntime",
    "ContainerSpec",
    "ContainerState",
    "EventKind",
    "NetworkInfo",
    "Progress",
    "RuntimeEvent",
    "RuntimeFailure",
    "RuntimeNotFound",
    "RuntimeStream",
    "Stats",
    "SubnetSource",
]

DATA_PATH = "/app/data"
# The user and group an app runs as unless its manifest says runAsRoot; a restore gives it
# every file of the volume.
APP_OWNER = (1000, 1000)

_T_co = TypeVar("_T_co", covariant=True)

Progress = Callable[[str], Awaitable[None]]


class RuntimeFailure(Exception):
    """The runtime refused or failed an operation; the message names the object and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RuntimeNotFound(RuntimeFailure):
    """The container (or image, network, volume) named does not exist."""


# Gives a new network its subnet, passing over the subnets given (Docker refused them as taken).
SubnetSource = Callable[[Sequence[str]], Awaitable[str]]


@dataclass(frozen=True)
class NetworkInfo:
    """An IPv4 network: its containers reach the host at `gateway`."""

    name: str
    subnet: str
    gateway: str


@dataclass(frozen=True)
class ContainerSpec:
    """What an app container is made of; the runtime recreates the container when it changes."""

    name: str
    image: str
    network: str
    env: Mapping[str, str] = field(repr=False)
    memory_bytes: int
    pids_limit: int = 256
    capabilities: tuple[str, ...] = ()
    run_as_root: bool = False
    http_port: int | None = None  # published on 127.0.0.1:<http_host_port>
    http_host_port: int | None = None  # None: a free port the runtime picks
    address: str | None = None  # its fixed IPv4 address on `network`; None: the runtime picks
    tcp_ports: Mapping[int, int] = field(default_factory=dict)  # container port -> host port
    udp_ports: Mapping[int, int] = field(default_factory=dict)
    data_volume: str | None = None  # mounted read-write at DATA_PATH
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ContainerState:
    """A container as the runtime sees it now.

    `status` uses Docker's words: created, running, restarting, paused, exited, removing, dead.
    """

    name: str
    running: bool
    status: str
    exit_code: int | None  # set once it has exited
    oom_killed: bool
    started_at: str | None  # RFC 3339; None if it never started
    http_host_port: int | None  # where its HTTP port answers on 127.0.0.1
    ip: str | None  # its address on its network
    image_id: str


@dataclass(frozen=True)
class Stats:
    """Resource use of a running container."""

    memory_bytes: int  # in use, without page cache
    memory_limit: int
    cpu_seconds: float  # CPU time so far


class EventKind(StrEnum):
    start = "start"
    die = "die"
    oom = "oom"


@dataclass(frozen=True)
class RuntimeEvent:
    """A container started, died (with its exit code) or hit its memory limit."""

    kind: EventKind
    container: str
    labels: Mapping[str, str]
    exit_code: int | None  # for "die"


class RuntimeStream(Protocol[_T_co]):
    """An async iterator that must be closed (`aclose()`) when the consumer is done."""

    def __aiter__(self) -> RuntimeStream[_T_co]: ...

    async def __anext__(self) -> _T_co: ...

    async def aclose(self) -> None: ...


class ContainerRuntime(Protocol):
    """Images, networks, volumes and containers of app containers, on one runtime."""

    async def ping(self) -> None:
        """Raise RuntimeFailure unless the runtime answers."""
        ...

    # Images

    async def build_image(self, tag: str, context: Path, progress: Progress | None = None) -> str:
        """Build the folder `context` (with a Dockerfile) as `tag`: the image id.

        A context unchanged since the tag was built is not built again (no progress lines)."""
        ...

    async def image_exists(self, tag: str) -> bool:
        """Whether an image is tagged `tag`."""
        ...

    async def ensure_busybox(self) -> None:
        """The local busybox image the bundled apps build on, made if missing."""
        ...

    # Networks

    async def ensure_network(
        self, name: str, labels: Mapping[str, str], subnet: SubnetSource | None = None
    ) -> NetworkInfo:
        """An app's own network (created if missing, in a subnet from `subnet` when given; its
        containers cannot reach each other)."""
        ...

    async def subnets_in_use(self) -> list[str]:
        """The IPv4 subnets of every network of the runtime."""
        ...

    async def ensure_services_network(self, name: str, subnet: str) -> NetworkInfo:
        """The network whose gateway (the first host address of `subnet`) addons listen on."""
        ...

    async def remove_network(self, name: str) -> None:
        """Remove a network; a missing one is fine."""
        ...

    async def app_networks(self, name_prefix: str) -> list[tuple[str, str, bool]]:
        """(name, app id, made as `ensure_network` makes it) of each network labelled with an
        app whose name starts so."""
        ...

    # Volumes

    async def ensure_volume(
        self, name: str, labels: Mapping[str, str], owner: tuple[int, int] | None = (1000, 1000)
    ) -> None:
        """A named volume; when created, its root is owned by `owner` (uid, gid)."""
        ...

    async def remove_volume(self, name: str) -> None:
        """Remove a volume and its data; a missing one is fine."""
        ...

    async def export_volume(self, name: str, dest: Path) -> None:
        """Write a tar of the volume's contents (owners and modes kept) to the file `dest`."""
        ...

    async def import_volume(
        self, name: str, src: Path, owner: tuple[int, int] | None = None
    ) -> None:
        """Replace the volume's contents by those of a tar `export_volume` wrote; `owner`
        (uid, gid) owns every file put back (None: the owners in the tar)."""
        ...

    # Containers

    async def create_container(self, spec: ContainerSpec) -> str:
        """Create the container, not started: its id. The same spec keeps the existing one
        (same id); a changed spec or image replaces it."""
        ...

    async def start(self, name: str) -> None: ...

    async def stop(self, name: str, timeout: float = 10) -> None:  # noqa: ASYNC109 (grace period)
        """Stop (after `timeout` seconds of grace) and keep it stopped."""
        ...

    async def restart(self, name: str) -> None: ...

    async def remove_container(self, name: str) -> None:
        """Remove, even running; a missing container is fine. Its data volume stays."""
        ...

    async def state(self, name: str) -> ContainerState | None:
        """The container's state; None if it does not exist."""
        ...

    async def logs(self, name: str, tail: int = 100) -> list[str]:
        """The last `tail` lines of its output (stdout and stderr interleaved)."""
        ...

    async def logs_since(
        self, name: str, tail: int, since: datetime | None
    ) -> list[tuple[str, str]]:
        """(cursor, line) pairs: the last `tail` lines, or up to `tail` lines written after
        `since` (the cursor of an earlier answer's last line, an RFC 3339 time)."""
        ...

    async def stats(self, name: str) -> Stats:
        """Resource use of a running container."""
        ...

    def events(self, labels: Mapping[str, str] | None = None) -> RuntimeStream[RuntimeEvent]:
        """start/die/oom events of containers carrying all of `labels`, from now on."""
        ...
