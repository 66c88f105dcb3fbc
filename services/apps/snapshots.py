"""Snapshots of an app's data: its volume as a tar file and its addon database as a dump.

A snapshot lives in `<apps_dir>/snapshots/<app_id>/<snapshot_id>/` (`data.tar`,
`postgresql.dump`, `snapshot.json`, and `app.json`: what brings the app back as it was —
manifest id, version, location, domain, access, memory, env with its values in clear; the
folders are 0700 and a backup of them is encrypted). It is written under a `.partial` name and
renamed when complete, so a snapshot folder is never half-written. A folder the backup service
wrote (an app's restored backup, or one under `incoming/` that seeds a new app) is checked by
`check_folder` before anything uses it: only the known file names, regular files, no links, a
readable snapshot.json. The runtime reads and writes the volume
only from throwaway containers and cleans a tar before putting it back (runtime.py
`export_volume`/`import_volume`, volume_tar.py), so no host file ever enters or leaves a snapshot.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from services.apps.addons.postgresql import AddonPostgres
from services.apps.container import ContainerRuntime
from services.apps.errors import OperationFailed
from services.apps.names import Names

__all__ = ["FILES", "INCOMING", "FolderProblem", "Snapshots"]

FILES = frozenset({"data.tar", "postgresql.dump", "snapshot.json", "app.json"})
INCOMING = "incoming"  # <snapshots>/incoming/<id>/: a backup's data that seeds a new app
MAX_JSON = 1 << 20


class FolderProblem(Exception):
    """A snapshot folder that is not one (missing, a link, an unknown or odd file)."""


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
        app: Mapping[str, Any],
    ) -> int:
        """The app's volume and addon database dumped into the snapshot folder, with `app`
        (its settings, env in clear) as app.json; the folder's size."""
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
        _write_private(partial / "app.json", json.dumps(dict(app)))
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        return sum(p.stat().st_size for p in folder.iterdir())

    async def put_back(
        self,
        app_id: str,
        snapshot_id: str,
        source: str | None = None,
        *,
        owner: tuple[int, int] | None = None,
    ) -> None:
        """The app's volume and database replaced by a snapshot's (of `source`, for a clone);
        `owner` (uid, gid) gets every file of the volume (None: the owners in the tar)."""
        folder = self.folder(source or app_id, snapshot_id)
        if not folder.is_dir():
            raise OperationFailed(f"snapshot {snapshot_id} has no files at {folder}", "no_snapshot")
        if (folder / "data.tar").exists():
            await self._runtime.import_volume(
                Names(self._prefix, app_id).volume, folder / "data.tar", owner
            )
        if (folder / "postgresql.dump").exists():
            await self.addon_pg().restore(app_id, folder / "postgresql.dump")

    def check_folder(self, folder: Path) -> tuple[dict[str, Any], int]:
        """The snapshot.json of a folder written by someone else, and the folder's size;
        FolderProblem unless it holds only known regular files (no links) and readable JSON."""
        try:
            st = folder.lstat()
        except FileNotFoundError:
            raise FolderProblem("there is no such snapshot folder") from None
        if not stat.S_ISDIR(st.st_mode):
            raise FolderProblem("the snapshot is not a plain folder")
        if folder.parent.is_symlink():
            raise FolderProblem("the snapshot's parent folder is a link")
        with os.scandir(folder) as entries:
            found = [(e.name, e.stat(follow_symlinks=False)) for e in entries]
        size = 0
        for name, est in found:
            if name not in FILES:
                raise FolderProblem(f"the snapshot holds an unknown file {name[:80]!r}")
            if not stat.S_ISREG(est.st_mode) or est.st_nlink != 1:
                raise FolderProblem(f"the snapshot's {name} is not a plain file")
            size += est.st_size
        meta = _read_json(folder / "snapshot.json")
        if meta is None:
            raise FolderProblem("the snapshot has no readable snapshot.json")
        if not all(isinstance(meta.get(k), str) for k in ("manifest_id", "version")):
            raise FolderProblem("the snapshot's snapshot.json names no manifest_id and version")
        if (folder / "app.json").exists() and _read_json(folder / "app.json") is None:
            raise FolderProblem("the snapshot's app.json is not a JSON object")
        return meta, size

    def incoming(self, snapshot_id: str) -> Path:
        return self.root / INCOMING / snapshot_id

    def move_incoming(self, snapshot_id: str, app_id: str) -> None:
        """`incoming/<id>/` becomes the app's snapshot `<id>` (already moved: nothing)."""
        target = self.folder(app_id, snapshot_id)
        source = self.incoming(snapshot_id)
        if target.is_dir() and not source.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        source.rename(target)

    async def forget(self, app_id: str, snapshot_id: str) -> None:
        """One snapshot's folder deleted."""
        await asyncio.to_thread(shutil.rmtree, self.folder(app_id, snapshot_id), True)

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


def _write_private(path: Path, text: str) -> None:
    """A new file only its owner may read (app.json holds the app's env in clear)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with open(fd, "w") as f:
        f.write(text)


def _read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON object from a regular file (not following a link), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        with open(fd, "rb") as f:
            raw = f.read(MAX_JSON + 1)
        value = json.loads(raw) if len(raw) <= MAX_JSON else None
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
