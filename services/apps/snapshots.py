"""Snapshots of an app's data: its volume as a tar file and its addon database as a dump.

A snapshot lives in `<apps_dir>/snapshots/<app_id>/<snapshot_id>/` (`data.tar`,
`postgresql.dump`, `snapshot.json`). It is written under a `.partial` name and renamed when
complete, so a snapshot folder is never half-written. The runtime reads and writes the volume
only from throwaway containers and cleans a tar before putting it back (runtime.py
`export_volume`/`import_volume`, volume_tar.py), so no host file ever enters or leaves a snapshot.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Collection
from pathlib import Path

from services.apps.addons.postgresql import AddonPostgres
from services.apps.container import ContainerRuntime
from services.apps.errors import OperationFailed
from services.apps.names import Names

__all__ = ["Snapshots"]


class Snapshots:
    """Takes, puts back and deletes the snapshots of apps."""

    def __init__(
        self,
        root: Path,
        runtime: ContainerRuntime,
        addon_pg: AddonPostgres | None,
        name_prefix: str,
    ) -> None:
        self.root = root
        self._runtime = runtime
        self._addon_pg = addon_pg
        self._prefix = name_prefix

    def folder(self, app_id: str, snapshot_id: str) -> Path:
        return self.root / app_id / snapshot_id

    async def take(
        self,
        app_id: str,
        snapshot_id: str,
        *,
        addons: Collection[str],
        manifest_id: str,
        version: str,
        reason: str,
    ) -> int:
        """The app's volume and addon database dumped into the snapshot folder; its size."""
        folder = self.folder(app_id, snapshot_id)
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True, mode=0o700)
        if "localstorage" in addons:
            await self._runtime.export_volume(
                Names(self._prefix, app_id).volume, partial / "data.tar"
            )
        if "postgresql" in addons:
            await self.addon_pg().dump(app_id, partial / "postgresql.dump")
        meta = {"manifest_id": manifest_id, "version": version, "reason": reason}
        (partial / "snapshot.json").write_text(json.dumps(meta))
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        return sum(p.stat().st_size for p in folder.iterdir())

    async def put_back(self, app_id: str, snapshot_id: str, source: str | None = None) -> None:
        """The app's volume and database replaced by a snapshot's (of `source`, for a clone)."""
        folder = self.folder(source or app_id, snapshot_id)
        if not folder.is_dir():
            raise OperationFailed(f"snapshot {snapshot_id} has no files at {folder}", "no_snapshot")
        if (folder / "data.tar").exists():
            await self._runtime.import_volume(
                Names(self._prefix, app_id).volume, folder / "data.tar"
            )
        if (folder / "postgresql.dump").exists():
            await self.addon_pg().restore(app_id, folder / "postgresql.dump")

    async def delete_all(self, app_id: str) -> None:
        """Every snapshot of the app (an uninstall)."""
        await asyncio.to_thread(shutil.rmtree, self.root / app_id, True)

    def addon_pg(self) -> AddonPostgres:
        """The addon Postgres, or the step fails saying how to set it up."""
        if self._addon_pg is None:
            raise OperationFailed(
                "the postgresql addon is not set up: set HP_ADDON_PG_DSN for the apps service",
                "addon_unavailable",
            )
        return self._addon_pg
