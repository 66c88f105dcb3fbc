"""/api/v1/backups through the API with the real identity and backup services (and, for a full
backup, the real apps service and relay).

Admins only; bad input is a 400 naming the field with nothing kept; the private key is answered
once, with Cache-Control: no-store, and never again; neither the key nor the S3 secret is in any
log line or event; "back up now" of everything to a directory lists a platform backup; an app's
backup clones into a new app at its own location, with the data it had.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client as NATS

from libs.contracts.backup import AGE_IDENTITY
from services.gateway.api import default_table
from tests.apps.appskit import STATIC, Apps, apps_env, running_apps, static_catalog
from tests.gateway.apikit import (
    Cast,
    Client,
    backup_env,
    events_in,
    running_backup,
    running_gateway,
    serve_api,
)
from tests.support.bus import relaying
from tests.support.moto import MotoServer, run_moto

pytestmark = pytest.mark.timeout(240)

SNAPSHOT = "20261205063312-0123456789abcdef"  # well formed; no such backup
OTHER_KEY = "AGE-SECRET-KEY-1" + "Q" * 58  # well formed, opens nothing
APP = str(uuid.uuid4())


def _backup_routes() -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in default_table() if "backups" in r.tags]


def _concrete(path: str) -> str:
    return path.replace("{snapshot_id}", SNAPSHOT).replace("{app_id}", APP)


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    yield from run_moto()


@pytest.fixture
async def api(
    monkeypatch: pytest.MonkeyPatch,
    cast: Cast,
    nc: NATS,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
) -> AsyncIterator[Client]:
    """The API with the real backup service (no apps service: settings and refusals only)."""
    env = backup_env(dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path)
    async with running_backup(monkeypatch, env), serve_api(nc) as client:
        yield client


def _secret_free(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text


async def _everything_logged_and_stored(caplog: pytest.LogCaptureFixture, dsn: str) -> str:
    return caplog.text + json.dumps(await events_in(dsn))


async def test_every_backup_route_is_for_admins_only(nc: NATS, cast: Cast) -> None:
    routes = _backup_routes()
    assert len(routes) == 12, routes
    async with serve_api(nc) as api:
        for method, path in routes:
            url = "/api/v1" + _concrete(path)
            body: dict[str, Any] | None = {} if method in ("POST", "PUT") else None
            anonymous = await api.call(method, url, body=body)
            assert anonymous.status == 401, (method, path, anonymous.body)
            for token in (cast.token_alice, cast.token_alice_read):
                refused = await api.call(method, url, token=token, body=body)
                assert refused.status == 403, (method, path, refused.body)
            if method != "GET":  # a read token of an admin changes nothing either
                read = await api.call(method, url, token=cast.token_root_read, body=body)
                assert read.status == 403, (method, path, read.body)


async def test_bad_input_is_a_400_naming_the_field_and_nothing_is_kept(
    api: Client, cast: Cast, tmp_path: Path
) -> None:
    root = cast.token_root
    before = await api.call("GET", "/api/v1/backups/settings", token=root)
    assert before.status == 200, before.body
    assert before.body["target"] is None

    async def refused(method: str, path: str, body: Any, field: str) -> None:
        answer = await api.call(method, "/api/v1" + path, token=root, body=body)
        assert answer.status == 400, (path, body, answer.body)
        assert answer.problem["field"] == field, (path, body, answer.problem)

    await refused("PUT", "/backups/target", {"kind": "ftp"}, "kind")
    await refused("PUT", "/backups/target", {"kind": "local", "path": ""}, "path")
    await refused("PUT", "/backups/target", {"kind": "local", "path": "relative/dir"}, "path")
    nul = str(tmp_path / "a\u0000b")
    await refused("PUT", "/backups/target", {"kind": "local", "path": nul}, "path")
    # a target that fails its check: the service names the target (`kind`) and says why
    missing = str(tmp_path / "no" / "such" / "dir")
    unchecked = await api.call(
        "PUT", "/api/v1/backups/target", token=root, body={"kind": "local", "path": missing}
    )
    assert unchecked.status == 400 and unchecked.problem["field"] in ("path", "kind")
    assert "No such file or directory" in unchecked.problem["detail"]
    await refused("PUT", "/backups/target", {"kind": "local", "surprise": 1}, "surprise")
    await refused("PUT", "/backups/schedule", {"time": "25:00"}, "time")
    await refused("PUT", "/backups/schedule", {"enabled": "yes"}, "enabled")
    await refused("PUT", "/backups/retention", {"last": -1}, "last")
    await refused("PUT", "/backups/retention", {"daily": int("9" * 4000)}, "daily")
    await refused("POST", "/backups/key", {"second_recipient": "age1nope"}, "second_recipient")
    await refused("POST", "/backups/key", {"passphrase": "short"}, "passphrase")
    await refused("POST", "/backups", {"app_id": "not-a-uuid"}, "app_id")
    restore = f"/backups/{SNAPSHOT}/restore"
    await refused("POST", restore, {"identity": "AGE-SECRET-KEY-1nope"}, "identity")
    await refused("POST", restore, {}, "identity")
    clone = f"/backups/{SNAPSHOT}/clone"
    await refused("POST", clone, {"identity": OTHER_KEY, "location": "Bad!"}, "location")
    await refused("POST", clone, {"identity": OTHER_KEY, "location": "x\u0000"}, "location")
    bad_id = await api.call("POST", "/api/v1/backups/nope/verify", token=root, body={})
    assert bad_id.status == 400 and bad_id.problem["field"] == "snapshot_id"
    # a number past Python's digit limit is refused before any field is looked at
    raw = b'{"last": ' + b"9" * 5000 + b"}"
    huge = await api.call(
        "PUT",
        "/api/v1/backups/retention",
        token=root,
        data=raw,
        headers={"Content-Type": "application/json"},
    )
    assert huge.status == 400 and "digits" in huge.problem["detail"]

    after = await api.call("GET", "/api/v1/backups/settings", token=root)
    assert after.body == before.body


async def test_the_key_is_answered_once_and_no_secret_is_logged_or_stored(
    api: Client,
    cast: Cast,
    tmp_path: Path,
    dsn: str,
    moto: MotoServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    root = cast.token_root
    # S3 first: the secret is checked (a probe object), kept sealed, never shown
    bucket = f"hp-{uuid.uuid4().hex[:12]}"
    moto.client("s3").create_bucket(Bucket=bucket)
    s3 = {
        "kind": "s3",
        "endpoint_url": moto.url,
        "region": "us-east-1",
        "bucket": bucket,
        "access_key_id": moto.access_key_id,
        "secret_access_key": "wrong" + moto.secret_access_key,
    }
    wrong = await api.call("PUT", "/api/v1/backups/target", token=root, body=s3)
    assert wrong.status == 400, wrong.body
    s3["secret_access_key"] = moto.secret_access_key
    kept = await api.call("PUT", "/api/v1/backups/target", token=root, body=s3)
    assert kept.status == 200, kept.body
    shown = await api.call("GET", "/api/v1/backups/settings", token=root)
    assert shown.body["target"]["bucket"] == bucket
    assert shown.body["target"].get("secret_set") is True
    _secret_free(json.dumps(shown.body), moto.secret_access_key)

    # then a directory, and the key
    target = tmp_path / "target"
    target.mkdir()
    local = await api.call(
        "PUT", "/api/v1/backups/target", token=root, body={"kind": "local", "path": str(target)}
    )
    assert local.status == 200, local.body
    made = await api.call("POST", "/api/v1/backups/key", token=root, body={})
    assert made.status == 200, made.body
    assert made.headers["Cache-Control"] == "no-store"
    identity = made.body["identity"]
    assert re.fullmatch(AGE_IDENTITY, identity)
    recipients = made.body["recipients"]
    settings = await api.call("GET", "/api/v1/backups/settings", token=root)
    assert settings.body["recipients"] == recipients
    _secret_free(json.dumps(settings.body), identity)

    # an identity sent back (here to a backup that does not exist) is used and dropped
    gone = await api.call(
        "POST", f"/api/v1/backups/{SNAPSHOT}/restore", token=root, body={"identity": identity}
    )
    assert gone.status in (404, 409), gone.body
    _secret_free(json.dumps(gone.body), identity)
    _secret_free(await _everything_logged_and_stored(caplog, dsn), identity, moto.secret_access_key)
    # nothing on the target holds the private key in clear
    for f in target.rglob("*"):
        if f.is_file():
            assert identity.encode() not in f.read_bytes(), f


async def _task_events(client: Client, task_id: str, token: str) -> list[tuple[str, Any]]:
    """The task's Server-Sent Events until it ends."""
    url = f"{client.base}/api/v1/tasks/{task_id}/events"
    out: list[tuple[str, Any]] = []
    headers = {"Authorization": f"Bearer {token}"}
    async with client.http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(180)) as r:
        assert r.status == 200
        kind = ""
        async for raw in r.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                out.append((kind, json.loads(line[6:])))
    return out


async def test_back_up_now_to_a_directory_lists_a_platform_backup(
    monkeypatch: pytest.MonkeyPatch,
    cast: Cast,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
    docker_host: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    root = cast.token_root
    target = tmp_path / "target"
    target.mkdir()
    where = (dsn, nats_url, uniq, tmp_path, docker_host)
    async with with_apps_and_backup(monkeypatch, *where, letter="b") as (api, _):
        body = {"kind": "local", "path": str(target)}
        assert (
            await api.call("PUT", "/api/v1/backups/target", token=root, body=body)
        ).status == 200
        made = await api.call("POST", "/api/v1/backups/key", token=root, body={})
        identity = made.body["identity"]
        assert (await api.call("GET", "/api/v1/backups", token=root)).body["items"] == []

        started = await api.call("POST", "/api/v1/backups", token=root, body={})
        assert started.status == 202, started.body
        steps = await _task_events(api, started.body["task_id"], root)
        assert steps[-1][0] == "succeeded", steps
        percents = [d["percent"] for kind, d in steps if kind == "progress"]
        assert percents == sorted(percents)

        listed = await api.call("GET", "/api/v1/backups", token=root)
        assert [b["kind"] for b in listed.body["items"]] == ["platform"]
        platform = listed.body["items"][0]
        assert platform["size_bytes"] > 0 and platform["new_bytes"] > 0
        # the app list of one app: none of the platform's
        one = await api.call("GET", f"/api/v1/apps/{APP}/backups", token=root)
        assert one.status == 200 and one.body["items"] == []

        # with the key: verified; a platform is restored on a new machine, not through the API
        sid = platform["snapshot_id"]
        checked = await api.call(
            "POST", f"/api/v1/backups/{sid}/verify", token=root, body={"identity": identity}
        )
        assert checked.status == 202, checked.body
        assert (await _task_events(api, checked.body["task_id"], root))[-1][0] == "succeeded"
        wrong = await api.call(
            "POST", f"/api/v1/backups/{sid}/verify", token=root, body={"identity": OTHER_KEY}
        )
        assert wrong.status == 400 and wrong.problem["field"] == "identity", wrong.body
        refused = await api.call(
            "POST", f"/api/v1/backups/{sid}/restore", token=root, body={"identity": identity}
        )
        assert refused.status == 409, refused.body
        assert "homeport restore" in refused.problem["detail"]
        _secret_free(await _everything_logged_and_stored(caplog, dsn), identity)


@asynccontextmanager
async def with_apps_and_backup(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
    docker_host: str,
    *,
    letter: str,
) -> AsyncIterator[tuple[Client, Apps]]:
    """The real apps (the static app's catalog), backup and gateway services and the relay."""
    settings = apps_env(
        dsn=dsn,
        nats_url=nats_url,
        tmp_path=tmp_path,
        docker_host=docker_host,
        prefix=f"{letter}{uniq[:8]}",
        catalog=static_catalog(tmp_path / "catalog"),
    )
    backup = backup_env(dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path)
    async with (
        running_apps(monkeypatch, settings) as apps,
        running_backup(monkeypatch, backup),
        running_gateway(
            monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path
        ) as gateway,
        relaying(dsn, nats_url, uniq),
    ):
        yield gateway.client, apps


@pytest.mark.slow
async def test_an_app_backup_clones_to_a_new_location_with_its_data(
    monkeypatch: pytest.MonkeyPatch,
    cast: Cast,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
    docker_host: str,
) -> None:
    root = cast.token_root
    target = tmp_path / "target"
    target.mkdir()
    where = (dsn, nats_url, uniq, tmp_path, docker_host)
    async with with_apps_and_backup(monkeypatch, *where, letter="c") as (api, apps):
        body = {"kind": "local", "path": str(target)}
        kept = await api.call("PUT", "/api/v1/backups/target", token=root, body=body)
        assert kept.status == 200, kept.body
        made_key = await api.call("POST", "/api/v1/backups/key", token=root, body={})
        identity = made_key.body["identity"]
        install = {"manifest_id": STATIC, "version": "1.0.0", "location": "notes"}
        started = await api.call("POST", "/api/v1/apps", token=root, body=install)
        assert started.status == 202, started.body
        assert (await _task_events(api, started.body["task_id"], root))[-1][0] == "succeeded"
        app_id = started.body["app_id"]
        c = apps.container(app_id)
        r = c.exec_run(["sh", "-c", "echo 'kept notes' > /app/data/www/index.html"], user="1000")
        assert r.exit_code == 0, r.output

        # one app backed up now: listed for it (and in the whole list), no platform backup
        one = await api.call("POST", "/api/v1/backups", token=root, body={"app_id": app_id})
        assert one.status == 202, one.body
        assert (await _task_events(api, one.body["task_id"], root))[-1][0] == "succeeded"
        mine = await api.call("GET", f"/api/v1/apps/{app_id}/backups", token=root)
        [item] = mine.body["items"]
        assert item["kind"] == "app" and item["app_id"] == app_id
        assert item["location"] == "notes" and item["manifest_id"] == STATIC
        everything = await api.call("GET", "/api/v1/backups", token=root)
        assert [b["kind"] for b in everything.body["items"]] == ["app"]

        # cloned: a taken location is refused naming it; a free one is a new app with the data
        sid = item["snapshot_id"]
        clone = f"/api/v1/backups/{sid}/clone"
        taken = await api.call(
            "POST", clone, token=root, body={"identity": identity, "location": "notes"}
        )
        if taken.status == 202:  # refused by the apps service once the task runs
            steps = await _task_events(api, taken.body["task_id"], root)
            assert steps[-1][0] == "failed" and "notes" in json.dumps(steps[-1][1]), steps
        else:
            assert taken.status == 409 and taken.problem["field"] == "location", taken.body
        at_notes = await api.call("GET", "/api/v1/apps", token=root)
        assert [a["app_id"] for a in at_notes.body["items"]] == [app_id]
        made = await api.call(
            "POST", clone, token=root, body={"identity": identity, "location": "notes-copy"}
        )
        assert made.status == 202, made.body
        assert (await _task_events(api, made.body["task_id"], root))[-1][0] == "succeeded"
        listed = await api.call("GET", "/api/v1/apps", token=root)
        copy = next(a for a in listed.body["items"] if a["location"] == "notes-copy")
        assert copy["app_id"] != app_id and copy["state"] == "installed"
        status, page = await apps.page(copy["app_id"])
        assert status == 200 and "kept notes" in page
