"""The Docker adapter of the container runtime port (services/apps/container.py).

The only module that talks to dockerd.

Every blocking docker SDK call runs in a worker thread (`asyncio.to_thread`); long streams
(build output, followed logs, events) each get a thread of their own that ends when the stream
does or when the iterator is closed (closing shuts the stream's socket). docker/requests errors
become `RuntimeFailure` (`RuntimeNotFound` for a missing object), whose message names the
image, network, volume or container and says what to do. Container rules follow SECURITY.md
"Isolation of apps" (see `_host_config`).

Volume data is read and written through its host path (the volume's Mountpoint): the service
runs as root on the Docker host, as it must to hold the Docker socket anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import docker
import docker.errors
import requests.exceptions
from docker.types import IPAMConfig, IPAMPool, LogConfig, Mount

from services.apps.base_image import BUSYBOX_IMAGE, BaseImageError, ensure_busybox_image
from services.apps.container import (
    APP_OWNER,
    DATA_PATH,
    ContainerRuntime,
    ContainerSpec,
    ContainerState,
    EventKind,
    NetworkInfo,
    Progress,
    RuntimeEvent,
    RuntimeFailure,
    RuntimeNotFound,
    RuntimeStream,
    Stats,
    SubnetSource,
)
from services.apps.volume_tar import clean_tar

__all__ = ["DockerRuntime", "app_ipam", "network_subnets"]

log = logging.getLogger("services.apps.runtime")

_T = TypeVar("_T")

BUILD_NETWORK = "homeport-build"
LABEL_CONTEXT = "homeport.context"
LABEL_SPEC = "homeport.spec"
LABEL_HTTP_PORT = "homeport.http-port"
APP_USER = f"{APP_OWNER[0]}:{APP_OWNER[1]}"
_TMPFS = "rw,nosuid,nodev,size=64m,mode=1777"
_ZERO_TIME = "0001-01-01T00:00:00Z"
_EVENT_KINDS = tuple(k.value for k in EventKind)
# Event attributes that Docker adds next to a container's labels.
_EVENT_ATTRS = frozenset({"image", "name", "exitCode", "signal", "execID", "execDuration"})
# Volume export and restore (export_volume, import_volume): the throwaway container's bounds,
# tar's messages for an entry that vanished while it was read, and the restore's commands.
_HELPER_TIMEOUT_S = 3600
_HELPER_MEMORY = 256 << 20
_VANISHED = ("No such file or directory", "Not a directory", "error exit delayed")
_RESTORE_SCRIPT = (
    "rm -rf -- /data/* /data/.[!.]* /data/..?* && tar -x --numeric-owner -f /in.tar -C /data"
)


def _restore_script(owner: tuple[int, int] | None) -> str:
    """Unpack the clean tar; with `owner`, give it every entry, links themselves included (tar
    leaves a symlink root's)."""
    if owner is None:
        return _RESTORE_SCRIPT
    uid, gid = (int(v) for v in owner)
    return f"{_RESTORE_SCRIPT} && chown -R -h {uid}:{gid} /data"


def _spec_digest(spec: ContainerSpec, image_id: str) -> str:
    """sha256 of everything the container is made of (env included, image by id)."""
    doc = {
        "name": spec.name,
        "image": spec.image,
        "image_id": image_id,
        "network": spec.network,
        "env": dict(sorted(spec.env.items())),
        "memory_bytes": spec.memory_bytes,
        "pids_limit": spec.pids_limit,
        "capabilities": sorted(spec.capabilities),
        "run_as_root": spec.run_as_root,
        "http_port": spec.http_port,
        "http_host_port": spec.http_host_port,
        "tcp_ports": sorted(spec.tcp_ports.items()),
        "udp_ports": sorted(spec.udp_ports.items()),
        "data_volume": spec.data_volume,
        "labels": dict(sorted(spec.labels.items())),
        "rules": 1,  # bump when _host_config changes, so containers are recreated
    }
    if spec.address is not None:  # only then: containers made before the field are kept
        doc["address"] = spec.address
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _explain(e: BaseException) -> str:
    if isinstance(e, docker.errors.APIError):
        return str(e.explanation or e)
    return str(e) or type(e).__name__


def context_digest(context: Path) -> str:
    """sha256 over the build context tree: relative paths, modes, file contents, link targets."""
    h = hashlib.sha256()
    root = context.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted([*dirnames, *filenames]):
            p = Path(dirpath) / name
            st = p.lstat()
            rel = p.relative_to(root).as_posix()
            h.update(f"{rel}\0{stat.S_IMODE(st.st_mode):o}\0{stat.S_IFMT(st.st_mode):o}\0".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(p).encode() + b"\0")
            elif stat.S_ISREG(st.st_mode):
                with p.open("rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                h.update(b"\0")
    return h.hexdigest()


class _ThreadStream(Generic[_T]):
    """An async iterator over a blocking SDK stream read by a thread of its own.

    `opener` runs in that thread and returns the stream (an iterator with `close()`, e.g. the
    SDK's CancellableStream); `convert` maps each raw item to zero or more items, and is called
    once more with None at the end (to flush). Closing the iterator closes the stream, which
    ends the thread's blocking read.
    """

    def __init__(
        self,
        opener: Callable[[], Iterator[Any]],
        convert: Callable[[Any], Iterable[_T]],
        what: str,
        hint: str,
    ) -> None:
        self._opener = opener
        self._convert = convert
        self._what = what
        self._hint = hint
        self._lock = threading.Lock()
        self._handle: Iterator[Any] | None = None
        self._closed = False
        self._done = False
        self._thread: threading.Thread | None = None
        self._queue: asyncio.Queue[tuple[str, Any]] | None = None
        self._pending: deque[_T] = deque()

    def __aiter__(self) -> _ThreadStream[_T]:
        return self

    async def __aenter__(self) -> _ThreadStream[_T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _start(self) -> asyncio.Queue[tuple[str, Any]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._queue = queue

        def put(kind: str, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

        def run() -> None:
            try:
                handle = self._opener()
                with self._lock:
                    self._handle = handle
                    closed = self._closed
                if closed:
                    _close_quietly(handle)
                    put("end", None)
                    return
                for raw in handle:
                    put("item", raw)
                put("end", None)
            except Exception as e:  # reported to the consumer, translated there
                put("end" if self._closed else "error", e)

        self._thread = threading.Thread(target=run, name=f"docker-stream {self._what}", daemon=True)
        self._thread.start()
        return queue

    async def __anext__(self) -> _T:
        while True:
            if self._pending:
                return self._pending.popleft()
            if self._done or self._closed:
                raise StopAsyncIteration
            queue = self._queue or self._start()
            kind, value = await queue.get()
            if kind == "item":
                self._pending.extend(self._convert(value))
            elif kind == "end":
                self._done = True
                self._pending.extend(self._convert(None))
            else:
                self._done = True
                error = (
                    RuntimeNotFound if isinstance(value, docker.errors.NotFound) else RuntimeFailure
                )
                raise error(f"{self._what}: {_explain(value)}; {self._hint}") from value

    async def aclose(self) -> None:
        """Stop the stream and wait (briefly) for its thread to end."""
        with self._lock:
            self._closed = True
            handle = self._handle
        if handle is not None:
            await asyncio.to_thread(_close_quietly, handle)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10.0)
            if self._thread.is_alive():
                log.warning("docker stream thread did not end: %s", self._what)

    def __del__(self) -> None:
        # A consumer that drops the iterator without closing it still ends the thread.
        if not self._closed and self._handle is not None:
            self._closed = True
            _close_quietly(self._handle)


def _close_quietly(handle: object) -> None:
    close = getattr(handle, "close", None)
    if close is None:
        return
    try:
        close()
    except (OSError, ValueError, docker.errors.DockerException) as e:
        log.debug("closing a docker stream: %s", e)


class _LineSplitter:
    """Bytes chunks to text lines (a line may be split across chunks)."""

    def __init__(self) -> None:
        self._buf = b""

    def __call__(self, chunk: bytes | None) -> list[str]:
        if chunk is None:
            rest, self._buf = self._buf, b""
            return [rest.decode(errors="replace")] if rest else []
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        return [line.decode(errors="replace").rstrip("\r") for line in lines]


_ICC = "com.docker.network.bridge.enable_icc"


def app_network_shape(net: Mapping[str, Any], labels: Mapping[str, str]) -> str | None:
    """None if `net` (Docker's description) is an app network as `ensure_network` makes it:
    a bridge, its containers unable to reach each other (icc off), IPv4 only, not internal,
    with `labels`; else what differs."""
    if net.get("Driver") != "bridge":
        return f"driver {net.get('Driver')!r}, not bridge"
    if (net.get("Options") or {}).get(_ICC) != "false":
        return "traffic between its containers allowed (icc on)"
    if net.get("EnableIPv6") or net.get("Internal"):
        return "IPv6 or internal-only, unlike an app network"
    have = net.get("Labels") or {}
    if any(have.get(k) != v for k, v in labels.items()):
        return "labels that are not this app's"
    return None


class SubnetRefused(RuntimeFailure):
    """Docker refused a network's subnet: it overlaps one made meanwhile."""


def network_subnets(api: docker.APIClient) -> list[str]:
    """The IPv4 subnets of every network of the dockerd `api` talks to (a blocking call)."""
    return [
        str(c["Subnet"])
        for n in api.networks()
        for c in (n.get("IPAM") or {}).get("Config") or []
        if c.get("Subnet") and ":" not in str(c["Subnet"])
    ]


def app_ipam(subnet: str) -> IPAMConfig:
    """An app network's addresses in `subnet`: the gateway (the host) first, the app's
    container second (`app_address`), Docker's own picks in the upper half only, so no other
    endpoint ever takes the app's address while its container is away."""
    net = ipaddress.IPv4Network(subnet)
    upper = list(net.subnets(prefixlen_diff=1))[-1] if net.prefixlen < 31 else net
    gateway = str(net[1])
    return IPAMConfig(pool_configs=[IPAMPool(subnet=str(net), gateway=gateway, iprange=str(upper))])


class DockerRuntime:
    """Images, networks, volumes and containers on one dockerd (an async context manager)."""

    def __init__(self, base_url: str, timeout: float = 60.0) -> None:
        self._base_url = base_url
        self._timeout = timeout
        self._client: docker.DockerClient | None = None
        self._streams: docker.APIClient | None = None
        self._helper_image_ready = False

    async def __aenter__(self) -> DockerRuntime:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect (negotiating the API version); raises RuntimeFailure if dockerd is away."""
        if self._client is not None:
            return

        def connect() -> tuple[docker.DockerClient, docker.APIClient]:
            if self._base_url.startswith("unix://"):
                # The SDK leaks its socket when a unix connect fails: try ours first.
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(self._timeout)
                    s.connect(self._base_url.removeprefix("unix://"))
            client = docker.DockerClient(
                base_url=self._base_url, version="auto", timeout=int(self._timeout)
            )
            # Followed logs may be quiet for long: their client has no read timeout.
            streams = docker.APIClient(
                base_url=self._base_url, version=client.api.api_version, timeout=None
            )
            return client, streams

        self._client, self._streams = await self._run(
            connect, f"Docker at {self._base_url} does not answer", "check that dockerd runs"
        )

    async def close(self) -> None:
        client, streams = self._client, self._streams
        self._client = self._streams = None
        if client is not None:
            await asyncio.to_thread(client.close)
        if streams is not None:
            await asyncio.to_thread(streams.close)

    @property
    def _api(self) -> docker.APIClient:
        if self._client is None:
            raise RuntimeFailure(
                f"the Docker runtime for {self._base_url} is not open: use `async with`"
            )
        return self._client.api

    @property
    def _stream_api(self) -> docker.APIClient:
        if self._streams is None:
            raise RuntimeFailure(
                f"the Docker runtime for {self._base_url} is not open: use `async with`"
            )
        return self._streams

    async def _run(self, fn: Callable[[], _T], what: str, hint: str) -> _T:
        """Run a blocking SDK call in a thread; SDK errors become RuntimeFailure(what; hint)."""
        try:
            return await asyncio.to_thread(fn)
        except RuntimeFailure:
            raise
        except docker.errors.NotFound as e:
            raise RuntimeNotFound(f"{what}: {_explain(e)}; {hint}") from e
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise RuntimeFailure(f"{what}: {_explain(e)}; {hint}") from e
        except OSError as e:
            raise RuntimeFailure(f"{what}: {e}; {hint}") from e

    async def ping(self) -> None:
        """Raise RuntimeFailure unless dockerd answers."""
        api = self._api
        await self._run(
            api.ping, f"Docker at {self._base_url} does not answer", "check that dockerd runs"
        )

    # Images

    async def build_image(
        self,
        tag: str,
        context: Path,
        progress: Progress | None = None,
    ) -> str:
        """Build `context` as `tag` (skipped if the tag was built from the same tree): image id."""
        if not (context / "Dockerfile").is_file():
            raise RuntimeFailure(
                f"image {tag}: build context {context} has no Dockerfile; check the app's `build`"
            )
        digest = await self._run(
            lambda: context_digest(context),
            f"image {tag}: could not read build context {context}",
            "check that the folder exists and is readable",
        )
        existing = await self._inspect_image(tag)
        if (
            existing is not None
            and (existing["Config"].get("Labels") or {}).get(LABEL_CONTEXT) == digest
        ):
            return str(existing["Id"])
        stream_api = self._stream_api
        # RUN steps (apt-get from Debian's mirror) need a network: a bridge of their own, so a
        # build never shares a network with an app or the addons.
        network = (await self.ensure_network(BUILD_NETWORK, {"homeport.role": "build"})).name

        def open_build() -> Iterator[Any]:
            it: Iterator[Any] = stream_api.build(
                path=str(context),
                tag=tag,
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
                labels={LABEL_CONTEXT: digest},
                network_mode=network,
            )
            return it

        last: deque[str] = deque(maxlen=20)
        error: str | None = None
        image_id: str | None = None
        stream: _ThreadStream[dict[str, Any]] = _ThreadStream(
            open_build,
            lambda chunk: [] if chunk is None else [chunk],
            f"image {tag} did not build",
            f"check the build context {context}",
        )
        async with stream:
            async for chunk in stream:
                text = chunk.get("stream") or chunk.get("status") or ""
                if "error" in chunk:
                    error = str(chunk["error"]).strip()
                    text = error
                if "aux" in chunk and isinstance(chunk["aux"], dict):
                    image_id = chunk["aux"].get("ID", image_id)
                for line in str(text).splitlines():
                    if line.strip():
                        last.append(line)
                        if progress is not None:
                            await progress(line)
        if error is not None:
            tail = "\n".join(last)
            raise RuntimeFailure(
                f"image {tag} did not build from {context}: {error}; fix the Dockerfile. "
                f"Last lines of output:\n{tail}"
            )
        built = await self._inspect_image(tag)
        if built is None:
            raise RuntimeFailure(f"image {tag}: build ended but no image has that tag; retry")
        if image_id is not None and image_id != built["Id"]:
            log.info("image %s: tag moved on while building (%s)", tag, image_id)
        return str(built["Id"])

    async def _inspect_image(self, tag: str) -> dict[str, Any] | None:
        api = self._api

        def inspect() -> dict[str, Any] | None:
            try:
                found: dict[str, Any] = api.inspect_image(tag)
                return found
            except docker.errors.ImageNotFound:
                return None

        return await self._run(inspect, f"image {tag} could not be inspected", "retry")

    async def image_exists(self, tag: str) -> bool:
        return await self._inspect_image(tag) is not None

    async def ensure_busybox(self) -> None:
        """The local busybox image (base_image.py), imported if missing; looked for on this
        runtime's open client (base_image's own look opens a client: 7 ms, against 1)."""
        if await self.image_exists(BUSYBOX_IMAGE):
            return
        try:
            await ensure_busybox_image(self._base_url)
        except BaseImageError as e:
            raise RuntimeFailure(str(e)) from e

    async def remove_image(self, tag: str) -> None:
        """Remove an image tag; missing is fine, and one still used by a container is kept."""
        api = self._api

        def remove() -> None:
            try:
                api.remove_image(tag, force=False, noprune=False)
            except docker.errors.ImageNotFound:
                return
            except docker.errors.APIError as e:
                if e.status_code == 409:  # a container still uses it
                    log.info("image %s still in use, kept: %s", tag, _explain(e))
                    return
                raise

        await self._run(remove, f"image {tag} could not be removed", "retry later")

    # Networks

    async def _inspect_network(self, name: str) -> dict[str, Any] | None:
        api = self._api

        def inspect() -> dict[str, Any] | None:
            try:
                found: dict[str, Any] = api.inspect_network(name)
            except docker.errors.NotFound:
                return None
            return found if found.get("Name") == name else None

        return await self._run(inspect, f"network {name} could not be inspected", "retry")

    @staticmethod
    def _network_info(name: str, net: dict[str, Any]) -> NetworkInfo:
        configs = (net.get("IPAM") or {}).get("Config") or []
        if not configs or not configs[0].get("Subnet"):
            raise RuntimeFailure(
                f"network {name} has no IPv4 subnet; remove it (docker network rm {name}) "
                "so it is created again"
            )
        return NetworkInfo(
            name=name, subnet=str(configs[0]["Subnet"]), gateway=str(configs[0].get("Gateway", ""))
        )

    async def _create_network(
        self, name: str, labels: Mapping[str, str], ipam: IPAMConfig | None
    ) -> dict[str, Any]:
        """Docker's description of the network made; `SubnetRefused` when its subnet overlaps
        a network made meanwhile (by another client of this dockerd)."""
        api = self._api

        def create() -> dict[str, Any]:
            try:
                api.create_network(
                    name,
                    driver="bridge",
                    options={_ICC: "false"},
                    ipam=ipam,
                    check_duplicate=True,
                    internal=False,
                    enable_ipv6=False,
                    labels=dict(labels),
                )
            except docker.errors.APIError as e:
                why = _explain(e).lower()
                # "Pool overlaps with other one...", or for the very same subnet "failed to
                # allocate gateway (...): Address already in use"
                if ipam is not None and ("overlap" in why or "already in use" in why):
                    raise SubnetRefused(_explain(e)) from e
                if e.status_code != 409:  # 409: created meanwhile by someone else
                    raise
            found: dict[str, Any] = api.inspect_network(name)
            return found

        return await self._run(
            create,
            f"network {name} could not be created",
            "check that the address pool (--default-address-pool) has free subnets",
        )

    async def ensure_network(
        self, name: str, labels: Mapping[str, str], subnet: SubnetSource | None = None
    ) -> NetworkInfo:
        """An app's own bridge network (no traffic between its containers' peers: icc off).

        One found under that name is used only if it is what this makes (`app_network_shape`):
        a network someone else made under our name, or changed by hand, is made again when no
        container is on it, and refused otherwise (an app never joins a network whose rules
        are not ours). A network made here takes its subnet from `subnet` (None: Docker's
        pools); one Docker refuses as taken meanwhile is passed over for the next."""
        net = await self._inspect_network(name)
        if net is not None and (wrong := app_network_shape(net, labels)) is not None:
            if net.get("Containers"):
                raise RuntimeFailure(
                    f"network {name} is not one Homeport made ({wrong}) and has containers on "
                    f"it; disconnect them (docker network disconnect) so it can be made again"
                )
            log.warning("network %s is not one Homeport made (%s): made again", name, wrong)
            await self.remove_network(name)
            net = None
        refused: list[str] = []
        while net is None:
            chosen = None if subnet is None else await subnet(refused)
            try:
                ipam = None if chosen is None else app_ipam(chosen)
                net = await self._create_network(name, labels, ipam)
            except SubnetRefused as e:
                if chosen is None or len(refused) >= 8:
                    raise RuntimeFailure(f"network {name} could not be created: {e}") from e
                refused.append(chosen)
                continue
            if (wrong := app_network_shape(net, labels)) is not None:  # made meanwhile by another
                raise RuntimeFailure(f"network {name} is not one Homeport made ({wrong})")
        return self._network_info(name, net)

    async def subnets_in_use(self) -> list[str]:
        """The IPv4 subnets of every network of this dockerd."""
        api = self._api
        return await self._run(
            lambda: network_subnets(api), "networks could not be listed", "retry"
        )

    async def ensure_services_network(self, name: str, subnet: str) -> NetworkInfo:
        """The network whose gateway address (on the host) addons listen on; no containers."""
        try:
            net_obj = ipaddress.IPv4Network(subnet)
            gateway = str(next(net_obj.hosts()))
        except (ValueError, StopIteration) as e:
            raise RuntimeFailure(
                f"services network {name}: {subnet!r} is not an IPv4 subnet with host "
                "addresses; use e.g. 10.213.0.0/24"
            ) from e
        net = await self._inspect_network(name)
        if net is not None:
            info = self._network_info(name, net)
            if info.subnet == str(net_obj) and info.gateway == gateway:
                return info
            if net.get("Containers"):
                raise RuntimeFailure(
                    f"services network {name} has subnet {info.subnet}, not {subnet}, and "
                    "containers on it; disconnect them so it can be recreated"
                )
            await self.remove_network(name)
        ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=str(net_obj), gateway=gateway)])
        net = await self._create_network(name, {"homeport.role": "services"}, ipam)
        return self._network_info(name, net)

    async def remove_network(self, name: str) -> None:
        api = self._api

        def remove() -> None:
            try:
                api.remove_network(name)
            except docker.errors.NotFound:
                return

        await self._run(
            remove,
            f"network {name} could not be removed",
            "remove the containers still attached to it first",
        )

    async def app_networks(self, name_prefix: str) -> list[tuple[str, str, bool]]:
        """(name, its homeport.app label, made as `ensure_network` makes it) of each labelled
        network whose name starts with `name_prefix`."""
        api = self._api

        def listed() -> list[tuple[str, str, bool]]:
            found = api.networks(filters={"label": "homeport.app"})
            # the label is the network's own, so only the rest of its shape is checked
            return [
                (
                    str(n["Name"]),
                    str((n.get("Labels") or {})["homeport.app"]),
                    app_network_shape(n, {}) is None,
                )
                for n in found
                if str(n["Name"]).startswith(name_prefix)
            ]

        return await self._run(listed, "networks could not be listed", "retry")

    # Volumes

    async def _inspect_volume(self, name: str) -> dict[str, Any] | None:
        api = self._api

        def inspect() -> dict[str, Any] | None:
            try:
                found: dict[str, Any] = api.inspect_volume(name)
                return found
            except docker.errors.NotFound:
                return None

        return await self._run(inspect, f"volume {name} could not be inspected", "retry")

    async def ensure_volume(
        self,
        name: str,
        labels: Mapping[str, str],
        owner: tuple[int, int] | None = (1000, 1000),
    ) -> None:
        """A named local volume; its data folder is chowned to `owner` when it is created."""
        await self._ensure_volume(name, labels, owner)

    async def _ensure_volume(
        self, name: str, labels: Mapping[str, str], owner: tuple[int, int] | None
    ) -> Path:
        vol = await self._inspect_volume(name)
        if vol is not None:
            return Path(vol["Mountpoint"])
        api = self._api

        def create() -> Path:
            created: dict[str, Any] = api.create_volume(
                name=name, driver="local", labels=dict(labels)
            )
            path = Path(created["Mountpoint"])
            if owner is not None:
                os.chown(path, *owner)
            return path

        return await self._run(
            create,
            f"volume {name} could not be created",
            "check free space and that the service runs as root on the Docker host",
        )

    async def remove_volume(self, name: str) -> None:
        api = self._api

        def remove() -> None:
            try:
                api.remove_volume(name, force=True)
            except docker.errors.NotFound:
                return

        await self._run(
            remove, f"volume {name} could not be removed", "remove the containers using it first"
        )

    async def volume_path(self, name: str) -> Path:
        """The volume's folder on the Docker host (Docker only: not part of the port)."""
        vol = await self._inspect_volume(name)
        if vol is None:
            raise RuntimeNotFound(f"volume {name} does not exist; create it first")
        return Path(vol["Mountpoint"])

    async def copy_volume(self, src: str, dst: str) -> None:
        """Replace `dst`'s contents (creating it if missing) by a copy of `src`'s."""
        src_path = await self.volume_path(src)
        vol = await self._inspect_volume(dst)
        dst_path = (
            Path(vol["Mountpoint"])
            if vol is not None
            else await self._ensure_volume(dst, {}, owner=None)
        )

        def copy() -> None:
            _clear(dst_path)
            st = src_path.stat()
            os.chown(dst_path, st.st_uid, st.st_gid)
            os.chmod(dst_path, stat.S_IMODE(st.st_mode))
            # cp -a keeps ownership, modes, times, links and hard links.
            r = subprocess.run(
                ["cp", "-a", "--", f"{src_path}/.", f"{dst_path}/"],
                check=False,
                capture_output=True,
                timeout=3600,
            )
            if r.returncode != 0:
                raise OSError(r.stderr.decode(errors="replace").strip())

        await self._run(
            copy, f"volume {src} could not be copied to {dst}", "check free space and retry"
        )

    async def export_volume(self, name: str, dest: Path) -> None:
        """Write a tar of the volume's contents (owners and modes kept) to `dest`.

        SECURITY.md "Isolation of apps": root never follows a link in an app's volume. `tar`
        runs in a throwaway container that mounts the volume read-only, so every path, even
        one the app swaps for a symlink while it is read, resolves in that container's mount
        namespace, where no host file exists. Files that vanish while it reads are left out.
        """
        await self.volume_path(name)  # RuntimeNotFound when there is no such volume
        what = f"volume {name} could not be exported to {dest}"
        out = Path(await self._run(lambda: tempfile.mkdtemp(dir=dest.parent), what, "retry"))
        try:
            await self._run(lambda: _writable_by_helper(out), what, "retry")
            code, output = await self._helper(
                what,
                ["tar", "-cf", "/out/data.tar", "-C", "/data", "."],
                [
                    Mount("/data", name, type="volume", read_only=True),
                    Mount("/out", str(out), type="bind"),
                ],
                ["DAC_READ_SEARCH"],  # read every file, whoever owns it; the mount is read-only
            )
            lines = [line for line in output.splitlines() if line.strip()]
            problems = [line for line in lines if not any(v in line for v in _VANISHED)]
            if code != 0 and (code != 1 or problems):
                raise RuntimeFailure(
                    f"{what}: tar exited with {code}: {'; '.join(problems[-5:])}; "
                    "check free space and retry"
                )
            if code:
                log.warning("%s: %d entries vanished while it was read", name, len(lines) - 1)
            await self._run(lambda: (out / "data.tar").replace(dest), what, "retry")
        finally:
            await asyncio.to_thread(shutil.rmtree, out, True)

    async def import_volume(
        self, name: str, src: Path, owner: tuple[int, int] | None = None
    ) -> None:
        """Replace the volume's contents by those of the tar `src` (owners and modes kept).

        The tar is cleaned first (volume_tar.clean_tar): a member named out of the volume
        refuses it before any change; device files, FIFOs, setuid/setgid bits, hard links and
        symlinks leading out are left out. A throwaway container then empties the volume and
        unpacks the clean copy, so the writes too resolve where no host file exists.
        """
        await self.volume_path(name)  # RuntimeNotFound when there is no such volume
        what = f"volume {name} could not be restored from {src}"
        work = Path(await self._run(lambda: tempfile.mkdtemp(dir=src.parent), what, "retry"))
        try:
            clean = work / "clean.tar"
            try:
                dropped = await asyncio.to_thread(clean_tar, src, clean, owner)
            except RuntimeFailure as e:
                raise RuntimeFailure(f"{what}: {e.message}") from e
            if dropped:
                log.warning(
                    "%s: %d entries of %s left out: %s",
                    name,
                    len(dropped),
                    src,
                    "; ".join(dropped[:10]),
                )
            code, output = await self._helper(
                what,
                ["sh", "-c", _restore_script(owner)],
                [
                    Mount("/data", name, type="volume"),
                    Mount("/in.tar", str(clean), type="bind", read_only=True),
                ],
                ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"],  # owners and modes as in the tar
            )
            if code != 0:
                tail = "; ".join(output.splitlines()[-5:])
                raise RuntimeFailure(f"{what}: tar exited with {code}: {tail}; check free space")
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)

    async def _helper(
        self, what: str, argv: list[str], mounts: list[Mount], caps: list[str]
    ) -> tuple[int, str]:
        """Run argv as root in a throwaway container of the local busybox image (base_image.py,
        never pulled): no network, read-only root, no new privileges, no capability but `caps`.
        Its exit code and output."""
        if not self._helper_image_ready:
            try:
                await self.ensure_busybox()
            except RuntimeFailure as e:
                raise RuntimeFailure(f"{what}: {e}") from e
            self._helper_image_ready = True
        api, waiter = self._api, self._stream_api

        def run() -> tuple[int, str]:
            host_config = api.create_host_config(
                mounts=mounts,
                network_mode="none",
                read_only=True,
                cap_drop=["ALL"],
                cap_add=caps,
                security_opt=["no-new-privileges"],
                pids_limit=16,
                mem_limit=_HELPER_MEMORY,
                memswap_limit=_HELPER_MEMORY,
            )
            cid = api.create_container(
                image=BUSYBOX_IMAGE,
                command=argv,
                user="0:0",
                labels={"homeport.role": "volume-helper"},
                host_config=host_config,
                network_disabled=True,
                detach=True,
            )["Id"]
            try:
                api.start(cid)
                code = int(waiter.wait(cid, timeout=_HELPER_TIMEOUT_S)["StatusCode"])
                output: bytes = api.logs(cid, stdout=True, stderr=True, tail=200)
                return code, output.decode(errors="replace")
            finally:
                with contextlib.suppress(docker.errors.APIError):
                    api.remove_container(cid, force=True)

        return await self._run(run, what, "check that dockerd runs and retry")

    # Containers

    def _host_config(self, spec: ContainerSpec) -> dict[str, Any]:
        """SECURITY.md "Isolation of apps": the rules every app container runs under."""
        bindings: dict[str, list[tuple[str, int | None]]] = {}
        if spec.http_port is not None:
            bindings.setdefault(f"{spec.http_port}/tcp", []).append(
                ("127.0.0.1", spec.http_host_port)
            )
        for cport, hport in spec.tcp_ports.items():
            bindings.setdefault(f"{cport}/tcp", []).append(("0.0.0.0", hport))  # noqa: S104
        for cport, hport in spec.udp_ports.items():
            bindings.setdefault(f"{cport}/udp", []).append(("0.0.0.0", hport))  # noqa: S104
        port_bindings = {
            port: [(ip,) if hp is None else (ip, hp) for ip, hp in binds]
            for port, binds in bindings.items()
        }
        mounts = []
        if spec.data_volume is not None:
            mounts.append(
                Mount(target=DATA_PATH, source=spec.data_volume, type="volume", read_only=False)
            )
        config: dict[str, Any] = self._api.create_host_config(
            read_only=True,
            tmpfs={"/tmp": _TMPFS, "/run": _TMPFS},  # noqa: S108 (the container's own tmpfs)
            mounts=mounts,
            cap_drop=["ALL"],
            cap_add=list(spec.capabilities) or None,
            security_opt=["no-new-privileges:true"],
            mem_limit=spec.memory_bytes,
            memswap_limit=spec.memory_bytes,
            pids_limit=spec.pids_limit,
            network_mode=spec.network,
            port_bindings=port_bindings,
            restart_policy={"Name": "unless-stopped"},
            log_config=LogConfig(type="json-file", config={"max-size": "10m", "max-file": "3"}),
            init=True,  # tini, bind-mounted from the host: works in FROM-scratch images too
        )
        return config

    async def _inspect_container(self, name: str) -> dict[str, Any] | None:
        api = self._api

        def inspect() -> dict[str, Any] | None:
            try:
                found: dict[str, Any] = api.inspect_container(name)
                return found
            except docker.errors.NotFound:
                return None

        return await self._run(inspect, f"container {name} could not be inspected", "retry")

    async def create_container(self, spec: ContainerSpec) -> str:
        """Create the container (same spec: the existing one is kept; else recreated): its id."""
        image = await self._inspect_image(spec.image)
        if image is None:
            raise RuntimeNotFound(
                f"container {spec.name}: image {spec.image} not found; build or pull it first"
            )
        digest = _spec_digest(spec, str(image["Id"]))
        existing = await self._inspect_container(spec.name)
        if existing is not None:
            if (existing["Config"].get("Labels") or {}).get(LABEL_SPEC) == digest:
                return str(existing["Id"])
            await self.remove_container(spec.name)
        labels = {**spec.labels, LABEL_SPEC: digest}
        if spec.http_port is not None:
            labels[LABEL_HTTP_PORT] = str(spec.http_port)
        ports: list[int | tuple[int, str]] = []
        if spec.http_port is not None:
            ports.append(spec.http_port)
        ports += [p for p in spec.tcp_ports if p != spec.http_port]
        ports += [(p, "udp") for p in spec.udp_ports]
        api = self._api

        def create() -> str:
            host_config = self._host_config(spec)
            endpoint = api.create_endpoint_config(ipv4_address=spec.address)
            created = api.create_container(
                image=spec.image,
                name=spec.name,
                environment=dict(spec.env),
                user=None if spec.run_as_root else APP_USER,
                labels=labels,
                ports=ports or None,
                host_config=host_config,
                networking_config=api.create_networking_config({spec.network: endpoint}),
                detach=True,
            )
            return str(created["Id"])

        return await self._run(
            create,
            f"container {spec.name} could not be created",
            f"check image {spec.image}, network {spec.network} and the volume exist",
        )

    async def start(self, name: str) -> None:
        api = self._api
        await self._run(
            lambda: api.start(name),
            f"container {name} could not start",
            f"see `docker logs {name}` and the app's manifest",
        )

    async def stop(self, name: str, timeout: float = 10) -> None:  # noqa: ASYNC109 (docker's grace period)
        api = self._api
        await self._run(
            lambda: api.stop(name, timeout=max(0, round(timeout))),
            f"container {name} could not be stopped",
            "retry, or remove it",
        )

    async def restart(self, name: str) -> None:
        api = self._api
        await self._run(
            lambda: api.restart(name, timeout=10),
            f"container {name} could not restart",
            f"see `docker logs {name}`",
        )

    async def remove_container(self, name: str) -> None:
        """Remove (forced, even running); a missing container is fine."""
        api = self._api

        def remove() -> None:
            try:
                api.remove_container(name, force=True, v=False)
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as e:
                if e.status_code == 409 and "already in progress" in str(e.explanation):
                    return
                raise

        await self._run(remove, f"container {name} could not be removed", "retry")

    @staticmethod
    def _state(info: dict[str, Any]) -> ContainerState:
        st = info.get("State") or {}
        status = str(st.get("Status", "unknown"))
        labels = (info.get("Config") or {}).get("Labels") or {}
        net = info.get("NetworkSettings") or {}
        http_host_port: int | None = None
        http_port = labels.get(LABEL_HTTP_PORT)
        if http_port is not None:
            binds = (net.get("Ports") or {}).get(f"{http_port}/tcp") or []
            for b in binds:
                if b.get("HostIp") == "127.0.0.1" and b.get("HostPort"):
                    http_host_port = int(b["HostPort"])
        ip: str | None = None
        for endpoint in (net.get("Networks") or {}).values():
            if endpoint.get("IPAddress"):
                ip = str(endpoint["IPAddress"])
                break
        started = st.get("StartedAt")
        exited = status in ("exited", "dead")
        return ContainerState(
            name=str(info.get("Name", "")).lstrip("/"),
            running=bool(st.get("Running")),
            status=status,
            exit_code=int(st.get("ExitCode", 0)) if exited else None,
            oom_killed=bool(st.get("OOMKilled")),
            started_at=None if not started or started == _ZERO_TIME else str(started),
            http_host_port=http_host_port,
            ip=ip,
            image_id=str(info.get("Image", "")),
        )

    async def state(self, name: str) -> ContainerState | None:
        info = await self._inspect_container(name)
        return None if info is None else self._state(info)

    async def containers(self, labels: Mapping[str, str]) -> list[ContainerState]:
        """Every container (running or not) carrying all of `labels`."""
        api = self._api

        def list_() -> list[dict[str, Any]]:
            found = api.containers(
                all=True, filters={"label": [f"{k}={v}" for k, v in labels.items()]}
            )
            out = []
            for c in found:
                try:
                    out.append(api.inspect_container(c["Id"]))
                except docker.errors.NotFound:  # removed meanwhile
                    continue
            return out

        infos = await self._run(list_, f"containers with labels {dict(labels)} not listed", "retry")
        return [self._state(i) for i in infos]

    async def logs(self, name: str, tail: int = 100) -> list[str]:
        """The last `tail` lines of output (stdout and stderr interleaved)."""
        api = self._api

        def read() -> bytes:
            out: bytes = api.logs(name, stdout=True, stderr=True, stream=False, tail=tail)
            return out

        raw = await self._run(read, f"logs of container {name} not read", "check that it exists")
        return raw.decode(errors="replace").splitlines()

    async def logs_since(
        self, name: str, tail: int, since: datetime | None
    ) -> list[tuple[str, str]]:
        """(cursor, line) pairs: the last `tail` lines, or up to `tail` lines written after
        `since` (a cursor an earlier answer gave: the timestamp of its last line)."""
        api = self._api

        def read() -> bytes:
            kw: dict[str, Any] = {"timestamps": True, "tail": tail}
            if since is not None:
                kw["since"] = since.timestamp()
            out: bytes = api.logs(name, stdout=True, stderr=True, stream=False, **kw)
            return out

        raw = await self._run(read, f"logs of container {name} not read", "check that it exists")
        lines: list[tuple[str, str]] = []
        for row in raw.decode(errors="replace").splitlines():
            stamp, _, text = row.partition(" ")
            try:
                when = datetime.fromisoformat(stamp.replace("Z", "+00:00")[:32])
            except ValueError:
                continue
            if since is not None and when <= since:
                continue  # Docker's `since` is inclusive and whole-second
            lines.append((stamp, text))
        return lines[-tail:]

    def follow_logs(self, name: str, tail: int = 0) -> RuntimeStream[str]:
        """New output lines as they come; ends when the container stops or on `aclose()`."""
        api = self._stream_api

        def opener() -> Iterator[Any]:
            it: Iterator[Any] = api.logs(
                name, stdout=True, stderr=True, stream=True, follow=True, tail=tail
            )
            return it

        return _ThreadStream(
            opener, _LineSplitter(), f"logs of container {name}", "check that it exists"
        )

    async def stats(self, name: str) -> Stats:
        """Memory in use (without page cache, as `docker stats` shows) and CPU time so far."""
        api = self._api

        def read() -> dict[str, Any]:
            out: dict[str, Any] = api.stats(name, stream=False, one_shot=True)
            return out

        raw = await self._run(read, f"stats of container {name} not read", "check that it runs")
        mem = raw.get("memory_stats") or {}
        detail = mem.get("stats") or {}
        cache = int(detail.get("total_inactive_file", detail.get("inactive_file", 0)))
        usage = int(mem.get("usage", 0))
        cpu = ((raw.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage", 0)
        return Stats(
            memory_bytes=max(0, usage - cache) if usage > cache else usage,
            memory_limit=int(mem.get("limit", 0)),
            cpu_seconds=int(cpu) / 1e9,
        )

    def events(self, labels: Mapping[str, str] | None = None) -> RuntimeStream[RuntimeEvent]:
        """start/die/oom events of containers carrying all of `labels`; close it to stop."""
        api = self._stream_api
        filters: dict[str, Any] = {"type": "container", "event": list(_EVENT_KINDS)}
        if labels:
            filters["label"] = [f"{k}={v}" for k, v in labels.items()]

        def opener() -> Iterator[Any]:
            it: Iterator[Any] = api.events(decode=True, filters=filters)
            return it

        def convert(raw: dict[str, Any] | None) -> list[RuntimeEvent]:
            if raw is None:
                return []
            kind = raw.get("Action") or raw.get("status")
            if kind not in _EVENT_KINDS:
                return []
            attrs: dict[str, str] = (raw.get("Actor") or {}).get("Attributes") or {}
            code = attrs.get("exitCode")
            return [
                RuntimeEvent(
                    kind=EventKind(kind),
                    container=str(attrs.get("name", "")),
                    labels={k: v for k, v in attrs.items() if k not in _EVENT_ATTRS},
                    exit_code=int(code) if code is not None and kind == "die" else None,
                )
            ]

        return _ThreadStream(opener, convert, "Docker events", "check that dockerd runs")


def _clear(path: Path) -> None:
    """Remove everything inside `path` (not `path` itself)."""
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


if TYPE_CHECKING:  # mypy checks that the adapter implements the port
    _port: type[ContainerRuntime] = DockerRuntime


def _writable_by_helper(out: Path) -> None:
    """The helper's root has no CAP_DAC_OVERRIDE: unless we are root, it gets `out` (we keep
    CAP_CHOWN under systemd) or, without that, write access to it; the parents stay ours."""
    if os.geteuid() == 0:
        return
    try:
        os.chown(out, 0, 0)
    except PermissionError:
        os.chmod(out, 0o733)  # noqa: S103 - inside our 0700 folder: no one else reaches it
