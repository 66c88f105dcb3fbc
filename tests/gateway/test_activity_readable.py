"""The activity log reads as sentences with names (issue 19): through the real identity, apps
and gateway; a deleted user reads "a deleted user"; the changes and everything views; the
export as CSV (safe in a spreadsheet) and JSON; bad input and non-admins refused."""

from __future__ import annotations

import csv
import dataclasses
import importlib
import io
import json
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from libs.contracts.gateway import CONTRACT
from libs.events import context
from libs.events.bus import Forbidden, Invalid
from libs.events.envelope import NewEvent
from libs.events.errors import UnknownEventType
from libs.events.projection import ProjectionRunner, replay_by_name
from libs.events.registry import REGISTRY
from libs.events.store import PostgresEventStore
from services.gateway import queries
from services.gateway.activity_text import DELETED_USER, PROGRESS_TYPES, sentence_fields
from services.gateway.api.handlers.activity import CSV_COLUMNS
from services.gateway.projections import ActivityProjection
from services.gateway.queries import activity_query
from tests.apps.appskit import STATIC, apps_env, running_apps, static_catalog
from tests.gateway.apikit import Cast, Client, make_cast, running_gateway, serve_api
from tests.identity.kit import Identity
from tests.support.bus import relaying
from tests.support.waits import wait_until

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
KIM_IP = "203.0.113.7"


async def _page(client: Client, token: str, query: str = "limit=200") -> list[dict[str, Any]]:
    a = await client.call("GET", f"/api/v1/activity?{query}", token=token)
    assert a.status == 200, a.body
    return list(a.body["items"])


async def _caught_up(store: PostgresEventStore) -> ProjectionRunner:
    runner = ProjectionRunner(ActivityProjection(), store)
    await runner.setup()
    await runner.catch_up()
    return runner


async def _people_and_groups(client: Client, cast: Cast) -> str:
    """What an administrator and two people do: a group, a member, an invitation, sign-ins
    from a browser, and an account deleted. Returns the group's id."""
    root = cast.token_root
    made = await client.call("POST", "/api/v1/groups", token=root, body={"name": "family"})
    assert made.status == 201, made.body
    group_id = made.body["group_id"]
    added = await client.call(
        "PUT", f"/api/v1/groups/{group_id}/members/{cast.alice_id}", token=root
    )
    assert added.status == 204, added.body
    invited = await client.call(
        "POST", "/api/v1/invitations", token=root, body={"email": "kim@example.test"}
    )
    assert invited.status == 201, invited.body
    for who, agent in (("alice", FIREFOX), ("bob", CHROME)):
        password = "alice's long phrase" if who == "alice" else "bob's own long phrase"
        signed = await client.call(
            "POST",
            "/api/v1/session",
            body={"username": who, "password": password},
            headers={"User-Agent": agent, "X-Real-IP": KIM_IP},
        )
        assert signed.status == 200, signed.body
    gone = await client.call("DELETE", f"/api/v1/users/{cast.bob_id}", token=root)
    assert gone.status == 204, gone.body
    return str(group_id)


async def test_sentences_name_people_groups_and_browsers_and_a_deleted_user(
    identity: Identity, nc: NATS, store: PostgresEventStore, dsn: str
) -> None:
    cast = await make_cast(identity, bob=True)
    async with serve_api(nc, pool=store.pool) as client:
        await _people_and_groups(client, cast)
        runner = await _caught_up(store)
        items = await _page(client, cast.token_root)
        said = [i["sentence"] for i in items]
        for line in (
            "root created a user account for alice",
            "root added alice to family",
            "root created the group family",
            "root invited someone",
            f"alice signed in from {KIM_IP} (Firefox)",
            f"{DELETED_USER} signed in from {KIM_IP} (Chrome)",  # bob, since deleted
            "root deleted a user account",
            "root created a user account for a deleted user",
            "root set up Homeport as its first administrator",
        ):
            assert line in said, (line, said)
        # nothing names bob any more: his key is gone, and the log never held his name
        assert not any("bob" in json.dumps(i) for i in items)
        by_type = {i["type"]: i for i in items}
        assert by_type["GroupMemberAdded"]["actor_name"] == "root"
        signed = [i for i in items if i["type"] == "SessionStarted" and i["ip"] == KIM_IP]
        assert {(i["actor_name"], i["browser"]) for i in signed} == {
            ("alice", "Firefox"),
            (DELETED_USER, "Chrome"),
        }
        # the summary stays as the event wrote it (ids, never names)
        assert by_type["GroupMemberAdded"]["summary"].startswith(f"account {cast.alice_id[:8]}")
        # nothing sealed and no browser string in the read model, in clear or otherwise
        dump = await store.pool.fetchval("SELECT json_agg(a)::text FROM gateway.activity a")
        assert "Firefox" not in dump and "alice" not in dump and KIM_IP not in dump
        assert "hp:sealed" not in json.dumps(items)

        # `homeport replay activity`: the same page from rows rebuilt from the first event
        assert await replay_by_name("activity", dsn) == await runner.checkpoint()
        assert await _page(client, cast.token_root) == items


async def test_changes_leave_out_the_steps_everything_shows_them(
    cast: Cast, nc: NATS, store: PostgresEventStore
) -> None:
    task = "0190f5c4-7d7e-7c4a-9a55-2d0c7d6a9e10"
    with context.use(context.Context(actor=cast.root_id)):
        await store.append(
            f"task-{task}",
            [
                NewEvent("TaskStarted", {"task_id": task, "kind": "app.install", "title": "Install",
                                         "owner": cast.root_id, "target": None}),
                NewEvent("TaskProgressed", {"task_id": task, "percent": 40, "message": "image"}),
            ],
        )  # fmt: skip
        await store.append(
            "group-7c0e5a5e-0000-4000-8000-000000000001",
            [NewEvent("GroupCreated", {"group_id": "7c0e5a5e-0000-4000-8000-000000000001",
                                       "name": "friends"})],
        )  # fmt: skip
    await _caught_up(store)
    async with serve_api(nc, pool=store.pool) as client:
        root = cast.token_root
        changes = await _page(client, root)
        assert await _page(client, root, "limit=200&view=changes") == changes
        everything = await _page(client, root, "limit=200&view=everything")
        assert "root created the group friends" in [i["sentence"] for i in changes]
        assert not {i["type"] for i in changes} & PROGRESS_TYPES
        steps = [i for i in everything if i["type"] in PROGRESS_TYPES]
        assert {i["type"] for i in steps} >= {"TaskStarted", "TaskProgressed"}
        assert "image (40 %)" in [i["sentence"] for i in steps]
        assert len(everything) == len(changes) + len(steps)
        # a type asked for shows in either view
        only = await _page(client, root, "type=TaskProgressed")
        assert [i["sentence"] for i in only] == ["image (40 %)"]
    # the bus query (the same function) takes the same view, its contract the same values
    page = await activity_query(store.pool, {"limit": 200})
    assert "TaskProgressed" not in {i["type"] for i in page["items"]}
    with pytest.raises(Invalid) as e:
        CONTRACT.check("qry", "activity", {"view": "bogus"})
    assert e.value.field == "view"


async def test_app_sentences_name_the_catalog_title_and_the_host(
    monkeypatch: pytest.MonkeyPatch,
    cast: Cast,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    docker_host: str,
    uniq: str,
) -> None:
    """The whole path: an install through the real apps service, the relay and the gateway's
    own projection; the app reads as its catalog title at its host, its steps only in
    everything."""
    env = apps_env(
        dsn=dsn,
        nats_url=nats_url,
        tmp_path=tmp_path,
        docker_host=docker_host,
        prefix=f"r{uniq[:8]}",
        catalog=static_catalog(tmp_path / "catalog"),
        extra={"HP_READY_TIMEOUT": "10"},
    )
    root = cast.token_root
    async with (
        running_apps(monkeypatch, env),
        running_gateway(
            monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path
        ) as gateway,
        relaying(dsn, nats_url, uniq),
    ):
        api = gateway.client
        body = {"manifest_id": STATIC, "version": "1.0.0", "location": "photos"}
        started = await api.call("POST", "/api/v1/apps", token=root, body=body)
        assert started.status == 202, started.body
        app_id = started.body["app_id"]
        installed = "root installed Static website at photos.localhost"

        async def shown() -> bool:
            return installed in [i["sentence"] for i in await _page(api, root)]

        await wait_until(shown, 180, "the install in the activity log")
        stopped = await api.call("POST", f"/api/v1/apps/{app_id}/stop", token=root)
        assert stopped.status == 200, stopped.body
        await wait_until(
            lambda: _says(api, root, "root stopped Static website at photos.localhost"),
            30,
            "the stop in the activity log",
        )
        changes = await _page(api, root, f"target=app-{app_id}")
        everything = await _page(api, root, f"target=app-{app_id}&view=everything")
        types = [i["type"] for i in changes]
        assert "AppInstalled" in types and "AppStepCompleted" not in types
        assert "AppInstallRequested" not in types
        steps = [i["sentence"] for i in everything if i["type"] == "AppStepCompleted"]
        assert steps and all(s.startswith("Static website at photos.localhost: ") for s in steps)
        assert any(
            i["sentence"] == "root started installing Static website at photos.localhost"
            " (version 1.0.0)"
            for i in everything
        )


async def _says(api: Client, token: str, line: str) -> bool:
    return line in [i["sentence"] for i in await _page(api, token)]


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


async def test_export_as_csv_and_json_safe_in_a_spreadsheet(
    cast: Cast, nc: NATS, store: PostgresEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    with context.use(context.Context(actor="@attacker", ip="198.51.100.9")):
        await store.append(
            "thing-odd",
            [NewEvent("ThingHappened", {}, meta={"summary": '=HYPERLINK("http://x.test","y")'})],
        )
    with context.use(context.Context(actor=cast.root_id)):
        await store.append(
            "group-7c0e5a5e-0000-4000-8000-000000000002",
            [NewEvent("GroupCreated", {"group_id": "7c0e5a5e-0000-4000-8000-000000000002",
                                       "name": "family"})],
        )  # fmt: skip
    await _caught_up(store)
    root = cast.token_root
    async with serve_api(nc, pool=store.pool) as client:
        page = await _page(client, root)
        a = await client.call("GET", "/api/v1/activity/export", token=root)
        assert a.status == 200, a.body
        assert a.headers["Content-Type"] == "text/csv; charset=utf-8"
        disposition = a.headers["Content-Disposition"]
        assert disposition.startswith('attachment; filename="homeport-activity-')
        assert disposition.endswith('.csv"')
        text = a.body.decode()
        assert text.splitlines()[0] == ",".join(CSV_COLUMNS)
        rows = _rows(text)
        assert [r["sentence"] for r in rows] == [
            ("'" + i["sentence"]) if i["sentence"].startswith("=") else i["sentence"] for i in page
        ]
        odd = next(r for r in rows if r["type"] == "ThingHappened")
        # what a spreadsheet would run is text: a leading '
        assert odd["sentence"] == '\'=HYPERLINK("http://x.test","y")'
        assert odd["actor"] == "'@attacker" and odd["actor_name"] == "'@attacker"
        assert odd["ip"] == "198.51.100.9"
        assert not any(c.startswith(("=", "+", "-", "@")) for r in rows for c in r.values())
        group = next(r for r in rows if r["type"] == "GroupCreated")
        assert group["sentence"] == "root created the group family"
        assert group["actor_name"] == "root" and group["actor"] == cast.root_id

        j = await client.call("GET", "/api/v1/activity/export?format=json", token=root)
        assert j.status == 200 and j.headers["Content-Type"] == "application/json; charset=utf-8"
        assert j.headers["Content-Disposition"].endswith('.json"')
        assert j.body == {"items": page}  # the items of GET /activity, unescaped

        # filters as GET /activity takes them
        only = await client.call(
            "GET", "/api/v1/activity/export?format=json&type=GroupCreated", token=root
        )
        assert [i["sentence"] for i in only.body["items"]] == ["root created the group family"]
        empty = await client.call(
            "GET", "/api/v1/activity/export?until=2000-01-01T00:00:00Z", token=root
        )
        assert empty.status == 200 and empty.body.decode().splitlines() == [",".join(CSV_COLUMNS)]

        # more events than an export holds: refused before anything is sent, naming the range
        monkeypatch.setattr(queries, "EXPORT_MAX_ROWS", 2)
        big = await client.call("GET", "/api/v1/activity/export", token=root)
        assert big.status == 400 and big.problem["field"] == "since", big.body
        assert "more than 2 events" in big.problem["detail"]
        narrow = await client.call(
            "GET", "/api/v1/activity/export?format=json&target=thing", token=root
        )
        assert narrow.status == 200 and len(narrow.body["items"]) == 1


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/v1/activity?view=bogus", "view"),
        ("/api/v1/activity/export?view=bogus", "view"),
        ("/api/v1/activity/export?format=xml", "format"),
        ("/api/v1/activity/export?since=yesterday", "since"),
        ("/api/v1/activity/export?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z", "since"),
        ("/api/v1/activity/export?limit=5", "limit"),
        ("/api/v1/activity/export?format=csv&format=json", "format"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(
    token_cast: Cast, nc: NATS, store: PostgresEventStore, path: str, field: str
) -> None:
    await _caught_up(store)
    async with serve_api(nc, pool=store.pool) as client:
        a = await client.call("GET", path, token=token_cast.token_root)
    assert a.status == 400, a.body
    assert a.problem["field"] == field, a.body


async def test_only_administrators_read_or_export_the_log(
    cast: Cast, nc: NATS, store: PostgresEventStore
) -> None:
    await _caught_up(store)
    async with serve_api(nc, pool=store.pool) as client:
        for path in ("/api/v1/activity", "/api/v1/activity/export?format=json"):
            for creds in ({"session": cast.session_alice}, {"token": cast.token_alice}):
                a = await client.call("GET", path, **creds)  # type: ignore[arg-type]
                assert a.status == 403 and a.problem["code"] == "forbidden", (path, a.body)
            a = await client.call("GET", path)
            assert a.status == 401, (path, a.body)
            a = await client.call("HEAD", path, token=cast.token_root_read)
            assert a.status == 200, (path, a.status)


async def test_identity_names_query_is_for_administrators_and_checks_its_input(
    cast: Cast,
) -> None:
    ident = cast.identity
    ids = [cast.root_id, cast.alice_id, "7c0e5a5e-0000-4000-8000-00000000dead"]
    got = await ident.ask(
        "names", {"user_ids": ids, "user_agents": [FIREFOX, "curl/8.5.0", "x"]},
        actor=cast.root_id,
    )  # fmt: skip
    assert got == {
        "names": {cast.root_id: "root", cast.alice_id: "alice", ids[2]: None},
        "groups": {},
        "browsers": ["Firefox", "curl", "another program"],
    }
    with pytest.raises(Forbidden):
        await ident.ask("names", {"user_ids": ids}, actor=cast.alice_id)
    with pytest.raises(Invalid) as bad:
        await ident.ask("names", {"user_ids": ["not-an-id"]}, actor=cast.root_id)
    assert bad.value.field == "user_ids.0"


_EVENT_MODULES = (
    "libs.events.tasks", "services.apps.events", "services.apps.platform_events",
    "services.backup.events", "services.certs.events", "services.dns.events",
    "services.firewall.events", "services.identity.events", "services.identity.group_events",
    "services.identity.mfa_events", "services.identity.ldap_apps", "services.mail.events",
)  # fmt: skip


def _example(name: str, hint: Any) -> Any:
    """A value of a field's type, as the services write them (ids are UUIDs)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    hint = args[0] if typing.get_origin(hint) in (types.UnionType, typing.Union) else hint
    origin = typing.get_origin(hint) or hint
    if origin is bool:
        return True
    if origin is int:
        return 3
    if origin is float:
        return 1.5
    if origin is list:
        return ["x", "y"]
    if origin is dict:
        return {"kind": "manual"}
    if name.endswith("_id") or name == "clone_of":
        return "7c0e5a5e-0000-4000-8000-0000000000aa"
    return {"scope": "ssh", "reason": "password", "why": "set"}.get(name, f"{name}-x")


async def test_every_sentence_reads_its_events_real_fields(
    cast: Cast, nc: NATS, store: PostgresEventStore
) -> None:
    """Each event class with a sentence, made with a value in every field and appended as the
    services append it: its sentence (not the summary) is shown, with no field left out."""
    declared = sentence_fields()
    made = []
    for module in _EVENT_MODULES:
        for name in importlib.import_module(module).__all__:
            cls = getattr(importlib.import_module(module), name)
            if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
                continue
            hints = typing.get_type_hints(cls)
            fields = {f.name for f in dataclasses.fields(cls)}
            event = cls(**{f: _example(f, hints[f]) for f in fields})
            try:
                new = REGISTRY.to_new_event(event)
            except UnknownEventType:
                continue  # a dataclass of the module that is no event
            if new.type in declared:
                read = {f.split(".")[0] for f in declared[new.type]}
                assert read <= fields, (new.type, read - fields)
                made.append(new)
    assert len(made) >= 90, len(made)
    with context.use(context.Context(actor=cast.root_id)):
        for new in made:
            await store.append("thing-every", [new])
            if new.type == "AppInstallRequested":  # where the app of every app_id lives
                place = NewEvent(new.type, new.data, meta=new.meta)
                await store.append(f"app-{new.data['app_id']}", [place])
    await _caught_up(store)
    async with serve_api(nc, pool=store.pool) as client:
        items = await _page(client, cast.token_root, "limit=200&view=everything&target=thing")
    assert len(items) == len(made)
    for i in items:
        assert i["sentence"] != i["summary"], i
        assert "None" not in i["sentence"] and "{" not in i["sentence"], i
