"""update: an installed app to a newer catalog version, its data kept.

A snapshot is taken first (its id recorded); a failure rolls the app back to the old version
and, once the new container had started, to the snapshot's data.
"""

from __future__ import annotations

from libs.events.envelope import uuid7
from libs.events.tasks import Task
from services.apps import events as ev
from services.apps.catalog import CatalogEntry
from services.apps.operations.base import Detail, Operation, Run, Step, Tools
from services.apps.operations.common import build, create_container, take_snapshot, wait_ready
from services.apps.state import AppState

__all__ = ["UPDATE"]


def _target(t: Tools, s: AppState) -> CatalogEntry:
    assert s.operation is not None
    return t.entry(s.manifest_id, str(s.operation.detail["to_version"]))


async def snapshot(run: Run) -> Detail:
    t, s = run.tools, run.s
    snapshot_id = str(uuid7())
    taken = await take_snapshot(t, s, snapshot_id, "update")
    await t.apps.append(s.app_id, [taken], s.version)
    return {"snapshot_id": snapshot_id}


async def image(run: Run) -> Detail:
    return {
        "image": await build(run.tools, _target(run.tools, run.s), run.task, run.end, run.start)
    }


async def container(run: Run) -> Detail:
    return await create_container(run.tools, run.s, _target(run.tools, run.s).manifest)


async def ready(run: Run) -> Detail:
    await wait_ready(run.tools, run.s, _target(run.tools, run.s).manifest)
    return {}


def updated(s: AppState, task_id: str) -> object:
    assert s.operation is not None
    version = str(s.operation.detail["to_version"])
    return ev.AppUpdated(app_id=s.app_id, task_id=task_id, version=version)


async def announce(t: Tools, s: AppState, task: Task) -> str:
    return f"updated to {s.app_version}"


UPDATE = Operation(
    "update",
    (
        Step("snapshot", 25, "taking a snapshot of the app's data", snapshot),
        Step("image", 35, "building the new version", image),
        Step("container", 15, "replacing the container", container),
        Step("ready", 25, "waiting for the new version to answer", ready),
    ),
    outcome=updated,
    announce=announce,
    rolls_back=True,
)
