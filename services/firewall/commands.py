"""The firewall's commands and queries, and the trials of allow-list changes.

Administrators set allow lists (SSH, the dashboard, each app's published ports), the block
list (imported from text, or edited an entry at a time) and each app's internet switch. Every
change is an event applied to the read model in the same transaction (`append_inline`), so
the answer already holds it; the enforcer puts it into the kernel on its next round.

A change to the SSH, dashboard or edge list asked from a remote address is on trial (`Trials`): it
is in force at once and undone by itself `TRIAL_SECONDS` later unless the administrator
confirms it from an address the new list lets in — proof they did not lock themselves out.
Asked from this machine (loopback), it is set for good: the console cannot be locked out.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from libs.contracts.firewall import ALLOW_SCOPES, MAX_BLOCK, TRIAL_SECONDS
from libs.events import context
from libs.events.errors import ConcurrencyError
from libs.events.handlers import command, query
from libs.events.inline import append_inline
from libs.events.store import PostgresEventStore
from libs.service.runner import wait_events
from services.firewall import events as ev
from services.firewall.errors import (
    FirewallConflict,
    FirewallForbidden,
    FirewallNotFound,
    InvalidRequest,
)
from services.firewall.projections import active_bans
from services.firewall.rules import RulesProjection

__all__ = ["Commands", "Queries", "Trials", "parse_entries"]

log = logging.getLogger("services.firewall")

Clock = Callable[[], datetime]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_GUARDED = ("ssh", "dashboard", "edge")  # lists whose change from afar is on trial


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _network(raw: str, where: str) -> Network:
    """`raw` as a network (a lone address is /32 or /128); InvalidRequest naming `where`."""
    text = raw.strip()
    try:
        if "\x00" in text or len(text) > 49:
            raise ValueError
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise InvalidRequest(
            f"{text[:60]!r} is not an IP address or CIDR range (e.g. 203.0.113.0/24)",
            field=where,
        ) from None


def _text(net: Network) -> str:
    return str(net)


def _mine(ip: str | None) -> Network | None:
    """The caller's address as a /32 or /128 (None: unknown)."""
    if not ip:
        return None
    try:
        return ipaddress.ip_network(ip)
    except ValueError:
        return None


def _remote(ip: str | None) -> bool:
    net = _mine(ip)
    return net is not None and not net.network_address.is_loopback


def _lets_in(cidrs: Sequence[str], ip: str | None) -> bool:
    """Whether a list lets `ip` in (an empty list lets everyone in)."""
    if not cidrs:
        return True
    net = _mine(ip)
    if net is None:
        return False
    if net.network_address.is_loopback:
        return True
    return any(
        net.version == (n := ipaddress.ip_network(c)).version and net.subnet_of(n)  # type: ignore[arg-type]
        for c in cidrs
    )


def parse_entries(text: str, caller: str | None) -> list[str]:
    """The block list in `text`: one address or CIDR per line, '#' or ';' begins a comment.
    Refused (field `text`, the line named): a malformed entry, one that blocks everyone, one
    that holds the caller's own address (nobody blocks themselves out)."""
    if "\x00" in text:
        raise InvalidRequest("the list holds a NUL byte: send plain text", field="text")
    me = _mine(caller)
    out: dict[str, None] = {}
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].split(";", 1)[0].strip()
        if not entry:
            continue
        try:
            net = _network(entry, "text")
        except InvalidRequest as e:
            raise InvalidRequest(f"line {number}: {e.message}", field="text") from None
        _blockable(net, me, f"line {number}: ", "text")
        out[_text(net)] = None
        if len(out) > MAX_BLOCK:
            raise InvalidRequest(
                f"more than {MAX_BLOCK:,} entries (at line {number}): shorten the list",
                field="text",
            )
    return list(out)


def _admin(what: str) -> None:
    if not context.current().is_admin:
        raise FirewallForbidden(f"only an administrator may {what} the firewall")


async def _allowlist_row(pool: asyncpg.Pool, scope: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM firewall.allowlists WHERE scope = $1", scope)


def _blockable(net: Network, me: Network | None, where: str, field: str) -> None:
    if net.prefixlen == 0:
        raise InvalidRequest(f"{where}{net} would block every address", field=field)
    if me is not None and me.version == net.version and me.subnet_of(net):  # type: ignore[arg-type]
        raise InvalidRequest(
            f"{where}{net} holds your own address ({me.network_address}): you would block"
            " yourself out",
            field=field,
        )


class Commands:
    """The command side: each `@command` method is one bus command of the firewall."""

    def __init__(
        self,
        store: PostgresEventStore,
        *,
        clock: Clock = _utcnow,
        changed: Callable[[], None] = lambda: None,
        trial_seconds: float = TRIAL_SECONDS,
    ) -> None:
        self.store = store
        self.clock = clock
        self.trial_seconds = trial_seconds
        self.changed = changed
        self._projection = RulesProjection()
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    @staticmethod
    def _admin() -> None:
        _admin("change")

    async def _append(self, stream: str, new: Sequence[Any]) -> None:
        expected = await self.store.stream_version(stream)
        try:
            async with self.store.pool.acquire() as conn, conn.transaction():
                await append_inline(self.store, conn, self._projection, stream, new, expected)
        except ConcurrencyError:
            raise FirewallConflict(
                "someone else changed this at the same moment: look again and retry"
            ) from None
        self.changed()

    async def _app(self, app_id: str, field: str) -> asyncpg.Record:
        row = await self.store.pool.fetchrow(
            "SELECT * FROM firewall.apps WHERE app_id = $1 AND present", app_id
        )
        if row is None:
            raise FirewallNotFound(f"no installed app {app_id}", field=field)
        return row

    async def allowlist_row(self, scope: str) -> asyncpg.Record | None:
        return await _allowlist_row(self.store.pool, scope)

    # -- allow lists -------------------------------------------------------------------------

    @command("set_allowlist")
    async def set_allowlist(self, payload: dict[str, Any]) -> dict[str, Any]:
        self._admin()
        scope: str = payload["scope"]
        nets: dict[str, None] = {}
        for i, raw in enumerate(payload["cidrs"]):
            nets[_text(_network(raw, f"cidrs.{i}"))] = None
        cidrs = sorted(nets, key=lambda c: (":" in c, ipaddress.ip_network(c)))
        if scope.startswith("app:"):
            await self._app(scope[4:], "scope")
        ip = context.current().ip
        async with self._lock(scope):
            row = await self.allowlist_row(scope)
            now = list(row["cidrs"]) if row else []
            on_trial = row is not None and row["why"] == "trial"
            before = list(row["previous"] or []) if on_trial and row else now
            if scope in _GUARDED and _remote(ip) and cidrs != before:
                trial = str(uuid.uuid4())
                deadline = self.clock() + timedelta(seconds=self.trial_seconds)
                change = ev.AllowListChanged(
                    scope=scope,
                    cidrs=cidrs,
                    why="trial",
                    trial_id=trial,
                    deadline=deadline.isoformat(),
                    previous=before,
                )
                await self._append(ev.allow_stream(scope), [change])
                return {
                    "scope": scope,
                    "cidrs": cidrs,
                    "trial": {
                        "trial_id": trial,
                        "deadline": deadline.isoformat(),
                        "seconds": self.trial_seconds,
                        "previous": before,
                        "you": ip,
                        "lets_you_in": _lets_in(cidrs, ip),
                    },
                }
            if cidrs == now and not on_trial:
                return {"scope": scope, "cidrs": cidrs, "trial": None, "changed": False}
            change = ev.AllowListChanged(scope=scope, cidrs=cidrs, why="set")
            await self._append(ev.allow_stream(scope), [change])
        return {"scope": scope, "cidrs": cidrs, "trial": None, "changed": True}

    @command("confirm_allowlist")
    async def confirm_allowlist(self, payload: dict[str, Any]) -> dict[str, Any]:
        self._admin()
        scope, trial = payload["scope"], payload["trial_id"]
        ip = context.current().ip
        async with self._lock(scope):
            row = await self.allowlist_row(scope)
            if row is None or row["why"] != "trial" or str(row["trial_id"]) != trial:
                raise FirewallConflict(
                    "this change is not on trial any more (confirmed, undone or replaced):"
                    " look at the list again",
                    field="trial_id",
                )
            cidrs = list(row["cidrs"])
            if not _lets_in(cidrs, ip):
                raise FirewallForbidden(
                    f"your address ({ip or 'unknown'}) is not in the new list: confirm from an"
                    " address it lets in, or let the change be undone by itself"
                )
            change = ev.AllowListChanged(scope=scope, cidrs=cidrs, why="confirmed")
            await self._append(ev.allow_stream(scope), [change])
        return {"scope": scope, "cidrs": cidrs, "confirmed": True}

    async def next_deadline(self) -> datetime | None:
        """The deadline of the first trial open, if any."""
        deadline: datetime | None = await self.store.pool.fetchval(
            "SELECT min(deadline) FROM firewall.allowlists WHERE why = 'trial'"
        )
        return deadline

    async def revert_due(self) -> list[str]:
        """Undo every trial past its deadline; the scopes undone."""
        rows = await self.store.pool.fetch(
            "SELECT scope, trial_id, previous FROM firewall.allowlists"
            " WHERE why = 'trial' AND deadline <= $1",
            self.clock(),
        )
        done = []
        for r in rows:
            async with self._lock(r["scope"]):
                now = await self.allowlist_row(r["scope"])
                if now is None or now["why"] != "trial" or now["trial_id"] != r["trial_id"]:
                    continue  # confirmed or replaced meanwhile
                change = ev.AllowListChanged(
                    scope=r["scope"], cidrs=list(r["previous"] or []), why="reverted"
                )
                try:
                    await self._append(ev.allow_stream(r["scope"]), [change])
                except FirewallConflict:
                    continue  # another process acted first: the next round looks again
            log.warning("allow list for %s not confirmed in time: undone", r["scope"])
            done.append(r["scope"])
        return done

    # -- the block list ----------------------------------------------------------------------

    @command("import_blocklist")
    async def import_blocklist(self, payload: dict[str, Any]) -> dict[str, Any]:
        self._admin()
        entries = await asyncio.to_thread(parse_entries, payload["text"], context.current().ip)
        replace: bool = payload["replace"]
        async with self._lock("blocklist"):
            if not replace:
                have = await self._count()
                if have + len(entries) > MAX_BLOCK:  # an upper bound: some may be there already
                    fresh = await self.store.pool.fetchval(
                        "SELECT count(*) FROM unnest($1::cidr[]) AS e"
                        " WHERE e NOT IN (SELECT entry FROM firewall.blocklist)",
                        entries,
                    )
                    if have + int(fresh) > MAX_BLOCK:
                        raise InvalidRequest(
                            f"the list would hold {have + int(fresh):,} entries, more than"
                            f" {MAX_BLOCK:,}: replace it instead, or remove some",
                            field="text",
                        )
            upload = str(uuid.uuid4())
            parts = [entries[i : i + ev.PART_SIZE] for i in range(0, len(entries), ev.PART_SIZE)]
            parts = parts or [[]]
            new = [
                ev.BlockListPart(
                    upload_id=upload, part=n, parts=len(parts), replace=replace, entries=part
                )
                for n, part in enumerate(parts, 1)
            ]
            await self._append(ev.BLOCKLIST_STREAM, new)
            total = await self._count()
        return {"imported": len(entries), "total": total, "replace": replace}

    async def _count(self) -> int:
        return int(await self.store.pool.fetchval("SELECT count(*) FROM firewall.blocklist"))

    def _entries(self, raw: Iterable[str]) -> list[str]:
        out: dict[str, None] = {}
        me = _mine(context.current().ip)
        for i, e in enumerate(raw):
            net = _network(e, f"entries.{i}")
            _blockable(net, me, "", f"entries.{i}")
            out[_text(net)] = None
        return list(out)

    @command("block")
    async def block(self, payload: dict[str, Any]) -> dict[str, Any]:
        self._admin()
        entries = self._entries(payload["entries"])
        async with self._lock("blocklist"):
            if await self._count() + len(entries) > MAX_BLOCK:
                raise InvalidRequest(
                    f"the block list holds {MAX_BLOCK:,} entries at most", field="entries"
                )
            if entries:
                edit = ev.BlockListEdited(added=entries, removed=[])
                await self._append(ev.BLOCKLIST_STREAM, [edit])
            total = await self._count()
        return {"added": len(entries), "total": total}

    @command("unblock")
    async def unblock(self, payload: dict[str, Any]) -> dict[str, Any]:
        self._admin()
        entries: dict[str, None] = {}
        for i, e in enumerate(payload["entries"]):
            entries[_text(_network(e, f"entries.{i}"))] = None
        async with self._lock("blocklist"):
            there = await self.store.pool.fetch(
                "SELECT host(entry) || '/' || masklen(entry) AS e FROM firewall.blocklist"
                " WHERE entry = ANY($1::cidr[])",
                list(entries),
            )
            gone = [r["e"] for r in there]
            if gone:
                edit = ev.BlockListEdited(added=[], removed=gone)
                await self._append(ev.BLOCKLIST_STREAM, [edit])
            total = await self._count()
        return {"removed": len(gone), "total": total}

    # -- apps --------------------------------------------------------------------------------

    @command("set_app_internet")
    async def set_app_internet(self, payload: dict[str, Any]) -> dict[str, Any]:
        self._admin()
        app_id, internet = payload["app_id"], bool(payload["internet"])
        async with self._lock(f"app:{app_id}"):
            row = await self._app(app_id, "app_id")
            if row["internet"] != internet:
                await self._append(
                    ev.app_stream(app_id), [ev.AppInternetSet(app_id=app_id, internet=internet)]
                )
        return {"app_id": app_id, "internet": internet}


class Trials:
    """Undoes allow-list changes not confirmed in time, until stopped: at the deadline of the
    first trial open, and looks again when a change is made (`nudge`). With no trial open it
    waits for a change alone: the service then holds no database connection at rest (polling
    each second kept one, ~13 MiB of Postgres backend, for trials that are rare)."""

    def __init__(self, commands: Commands, *, every: float = 1.0) -> None:
        self.commands = commands
        self.every = every  # the wait after a failed round, or a deadline past but not undone
        self._stop = asyncio.Event()
        self._nudge = asyncio.Event()

    def nudge(self) -> None:
        """A change was made (maybe a trial started): look at the deadlines again now."""
        self._nudge.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            self._nudge.clear()
            wait: float | None = self.every
            try:
                await self.commands.revert_due()
                deadline = await self.commands.next_deadline()
                if deadline is None:
                    wait = None
                else:
                    left = (deadline - self.commands.clock()).total_seconds()
                    wait = left if left > 0 else self.every  # due, yet not undone: retried
            except (OSError, asyncpg.PostgresError) as e:
                log.error("undoing allow-list trials failed: %s", e)
            await wait_events((self._stop, self._nudge), math.inf if wait is None else wait)

    def stop(self) -> None:
        self._stop.set()


class Queries:
    """The query side: what is open and to whom, the lists, bans, the last apply."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        rules: Callable[..., Any],
        applied: Callable[[], dict[str, Any]],
        clock: Clock = _utcnow,
    ) -> None:
        self.pool = pool
        self.rules = rules  # async: the Rules in force now (rules.load_rules)
        self.applied = applied  # the enforcer's last round
        self.clock = clock

    @staticmethod
    def _admin() -> None:
        _admin("see")

    async def _list(self, scope: str) -> dict[str, Any]:
        row = await _allowlist_row(self.pool, scope)
        if row is None:
            return {"scope": scope, "cidrs": [], "trial": None}
        trial = None
        if row["why"] == "trial":
            left = (row["deadline"] - self.clock()).total_seconds()
            trial = {
                "trial_id": str(row["trial_id"]),
                "deadline": row["deadline"].isoformat(),
                "seconds_left": max(0, round(left)),
                "previous": list(row["previous"] or []),
            }
        return {"scope": scope, "cidrs": list(row["cidrs"]), "trial": trial}

    @query("status")
    async def status(self, payload: dict[str, Any]) -> dict[str, Any]:
        self._admin()
        rules = await self.rules(blocked=False)
        bans = await active_bans(self.pool, self.clock())
        count = await self.pool.fetchval("SELECT count(*) FROM firewall.blocklist")
        return {
            "open": [
                {
                    "protocol": o.proto,
                    "port": o.port,
                    "what": o.what,
                    "allow": list(o.allow),
                }
                for o in sorted(rules.openings, key=lambda o: (o.port, o.proto))
            ],
            "allowlists": {s: await self._list(s) for s in ALLOW_SCOPES},
            "blocklist": {"count": int(count)},
            "bans": [{"ip": ip, "until": until.isoformat()} for ip, until in sorted(bans.items())],
            "apps": [
                {
                    "app_id": a.app_id,
                    "subnet": a.subnet,
                    "internet": a.internet,
                    "reach": list(a.ports),
                }
                for a in rules.apps
            ],
            "applied": self.applied(),
        }

    @query("blocklist")
    async def blocklist(self, payload: dict[str, Any]) -> dict[str, Any]:
        self._admin()
        offset, limit = int(payload.get("offset", 0)), int(payload.get("limit", 100))
        total = await self.pool.fetchval("SELECT count(*) FROM firewall.blocklist")
        rows = await self.pool.fetch(
            "SELECT host(entry) || '/' || masklen(entry) AS e FROM firewall.blocklist"
            " ORDER BY entry OFFSET $1 LIMIT $2",
            offset,
            limit,
        )
        return {"total": int(total), "offset": offset, "entries": [r["e"] for r in rows]}

    @query("allowlist")
    async def allowlist(self, payload: dict[str, Any]) -> dict[str, Any]:
        self._admin()
        return await self._list(payload["scope"])

    @query("app")
    async def app(self, payload: dict[str, Any]) -> dict[str, Any]:
        self._admin()
        app_id = payload["app_id"]
        row = await self.pool.fetchrow("SELECT * FROM firewall.apps WHERE app_id = $1", app_id)
        if row is None:
            raise FirewallNotFound(f"no app {app_id}", field="app_id")
        allow = await self._list(f"app:{app_id}")
        return {
            "app_id": app_id,
            "internet": row["internet"],
            "allow": allow["cidrs"],
            "tcp_ports": list(row["tcp_ports"]),
            "udp_ports": list(row["udp_ports"]),
            "open": bool(row["present"] and row["running"]),
        }
