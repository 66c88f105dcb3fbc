"""The names of a page of the activity log, asked once per kind, never per row.

- user and group ids, sealed browser strings: identity's `names` query (only identity holds the
  keys; a deleted user answers null);
- sealed client addresses: identity's `addresses` query;
- apps: where each lives (catalog entry, location, domain) from this log's own rows of its
  stream (`AppInstallRequested`, `AppConfigureRequested` carry them in clear), and the catalog's
  titles from the apps service's `catalog` query.

Every question goes out as the caller of the request being answered; one that cannot be
answered (the service is down, slow, or the caller may not ask) leaves those ids short and
the page still loads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import zip_longest
from typing import Any, ClassVar, Protocol

import asyncpg
import orjson

from libs.contracts.identity import MAX_ADDRESS_VALUES, MAX_NAME_IDS
from libs.events.bus import DeadlineExceeded, Forbidden, Unavailable
from services.gateway.activity_text import (
    ADDRESS_EXPIRED,
    ADDRESS_UNAVAILABLE,
    Names,
    app_ids_of,
    group_ids_of,
    is_uuid,
    refs_of,
    user_ids_of,
)

__all__ = ["LOOKUP_TIMEOUT", "Ask", "Looked", "Row", "look_up"]

log = logging.getLogger(__name__)

LOOKUP_TIMEOUT = 5.0  # seconds for each question of a page
_UNANSWERED = (Unavailable, DeadlineExceeded, Forbidden)


class Ask(Protocol):
    """A bus query as the caller (Call.ask, BusClient.query)."""

    async def __call__(
        self,
        service: str,
        name: str,
        payload: dict[str, Any],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the wire deadline, not a local wait
    ) -> Any: ...


@dataclass(frozen=True, slots=True)
class Row:
    """A row of gateway.activity as read."""

    position: int
    occurred_at: datetime
    actor: str
    ip: str | None  # a plain address (events from before sealing)
    ip_sealed: str | None
    type: str
    stream: str
    summary: str
    refs: Mapping[str, Any]
    user_agent: str | None

    # The columns of gateway.activity `of` reads (and the event's data, from `select`).
    COLUMNS: ClassVar[str] = (
        "position, occurred_at, actor, ip, ip_sealed, type, stream, summary, user_agent"
    )

    @classmethod
    def select(cls, where: str, limit: str) -> str:
        """The statement of the rows `where` keeps (a WHERE clause or ""), newest first, at
        most `limit` (a bound parameter), each with its event's data (for its refs)."""
        return (
            f"SELECT a.*, e.data::text AS data FROM (SELECT {cls.COLUMNS} "  # noqa: S608 - ours, values bound
            f"FROM gateway.activity {where}ORDER BY position DESC LIMIT {limit}) AS a "
            "LEFT JOIN events.events e ON e.position = a.position ORDER BY a.position DESC"
        )

    @classmethod
    def of(cls, r: asyncpg.Record) -> Row:
        """The row, with the refs of its event's data (the data itself is not kept)."""
        data = orjson.loads(r["data"]) if r["data"] is not None else None
        return cls(
            r["position"], r["occurred_at"], r["actor"], r["ip"], r["ip_sealed"], r["type"],
            r["stream"], r["summary"], refs_of(r["type"], data), r["user_agent"],
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Looked:
    """A page's names, and the text shown for each of its sealed addresses."""

    names: Names
    addresses: Mapping[str, str]


async def look_up(pool: asyncpg.Pool, rows: Sequence[Row], ask: Ask | None) -> Looked:
    """Everything a page's sentences name: one question per kind, none without `ask`."""
    users: list[str] = []
    groups: list[str] = []
    apps: list[str] = []
    agents: list[str] = []
    sealed: list[str] = []
    for r in rows:
        users += user_ids_of(r.actor, r.refs)
        groups += group_ids_of(r.refs)
        apps += app_ids_of(r.stream, r.refs)
        if r.user_agent is not None:
            agents.append(r.user_agent)
        if r.ip_sealed is not None:
            sealed.append(r.ip_sealed)
    users, groups, agents, sealed = (_unique(x) for x in (users, groups, agents, sealed))
    places = await _places(pool, _unique(a for a in apps if is_uuid(a)))
    if ask is None:
        return Looked(Names(apps=_labels(places, {})), dict.fromkeys(sealed, ADDRESS_UNAVAILABLE))
    titles = await _titles(ask, {p.manifest_id for p in places.values() if p.manifest_id})
    people, teams, browsers = await _identity_names(ask, users, groups, agents)
    names = Names(users=people, groups=teams, apps=_labels(places, titles), browsers=browsers)
    return Looked(names, await _addresses(ask, sealed))


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _chunks(values: list[str], size: int) -> list[list[str]]:
    return [values[i : i + size] for i in range(0, len(values), size)]


@dataclass(frozen=True, slots=True)
class _Place:
    manifest_id: str
    location: str
    domain: str


async def _places(pool: asyncpg.Pool, app_ids: list[str]) -> dict[str, _Place]:
    """Each app's catalog entry and domain (its install) and location (its latest move)."""
    if not app_ids:
        return {}
    # the type list is the predicate of the partial index activity_app_places (0004); a move
    # is a configuration with a location its refs keep (refs_of: text in clear)
    rows = await pool.fetch(
        "SELECT DISTINCT ON (a.stream, a.type) a.stream, a.type, e.data::text AS data"
        " FROM gateway.activity a JOIN events.events e ON e.position = a.position"
        " WHERE a.stream = ANY($1::text[])"
        " AND a.type IN ('AppInstallRequested', 'AppConfigureRequested')"
        " AND (a.type = 'AppInstallRequested' OR (jsonb_typeof(e.data -> 'location') = 'string'"
        " AND strpos(e.data ->> 'location', 'hp:sealed:') = 0))"
        " ORDER BY a.stream, a.type, a.position DESC",
        [f"app-{a}" for a in app_ids],
    )
    found = [(r["stream"], r["type"], refs_of(r["type"], orjson.loads(r["data"]))) for r in rows]
    installs = {stream: refs for stream, kind, refs in found if kind == "AppInstallRequested"}
    moves = {stream: refs for stream, kind, refs in found if kind == "AppConfigureRequested"}
    out: dict[str, _Place] = {}
    for stream, refs in installs.items():
        moved = moves.get(stream, {})
        location = moved.get("location", refs.get("location"))
        out[stream.removeprefix("app-")] = _Place(
            str(refs.get("manifest_id") or ""), str(location or ""), str(refs.get("domain") or "")
        )
    return out


def _labels(places: Mapping[str, _Place], titles: Mapping[str, str]) -> dict[str, str]:
    """ "Static website at blog.example.org" for each app of `places`."""
    out = {}
    for app_id, p in places.items():
        title = titles.get(p.manifest_id) or p.manifest_id or f"app {app_id[:8]}"
        host = ".".join(part for part in (p.location, p.domain) if part)
        out[app_id] = f"{title} at {host}" if host else title
    return out


async def _titles(ask: Ask, manifest_ids: set[str]) -> dict[str, str]:
    """The catalog's title of each app (one question: the whole catalog)."""
    if not manifest_ids:
        return {}
    try:
        got = await ask("apps", "catalog", {}, timeout=LOOKUP_TIMEOUT)
    except _UNANSWERED as e:
        log.warning("the activity log shows catalog ids: apps did not answer (%s)", e)
        return {}
    items = got.get("items") if isinstance(got, dict) else None
    return {
        i["id"]: i["title"]
        for i in items or ()
        if isinstance(i, dict) and i.get("id") in manifest_ids and isinstance(i.get("title"), str)
    }


async def _identity_names(
    ask: Ask, users: list[str], groups: list[str], agents: list[str]
) -> tuple[dict[str, str | None], dict[str, str | None], dict[str, str | None]]:
    """Usernames, group names and browser families, in as few questions as the limits allow."""
    people: dict[str, str | None] = {}
    teams: dict[str, str | None] = {}
    browsers: dict[str, str | None] = {}
    for part_users, part_groups, part_agents in zip_longest(
        _chunks(users, MAX_NAME_IDS),
        _chunks(groups, MAX_NAME_IDS),
        _chunks(agents, MAX_ADDRESS_VALUES),
        fillvalue=list[str](),
    ):
        payload = {"user_ids": part_users, "group_ids": part_groups, "user_agents": part_agents}
        try:
            got = await ask("identity", "names", payload, timeout=LOOKUP_TIMEOUT)
        except _UNANSWERED as e:
            log.warning("the activity log shows ids, not names: identity did not answer (%s)", e)
            break
        people.update(_named(got.get("names"), part_users))
        teams.update(_named(got.get("groups"), part_groups))
        families = got.get("browsers") or []
        browsers.update(zip(part_agents, families, strict=False))
    return people, teams, browsers


def _named(answer: object, asked: list[str]) -> dict[str, str | None]:
    """identity's answer for `asked`: a name, or None (deleted)."""
    if not isinstance(answer, dict):
        return {}
    return {i: answer[i] if isinstance(answer[i], str) else None for i in asked if i in answer}


async def _addresses(ask: Ask, sealed: list[str]) -> dict[str, str]:
    """The text shown for each sealed address of a page: identity's answer, ADDRESS_EXPIRED
    once its week's key is destroyed, ADDRESS_UNAVAILABLE while identity cannot be asked."""
    out: dict[str, str] = {}
    for part in _chunks(sealed, MAX_ADDRESS_VALUES):
        try:
            got = await ask("identity", "addresses", {"values": part}, timeout=LOOKUP_TIMEOUT)
        except _UNANSWERED as e:
            log.warning(
                "the activity log shows no client addresses: identity did not answer (%s)", e
            )
            return {s: out.get(s, ADDRESS_UNAVAILABLE) for s in sealed}
        plain = list(got["values"])
        out.update(
            {s: p if p is not None else ADDRESS_EXPIRED for s, p in zip(part, plain, strict=True)}
        )
    return out
