"""Query handlers of the apps service: the catalog and its icons, installed apps, snapshots,
logs, and the latest resource use of running apps."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from libs.contracts.errors import Internal
from libs.events import context
from libs.events.handlers import query
from services.apps.catalog import Catalog, CatalogError
from services.apps.config import AppsConfig
from services.apps.container import ContainerRuntime, RuntimeFailure
from services.apps.errors import AppNotFound, InvalidRequest
from services.apps.health import AppStats
from services.apps.manifest import Manifest
from services.apps.names import Names
from services.apps.peers import Peers
from services.apps.state import app_origin
from services.apps.streams import AppStreams

__all__ = ["ICON_MAX_BYTES", "ICON_TYPES", "Queries", "app_view", "manifest_view"]

log = logging.getLogger("services.apps.queries")

# An icon travels base64 in one bus reply (NATS allows 1 MiB by default): bigger ones are a
# catalog defect, refused rather than cut.
ICON_MAX_BYTES = 256 * 1024
ICON_TYPES = {".svg": "image/svg+xml", ".png": "image/png"}


def manifest_view(m: Manifest, versions: list[str] | None = None) -> dict[str, Any]:
    """What the catalog shows of an app version."""
    view = {
        "id": m.id,
        "version": str(m.version),
        "title": m.title,
        "tagline": m.tagline,
        "description": m.description,
        "tags": list(m.tags),
        "changelog": m.changelog,
        "http_port": m.http_port,
        "memory_limit": m.memory_limit,
        "addons": sorted(m.addons),
        "single_user": m.single_user,
        "sign_in": m.sign_in,
        "post_install_message": m.post_install_message or None,
        "update_needs_approval": m.update_needs_approval,
        "min_platform_version": str(m.min_platform_version) if m.min_platform_version else None,
        "has_icon": m.icon is not None,
        "ports": [
            {
                "name": p.name,
                "protocol": protocol,
                "container_port": p.container_port,
                "title": p.title,
                "default_host_port": p.default_host_port,
            }
            for protocol, specs in (("tcp", m.tcp_ports), ("udp", m.udp_ports))
            for p in specs
        ],
    }
    if versions is not None:
        view["versions"] = versions
    return view


def ports_view(r: asyncpg.Record, manifest: Manifest | None) -> list[dict[str, Any]]:
    """The server's ports the app publishes, with what the manifest says of each (its
    container port and title; None when the catalog no longer has the app's version)."""
    out = []
    for protocol in ("tcp", "udp"):
        declared = {} if manifest is None else manifest.ports_of(protocol)
        for name, port in sorted(json.loads(r[f"{protocol}_ports"]).items()):
            spec = declared.get(name)
            out.append(
                {
                    "name": name,
                    "protocol": protocol,
                    "container_port": spec.container_port if spec else None,
                    "host_port": port,
                    "title": spec.title if spec else "",
                }
            )
    return out


def app_view(
    r: asyncpg.Record, https_port: int = 443, manifest: Manifest | None = None
) -> dict[str, Any]:
    """What users see of an installed app (`manifest`: its version's, for its ports)."""
    return {
        "app_id": str(r["app_id"]),
        "manifest_id": r["manifest_id"],
        "version": r["version"],
        "location": r["location"],
        "domain": r["domain"],
        "url": app_origin(r["location"], r["domain"], https_port),
        "access": json.loads(r["access"]),
        "memory_bytes": r["memory_bytes"],
        "state": r["state"],
        "run_state": "running" if r["running"] else "stopped",
        "health": r["health"],
        "error": r["error"],
        "task_id": str(r["task_id"]) if r["task_id"] else None,
        "operation": r["operation"],
        "awaiting_approval": r["awaiting_approval"],
        "target_version": r["target_version"],
        "clone_of": str(r["clone_of"]) if r["clone_of"] else None,
        "http_port": r["http_port"],
        "upstream": r["upstream"],
        "ports": ports_view(r, manifest),
        "created_at": r["created_at"].isoformat(),
        "updated_at": r["updated_at"].isoformat(),
    }


def _app_id(payload: Mapping[str, Any]) -> str:
    return str(uuid.UUID(payload["app_id"]))  # a UUID: the contract says so


class Queries:
    """The query side of the apps service: each `@query` method is one bus query."""

    def __init__(
        self,
        cfg: AppsConfig,
        apps: AppStreams,
        runtime: ContainerRuntime,
        catalog: Catalog,
        peers: Peers,
        latest_stats: Callable[[], Sequence[AppStats]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.apps = apps
        self.pool = apps.store.pool
        self.runtime = runtime
        self.catalog = catalog
        self.peers = peers
        self.latest_stats = latest_stats  # the health monitor's last round (health.py)

    def _container(self, app_id: str) -> str:
        return Names(self.cfg.name_prefix, app_id).container

    def _manifest(self, r: asyncpg.Record) -> Manifest | None:
        """The manifest of the app's version, if the catalog still has it."""
        try:
            entry = self.catalog.entry(r["manifest_id"], r["version"], include_prereleases=True)
        except CatalogError:
            return None
        return entry.manifest

    @query("catalog")
    async def catalog_search(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        found = self.catalog.search(payload.get("text") or None, payload.get("tag") or None)
        return {"items": [manifest_view(m) for m in found], "tags": self.catalog.tags()}

    @query("catalog_app")
    async def catalog_app(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        manifest_id = payload["manifest_id"]
        try:
            entry = self.catalog.entry(manifest_id, payload.get("version"))
            versions = [str(v) for v in self.catalog.versions(manifest_id)]
        except CatalogError as e:
            raise AppNotFound(str(e), field="manifest_id") from None
        return manifest_view(entry.manifest, versions)

    @query("catalog_icon")
    async def catalog_icon(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The icon of a catalog app version (latest by default): base64 bytes, media type and
        the SHA-256 the signed index pins them to (bytes that differ are refused)."""
        try:
            entry = self.catalog.entry(payload["manifest_id"], payload.get("version"))
        except CatalogError as e:
            raise AppNotFound(str(e), field="manifest_id") from None
        icon, pinned = entry.icon, entry.icon_sha256
        if icon is None or pinned is None:
            raise AppNotFound(f"{entry.app_id} {entry.version} has no icon", field="manifest_id")
        media_type = ICON_TYPES.get(icon.suffix.lower())
        if media_type is None:  # the manifest allows only these suffixes
            raise Internal(f"the icon of {entry.app_id} {entry.version} is not .svg or .png")
        try:
            data = await asyncio.to_thread(_read_at_most, icon, ICON_MAX_BYTES)
        except OSError as e:
            log.error("cannot read the icon %s: %s", icon, e)
            raise Internal(f"the icon of {entry.app_id} {entry.version} cannot be read") from None
        if data is None:
            log.error(
                "the icon %s is over %d bytes: the catalog should not list it", icon, ICON_MAX_BYTES
            )
            raise Internal(f"the icon of {entry.app_id} {entry.version} is too large to serve")
        if hashlib.sha256(data).hexdigest() != pinned:
            log.error("the icon %s differs from the signed catalog index: not served", icon)
            raise Internal(f"the icon of {entry.app_id} {entry.version} differs from the catalog")
        return {
            "manifest_id": entry.app_id,
            "version": str(entry.version),
            "media_type": media_type,
            "sha256": pinned,
            "data": base64.b64encode(data).decode("ascii"),
        }

    @query("apps")
    async def apps_list(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Admins (and the platform, and the gateway's edge) see every app; a user sees the
        apps their access list lets them open. Who asks is the bus context's to say, never the
        payload's."""
        rows = await self.pool.fetch(
            "SELECT * FROM apps.apps WHERE state <> 'uninstalled' ORDER BY location, domain"
        )
        caller = context.current()
        if not caller.is_admin and not caller.is_gateway_itself:
            groups = await self.peers.group_ids(caller.actor)
            rows = [r for r in rows if _may_open(json.loads(r["access"]), caller.actor, groups)]
        port = self.cfg.edge_https_port
        return {"items": [app_view(r, port, self._manifest(r)) for r in rows]}

    @query("app")
    async def app(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """One app, with the names of its environment variables and its container's status."""
        app_id = _app_id(payload)
        row = await self.pool.fetchrow(
            "SELECT * FROM apps.apps WHERE app_id = $1 AND state <> 'uninstalled'", app_id
        )
        if row is None:
            raise AppNotFound(f"no app {app_id}", field="app_id")
        view = app_view(row, self.cfg.edge_https_port, self._manifest(row))
        # the names only: values are sealed and never leave the service
        view["env_names"] = sorted((await self.apps.load(app_id)).env)
        state = await self.runtime.state(self._container(app_id))
        view["container"] = (
            None
            if state is None
            else {"status": state.status, "running": state.running, "port": state.http_host_port}
        )
        return view

    @query("snapshots")
    async def snapshots(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        app_id = _app_id(payload)
        rows = await self.pool.fetch(
            "SELECT * FROM apps.snapshots WHERE app_id = $1"
            " AND reason NOT IN ('clone', 'backup')"
            " ORDER BY created_at DESC",
            app_id,
        )
        return {
            "items": [
                {
                    "snapshot_id": str(r["snapshot_id"]),
                    "version": r["version"],
                    "reason": r["reason"],
                    "size_bytes": r["size_bytes"],
                    "created_at": r["created_at"].isoformat(),
                }
                for r in rows
            ]
        }

    @query("logs")
    async def logs(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The last `tail` lines, or the lines after `since` (a cursor a previous answer gave)."""
        app_id = _app_id(payload)
        tail = int(payload.get("tail", 100))
        since = payload.get("since")
        exists = await self.pool.fetchval(
            "SELECT true FROM apps.apps WHERE app_id = $1 AND state <> 'uninstalled'", app_id
        )
        if not exists:
            raise AppNotFound(f"no app {app_id}", field="app_id")
        name = self._container(app_id)
        try:
            lines = await self.runtime.logs_since(name, tail, _cursor(since))
        except RuntimeFailure:
            state = await self.runtime.state(name)
            if state is not None and state.status not in ("removing", "dead"):
                raise
            lines = []  # its container is being replaced (configure, update, restore)
        cursor = lines[-1][0] if lines else since
        return {"lines": [line for _, line in lines], "cursor": cursor}

    @query("stats")
    async def stats(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The latest resource use of each running installed app, as the stats loop last saw it
        (no Docker call here); empty until its first round."""
        found = self.latest_stats() if self.latest_stats is not None else ()
        return {
            "items": [
                {
                    "app_id": s.app_id,
                    "location": s.location,
                    "memory_bytes": s.memory_bytes,
                    "memory_limit": s.memory_limit,
                    "cpu_seconds": s.cpu_seconds,
                    "collected_at": s.collected_at.isoformat(),
                }
                for s in found
            ]
        }


def _read_at_most(path: Path, limit: int) -> bytes | None:
    """The file's bytes, or None when it holds more than `limit`."""
    with path.open("rb") as f:
        data = f.read(limit + 1)
    return None if len(data) > limit else data


def _cursor(since: str | None) -> datetime | None:
    if since is None:
        return None
    try:
        when = datetime.fromisoformat(since)
    except ValueError:
        raise InvalidRequest(
            "since must be a cursor from an earlier answer", field="since"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _may_open(access: Mapping[str, Any], user_id: str, groups: set[str]) -> bool:
    if access.get("all_users"):
        return True
    if user_id in access.get("user_ids", []):
        return True
    return bool(groups & set(access.get("groups", [])))
