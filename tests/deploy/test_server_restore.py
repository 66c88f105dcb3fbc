"""A platform backup restored on a server install (systemd, tests/support/systemd_box.py): the
setup wizard's request (the file the backup service writes) starts homeport-restore.service
through homeport-restore.path; the platform comes back as it was backed up (the admin signs in,
a user made since is gone, the app's file is back), every unit active, every file owned by its
unit's user. A wrong key, by the command or by the wizard's request, is refused and the running
platform is left alone (the wizard's refusal in restore-failed.json, readable by the backup
service).

The platform is the one tests/deploy/test_install.py installed and left (they run before this
file, on one box: xdist group `systemd-box`), with its administrator and its static website
app; run without them, this test installs one itself on a fresh box.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import docker
import docker.errors
import pytest

from deploy.units import ROOT_UNITS, unit_user
from services.backup.repo import new_identity
from tests.support.docker import find_docker_host
from tests.support.servers import need_server
from tests.support.systemd_box import (
    BOX_SRC,
    BOX_WHEELS,
    Boxes,
    SystemdBox,
    box_api,
    box_curl,
    box_units,
    until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800), pytest.mark.xdist_group("systemd-box")]

SRC = BOX_SRC
TARGET = "/srv/backup"
DATA = "/var/lib/homeport"
REQUEST = f"{DATA}/backup/restore-request.json"
FAILED = f"{DATA}/backup/restore-failed.json"
MARKER = f"{DATA}.restore-running"
RECOVER = "homeport-restore-recover.service"
PASSWORD = "correct horse battery staple"  # a test account's (test_install.py's admin too)
PAGE = "restored-ok: the page from before the backup"
NOT_ALWAYS_ON = (
    "homeport-restore.service",
    RECOVER,
    "homeport-update.service",
    "homeport-addon-postgres.service",
)


@pytest.fixture(scope="module")
def box(boxes: Boxes) -> Iterator[SystemdBox]:
    """The platform test_install.py left installed, else a fresh box (removed at the end)."""
    try:
        b = boxes.installed(find_docker_host())
    except docker.errors.DockerException as e:
        need_server("dockerd", e)
    b.ok = False
    try:
        yield b
    finally:
        if not b.ok:
            print(b.diagnose())
            print(b.sh("journalctl --no-pager -o cat -u homeport-restore | tail -80", False))
        boxes.done(b)


def _app_container(box: SystemdBox) -> str:
    names = box.run("docker", "ps", "--format", "{{.Names}}").split()
    assert len(names) == 1, names
    return names[0]


def _roots_files(box: SystemdBox) -> str:
    """Files under the data dir root owns (a few), but the keyring folder (each service's folder
    in it is its own) and a root unit's folders (mail's: deploy/units.py ROOT_UNITS)."""
    roots = " ".join(
        f"! -path {DATA}/{name} ! -path '{DATA}/{name}/*' ! -path '{DATA}/keyring/{name}*'"
        for name in ROOT_UNITS
    )
    return box.sh(
        f"find {DATA} -mindepth 1 -user root ! -path {DATA}/keyring {roots} | head"
    ).strip()


def _platform(box: SystemdBox) -> dict[str, dict[str, str]]:
    """The units of homeport.target (not the restore's or the update's oneshot, not the
    addon Postgres, which runs only once an app needs a database)."""
    return {u: p for u, p in box_units(box).items() if u not in NOT_ALWAYS_ON}


def _pids(box: SystemdBox) -> dict[str, str]:
    return {u: p["MainPID"] for u, p in _platform(box).items()}


def _request(box: SystemdBox, doc: dict[str, object]) -> str:
    """The request written as the backup service writes it (its user, 0600, O_EXCL); then
    homeport-restore.service's run waited for; its journal."""
    box.run("journalctl", "--rotate", check=False)
    since = box.read("date", "+%Y-%m-%d %H:%M:%S").strip()
    write = (
        "import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600);"
        " os.write(fd, sys.argv[2].encode())"
    )
    box.run(
        "runuser", "-u", unit_user("backup"), "--", "python3", "-c", write, REQUEST, json.dumps(doc)
    )
    until("the request taken", lambda: box.status("test", "-e", REQUEST)[0] != 0, 60)

    def done() -> bool:
        state = box.run("systemctl", "show", "-p", "ActiveState", "--value",
                        "homeport-restore.service").strip()  # fmt: skip
        return state in ("inactive", "failed")

    until("homeport-restore.service done", done, 900)
    return box.run("journalctl", "--no-pager", "-o", "cat", "-u", "homeport-restore.service",
                   "--since", since)  # fmt: skip


def _install_and_set_up(box: SystemdBox) -> None:
    """The platform installed (unless test_install.py left it so) and its administrator made
    with identity's one-time setup token (unless made already)."""
    if not box_units(box):
        started = time.monotonic()
        out = box.run("bash", f"{SRC}/deploy/install.sh", "--wheels", BOX_WHEELS)
        print(f"install.sh took {time.monotonic() - started:.0f} s:\n{out}")
    token = box.sh(f"cat {DATA}/identity/setup-token 2>/dev/null", check=False).strip()
    if token:
        setup = {"username": "owner", "email": "owner@example.test", "password": PASSWORD}
        status, answer = box_api(box, "POST", "/api/v1/setup", {**setup, "setup_token": token})
        assert status == 201, answer


def test_the_wizards_restore_under_systemd_brings_the_platform_back(box: SystemdBox) -> None:
    _install_and_set_up(box)
    assert box.run("systemctl", "is-active", "homeport-restore.path").strip() == "active"
    box.run("rm", "-f", "/root/jar")
    login = {"username": "owner", "password": PASSWORD}
    status, answer = box_api(box, "POST", "/api/v1/session", login)
    assert status == 200, answer
    # the static website app (installed unless there) with a page of ours in its data
    _, listed = box_api(box, "GET", "/api/v1/apps")
    if not (isinstance(listed, dict) and listed["items"]):
        body = {"manifest_id": "org.homeport.static", "version": "1.0.0", "location": "site"}
        status, answer = box_api(box, "POST", "/api/v1/apps", body)
        assert status == 202, answer

    def installed() -> bool:
        _, apps = box_api(box, "GET", "/api/v1/apps")
        states = [a["state"] for a in apps["items"]] if isinstance(apps, dict) else []
        assert "error" not in states, apps
        return states == ["installed"]

    until("the static website app installed", installed, 240)
    app = _app_container(box)
    box.run("docker", "exec", app, "sh", "-c",
            f"mkdir -p /app/data/www && echo '{PAGE}' > /app/data/www/hello.html")  # fmt: skip

    def page_back() -> bool:
        status, text = box_curl(box, "site.localhost", "/hello.html")
        return status == 200 and PAGE in text

    until("the page answering", page_back, 60)

    # a local backup target in the box, the key, a backup of everything
    backup = unit_user("backup")
    box.run("install", "-d", "-o", backup, "-g", backup, "-m", "700", TARGET)

    def target_set() -> bool:
        status, _ = box_api(box, "PUT", "/api/v1/backups/target", {"kind": "local", "path": TARGET})
        return status == 200

    until("the backup target set", target_set, 120)
    status, made = box_api(box, "POST", "/api/v1/backups/key", {})
    assert status == 200 and isinstance(made, dict), made
    identity = made["identity"]
    box.put("/root/backup.key", (identity + "\n").encode(), 0o600)
    status, answer = box_api(box, "POST", "/api/v1/backups", {})
    assert status == 202 and isinstance(answer, dict), answer
    task: dict[str, object] = {}
    task_id = answer["task_id"]

    def task_done() -> bool:
        _, view = box_api(box, "GET", f"/api/v1/tasks/{task_id}")
        task.update(view if isinstance(view, dict) else {})
        return task.get("state") in ("succeeded", "failed", "cancelled")

    until("the backup task done", task_done, 300)
    if task["state"] != "succeeded":
        print("BACKUP TASK", json.dumps(task))
    assert task["state"] == "succeeded", task.get("message")
    platform: list[str] = []

    def backed_up() -> bool:
        _, listed = box_api(box, "GET", "/api/v1/backups")
        items = listed.get("items", []) if isinstance(listed, dict) else []
        platform[:] = [b["snapshot_id"] for b in items if b.get("kind") == "platform"]
        return bool(platform)

    until("a platform backup", backed_up, 300)

    # changes after the backup: a second user, the page removed
    bob = {"username": "bob", "email": "bob@example.test", "password": "bob's long password"}
    status, answer = box_api(box, "POST", "/api/v1/users", bob)
    assert status == 201, answer
    box.run("docker", "exec", app, "rm", "/app/data/www/hello.html")
    assert not page_back()
    before = _pids(box)

    # a wrong key: refused by the command before anything stops
    box.put("/root/wrong.key", (new_identity()[0] + "\n").encode(), 0o600)
    code, refused = box.status("homeport", "restore", "--from", TARGET, "--key", "/root/wrong.key")
    assert code == 1, refused
    assert platform[0] in refused and "the platform as it was" not in refused, refused
    # ... and by the wizard's request: the reason where the wizard reads it, nothing restarted
    wrong = {"version": 1, "target": {"kind": "local", "path": TARGET},
             "allow_loopback": False, "identity": new_identity()[0],
             "snapshot_id": platform[0]}  # fmt: skip
    journal = _request(box, wrong)
    assert platform[0] in box.run("cat", FAILED), journal
    assert box.run("stat", "-c", "%U %a", FAILED).strip() == "homeport-backup 600"
    assert _pids(box) == before
    assert box.sh(f"ls -d {DATA}.before-restore-* 2>/dev/null || true").strip() == ""

    # the wizard's request with the right key: the platform as it was backed up
    right = {**wrong, "identity": identity}
    started = time.monotonic()
    journal = _request(box, right)
    print(f"the restore took {time.monotonic() - started:.0f} s:\n{journal}")
    result = box.run("systemctl", "show", "-p", "Result", "--value", "homeport-restore.service")
    assert result.strip() == "success", journal
    assert f"Restored platform backup {platform[0]}" in journal, journal
    assert identity not in journal
    assert box.status("test", "-e", FAILED)[0] != 0  # the old refusal went with the old data
    assert box.sh(f"ls -d {DATA}.before-restore-*").strip(), journal
    units = _platform(box)
    assert len(units) >= 10 and all(p["ActiveState"] == "active" for p in units.values()), units
    # the admin signs in with the password of the backup; bob is gone
    box.run("rm", "-f", "/root/jar")
    status, answer = box_api(box, "POST", "/api/v1/session", login)
    assert status == 200, answer
    status, users = box_api(box, "GET", "/api/v1/users")
    assert status == 200 and "owner" in json.dumps(users), users
    assert "bob" not in json.dumps(users), users
    # the app is rebuilt with its data: the page is back
    until("the app rebuilt", installed, 300)
    until("the page back", page_back, 120)
    # every file is its unit's user's: nothing root wrote is left root's
    assert _roots_files(box) == ""
    owners = box.sh(
        f"stat -c '%U %G %a %n' {DATA}/keyring/identity/keyring.json {DATA}/postgres/pgdata"
        f" {DATA}/nats {DATA}/apps {DATA}/certs/live {DATA}/backup"
    )
    assert owners.split("\n")[:6] == [
        f"homeport-identity homeport-identity 600 {DATA}/keyring/identity/keyring.json",
        f"homeport-postgres homeport-postgres 700 {DATA}/postgres/pgdata",
        f"homeport-nats homeport-nats 700 {DATA}/nats",
        f"homeport-apps homeport-apps 700 {DATA}/apps",
        f"homeport-certs homeport-tls 2750 {DATA}/certs/live",
        f"homeport-backup homeport-backup 700 {DATA}/backup",
    ], owners

    # a restore cut off halfway (killed while the backup is being put in place): the platform
    # stays stopped until its units start again, and then the data from before that restore is
    # back (a user made after the backup proves it), put back by homeport-restore-recover.service
    late = {"username": "late", "email": "late@example.test", "password": "late's long password"}
    status, answer = box_api(box, "POST", "/api/v1/users", late)
    assert status == 201, answer
    asides = box.sh(f"ls -d {DATA}.before-restore-*")
    box.run("systemd-run", "--unit=cut-restore", "--", "homeport", "restore",
            "--from", TARGET, "--key", "/root/backup.key")  # fmt: skip

    def replacing() -> bool:
        code, marker = box.status("cat", MARKER)
        return code == 0 and '"phase": "replacing"' in marker

    until("the restore putting the backup in place", replacing, 600)
    box.run("systemctl", "kill", "--signal=KILL", "cut-restore.service")
    until(
        "the restore killed",
        lambda: box.status("systemctl", "is-active", "cut-restore")[0] != 0,
        60,
    )
    assert box.status("test", "-e", MARKER)[0] == 0
    started = time.monotonic()
    box.run("systemctl", "restart", "homeport.target")
    recovered = box.run("journalctl", "--no-pager", "-o", "cat", "-u", RECOVER)
    print(f"recovered and restarted in {time.monotonic() - started:.0f} s:\n{recovered}")
    assert "interrupted while the backup was being put in place" in recovered, recovered
    assert box.status("test", "-e", MARKER)[0] != 0
    assert "interrupted" in box.run("cat", FAILED)  # where the wizard reads it
    assert box.sh(f"ls -d {DATA}.before-restore-*") == asides  # that restore's aside went back

    def platform_up() -> bool:
        units = _platform(box)
        return all(p["ActiveState"] == "active" for p in units.values())

    until("every unit active again", platform_up, 300)
    box.run("rm", "-f", "/root/jar")
    until(  # active is not yet answering: the gateway and identity get ready
        "signing in again",
        lambda: box_api(box, "POST", "/api/v1/session", login)[0] == 200,
        120,
    )
    status, users = box_api(box, "GET", "/api/v1/users")
    assert status == 200 and "late" in json.dumps(users), users
    assert _roots_files(box) == ""
    box.ok = True
