"""restore: an app's data, and the version it was taken with, from one of its snapshots."""

from __future__ import annotations

from libs.events.tasks import Task
from services.apps import events as ev
from services.apps.catalog import CatalogEntry
from services.apps.errors import OperationFailed
from services.apps.operations.base import Detail, Operation, Run, Step, Tools
from services.apps.operations.common import build, create_container, put_back, wait_ready
from services.apps.state import AppState

__all__ = ["RESTORE"]


def _snapshot_id(s: AppState) -> str:
    assert s.operation is not None
    return str(s.operation.detail["snapshot_id"])


def _entry(t: Tools, s: AppState) -> CatalogEntry:
    snap = s.snapshot(_snapshot_id(s))
    if snap is None:
        raise OperationFailed("that snapshot is not one of this app's", "no_snapshot")
    return t.entry(s.manifest_id, str(snap["version"]))


async def image(run: Run) -> Detail:
    return {"image": await build(run.tools, _entry(run.tools, run.s), run.task, run.end, run.start)}


async def stop(run: Run) -> Detail:
    await run.tools.runtime.stop(run.tools.names(run.s.app_id).container)
    return {}


async def data(run: Run) -> Detail:
    await put_back(run.tools, run.s, _entry(run.tools, run.s).manifest, _snapshot_id(run.s))
    return {}


async def container(run: Run) -> Detail:
    return await create_container(run.tools, run.s, _entry(run.tools, run.s).manifest)


async def ready(run: Run) -> Detail:
    await wait_ready(run.tools, run.s, _entry(run.tools, run.s).manifest)
    return {}


def restored(s: AppState, task_id: str) -> object:
    snapshot_id = _snapshot_id(s)
    snap = s.snapshot(snapshot_id)
    version = str(snap["version"]) if snap else s.app_version
    return ev.AppRestored(
        app_id=s.app_id, task_id=task_id, snapshot_id=snapshot_id, version=version
    )


async def announce(t: Tools, s: AppState, task: Task) -> str:
    return f"restored ({s.app_version})"


RESTORE = Operation(
    "restore",
    (
        Step("image", 30, "building the snapshot's version", image),
        Step("stop", 10, "stopping the app", stop),
        Step("data", 30, "putting back the snapshot's data", data),
        Step("container", 10, "recreating the container", container),
        Step("ready", 20, "waiting for the app to answer", ready),
    ),
    outcome=restored,
    announce=announce,
)
