"""install: a catalog app at a location, from its DNS record to its first healthy answer.

The network's subnet (step `network`) and the addons' credentials (`AddonProvisioned`) are
recorded once and read back by the steps after them, and by a resumed run.
"""

from __future__ import annotations

import json

from libs.events.tasks import Task
from services.apps import events as ev
from services.apps.errors import OperationFailed
from services.apps.operations.base import Detail, Operation, Run, Step, Tools
from services.apps.operations.common import (
    app_network,
    build,
    create_container,
    ensure_certificate,
    point,
    wait_ready,
    wait_served,
)
from services.apps.state import AppState, app_origin

__all__ = ["INSTALL", "addons", "announce", "ensure_mail_accounts", "image", "network", "storage"]

ADDONS = ("postgresql", "ldap", "sendmail", "mailclient")


async def dns(run: Run) -> Detail:
    return await point(run.tools, run.s, run.s.location)


async def certificate(run: Run) -> Detail:
    return await ensure_certificate(run.tools, run.s, run.s.location)


async def image(run: Run) -> Detail:
    entry = run.tools.entry(run.s.manifest_id, run.s.app_version)
    return {"image": await build(run.tools, entry, run.task, run.end, run.start)}


async def network(run: Run) -> Detail:
    return {"subnet": (await app_network(run.tools, run.s.app_id)).subnet}


async def storage(run: Run) -> Detail:
    t, s = run.tools, run.s
    manifest = t.entry(s.manifest_id, s.app_version).manifest
    if "localstorage" in manifest.addons:
        owner = None if manifest.run_as_root else (1000, 1000)
        await t.runtime.ensure_volume(t.names(s.app_id).volume, {"homeport.app": s.app_id}, owner)
    return {}


async def addons(run: Run) -> Detail:
    """Provision each addon once: credentials already recorded are handed out again (the mail
    accounts registered again with them, so an app installed earlier gets its account)."""
    t, s = run.tools, run.s
    assert s.operation is not None
    subnet = str(s.operation.detail["subnet"])  # recorded by the network step
    manifest = t.entry(s.manifest_id, s.app_version).manifest
    if "postgresql" in manifest.addons:  # the server runs on demand: asked for, waited for
        await t.snapshots.addon_pg().start(lambda line: run.task.progress(run.task.percent, line))
    for addon in ADDONS:
        if addon not in manifest.addons:
            continue
        s = await t.apps.load(s.app_id)
        existing = s.addons.get(addon)
        old = t.unseal_json(existing) if existing else None
        creds = await _provision(t, s, addon, subnet, old)
        if creds != old:  # new, or the mail service's address for apps moved
            sealed = t.seal(s.app_id, json.dumps(creds))
            provisioned = ev.AddonProvisioned(app_id=s.app_id, addon=addon, credentials=sealed)
            await t.apps.append(s.app_id, [provisioned], s.version, state=s)
    return {}


async def ensure_mail_accounts(t: Tools, s: AppState) -> None:
    """The mail service's accounts of an installed app, registered again with what the app
    has (configure: an app installed before the mail service had its account sends again)."""
    for addon in ("sendmail", "mailclient"):
        existing = s.addons.get(addon)
        if existing is None:
            continue
        net = await app_network(t, s.app_id)
        old = t.unseal_json(existing)
        creds = await _provision(t, s, addon, net.subnet, old)
        if creds != old:
            s = await t.apps.load(s.app_id)
            sealed = t.seal(s.app_id, json.dumps(creds))
            provisioned = ev.AddonProvisioned(app_id=s.app_id, addon=addon, credentials=sealed)
            await t.apps.append(s.app_id, [provisioned], s.version, state=s)


async def _provision(
    t: Tools, s: AppState, addon: str, subnet: str, old: dict[str, str] | None
) -> dict[str, str]:
    gateway = t.services.gateway
    if addon == "postgresql":
        password = old["HOMEPORT_POSTGRESQL_PASSWORD"] if old else None
        pg = await t.snapshots.addon_pg().provision(s.app_id, subnet, password)
        return pg.env()
    if addon == "mailclient":
        return await _mail_client(t, s, subnet, old)
    if addon == "sendmail":
        return await _sendmail(t, s, subnet, old)
    if old is not None:
        return old
    if addon == "ldap":
        endpoint = await t.peers.ldap_endpoint()
        if gateway not in endpoint.get("hosts", []):
            raise OperationFailed(
                f"the identity LDAP endpoint does not listen on {gateway} (the services"
                " network's address): set HP_LDAP_HOST for the identity service to include it",
                "addon_unavailable",
            )
        reg = await t.peers.ldap_register_app(s.app_id, s.access)
        port = str(endpoint["port"])
        return {
            "HOMEPORT_LDAP_HOST": gateway,
            "HOMEPORT_LDAP_PORT": port,
            "HOMEPORT_LDAP_URL": f"ldap://{gateway}:{port}",
            "HOMEPORT_LDAP_BIND_DN": reg["bind_dn"],
            "HOMEPORT_LDAP_BIND_PASSWORD": reg["password"],
            "HOMEPORT_LDAP_USERS_BASE_DN": reg["users_dn"],
            "HOMEPORT_LDAP_GROUPS_BASE_DN": reg["groups_dn"],
        }
    raise OperationFailed(f"no way to provision the {addon} addon", "runtime")


async def _sendmail(
    t: Tools, s: AppState, subnet: str, old: dict[str, str] | None
) -> dict[str, str]:
    """sendmail: an account of the mail service, usable from the app's network only, for its
    own sender only. Credentials recorded before are registered again as they are (an app
    installed before the mail service had it, or whose account was lost, sends again)."""
    if old is not None:
        account = await t.peers.mail_register_app(
            s.app_id, old["HOMEPORT_MAIL_FROM"], subnet, old["HOMEPORT_MAIL_SMTP_PASSWORD"]
        )
    else:
        sender = f"{s.location}.app@{s.domain}"
        account = await t.peers.mail_register_app(s.app_id, sender, subnet)
    if not account.get("host"):
        raise OperationFailed(
            "the mail service has no address for apps to send to (HP_MAIL_APPS_LISTEN)",
            "addon_unavailable",
        )
    return {
        "HOMEPORT_MAIL_SMTP_SERVER": str(account["host"]),
        "HOMEPORT_MAIL_SMTP_PORT": str(account["port"]),
        "HOMEPORT_MAIL_SMTP_USERNAME": str(account["username"]),
        "HOMEPORT_MAIL_SMTP_PASSWORD": str(account["password"]),
        "HOMEPORT_MAIL_FROM": str(account["sender"]),
    }


async def _mail_client(
    t: Tools, s: AppState, subnet: str, old: dict[str, str] | None
) -> dict[str, str]:
    """mailclient (webmail): where the app reaches people's mailboxes. No account of its own:
    each person signs in with theirs; the mail service trusts the app's network to name the
    person's address (IMAP ID), so it must be the app's own network. Registered again each
    time (nothing new when unchanged); recorded settings are handed out again."""
    where = await t.peers.mail_register_client(s.app_id, subnet)
    if not where.get("host"):
        raise OperationFailed(
            "the mail service has no address for apps to reach it (HP_MAIL_APPS_LISTEN)",
            "addon_unavailable",
        )
    host = str(where["host"])
    return {
        "HOMEPORT_MAIL_IMAP_HOST": host,
        "HOMEPORT_MAIL_IMAP_PORT": str(where["imap_port"]),
        "HOMEPORT_MAIL_SUBMISSION_HOST": host,
        "HOMEPORT_MAIL_SUBMISSION_PORT": str(where["submission_port"]),
        "HOMEPORT_MAIL_SIEVE_HOST": host,
        "HOMEPORT_MAIL_SIEVE_PORT": str(where["sieve_port"]),
        # the domain at first install stays (people's identities in the app were made with it)
        "HOMEPORT_MAIL_DOMAIN": old["HOMEPORT_MAIL_DOMAIN"]
        if old is not None
        else str(where.get("domain") or ""),
    }


async def container(run: Run) -> Detail:
    manifest = run.tools.entry(run.s.manifest_id, run.s.app_version).manifest
    return await create_container(run.tools, run.s, manifest)


async def ready(run: Run) -> Detail:
    manifest = run.tools.entry(run.s.manifest_id, run.s.app_version).manifest
    await wait_ready(run.tools, run.s, manifest)
    return {}


def installed(s: AppState, task_id: str) -> object:
    return ev.AppInstalled(app_id=s.app_id, task_id=task_id, version=s.app_version)


async def announce(t: Tools, s: AppState, task: Task) -> str:
    """ "<title> installed at <origin>/" once the edge serves it; until then, honestly not."""
    title = t.entry(s.manifest_id, s.app_version).manifest.title
    origin = app_origin(s.location, s.domain, t.cfg.edge_https_port)
    if await wait_served(t, s, task):
        return f"{title} installed at {origin}/"
    return f"{title} installed; {origin}/ will answer once the edge serves it"


INSTALL = Operation(
    "install",
    (
        Step("dns", 12, "pointing the app's name at this server", dns),
        Step("certificate", 1, "asking for the app's certificate", certificate),
        Step("image", 32, "building the app's image", image),
        Step("network", 5, "creating the app's network", network),
        Step("storage", 5, "creating the app's data volume", storage),
        Step("addons", 15, "setting up the app's database, directory and mail accounts", addons),
        Step("container", 10, "creating the app's container", container),
        Step("ready", 20, "starting the app and waiting for it to answer", ready),
    ),
    outcome=installed,
    announce=announce,
)
