"""POST/GET /api/v1/setup/restore with the real identity, backup and gateway services.

Before setup and with the one-time setup token only: a wrong token is 403 naming setup_token,
a key that opens nothing 400 naming identity, a place without backups 400 naming path, and
nothing is written; check_only names the platform backup; the real one leaves the request for
the stack (0600, the key in it, once: a second is 409) and says so; GET shows a failed restore's
message; once setup is done, 409 and nothing written.
"""

from __future__ import annotations

import json
import stat
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.backup.repo import Repository, new_identity
from services.backup.targets.local import LocalTarget
from tests.gateway.apikit import Client, backup_env, running_backup, running_gateway
from tests.identity.kit import Identity, running_identity

pytestmark = pytest.mark.timeout(240)

ADMIN = {"username": "admin", "email": "admin@example.test", "password": "admin's long passphrase"}
REQUEST = "restore-request.json"


@dataclass
class Wizard:
    client: Client
    identity: Identity
    data: Path


@pytest.fixture
async def wizard(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> AsyncIterator[Wizard]:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    async with AsyncExitStack() as stack:
        ident = await stack.enter_async_context(
            running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=data)
        )
        env = backup_env(dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=data)
        await stack.enter_async_context(running_backup(monkeypatch, env))
        gw = await stack.enter_async_context(
            running_gateway(monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=data)
        )
        yield Wizard(gw.client, ident, data)


async def platform_backup(where: Path) -> tuple[str, str]:
    """A repository in `where` holding one platform backup (naming two app backups)."""
    identity, recipient = new_identity()
    where.mkdir()
    target = LocalTarget(where)
    repo = await Repository.init(target, [recipient])
    src = where.parent / "platform-src"
    src.mkdir()
    (src / "platform.json").write_text("{}")
    labels = {"kind": "platform", "run": "r1", "apps": "20260101000000-0000000000000001,x"}
    info = await repo.backup(src, {"what": "platform"}, labels=labels)
    await target.close()
    return identity, info.id


async def post(w: Wizard, body: dict[str, Any]) -> Any:
    return await w.client.call("POST", "/api/v1/setup/restore", body=body)


async def test_the_wizard_checks_then_requests_a_restore_with_the_setup_token_only(
    wizard: Wizard, tmp_path: Path
) -> None:
    w = wizard
    key, snapshot = await platform_backup(tmp_path / "backups")
    token = w.identity.setup_token
    ask = {"kind": "local", "path": str(tmp_path / "backups"), "identity": key}
    request = w.data / REQUEST

    async def refused(body: dict[str, Any], status: int, field: str | None) -> None:
        a = await post(w, body)
        assert a.status == status, (body.keys(), a.body)
        assert a.problem.get("field") == field, a.problem
        assert key not in json.dumps(a.body)
        assert not request.exists()

    await refused(ask, 400, "setup_token")  # no token
    await refused({**ask, "setup_token": token[::-1]}, 403, "setup_token")
    ask["setup_token"] = token
    await refused({**ask, "identity": new_identity()[0]}, 400, "identity")
    await refused({**ask, "identity": "AGE-SECRET-KEY-1" + "Q" * 58}, 400, "identity")
    await refused({**ask, "path": str(tmp_path / "nothing")}, 400, "path")
    await refused({**ask, "path": "relative"}, 400, "path")
    await refused({**ask, "snapshot_id": "20990101000000-0123456789abcdef"}, 400, "snapshot_id")
    await refused({**ask, "kind": "s3", "bucket": "bucket-1"}, 400, "path")  # not an s3 field
    state = await w.client.call("GET", "/api/v1/setup/restore")
    assert state.status == 200 and state.body == {
        "setup_done": False,
        "pending": False,
        "failed": None,
    }

    checked = await post(w, {**ask, "check_only": True})
    assert checked.status == 200, checked.body
    assert checked.body["snapshot_id"] == snapshot and checked.body["apps"] == 2
    assert checked.headers["Cache-Control"] == "no-store"
    assert not request.exists()

    asked = await post(w, {**ask, "snapshot_id": snapshot})
    assert asked.status == 202, asked.body
    assert asked.body["snapshot_id"] == snapshot and asked.body["requested"] is True
    assert stat.S_IMODE(request.stat().st_mode) == 0o600
    doc = json.loads(request.read_text())
    assert doc["identity"] == key and doc["snapshot_id"] == snapshot
    assert doc["target"] == {"kind": "local", "path": str(tmp_path / "backups")}
    again = await post(w, ask)
    assert again.status == 409, again.body
    state = await w.client.call("GET", "/api/v1/setup/restore")
    assert state.body["pending"] is True and state.body["failed"] is None

    # the stack took it and the restore failed: the wizard is told why
    request.unlink()
    (w.data / "restore-failed.json").write_text(json.dumps({"message": "the target went away"}))
    state = await w.client.call("GET", "/api/v1/setup/restore")
    assert state.body == {"setup_done": False, "pending": False, "failed": "the target went away"}

    # once set up, no restore through the wizard
    a = await w.client.call("POST", "/api/v1/setup", body=w.identity.setup_body(ADMIN))
    assert a.status == 201, a.body
    after = await post(w, {**ask, "check_only": True})
    assert after.status == 409 and not request.exists(), after.body
    state = await w.client.call("GET", "/api/v1/setup/restore")
    assert state.body == {"setup_done": True, "pending": False, "failed": None}


async def test_a_link_in_place_of_the_request_is_not_followed(
    wizard: Wizard, tmp_path: Path
) -> None:
    w = wizard
    key, _ = await platform_backup(tmp_path / "backups")
    victim = tmp_path / "victim"
    victim.write_text("kept")
    (w.data / REQUEST).symlink_to(victim)
    body = {
        "kind": "local",
        "path": str(tmp_path / "backups"),
        "identity": key,
        "setup_token": w.identity.setup_token,
    }
    a = await post(w, body)
    assert a.status == 409, a.body
    assert victim.read_text() == "kept"
