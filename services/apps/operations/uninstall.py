"""uninstall: container, DNS record, certificate, addon databases and accounts, data, network
and snapshots go; then the app's sealing key is destroyed, so its sealed values in the log can
no longer be read."""

from __future__ import annotations

import asyncio

from libs.events.tasks import Task
from services.apps import events as ev
from services.apps.operations.base import Detail, Operation, Run, Step, Tools
from services.apps.operations.common import forget_certificate, unpoint
from services.apps.state import AppState

__all__ = ["UNINSTALL"]


async def container(run: Run) -> Detail:
    await run.tools.runtime.remove_container(run.tools.names(run.s.app_id).container)
    return {}


async def dns(run: Run) -> Detail:
    await unpoint(run.tools, run.s, run.s.location)
    return {}


async def certificate(run: Run) -> Detail:
    await forget_certificate(run.tools, run.s, run.s.location)
    return {}


async def addons(run: Run) -> Detail:
    t, s = run.tools, run.s
    if t.addon_pg is not None and await t.addon_pg.exists(s.app_id):
        await t.addon_pg.deprovision(s.app_id)
    if "ldap" in s.addons:
        await t.peers.ldap_remove_app(s.app_id)
    if "sendmail" in s.addons or "mailclient" in s.addons:
        await t.peers.mail_remove_app(s.app_id)
    return {}


async def storage(run: Run) -> Detail:
    await run.tools.runtime.remove_volume(run.tools.names(run.s.app_id).volume)
    return {}


async def network(run: Run) -> Detail:
    await run.tools.runtime.remove_network(run.tools.names(run.s.app_id).network)
    return {}


async def snapshots(run: Run) -> Detail:
    await run.tools.snapshots.delete_all(run.s.app_id)
    return {}


def uninstalled(s: AppState, task_id: str) -> object:
    return ev.AppUninstalled(app_id=s.app_id, task_id=task_id)


async def announce(t: Tools, s: AppState, task: Task) -> str:
    await asyncio.to_thread(t.keys.destroy_subject, ev.app_stream(s.app_id))
    return "uninstalled: container, data, addon databases and credentials are gone"


UNINSTALL = Operation(
    "uninstall",
    (
        Step("container", 30, "removing the container", container),
        Step("dns", 10, "removing the app's DNS record", dns),
        Step("certificate", 5, "forgetting the app's certificate", certificate),
        Step("addons", 15, "dropping the app's database and accounts", addons),
        Step("storage", 20, "deleting the app's data", storage),
        Step("network", 10, "removing the app's network", network),
        Step("snapshots", 10, "deleting the app's snapshots", snapshots),
    ),
    outcome=uninstalled,
    announce=announce,
)
