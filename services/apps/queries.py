"""Query handlers of the apps service: the catalog, installed apps, snapshots, logs."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg

from libs.events import context
from libs.events.bus import BusClient, Invalid, NotFound
from libs.events.context import Context
from services.apps.catalog import Catalog, CatalogError
from services.apps.engine import Engine
from services.apps.manifest import Manifest

__all__ = ["Queries", "app_view", "manifest_view"]

MAX_LOG_LINES = 5000


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
        "post_install_message": m.post_install_message or None,
        "update_needs_approval": m.update_needs_approval,
        "min_platform_version": str(m.min_platform_version) if m.min_platform_version else None,
    }
    if versions is not None:
        view["versions"] = versions
    return view


def app_view(r: asyncpg.Record, host_port: int | None = None) -> dict[str, Any]:
    """What users see of an installed app."""
    return {
        "app_id": str(r["app_id"]),
        "manifest_id": r["manifest_id"],
        "version": r["version"],
        "location": r["location"],
        "domain": r["domain"],
        "url": f"https://{r['location']}.{r['domain']}",
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
        "created_at": r["created_at"].isoformat(),
        "updated_at": r["updated_at"].isoformat(),
    }


def _app_id(payload: Mapping[str, Any]) -> str:
    value = payload.get("app_id")
    try:
        if isinstance(value, str):
            return str(uuid.UUID(value))
    except ValueError:
        pass
    raise Invalid("app_id must be an app id (a UUID)", field="app_id")


class Queries:
    """The query side of the apps service."""

    def __init__(self, engine: Engine, catalog: Catalog, bus: BusClient | None) -> None:
        self.engine = engine
        self.catalog = catalog
        self.bus = bus
        self.pool = engine.store.pool

    async def catalog_search(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        text = payload.get("text")
        tag = payload.get("tag")
        for name, value in (("text", text), ("tag", tag)):
            if value is not None and (not isinstance(value, str) or len(value) > 200):
                raise Invalid(f"{name} must be text of at most 200 characters", field=name)
        found = self.catalog.search(text or None, tag or None)
        return {"items": [manifest_view(m) for m in found], "tags": self.catalog.tags()}

    async def catalog_app(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        manifest_id = payload.get("manifest_id")
        version = payload.get("version")
        if not isinstance(manifest_id, str):
            raise Invalid("manifest_id is required", field="manifest_id")
        try:
            entry = self.catalog.entry(manifest_id, version if isinstance(version, str) else None)
            versions = [str(v) for v in self.catalog.versions(manifest_id)]
        except CatalogError as e:
            raise NotFound(str(e), field="manifest_id") from None
        return manifest_view(entry.manifest, versions)

    async def _group_ids(self, user_id: str) -> set[str]:
        """The groups a user belongs to (asked of identity, as the platform)."""
        if self.bus is None:
            return set()
        ctx = context.current()
        answer = await self.bus.query(
            "identity", "groups", {}, ctx=Context("system", ctx.correlation_id, None, None)
        )
        return {
            str(g["group_id"]) for g in answer.get("items", []) if user_id in g.get("members", [])
        }

    async def apps(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Admins see every app; a user sees the apps their access list lets them open."""
        is_admin = payload.get("is_admin") is True
        rows = await self.pool.fetch(
            "SELECT * FROM apps.apps WHERE state <> 'uninstalled' ORDER BY location, domain"
        )
        if not is_admin:
            user = context.current().actor
            groups = await self._group_ids(user)
            rows = [r for r in rows if _may_open(json.loads(r["access"]), user, groups)]
        return {"items": [app_view(r) for r in rows]}

    async def app(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        app_id = _app_id(payload)
        row = await self.pool.fetchrow(
            "SELECT * FROM apps.apps WHERE app_id = $1 AND state <> 'uninstalled'", app_id
        )
        if row is None:
            raise NotFound(f"no app {app_id}", field="app_id")
        view = app_view(row)
        state = await self.engine.runtime.state(self.engine.names(app_id).container)
        view["container"] = (
            None
            if state is None
            else {"status": state.status, "running": state.running, "port": state.http_host_port}
        )
        return view

    async def snapshots(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        app_id = _app_id(payload)
        rows = await self.pool.fetch(
            "SELECT * FROM apps.snapshots WHERE app_id = $1 AND reason <> 'clone'"
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

    async def logs(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The last `tail` lines, or the lines after `since` (a cursor a previous answer gave)."""
        app_id = _app_id(payload)
        tail = payload.get("tail", 100)
        if not isinstance(tail, int) or isinstance(tail, bool) or not 1 <= tail <= MAX_LOG_LINES:
            raise Invalid(f"tail must be a whole number 1-{MAX_LOG_LINES}", field="tail")
        since = payload.get("since")
        if since is not None and not isinstance(since, str):
            raise Invalid("since must be a cursor from an earlier answer", field="since")
        exists = await self.pool.fetchval(
            "SELECT true FROM apps.apps WHERE app_id = $1 AND state <> 'uninstalled'", app_id
        )
        if not exists:
            raise NotFound(f"no app {app_id}", field="app_id")
        lines = await self.engine.runtime.logs_since(
            self.engine.names(app_id).container, tail, _cursor(since)
        )
        cursor = lines[-1][0] if lines else since
        return {"lines": [line for _, line in lines], "cursor": cursor}


def _cursor(since: str | None) -> datetime | None:
    if since is None:
        return None
    try:
        when = datetime.fromisoformat(since)
    except ValueError:
        raise Invalid("since must be a cursor from an earlier answer", field="since") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _may_open(access: Mapping[str, Any], user_id: str, groups: set[str]) -> bool:
    if access.get("all_users"):
        return True
    if user_id in access.get("user_ids", []):
        return True
    return bool(groups & set(access.get("groups", [])))
