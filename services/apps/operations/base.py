"""What an operation is made of: a table of steps, each called by reference.

A `Step` names its share of the progress bar, the message the task shows while it runs, and its
function. A step's function gets a `Run` (the app as recorded before the step, the task, the
tools) and returns a small detail the driver records with the step (`AppStepCompleted`); later
steps, and a resumed run, read it back from the app's state instead of doing the work again.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from libs.events.sealing import Keyring
from libs.events.tasks import Task
from services.apps.addons.postgresql import AddonPostgres
from services.apps.catalog import Catalog, CatalogEntry
from services.apps.config import AppsConfig
from services.apps.container import ContainerRuntime, NetworkInfo
from services.apps.events import app_stream
from services.apps.names import Names
from services.apps.peers import Peers
from services.apps.snapshots import Snapshots
from services.apps.state import AppState
from services.apps.streams import AppStreams
from services.apps.subnets import SubnetPool

__all__ = ["Detail", "Operation", "Run", "Step", "Tools"]

Detail = dict[str, Any]


@dataclass(frozen=True)
class Tools:
    """What the steps of operations work with."""

    cfg: AppsConfig
    apps: AppStreams
    keys: Keyring
    runtime: ContainerRuntime
    catalog: Catalog
    peers: Peers
    snapshots: Snapshots
    addon_pg: AddonPostgres | None
    services: NetworkInfo  # the network whose gateway address the addons listen on
    subnets: SubnetPool | None = None  # the app networks' subnets; None: Docker's pools

    def names(self, app_id: str) -> Names:
        return Names(self.cfg.name_prefix, app_id)

    def entry(self, manifest_id: str, version: str) -> CatalogEntry:
        return self.catalog.entry(manifest_id, version, include_prereleases=True)

    def seal(self, app_id: str, value: str) -> str:
        return self.keys.seal_for(app_stream(app_id), value)

    def unseal(self, value: str) -> str:
        return self.keys.unseal_str(value)

    def unseal_json(self, value: str) -> dict[str, str]:
        return dict(json.loads(self.unseal(value)))


@dataclass(frozen=True)
class Run:
    """One step being run: the app as recorded before it, its task, where its share ends."""

    tools: Tools
    s: AppState
    task: Task
    end: int  # the percent the task reaches when this step is done
    start: int = 0  # the percent where this step's share begins


StepFunction = Callable[[Run], Awaitable[Detail]]
Outcome = Callable[[AppState, str], object]
Announce = Callable[[Tools, AppState, Task], Awaitable[str]]


@dataclass(frozen=True)
class Step:
    """One row of an operation's table."""

    name: str
    share: int  # percent of the progress bar
    message: str  # what the task says while the step runs
    function: StepFunction


@dataclass(frozen=True)
class Operation:
    """An operation: its steps in order, the event that ends it, and what the task says then.

    `outcome(state, task_id)` is the event recorded after the last step; `announce` runs once
    it is recorded and gives the task's final message (it may wait, e.g. for the edge).
    `rolls_back`: a failure puts the app back as it was (its old version and data).
    """

    kind: str
    steps: tuple[Step, ...]
    outcome: Outcome
    announce: Announce
    rolls_back: bool = False

    def __post_init__(self) -> None:
        total = sum(s.share for s in self.steps)
        if total != 100:
            raise ValueError(f"the steps of {self.kind} share {total}% of the bar, not 100%")
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.kind} names a step twice: {names}")

    def ends(self) -> list[tuple[Step, int, int]]:
        """Each step with the percent the bar is at when it starts and when it is done."""
        out, at = [], 0
        for step in self.steps:
            out.append((step, at, at + step.share))
            at += step.share
        return out
