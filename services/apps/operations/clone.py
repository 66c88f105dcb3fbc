"""clone: a new app with a copy of an installed app's data, at its own location.

An install (its request names the source in `clone_of`) that first takes a snapshot of the
source (step `seed`, its id recorded) and, once the addons exist, puts that snapshot's data into
the new app's volume and database (step `data`, reading the recorded snapshot id back).
An install `from_snapshot` (a clone from a backup) is the same, its seed a folder the backup
service put under `<snapshots>/incoming/`: `seed` moves it into the new app's snapshots.
"""

from __future__ import annotations

import asyncio

from libs.events.envelope import uuid7
from services.apps import events as ev
from services.apps.errors import OperationFailed
from services.apps.operations import install
from services.apps.operations.base import Detail, Operation, Run, Step
from services.apps.operations.common import put_back, take_snapshot
from services.apps.snapshots import FolderProblem

__all__ = ["CLONE"]


async def seed(run: Run) -> Detail:
    """A snapshot of the source app (reason "clone": not offered for restore)."""
    t, s = run.tools, run.s
    if s.from_snapshot is not None:
        return await _from_backup(run, s.from_snapshot)
    assert s.clone_of is not None
    source = await t.apps.load(s.clone_of)
    if not source.exists:
        raise OperationFailed(f"the app to clone ({s.clone_of}) is gone", "no_source")
    snapshot_id = s.seed_snapshot or str(uuid7())
    taken = await take_snapshot(t, source, snapshot_id, "clone")
    await t.apps.append(source.app_id, [taken], None)
    return {"snapshot_id": snapshot_id}


async def _from_backup(run: Run, snapshot_id: str) -> Detail:
    """The backup's folder moved into the new app's snapshots, checked again, recorded."""
    t, s = run.tools, run.s
    if s.snapshot(snapshot_id) is None:
        try:
            await asyncio.to_thread(t.snapshots.move_incoming, snapshot_id, s.app_id)
            meta, size = await asyncio.to_thread(
                t.snapshots.check_folder, t.snapshots.folder(s.app_id, snapshot_id)
            )
        except (FolderProblem, OSError) as e:
            raise OperationFailed(f"the backup to start from: {e}", "no_snapshot") from None
        if (meta["manifest_id"], meta["version"]) != (s.manifest_id, s.app_version):
            raise OperationFailed("the backup to start from is of another app", "no_snapshot")
        taken = ev.AppSnapshotTaken(
            app_id=s.app_id,
            snapshot_id=snapshot_id,
            manifest_id=s.manifest_id,
            version=s.app_version,
            reason="clone",
            size_bytes=size,
        )
        await t.apps.append(s.app_id, [taken], None)
    return {"snapshot_id": snapshot_id}


async def data(run: Run) -> Detail:
    """The source's snapshot (recorded by `seed`) put into the new app's volume and database."""
    s = run.s
    assert s.operation is not None
    snapshot_id = str(s.operation.detail["snapshot_id"])
    manifest = run.tools.entry(s.manifest_id, s.app_version).manifest
    await put_back(run.tools, s, manifest, snapshot_id, s.clone_of)
    return {}


CLONE = Operation(
    "install",
    (
        Step("seed", 10, "copying the app to clone", seed),
        Step("dns", 2, "pointing the app's name at this server", install.dns),
        Step("certificate", 1, "asking for the app's certificate", install.certificate),
        Step("image", 32, "building the app's image", install.image),
        Step("network", 5, "creating the app's network", install.network),
        Step("storage", 5, "creating the app's data volume", install.storage),
        Step(
            "addons",
            10,
            "setting up the app's database, directory and mail accounts",
            install.addons,
        ),
        Step("data", 5, "copying the data of the cloned app", data),
        Step("container", 10, "creating the app's container", install.container),
        Step("ready", 20, "starting the app and waiting for it to answer", install.ready),
    ),
    outcome=install.installed,
    announce=install.announce,
)
