"""`homeport restore` on a server install (systemd): the platform backup put back in place of
the running platform, the old data kept aside and started again if anything fails.

In order (each step prints a progress line):
1. before anything stops: the platform backup and every app backup it names are restored into
   `/var/lib/homeport.restore-<stamp>/` (beside the data dir, the same file system): a wrong
   key, a missing or altered backup is refused here and the platform keeps running;
2. `homeport.target` stops (every unit, both Postgres servers and NATS included);
3. the data dir's contents move to `/var/lib/homeport.before-restore-<stamp>/` (as the stack's
   wizard restore does); the empty layout is made again by the installer's own steps (folders
   with their owners, both clusters initdb'd with the passwords in /etc/homeport, the addon
   pg_hba.conf); the apps' base image tarball is linked back from the old data;
4. the apps' snapshots and restore-pending.json go to `<data>/apps` (the apps unit rebuilds
   them at its start); the platform's Postgres unit starts, the platform database is made and
   the event store, each service's keyring (`<data>/keyring/<service>/keyring.json`) and
   certificates (`<data>/certs/live`) are loaded by deploy/restore.py's `load`;
5. every file the restore wrote is given to the user its unit runs as (units.directories);
6. `homeport.target` starts and every unit must be healthy (update.SystemdHost).
Any failure after step 2: the target stops, the new contents go, the old ones come back, the
target starts again, and the error says so. The setup wizard's request (the backup service's
`<data>/backup/restore-request.json`, started by homeport-restore.path) is taken and deleted
first; when it fails, `<data>/backup/restore-failed.json` says why (the wizard shows it).

A restore killed or cut off by a power loss between steps 2 and 6 (`homeport.target` stopped,
the data dir being replaced) leaves `/var/lib/homeport.restore-running` (JSON: where the old data
went, how far it got). `homeport-restore-recover.service`, required by every platform unit and
ordered before them, runs `homeport restore --recover` whenever they start while that file is
there (at the next boot, or `systemctl restart homeport.target`; when it fails, none starts): the
old data comes back (only what was moved, if the move itself was cut off), the reason goes to
restore-failed.json, and the platform starts as it was before the restore. The file is removed
just before the restore starts the target itself, and the recovery leaves a restore that still
runs alone (the marker names its process: the restore starts the platform's Postgres unit on its
own, and that start runs the recovery unit), so a restore never undoes itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from deploy.layout import Layout
from deploy.ownership import give_to_users
from deploy.restore import (
    Places,
    RestoreError,
    RestoreSummary,
    fetch_platform,
    load,
    open_repository,
    restore_apps,
    restore_mail,
    summarize,
)
from deploy.stack import RESTORE_FAILED, RESTORE_REQUEST, move_aside, put_back, take_request_file
from deploy.units import TARGET, mail_root, restore_marker, unit_name, unit_user
from deploy.update import SystemdHost, UpdateError, admin_env_file, read_env_file

__all__ = [
    "HEALTH_TIMEOUT",
    "recover_interrupted",
    "request_path",
    "restore_server",
    "running_marker",
    "take_request",
    "write_failed",
]

HEALTH_TIMEOUT = 300.0
Say = Callable[[str], None]


def request_path(layout: Layout) -> Path:
    """Where the backup service writes the wizard's restore request (its data dir, 0700)."""
    return layout.data / "backup" / RESTORE_REQUEST


def take_request(layout: Layout, path: Path) -> dict[str, Any]:
    """The wizard's request in `path` (only the backup service's own file), deleted before it
    is read (never through a link); a missing or malformed one is a RestoreError."""
    if Path(os.path.abspath(path)) != request_path(layout):
        raise RestoreError(f"--from-request {path}: only {request_path(layout)} is read")
    request = take_request_file(path)
    if request is None:
        raise RestoreError(f"--from-request {path}: no restore request there (or not one)")
    return request


def _ctl(*args: str) -> None:
    try:
        proc = subprocess.run(
            ["systemctl", *args], capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RestoreError(f"systemctl {' '.join(args)}: {e}") from None
    if proc.returncode != 0:
        raise RestoreError(f"systemctl {' '.join(args)}: {proc.stderr.strip()[:500]}")


def _beside(data: Path, kind: str, stamp: str) -> Path:
    path = data.with_name(f"{data.name}.{kind}-{stamp}")
    for n in range(2, 100):
        if not path.exists():
            break
        path = data.with_name(f"{data.name}.{kind}-{stamp}-{n}")
    return path


def running_marker(layout: Layout) -> Path:
    """`/var/lib/homeport.restore-running`: a restore is replacing the data dir (see above)."""
    return restore_marker(layout)


def _mark(layout: Layout, phase: str, aside: Path, work: Path) -> None:
    """Say how far the restore got, durably (written beside, fsync'd, renamed, dir fsync'd);
    once replacing, with the names the old data has (all in `aside` then)."""
    marker = running_marker(layout)
    tmp = marker.with_name(f".{marker.name}.tmp")
    doc: dict[str, Any] = {"phase": phase, "aside": str(aside), "work": str(work), **_me()}
    if phase == "replacing":
        doc["old"] = sorted(child.name for child in aside.iterdir())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(doc) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, marker)
    _sync_dir(marker.parent)


def _me() -> dict[str, str]:
    """Who writes the marker: this process, told apart from a later one with the same pid."""
    return {"boot": _boot_id(), "pid": str(os.getpid()), "started": _start_time(os.getpid())}


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    try:  # field 22 of /proc/<pid>/stat (after the command in parentheses)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _restore_alive(doc: dict[str, Any]) -> bool:
    """Whether the restore that wrote the marker is still running (it starts Postgres itself,
    and that start runs the recovery unit: which must then leave the restore alone)."""
    pid = str(doc.get("pid", ""))
    if not pid.isdigit() or not doc.get("boot") or doc.get("boot") != _boot_id():
        return False
    started = _start_time(int(pid))
    return bool(started) and started == doc.get("started")


def _unmark(layout: Layout) -> None:
    running_marker(layout).unlink(missing_ok=True)
    _sync_dir(layout.data.parent)


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_PHASES = {
    "stopping": "while the platform stopped",
    "moving": "while the old data was being moved aside",
    "replacing": "while the backup was being put in place",
}


def recover_interrupted(layout: Layout, say: Say = print) -> str | None:
    """After a restore that was cut off: the data from before it back in the data dir (units
    stopped, as before `homeport.target` starts); what happened, or None when no restore was
    interrupted. Raises RestoreError when the old data cannot be put back (it stays aside)."""
    marker = running_marker(layout)
    try:
        doc = json.loads(marker.read_text(encoding="utf-8"))
        phase, aside, work = str(doc["phase"]), Path(doc["aside"]), Path(doc["work"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RestoreError(f"{marker} is unreadable ({e}): look at it, then remove it") from None
    if _restore_alive(doc):
        say(f"a restore is running (pid {doc['pid']}): nothing to recover")
        return None
    data = layout.data
    for folder, kind in ((aside, "before-restore"), (work, "restore")):
        if folder.parent != data.parent or not folder.name.startswith(f"{data.name}.{kind}-"):
            raise RestoreError(f"{marker} names {folder}, not a folder beside {data}: remove it")
    for cluster in ("postgres", "postgres-addons"):  # the cut-off restore may have started one
        if _postmaster_alive(data / cluster / "pgdata"):
            raise RestoreError(
                f"a Postgres server runs on {data / cluster}: run `systemctl restart {TARGET}` "
                "(it stops every unit, then this recovery runs before they start)"
            )
    if phase == "moving" and aside.is_dir():  # only what was moved goes back; nothing is deleted
        for child in list(aside.iterdir()):
            if not (data / child.name).exists():
                os.rename(child, data / child.name)
        with contextlib.suppress(OSError):
            aside.rmdir()
        if aside.exists():
            raise RestoreError(f"{aside} still holds data that is also in {data}: compare them")
    elif phase == "replacing":
        _return_old(data, aside, set(doc.get("old") or ()))
    shutil.rmtree(work, ignore_errors=True)
    message = (
        f"the restore was interrupted {_PHASES.get(phase, 'halfway')} (the machine stopped or "
        "the restore was killed); the platform as it was before the restore is back"
    )
    say(message)
    with contextlib.suppress(OSError, KeyError):
        write_failed(layout, message)
    _unmark(layout)
    return message


def _postmaster_alive(pgdata: Path) -> bool:
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def _return_old(data: Path, aside: Path, old: set[str]) -> None:
    """The old data (the names in `old`, now in `aside` or already back) back in `data`; what
    the cut-off restore wrote goes. Safe to cut off and run again: a name still in `aside` or
    not in `old` is the restore's (moved into a folder that is deleted last), a name in `old`
    and no longer in `aside` is already back."""
    trash = aside.with_name(f"{aside.name}.new")
    try:
        for child in list(data.iterdir()):
            if child.name not in old or (aside / child.name).exists():
                trash.mkdir(mode=0o700, exist_ok=True)
                os.rename(child, trash / f"{child.name}.{time.monotonic_ns()}")
        if aside.is_dir():
            for child in list(aside.iterdir()):
                os.rename(child, data / child.name)
            aside.rmdir()
    except OSError as e:
        raise RestoreError(f"the old data could not be put back ({e}): it is in {aside}") from None
    shutil.rmtree(trash, ignore_errors=True)


def _installer(layout: Layout, say: Say) -> Any:
    from deploy.install import Installer, Options

    env = read_env_file(layout.env_file)
    version = layout.version_of(layout.current) or "current"
    options = Options(version, docker_host=env.get("HP_DOCKER_HOST", ""), prefix=layout.prefix)
    return Installer(options, say=lambda line: say(line.strip()))


def _skeleton(layout: Layout, aside: Path, say: Say) -> None:
    """The empty layout the units need, made by the installer's own steps."""
    installer = _installer(layout, say)
    installer._dirs()
    installer._postgres()
    installer._docker()  # the services network (there) and the addon pg_hba.conf
    cache = aside / "base-cache"
    if cache.is_dir():  # the apps' base image tarball: linked, not copied
        shutil.copytree(cache, layout.data / "base-cache", copy_function=os.link,
                        dirs_exist_ok=True)  # fmt: skip


def _put_apps(layout: Layout, work: Path) -> None:
    """The restored snapshots and restore-pending.json into `<data>/apps`."""
    src, dest = work / "apps", layout.data / "apps"
    for app in (src / "snapshots").iterdir():
        os.rename(app, dest / "snapshots" / app.name)
    for child in src.iterdir():
        if child.name != "snapshots":
            os.rename(child, dest / child.name)


def _put_mail(layout: Layout, work: Path) -> None:
    """The restored mail store (if any) into the mail root, `<data>/mail/mail`: the mail unit
    (root) takes it into its store at its start (services/mail/snapshots.py)."""
    from services.mail.snapshots import PENDING

    src = work / "mail" / PENDING
    if src.is_dir():
        root = mail_root(layout)
        root.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.rename(src, root / PENDING)


def _server_places(layout: Layout) -> Places:
    """The install's own Postgres unit, its database made; the URL from homeport.env."""
    data = layout.data

    @contextlib.asynccontextmanager
    async def database(say: Say) -> AsyncIterator[str]:
        say(f"starting {unit_name('postgres')}")
        await asyncio.to_thread(_ctl, "start", unit_name("postgres"))
        installer = _installer(layout, say)
        await asyncio.to_thread(installer._create_database)
        where = admin_env_file(layout)
        dsn = read_env_file(where).get("HP_DATABASE_URL", "")
        if not dsn:
            raise RestoreError(f"{where} sets no HP_DATABASE_URL: run the installer")
        yield dsn

    return Places(data / "keyring", data / "certs" / "live", database)


def write_failed(layout: Layout, message: str) -> None:
    """`<data>/backup/restore-failed.json` (owned by the backup service's user) for the wizard."""
    folder = layout.data / "backup"
    if not folder.is_dir() or folder.is_symlink():
        return
    path = folder / RESTORE_FAILED
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps({"message": message[:2000]}) + "\n")
        user = pwd.getpwnam(unit_user("backup"))
        os.fchown(f.fileno(), user.pw_uid, user.pw_gid)


async def restore_server(
    layout: Layout,
    target: Any,
    identity: str,
    *,
    snapshot: str | None = None,
    say: Say = print,
    health_timeout: float = HEALTH_TIMEOUT,
) -> tuple[RestoreSummary, Path]:
    """Replace the running platform of `layout` with the platform backup (newest, or
    `snapshot`) on `target`; (the summary, where the old data now is)."""
    if os.geteuid() != 0:
        raise RestoreError("restoring a server install needs root: sudo homeport restore ...")
    data = layout.data
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = _beside(data, "restore", stamp)
    await asyncio.to_thread(work.mkdir, 0o700)
    try:
        repo = await open_repository(target)
        say(f"opened the backups at {target!r}")
        chosen, doc, apps = await fetch_platform(repo, work, identity, snapshot, say)
        restored = await restore_apps(repo, work / "apps", apps, identity, say)
        await restore_mail(repo, work / "mail", doc.get("mail"), identity, say)
        aside = _beside(data, "before-restore", stamp)
        await asyncio.to_thread(_mark, layout, "stopping", aside, work)
        say(f"stopping {TARGET}")
        try:
            await asyncio.to_thread(_ctl, "stop", TARGET)
            summary = await _replace(layout, work, aside, say, health_timeout)
        except BaseException as e:
            why = str(e) if isinstance(e, RestoreError) else f"{type(e).__name__}: {e}"
            say(f"the restore failed ({why[:300]}): putting the old data back")
            await asyncio.to_thread(_roll_back, layout, aside)
            raise RestoreError(
                f"{why}; the platform as it was before the restore is running again"
            ) from None
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
    return summarize(summary, chosen, doc, restored), aside


async def _replace(
    layout: Layout, work: Path, aside: Path, say: Say, health_timeout: float
) -> RestoreSummary:
    data = layout.data
    say(f"moving the old data to {aside}")
    await asyncio.to_thread(_mark, layout, "moving", aside, work)
    await asyncio.to_thread(move_aside, data, aside, data / "postgres", None)
    await asyncio.to_thread(_mark, layout, "replacing", aside, work)
    say("making the empty layout again (folders, both Postgres clusters)")
    await asyncio.to_thread(_skeleton, layout, aside, say)
    await asyncio.to_thread(_put_apps, layout, work)
    await asyncio.to_thread(_put_mail, layout, work)
    summary = await load(_server_places(layout), work / "platform", say)
    await asyncio.to_thread(give_to_users, layout, {0})  # what root wrote
    say(f"starting {TARGET} and waiting until every unit is healthy")
    # from here the restored data is what starts: the recovery at boot must not undo it (a
    # failure below rolls back here, with `aside` in hand)
    await asyncio.to_thread(_unmark, layout)
    with contextlib.suppress(RestoreError):  # units that gave up may start again
        await asyncio.to_thread(_ctl, "reset-failed", "homeport-*")
    await asyncio.to_thread(_ctl, "start", TARGET)
    try:
        bad = await asyncio.to_thread(SystemdHost().healthy, health_timeout)
    except UpdateError as e:
        raise RestoreError(str(e)) from None
    if bad:
        raise RestoreError(f"not healthy after {health_timeout:.0f} s: {', '.join(bad)}")
    return summary


def _roll_back(layout: Layout, aside: Path) -> None:
    with contextlib.suppress(RestoreError):
        _ctl("stop", TARGET)
    try:
        put_back(layout.data, aside, layout.data / "postgres", None)
    except OSError as e:
        raise RestoreError(
            f"the old data could not be put back ({e}): it is in {aside}; stop {TARGET}, move "
            f"it back into {layout.data} and start {TARGET}"
        ) from None
    _unmark(layout)
    with contextlib.suppress(RestoreError):
        _ctl("reset-failed", "homeport-*")
    _ctl("start", TARGET)
