"""The setup wizard's "Restore from a backup" on the real stack (`homeport up`, issue 14).

Platform A: an administrator, a directory target, a key, "back up now" (through the API), then
stopped. Platform B: a new data directory, not set up. POST /api/v1/setup/restore: a wrong
token is 403, a wrong key 400 naming identity (nothing written), check_only names the backup;
a restore from a target emptied since its check fails and leaves B as it was (still to set up,
the message shown); the real one restarts B restored: A's administrator signs in with the old
password, the old data directory's contents are kept aside.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.backup.repo import new_identity
from tests.deploy.test_stack import Running
from tests.deploy.test_stack import start_stack as start_stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ADMIN = {"username": "admin", "email": "admin@example.test", "password": "admin's long passphrase"}
WRONG_KEY = "AGE-SECRET-KEY-1" + "Q" * 58  # the right form, not a key


def api(stack: Running) -> str:
    return str(stack.state()["dashboard_url"]).rstrip("/") + "/api/v1"


def call(
    base: str, method: str, path: str, body: Any = None, cookie: str | None = None
) -> tuple[int, Any, dict[str, str]]:
    headers = {"Content-Type": "application/json"}
    if cookie:
        headers["Cookie"] = cookie
        headers["Origin"] = base.rsplit("/api/v1", 1)[0]
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=90) as r:
            raw = r.read()
            return int(r.status), json.loads(raw) if raw else None, dict(r.headers)
    except urllib.error.HTTPError as e:
        raw = e.read()
        e.close()
        return int(e.code), json.loads(raw) if raw else None, dict(e.headers)


def sign_in(base: str) -> str:
    body = {"username": ADMIN["username"], "password": ADMIN["password"]}
    status, answer, headers = call(base, "POST", "/session", body)
    assert status == 200, answer
    return headers["Set-Cookie"].split(";", 1)[0]


def up(stack: Running) -> None:
    stack.wait_for("up", lambda: "Dashboard:" in (stack.logs / "up.out").read_text(), 180)

    def ready() -> bool:
        try:
            status, body, _ = call(api(stack), "GET", "/status")
        except OSError:
            return False
        return status == 200 and body.get("setup_done") is not None

    stack.wait_for("answering", ready, 120)


def banners(stack: Running) -> int:
    """How often `homeport up` printed its banner (once per start of the platform)."""
    return (stack.logs / "up.out").read_text().count("Dashboard:")


def wait(what: str, cond: Callable[[], bool], deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"not {what} within {deadline_s}s")


def field_of(body: Any) -> str | None:
    errors = (body or {}).get("errors") or []
    return errors[0].get("field") if errors else (body or {}).get("field")


def test_the_wizard_restores_a_platform_backup_and_a_failed_one_changes_nothing(
    start_stack: Callable[..., Running],
    tmp_root: Path,
) -> None:
    target_dir = tmp_root / f"wizard-target-{time.time_ns()}"
    target_dir.mkdir(mode=0o700)

    # -- platform A: set up, backed up to a directory, stopped ---------------------------------
    a = start_stack()
    up(a)
    base = api(a)
    token = (a.data / "setup-token").read_text().strip()
    status, body, _ = call(base, "POST", "/setup", {**ADMIN, "setup_token": token})
    assert status == 201, body
    cookie = sign_in(base)
    status, body, _ = call(
        base, "PUT", "/backups/target", {"kind": "local", "path": str(target_dir)}, cookie
    )
    assert status == 200, body
    status, body, _ = call(base, "POST", "/backups/key", {}, cookie)
    assert status in (200, 201), body
    identity = body["identity"]
    status, body, _ = call(base, "POST", "/backups", {}, cookie)
    assert status == 202, body
    task = body["task_id"]

    def backed_up() -> bool:
        s, t, _ = call(base, "GET", f"/tasks/{task}", cookie=cookie)
        assert s == 200 and t["state"] != "failed", t
        return bool(t["state"] == "succeeded")

    wait("backed up", backed_up, 240)
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(timeout=60) == 0, a.output()

    # -- platform B: new, not set up ------------------------------------------------------------
    b = start_stack()
    up(b)
    base = api(b)
    assert call(base, "GET", "/status")[1]["setup_done"] is False
    token = (b.data / "setup-token").read_text().strip()
    where = {"kind": "local", "path": str(target_dir)}
    ask = {**where, "identity": identity, "setup_token": token}

    status, body, _ = call(base, "POST", "/setup/restore", {**ask, "setup_token": token[::-1]})
    assert status == 403 and field_of(body) == "setup_token", body
    for wrong in (WRONG_KEY, new_identity()[0]):
        status, body, _ = call(base, "POST", "/setup/restore", {**ask, "identity": wrong})
        assert status == 400 and field_of(body) == "identity", body
    assert not (b.data / "restore-request.json").exists()
    status, body, _ = call(base, "POST", "/setup/restore", {**ask, "path": str(tmp_root / "no")})
    assert status == 400 and field_of(body) == "path", body
    status, checked, headers = call(base, "POST", "/setup/restore", {**ask, "check_only": True})
    assert status == 200, checked
    assert checked["snapshot_id"] and checked["apps"] == 0 and checked["time"]
    assert headers.get("Cache-Control") == "no-store"
    assert not (b.data / "restore-request.json").exists()
    assert identity not in (b.data / "logs" / "gateway.log").read_text()

    # a restore that fails (the backups went between check and restore): B as it was
    hidden = target_dir.with_name(target_dir.name + "-hidden")
    status, body, _ = call(base, "POST", "/setup/restore", ask)
    assert status == 202, body
    target_dir.rename(hidden)  # before the stack's next look (at most a second)
    target_dir.mkdir()

    def failed_shown() -> bool:
        s, state, _ = call(base, "GET", "/setup/restore")
        return s == 200 and bool(state["failed"])

    wait("the failure shown", failed_shown, 240)
    assert not (b.data / "restore-request.json").exists()
    state = call(base, "GET", "/setup/restore")[1]
    assert state["setup_done"] is False and state["pending"] is False
    assert identity not in state["failed"]
    assert call(base, "GET", "/status")[1]["setup_done"] is False
    assert not list(b.data.parent.glob(b.data.name + ".before-restore-*"))
    assert (b.data / "setup-token").read_text().strip() == token  # the same platform B

    # the real one: B comes back as A was
    target_dir.rmdir()
    hidden.rename(target_dir)
    status, body, _ = call(base, "POST", "/setup/restore", ask)
    assert status == 202 and body["snapshot_id"] == checked["snapshot_id"], body

    def restored() -> bool:
        s, st, _ = call(base, "GET", "/status")
        return s == 200 and st["setup_done"] is True

    wait("B restored and answering", restored, 300)  # at the same address
    assert api(b) == base
    cookie = sign_in(base)
    status, me, _ = call(base, "GET", "/profile", cookie=cookie)
    assert status == 200 and me["username"] == "admin", me
    # the banner printed again at each restart (the gateway answers before the stack prints it)
    wait("the banner printed again", lambda: banners(b) >= 3, 60)
    out = (b.logs / "up.out").read_text()
    aside = list(b.data.parent.glob(b.data.name + ".before-restore-*"))
    assert len(aside) == 1 and (aside[0] / "setup-token").exists()
    assert not (b.data / "restore-failed.json").exists()
    assert identity not in (b.logs / "up.err").read_text() + out
    b.proc.send_signal(signal.SIGTERM)
    assert b.proc.wait(timeout=60) == 0, b.output()
    shutil.rmtree(aside[0], ignore_errors=True)
    shutil.rmtree(target_dir, ignore_errors=True)
