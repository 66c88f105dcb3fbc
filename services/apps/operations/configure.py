"""configure: a new location, access list, memory limit, environment or host ports for an
installed app.

The request's own fields are the operation's detail (`AppConfigureRequested`); `configured(s)`
is the app as it will be once they are in effect. A failure rolls the app back to how it was.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

from libs.events.tasks import Task
from services.apps import events as ev
from services.apps.operations.base import Detail, Operation, Run, Step, Tools
from services.apps.operations.common import (
    create_container,
    ensure_certificate,
    forget_certificate,
    point,
    unpoint,
    wait_ready,
    wait_served,
)
from services.apps.operations.install import ensure_mail_accounts
from services.apps.state import AppState, app_origin

__all__ = ["CONFIGURE", "configured"]


def configured(s: AppState) -> AppState:
    """The state as it will be once the pending configuration is in effect."""
    assert s.operation is not None
    d = s.operation.detail
    return replace(
        s,
        location=d.get("location") or s.location,
        access=d["access"] if d.get("access") is not None else s.access,
        memory_bytes=d.get("memory_bytes") or s.memory_bytes,
        env=d["env"] if d.get("env") is not None else s.env,
        tcp_ports=d["tcp_ports"] if d.get("tcp_ports") is not None else s.tcp_ports,
        udp_ports=d["udp_ports"] if d.get("udp_ports") is not None else s.udp_ports,
    )


async def _move(
    run: Run,
    add: Callable[[Tools, AppState, str], Awaitable[Detail]],
    drop: Callable[[Tools, AppState, str], Awaitable[None]],
) -> Detail:
    """A move to the configured location: the new location's first, then the old one's goes."""
    new = configured(run.s).location
    if new == run.s.location:
        return {}
    detail = await add(run.tools, run.s, new)
    await drop(run.tools, run.s, run.s.location)
    return detail


async def dns(run: Run) -> Detail:
    """A move: the new name's record first, then the old one's goes."""
    return await _move(run, point, unpoint)


async def certificate(run: Run) -> Detail:
    """A move: the new host's certificate, and the old host's is forgotten."""
    return await _move(run, ensure_certificate, forget_certificate)


async def addons(run: Run) -> Detail:
    """A new access list: the app's LDAP account sees only who may open it; the app's mail
    accounts are made sure of (an app installed before the mail service had them)."""
    s = run.s
    assert s.operation is not None
    access = s.operation.detail.get("access")
    if access is not None and "ldap" in s.addons:
        await run.tools.peers.ldap_set_app_access(s.app_id, access)
    await ensure_mail_accounts(run.tools, s)
    return {}


async def container(run: Run) -> Detail:
    manifest = run.tools.entry(run.s.manifest_id, run.s.app_version).manifest
    return await create_container(run.tools, configured(run.s), manifest)


async def ready(run: Run) -> Detail:
    manifest = run.tools.entry(run.s.manifest_id, run.s.app_version).manifest
    await wait_ready(run.tools, configured(run.s), manifest)
    return {}


def configured_event(s: AppState, task_id: str) -> object:
    return ev.AppConfigured(app_id=s.app_id, task_id=task_id)


async def announce(t: Tools, s: AppState, task: Task) -> str:
    if await wait_served(t, s, task):
        return "the new configuration is in effect"
    origin = app_origin(s.location, s.domain, t.cfg.edge_https_port)
    return f"the new configuration is in effect; {origin}/ will answer once the edge serves it"


CONFIGURE = Operation(
    "configure",
    (
        Step("dns", 15, "moving the app's DNS record", dns),
        Step("certificate", 5, "moving the app's certificate", certificate),
        Step("addons", 10, "updating who may sign in", addons),
        Step("container", 30, "recreating the container with the new settings", container),
        Step("ready", 40, "waiting for the app to answer", ready),
    ),
    outcome=configured_event,
    announce=announce,
    rolls_back=True,
)
