"""The firewall's rules read model: what is open, to whom, and what apps may reach.

`RulesProjection` follows the firewall's own events (allow lists, block list, apps' internet
switch) and the events of others it depends on: mail domains turned on and off (mail), and
apps' lives (apps: the host ports of an install or configure, running or stopped, the network
step's subnet, the addons provisioned). Every row comes from events, so `homeport replay
firewall` rebuilds the same rules and the enforcer renders the same table (`load_rules`).

An app's ports are open from its install's request until it stops or its uninstall begins; a
configure that changes them opens the new ones with its request, and the old ones close when
it ends (or the new ones, when it is rolled back).
"""

from __future__ import annotations

import ipaddress
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import asyncpg

from libs.contracts.firewall import MAIL_PORTS
from libs.events.envelope import RecordedEvent
from libs.events.projection import Projection, register_projection
from services.firewall.ruleset import AppNet, Opening, Rules

__all__ = ["RulesProjection", "load_rules", "revision"]

log = logging.getLogger("services.firewall")

_MINE = {"AllowListChanged", "BlockListPart", "BlockListEdited", "AppInternetSet"}
_MAIL = {"MailDomainEnabled", "MailDomainDisabled"}
_APPS = {
    "AppInstallRequested",
    "AppInstalled",
    "AppConfigureRequested",
    "AppConfigured",
    "AppOperationFailed",
    "AppRunStateChanged",
    "AppUninstallRequested",
    "AppUninstalled",
    "AddonProvisioned",
    "AppStepCompleted",
}


@register_projection
class RulesProjection(Projection):
    """Allow lists, the block list, apps' ports and networks, mail on (schema `firewall`)."""

    name: ClassVar[str] = "firewall"
    schema: ClassVar[str] = "firewall"
    subject: ClassVar[str] = ">"
    migrations: ClassVar[Path | None] = Path(__file__).parent / "migrations_rules"

    def wants(self, event: RecordedEvent) -> bool:
        if event.type in _MINE:
            return event.stream.startswith("firewall-")
        if event.type in _MAIL:
            return event.category == "maildomain"
        if event.type in _APPS:
            return event.category == "app"
        return False

    async def reset(self, conn: asyncpg.Connection) -> None:
        await conn.execute(
            "TRUNCATE firewall.allowlists, firewall.blocklist, firewall.blocklist_staged,"
            " firewall.apps, firewall.mail_domains, firewall.applied"
        )
        await _bump(conn)

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        changed = False
        for event in events:
            if not self.wants(event):
                continue
            if event.type in _MINE and not await _first_time(conn, event):
                continue  # applied already, by the command that appended it
            step = _STEPS.get(event.type)
            if step is None:
                continue
            try:
                if await step(conn, event.data) is not False:
                    changed = True
            except (KeyError, TypeError, ValueError) as e:  # not as its service writes it
                log.warning(
                    "event %s at position %d skipped: %s", event.type, event.position, repr(e)
                )
        if changed:
            await _bump(conn)


async def _first_time(conn: asyncpg.Connection, event: RecordedEvent) -> bool:
    done = await conn.fetchval(
        "SELECT version FROM firewall.applied WHERE stream = $1", event.stream
    )
    if done is not None and event.version <= done:
        return False
    await conn.execute(
        "INSERT INTO firewall.applied VALUES ($1, $2)"
        " ON CONFLICT (stream) DO UPDATE SET version = $2",
        event.stream,
        event.version,
    )
    return True


def _aid(d: dict[str, Any]) -> str:
    """The event's app id, checked (ValueError: the event is skipped, SQL never refuses it)."""
    return str(uuid.UUID(str(d["app_id"])))


async def _bump(conn: asyncpg.Connection) -> None:
    await conn.execute("UPDATE firewall.revision SET n = n + 1 WHERE id = 1")


async def revision(pool: asyncpg.Pool) -> int:
    """Moves with every change of the rules."""
    return int(await pool.fetchval("SELECT n FROM firewall.revision WHERE id = 1"))


# -- the steps: one per event type; False when the event changes nothing of the rules ---------


async def _allow(conn: asyncpg.Connection, d: dict[str, Any]) -> None:
    deadline = datetime.fromisoformat(d["deadline"]) if d.get("deadline") else None
    await conn.execute(
        "INSERT INTO firewall.allowlists (scope, cidrs, why, trial_id, deadline, previous)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (scope) DO UPDATE SET cidrs = $2,"
        " why = $3, trial_id = $4, deadline = $5, previous = $6",
        d["scope"],
        list(d["cidrs"]),
        d["why"],
        d.get("trial_id"),
        deadline,
        d.get("previous"),
    )


async def _block_part(conn: asyncpg.Connection, d: dict[str, Any]) -> None:
    upload = d["upload_id"]
    await conn.execute(
        "INSERT INTO firewall.blocklist_staged (upload_id, entry)"
        " SELECT $1, e FROM unnest($2::cidr[]) AS e ON CONFLICT DO NOTHING",
        upload,
        list(d["entries"]),
    )
    if d["part"] < d["parts"]:
        return
    if d["replace"]:
        await conn.execute("TRUNCATE firewall.blocklist")
    await conn.execute(
        "INSERT INTO firewall.blocklist (entry) SELECT entry FROM firewall.blocklist_staged"
        " WHERE upload_id = $1 ON CONFLICT DO NOTHING",
        upload,
    )
    await conn.execute("DELETE FROM firewall.blocklist_staged WHERE upload_id = $1", upload)


async def _block_edit(conn: asyncpg.Connection, d: dict[str, Any]) -> None:
    await conn.execute(
        "DELETE FROM firewall.blocklist WHERE entry = ANY($1::cidr[])", list(d["removed"])
    )
    await conn.execute(
        "INSERT INTO firewall.blocklist (entry) SELECT unnest($1::cidr[]) ON CONFLICT DO NOTHING",
        list(d["added"]),
    )


async def _internet(conn: asyncpg.Connection, d: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO firewall.apps (app_id, internet) VALUES ($1, $2)"
        " ON CONFLICT (app_id) DO UPDATE SET internet = $2",
        _aid(d),
        d["internet"],
    )


async def _mail_on(conn: asyncpg.Connection, d: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO firewall.mail_domains VALUES ($1) ON CONFLICT DO NOTHING", d["domain"]
    )


async def _mail_off(conn: asyncpg.Connection, d: dict[str, Any]) -> None:
    await conn.execute("DELETE FROM firewall.mail_domains WHERE domain = $1", d["domain"])


def _ports(d: dict[str, Any], key: str) -> list[int] | None:
    value = d.get(key)
    if value is None:
        return None
    return sorted({int(p) for p in dict(value).values()})


async def _install(conn: asyncpg.Connection, d: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO firewall.apps (app_id, tcp_ports, udp_ports, running, present)"
        " VALUES ($1, $2, $3, true, true) ON CONFLICT (app_id) DO UPDATE SET tcp_ports = $2,"
        " udp_ports = $3, next_tcp = NULL, next_udp = NULL, running = true, present = true",
        _aid(d),
        _ports(d, "tcp_ports") or [],
        _ports(d, "udp_ports") or [],
    )


async def _configure(conn: asyncpg.Connection, d: dict[str, Any]) -> bool:
    tcp, udp = _ports(d, "tcp_ports"), _ports(d, "udp_ports")
    if tcp is None and udp is None:
        return False
    await conn.execute(
        "UPDATE firewall.apps SET next_tcp = coalesce($2, tcp_ports),"
        " next_udp = coalesce($3, udp_ports) WHERE app_id = $1",
        _aid(d),
        tcp,
        udp,
    )
    return True


async def _configured(conn: asyncpg.Connection, d: dict[str, Any]) -> None:
    await conn.execute(
        "UPDATE firewall.apps SET tcp_ports = coalesce(next_tcp, tcp_ports),"
        " udp_ports = coalesce(next_udp, udp_ports), next_tcp = NULL, next_udp = NULL"
        " WHERE app_id = $1",
        _aid(d),
    )


async def _failed(conn: asyncpg.Connection, d: dict[str, Any]) -> bool:
    if d.get("operation") == "configure" and d.get("rolled_back"):
        await conn.execute(
            "UPDATE firewall.apps SET next_tcp = NULL, next_udp = NULL WHERE app_id = $1",
            _aid(d),
        )
        return True
    if d.get("operation") == "uninstall":  # still there: its ports as before
        await conn.execute("UPDATE firewall.apps SET present = true WHERE app_id = $1", _aid(d))
        return True
    return False


async def _run_state(conn: asyncpg.Connection, d: dict[str, Any]) -> None:
    await conn.execute(
        "UPDATE firewall.apps SET running = $2 WHERE app_id = $1", _aid(d), d["running"]
    )


async def _installed(conn: asyncpg.Connection, d: dict[str, Any]) -> None:
    await conn.execute("UPDATE firewall.apps SET present = true WHERE app_id = $1", _aid(d))


async def _uninstalling(conn: asyncpg.Connection, d: dict[str, Any]) -> None:
    await conn.execute("UPDATE firewall.apps SET present = false WHERE app_id = $1", _aid(d))


async def _uninstalled(conn: asyncpg.Connection, d: dict[str, Any]) -> None:
    await conn.execute("DELETE FROM firewall.apps WHERE app_id = $1", _aid(d))
    await conn.execute("DELETE FROM firewall.allowlists WHERE scope = $1", f"app:{d['app_id']}")


async def _addon(conn: asyncpg.Connection, d: dict[str, Any]) -> None:
    await conn.execute(
        "UPDATE firewall.apps SET addons = array(SELECT DISTINCT unnest(addons || $2::text))"
        " WHERE app_id = $1",
        _aid(d),
        d["addon"],
    )


async def _step(conn: asyncpg.Connection, d: dict[str, Any]) -> bool:
    subnet = (d.get("detail") or {}).get("subnet")
    if d.get("step") != "network" or not subnet:
        return False
    subnet = str(ipaddress.ip_network(str(subnet)))  # ValueError: skipped, never cast by SQL
    await conn.execute(
        "UPDATE firewall.apps SET subnet = $2::cidr WHERE app_id = $1", _aid(d), str(subnet)
    )
    return True


_STEPS: dict[str, Any] = {
    "AllowListChanged": _allow,
    "BlockListPart": _block_part,
    "BlockListEdited": _block_edit,
    "AppInternetSet": _internet,
    "MailDomainEnabled": _mail_on,
    "MailDomainDisabled": _mail_off,
    "AppInstallRequested": _install,
    "AppInstalled": _installed,
    "AppConfigureRequested": _configure,
    "AppConfigured": _configured,
    "AppOperationFailed": _failed,
    "AppRunStateChanged": _run_state,
    "AppUninstallRequested": _uninstalling,
    "AppUninstalled": _uninstalled,
    "AddonProvisioned": _addon,
    "AppStepCompleted": _step,
}


async def load_rules(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    ssh_ports: Sequence[int],
    edge_ports: Sequence[int],
    services_gateway: str | None,
    addon_ports: dict[str, tuple[int, ...]],
    bans: dict[str, int] | None = None,
    blocked: bool = True,
) -> Rules:
    """The rules as the read model has them now (plus the host's own ports from config);
    `blocked` False leaves the block list out (a view that only counts it)."""
    lists = {r["scope"]: tuple(r["cidrs"]) for r in await conn.fetch(_LISTS)}
    openings = [Opening("tcp", p, "ssh", lists.get("ssh", ())) for p in ssh_ports]
    openings += [Opening("tcp", p, "edge", lists.get("edge", ())) for p in edge_ports]
    if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM firewall.mail_domains)"):
        openings += [Opening("tcp", p, "mail", lists.get("mail", ())) for p in MAIL_PORTS]
    apps: list[AppNet] = []
    for r in await conn.fetch("SELECT * FROM firewall.apps ORDER BY app_id"):
        app_id = str(r["app_id"])
        allow = lists.get(f"app:{app_id}", ())
        if r["present"] and r["running"]:
            for proto, now, nxt in (
                ("tcp", r["tcp_ports"], r["next_tcp"]),
                ("udp", r["udp_ports"], r["next_udp"]),
            ):
                for port in sorted({*now, *(nxt or ())}):
                    openings.append(Opening(proto, port, f"app:{app_id}", allow, published=True))
        if r["subnet"] is not None:
            reach = sorted({p for a in r["addons"] for p in addon_ports.get(a, ())})
            apps.append(AppNet(app_id, str(r["subnet"]), tuple(reach), r["internet"]))
    entries: tuple[str, ...] = ()
    if blocked:
        entries = tuple(
            r["e"]
            for r in await conn.fetch(
                "SELECT host(entry) || '/' || masklen(entry) AS e"
                " FROM firewall.blocklist ORDER BY entry"
            )
        )
    return Rules(
        openings=tuple(openings),
        ssh_ports=tuple(ssh_ports),
        blocked=entries,
        apps=tuple(apps),
        services_gateway=services_gateway,
        edge_ports=tuple(edge_ports),
        bans=dict(bans or {}),
    )


_LISTS = "SELECT scope, cidrs FROM firewall.allowlists"
