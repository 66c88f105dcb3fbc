"""Pieces several operations share: a snapshot of the app's data, building an image, (re)creating
the container, waiting for the app's first healthy answer, the app's host name (its DNS record,
its certificate, whether the edge serves it) and rolling back a failed update or configuration."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import replace
from functools import partial
from typing import Any

from libs.events.tasks import Task
from services.apps import events as ev
from services.apps.base_image import ensure_base_image
from services.apps.catalog import CatalogEntry
from services.apps.container import APP_OWNER, ContainerSpec, NetworkInfo
from services.apps.errors import OperationFailed
from services.apps.manifest import Manifest, PortSpec
from services.apps.names import image_tag
from services.apps.operations.base import Detail, Tools
from services.apps.state import AppState, app_origin
from services.apps.subnets import app_address

__all__ = [
    "app_network",
    "app_settings",
    "build",
    "create_container",
    "ensure_certificate",
    "forget_certificate",
    "point",
    "put_back",
    "roll_back",
    "take_snapshot",
    "unpoint",
    "wait_ready",
    "wait_served",
]

log = logging.getLogger("services.apps.operations")

_BUILD_STEP = re.compile(r"^Step (\d+)/(\d+) : ")
_FROM = re.compile(r"^\s*FROM\s+(\S+)", re.IGNORECASE | re.MULTILINE)
DEBIAN_BASE = "homeport/debian-base:bookworm"
BUSYBOX_BASE = "homeport/busybox:local"
SERVED_POLL = 0.3


# -- snapshots ---------------------------------------------------------------------------------


async def put_back(
    t: Tools, s: AppState, manifest: Manifest, snapshot_id: str, source: str | None = None
) -> None:
    """A snapshot's data (of `source`, for a clone) into app `s`: every file of the volume is
    the app's user's unless the app runs as root (then the owners in the tar stay)."""
    owner = None if manifest.run_as_root else APP_OWNER
    await t.snapshots.put_back(s.app_id, snapshot_id, source, owner=owner)


async def take_snapshot(
    t: Tools, s: AppState, snapshot_id: str, reason: str, task_id: str | None = None
) -> ev.AppSnapshotTaken:
    """A snapshot of app `s`'s data and databases, and the event that records it (to append)."""
    manifest = t.entry(s.manifest_id, s.app_version).manifest
    size = await t.snapshots.take(
        s.app_id,
        snapshot_id,
        addons=manifest.addons,
        manifest_id=s.manifest_id,
        version=s.app_version,
        reason=reason,
        app=app_settings(t, s),
    )
    return ev.AppSnapshotTaken(
        app_id=s.app_id,
        snapshot_id=snapshot_id,
        manifest_id=s.manifest_id,
        version=s.app_version,
        reason=reason,
        size_bytes=size,
        task_id=task_id,
    )


def app_settings(t: Tools, s: AppState) -> dict[str, Any]:
    """What brings the app back as it was (a snapshot's app.json): env values in clear."""
    return {
        "app_id": s.app_id,
        "manifest_id": s.manifest_id,
        "version": s.app_version,
        "location": s.location,
        "domain": s.domain,
        "access": s.access,
        "memory_bytes": s.memory_bytes,
        "env": {name: t.unseal(value) for name, value in s.env.items()},
    }


# -- image and container ----------------------------------------------------------------------


async def build(t: Tools, entry: CatalogEntry, task: Task, end: int, start: int = 0) -> str:
    """Build the entry's image (its base image first, if missing); progress from `start` (or
    where the task is, if past it) up to `end`."""
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
    low = max(task.percent, start)
    high = max(low, end - 1)

    async def say(line: str) -> None:
        log.debug("build %s: %s", entry.manifest.id, line)
        m = _BUILD_STEP.match(line)
        if m is not None:  # "Step 3/9 : RUN apt-get ...": progress within this step's share
            done, total = int(m.group(1)), max(1, int(m.group(2)))
            percent = low + (high - low) * (done - 1) // total
            await task.progress(max(task.percent, percent), f"building {title}: {line[:120]}")

    # asked of the runtime's open client first: base_image's own look opens one (7 ms)
    if DEBIAN_BASE in bases and not await t.runtime.image_exists(DEBIAN_BASE):
        await task.progress(low, "preparing the Debian base image (first time only)")
        await ensure_base_image(t.cfg.docker_host, t.cfg.base_cache, say)
    if BUSYBOX_BASE in bases:
        await t.runtime.ensure_busybox()
    await task.progress(max(task.percent, low), f"building {title}")
    return await t.runtime.build_image(image_tag(entry.manifest), entry.context, say)


def _env(t: Tools, s: AppState) -> dict[str, str]:
    env = {
        "HOMEPORT_APP_ID": s.app_id,
        "HOMEPORT_APP_DOMAIN": f"{s.location}.{s.domain}",
        "HOMEPORT_APP_ORIGIN": app_origin(s.location, s.domain, t.cfg.edge_https_port),
    }
    for sealed in s.addons.values():
        env.update(t.unseal_json(sealed))
    for name, value in s.env.items():
        env[name] = t.unseal(value)
    return env


def _published(ports: tuple[PortSpec, ...], chosen: Mapping[str, int]) -> dict[int, int]:
    """Container port -> the host port the app has for it; a manifest port the app has none
    for (one a newer version added, until the app is configured) is not published."""
    return {p.container_port: int(chosen[p.name]) for p in ports if p.name in chosen}


async def app_network(t: Tools, app_id: str) -> NetworkInfo:
    """The app's own network, made if missing (in the next subnet of the pool, if there is one)."""
    name = t.names(app_id).network
    source = None if t.subnets is None else partial(t.subnets.take, name)
    return await t.runtime.ensure_network(name, {"homeport.app": app_id}, source)


def _address(t: Tools, net: NetworkInfo) -> str | None:
    """The app container's fixed address, in a network of the pool's only (see subnets.py)."""
    if t.subnets is None or not t.subnets.holds(net.subnet):
        return None
    return app_address(net.subnet)


def _spec(
    t: Tools, s: AppState, manifest: Manifest, env: Mapping[str, str], address: str | None = None
) -> ContainerSpec:
    names = t.names(s.app_id)
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
        address=address,
        tcp_ports=_published(manifest.tcp_ports, s.tcp_ports),
        udp_ports=_published(manifest.udp_ports, s.udp_ports),
        data_volume=names.volume if "localstorage" in manifest.addons else None,
        labels={
            "homeport.app": s.app_id,
            "homeport.prefix": t.cfg.name_prefix,
            "homeport.manifest": manifest.id,
            "homeport.version": str(manifest.version),
        },
    )


async def create_container(t: Tools, s: AppState, manifest: Manifest) -> Detail:
    """Create (or keep) and start the container; its HTTP host port stays the same for the
    app's whole life, and so does its address in a network of the pool. The edge's upstream
    (`upstream`) is that address, else the host port (a network made before the pool)."""
    name = t.names(s.app_id).container
    if s.http_host_port is None:  # chosen once: Docker would pick a new one at each start
        s = replace(s, http_host_port=await _free_http_port(t))
    address = _address(t, await app_network(t, s.app_id))
    await t.runtime.create_container(_spec(t, s, manifest, _env(t, s), address))
    if s.running:
        await t.runtime.start(name)
    upstream = None
    if address is not None and manifest.http_port is not None:
        upstream = f"{address}:{manifest.http_port}"
    return {"http_host_port": s.http_host_port, "upstream": upstream}


async def wait_ready(t: Tools, s: AppState, manifest: Manifest) -> None:
    """Until the health check answers 2xx/3xx; fail early if the container stops."""
    name = t.names(s.app_id).container
    if not s.running:
        return
    timeout = t.cfg.ready_timeout
    start = time.monotonic()
    deadline = start + timeout
    last = "no answer yet"
    import aiohttp  # here: the apps service loads aiohttp only when an app starts

    port = s.http_host_port  # recorded by the container step
    # when the container's state was last asked for: first after the probe's first answer,
    # which is most often the healthy one (a state read less on every install)
    looked = start
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        while (now := time.monotonic()) < deadline:
            # the state (a Docker round trip) every 0.1 s; the probe, cheaper, each time
            if port is None or now - looked >= 0.1:
                looked = now
                st = await t.runtime.state(name)
                if st is None or (not st.running and st.status in ("exited", "dead")):
                    tail = "\n".join((await t.runtime.logs(name, 20)) if st else [])
                    raise OperationFailed(
                        f"the app's container stopped (exit code {st.exit_code if st else '?'})"
                        f" before it answered its health check; last log lines:\n{tail}"[:2000],
                        "app_crashed",
                    )
                port = port or st.http_host_port
            if port:
                url = f"http://127.0.0.1:{port}{manifest.health_check_path}"
                try:
                    async with http.get(url, allow_redirects=False) as r:
                        if 200 <= r.status < 400:
                            return
                        last = f"HTTP {r.status}"
                except (aiohttp.ClientError, TimeoutError) as e:
                    last = type(e).__name__
            # most apps answer within a second: look often at first, then less
            await asyncio.sleep(0.01 if now - start < 3 else 0.25)
    raise OperationFailed(
        f"the app did not answer {manifest.health_check_path} healthily within"
        f" {timeout:.0f} s (last: {last})",
        "not_ready",
    )


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _free_http_port(t: Tools) -> int:
    """A TCP port free on 127.0.0.1 now that no app holds as a host port (a stopped app's is
    free on the host, yet it is that app's)."""
    rows = await t.apps.store.pool.fetch("SELECT host_port FROM apps.ports WHERE protocol = 'tcp'")
    held = {int(r["host_port"]) for r in rows}
    port = _free_port()
    for _ in range(50):
        if port not in held:
            break
        port = _free_port()
    return port


# -- the app's host name: DNS record, certificate, served by the edge --------------------------
# An app on a domain the dns service manages gets an A (and AAAA) record pointing at the
# domain's server address, owned by the app; a record Homeport did not create at that name fails
# the step, naming it. A host of a registered domain other than the local one gets its
# certificate from certs (the edge makes its own self-signed one for local hosts).


async def point(t: Tools, s: AppState, location: str) -> Detail:
    """The DNS record of `location`.<domain>, when dns manages the domain."""
    if s.domain == t.cfg.default_domain:
        return {}
    view = await t.peers.dns_domain(s.domain)
    if view is None:
        return {}
    name = f"{location}.{s.domain}"
    await t.peers.point(name, view, f"app-{s.app_id}")
    return {"dns_name": name}


async def unpoint(t: Tools, s: AppState, location: str) -> None:
    if s.domain == t.cfg.default_domain:
        return
    if await t.peers.dns_domain(s.domain) is None:
        return
    await t.peers.unpoint(f"{location}.{s.domain}", f"app-{s.app_id}")


async def ensure_certificate(t: Tools, s: AppState, location: str) -> Detail:
    """The certificate of `location`.<domain>, when the domain is registered and not local."""
    if s.domain == t.cfg.local_domain or await t.peers.dns_domain(s.domain) is None:
        return {}
    host = f"{location}.{s.domain}"
    await t.peers.ensure_certificate(host)
    return {"certificate": host}


async def forget_certificate(t: Tools, s: AppState, location: str) -> None:
    if s.domain != t.cfg.local_domain:
        await t.peers.forget_certificate(f"{location}.{s.domain}")


async def wait_served(t: Tools, s: AppState, task: Task) -> bool:
    """Until the edge serves the app's host (every 0.3 s up to `edge_wait_seconds`); False
    when that time passes, or when no edge answers."""
    host = f"{s.location}.{s.domain}"
    deadline = time.monotonic() + t.cfg.edge_wait_seconds
    told = False
    while True:
        served = await t.peers.edge_serves(host)
        if served is None:
            return False
        if served:
            return True
        if time.monotonic() >= deadline:
            log.warning("the edge does not serve %s after %.0f s", host, t.cfg.edge_wait_seconds)
            return False
        if not told:
            await task.progress(task.percent, f"waiting for the edge to serve {host}")
            told = True
        await asyncio.sleep(SERVED_POLL)


# -- rolling back -------------------------------------------------------------------------------


async def roll_back(t: Tools, s: AppState, task: Task, end: int) -> None:
    """Bring the app back to its last good version (and data, for an update); the progress
    stays below `end`, where the failed step's share ended."""
    assert s.operation is not None
    await task.progress(task.percent, "rolling back")
    entry = t.entry(s.manifest_id, s.app_version)
    await build(t, entry, task, end)
    snapshot_id = s.operation.detail.get("snapshot_id")
    if s.operation.kind == "update" and snapshot_id and "container" in s.operation.steps:
        await t.runtime.stop(t.names(s.app_id).container)
        await put_back(t, s, entry.manifest, str(snapshot_id))
    await create_container(t, s, entry.manifest)
    await wait_ready(t, s, entry.manifest)
