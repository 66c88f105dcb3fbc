"""rebuild: an app of a platform restored onto a new machine, made again with its backup's data.

`homeport restore` brings the event log back and puts each app's backup as a snapshot folder
in `<snapshots>/<app_id>/<snapshot_id>/`, listed in `<apps_dir>/restore-pending.json`
(`{app_id: snapshot_id}`). At its start the apps service records `AppRebuildRequested` for each
listed app installed in the log and drops its entry (`request_pending`); the driver then runs
this table like any operation (a crash resumes it). The steps are the install's: the network,
the volume, the addons with the credentials the log already holds (the addon database role is
made again with the recorded password, so the app's settings stay right), the image, then the
snapshot's data and the container.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from pathlib import Path

from libs.events.tasks import Task
from services.apps import events as ev
from services.apps.errors import ChangedMeanwhile, OperationFailed
from services.apps.operations import install
from services.apps.operations.base import Detail, Operation, Run, Step, Tools
from services.apps.operations.common import put_back
from services.apps.snapshots import FolderProblem
from services.apps.state import AppState, State

__all__ = ["PENDING_FILE", "REBUILD", "request_pending"]

log = logging.getLogger("services.apps.operations")

PENDING_FILE = "restore-pending.json"


def _snapshot_id(s: AppState) -> str:
    assert s.operation is not None
    return str(s.operation.detail["snapshot_id"])


async def snapshot(run: Run) -> Detail:
    """The restored folder checked and recorded as the app's snapshot (reason "backup")."""
    t, s = run.tools, run.s
    snapshot_id = _snapshot_id(s)
    if s.snapshot(snapshot_id) is None:
        folder = t.snapshots.folder(s.app_id, snapshot_id)
        try:
            meta, size = await asyncio.to_thread(t.snapshots.check_folder, folder)
        except (FolderProblem, OSError) as e:
            raise OperationFailed(
                f"the restored snapshot {snapshot_id}: {e}", "no_snapshot"
            ) from None
        if meta["manifest_id"] != s.manifest_id:
            raise OperationFailed(
                f"the restored snapshot {snapshot_id} is of another app", "no_snapshot"
            )
        taken = ev.AppSnapshotTaken(
            app_id=s.app_id,
            snapshot_id=snapshot_id,
            manifest_id=s.manifest_id,
            version=s.app_version,
            reason="backup",
            size_bytes=size,
        )
        await t.apps.append(s.app_id, [taken], None)
    return {}


async def stop(run: Run) -> Detail:
    """A container left from before (not on a new machine) stops before its data is replaced."""
    name = run.tools.names(run.s.app_id).container
    if await run.tools.runtime.state(name) is not None:
        await run.tools.runtime.stop(name)
    return {}


async def data(run: Run) -> Detail:
    s = run.s
    manifest = run.tools.entry(s.manifest_id, s.app_version).manifest
    await put_back(run.tools, s, manifest, _snapshot_id(s))
    return {}


def rebuilt(s: AppState, task_id: str) -> object:
    return ev.AppRebuilt(
        app_id=s.app_id, task_id=task_id, snapshot_id=_snapshot_id(s), version=s.app_version
    )


async def announce(t: Tools, s: AppState, task: Task) -> str:
    title = t.entry(s.manifest_id, s.app_version).manifest.title
    return f"{title} at {s.location} rebuilt from its backup ({s.app_version})"


REBUILD = Operation(
    "rebuild",
    (
        Step("snapshot", 2, "checking the app's restored data", snapshot),
        Step("dns", 5, "pointing the app's name at this server", install.dns),
        Step("certificate", 1, "asking for the app's certificate", install.certificate),
        Step("image", 32, "building the app's image", install.image),
        Step("network", 5, "creating the app's network", install.network),
        Step("storage", 5, "creating the app's data volume", install.storage),
        Step("addons", 10, "setting up the app's database, directory and mail", install.addons),
        Step("stop", 2, "stopping the app", stop),
        Step("data", 13, "putting back the app's data", data),
        Step("container", 10, "creating the app's container", install.container),
        Step("ready", 15, "starting the app and waiting for it to answer", install.ready),
    ),
    outcome=rebuilt,
    announce=announce,
)


async def request_pending(t: Tools) -> list[str]:
    """Record a rebuild for each app `restore-pending.json` lists (installed in the log),
    dropping each entry once recorded; the ids of the apps to drive."""
    path = t.cfg.apps_dir / PENDING_FILE
    pending = await asyncio.to_thread(_read_pending, path)
    started = []
    for app_id, snapshot_id in list(pending.items()):
        s = await t.apps.load(app_id)
        if s.operation is not None and s.operation.kind == "rebuild":
            started.append(app_id)  # recorded before a crash: the driver resumes it
        elif s.exists and s.state is State.installed and s.operation is None:
            await _request(t, s, snapshot_id)
            started.append(app_id)
        else:
            log.warning(
                "restore-pending.json lists app %s (%s): not an installed app, not rebuilt",
                app_id,
                s.state.value if s.exists else "not in the log",
            )
        del pending[app_id]
        await asyncio.to_thread(_write_pending, path, pending)
    return started


async def _request(t: Tools, s: AppState, snapshot_id: str) -> None:
    version = s.app_version
    try:
        meta, _ = await asyncio.to_thread(
            t.snapshots.check_folder, t.snapshots.folder(s.app_id, snapshot_id)
        )
        t.entry(s.manifest_id, str(meta["version"]))
        version = str(meta["version"])
    except Exception as e:  # the snapshot step says what is wrong, in the app's task
        log.warning("app %s: restored snapshot %s: %s", s.app_id, snapshot_id, e)
    task = await Task.start(
        t.apps.store,
        kind="app.rebuild",
        title=f"Rebuild {s.location} from its backup",
        owner="system",
        target=ev.app_stream(s.app_id),
    )
    request = ev.AppRebuildRequested(
        app_id=s.app_id, task_id=task.id, snapshot_id=snapshot_id, version=version
    )
    for _ in range(5):  # the health monitor may record at the same time
        try:
            await t.apps.append(s.app_id, [request], s.version)
            return
        except ChangedMeanwhile:
            s = await t.apps.load(s.app_id)
    await t.apps.append(s.app_id, [request], s.version)


def _read_pending(path: Path) -> dict[str, str]:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.error("%s cannot be read (%s): no app is rebuilt", path, e)
        return {}
    if not isinstance(value, dict):
        log.error("%s is not an object {app_id: snapshot_id}: no app is rebuilt", path)
        return {}
    out = {}
    for app_id, snapshot_id in value.items():
        try:
            out[str(uuid_of(app_id))] = str(uuid_of(snapshot_id))
        except ValueError:
            log.error("%s: %r: %r is not an app id and a snapshot id", path, app_id, snapshot_id)
    return out


def uuid_of(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("not text")
    return str(uuid.UUID(value))


def _write_pending(path: Path, pending: dict[str, str]) -> None:
    if not pending:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(pending))
    os.replace(tmp, path)
