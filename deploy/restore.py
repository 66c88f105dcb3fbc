"""`homeport restore`: the whole platform from a backup target into an EMPTY data directory.

What it does, in order (each step prints a progress line):
1. refuses a data directory that holds anything, then writes `<data>/restore-in-progress.json`
   (the stack refuses to start while it is there) and holds the stack lock;
2. opens the repository on the target and picks the newest platform backup (or the one named);
3. restores it into a work folder and checks that every app backup it names is there;
4. restores each app backup into `<data>/apps/snapshots/<app_id>/<uuid>/` (under `.partial`,
   renamed when whole) and lists them in `<data>/apps/restore-pending.json`: the apps service
   rebuilds those apps (network, volume, addons, container) at its next start; the mail
   backup of the same run (if any) into `<data>/mail/restore-pending/`, which the mail service
   takes into its store at its next start (services/mail/snapshots.py);
5. starts the data directory's Postgres as the stack does, creates the platform database,
   migrates the event store and loads the events (hash chain checked), the keyrings and the
   certificates (services/backup/platform.py);
6. ends every session that was open when the backup was taken (SessionEnded, actor "system"),
   so a cookie from before the restore no longer signs anyone in;
7. stops Postgres, removes the work folder and the marker.

A restore that stopped half-way (crash, kill, a target that went away) leaves the marker: run
the same command again; it removes what the first attempt wrote (the directory was empty
before it) and starts over. Secrets (the key, S3 credentials) are never printed.

The pieces (`fetch_platform`, `restore_apps`, `load` with a `Places`) are shared with the
restore of a server install (deploy/server_restore.py), which differs only in where the
keyrings and certificates go, how Postgres is reached, and who owns the files.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from deploy.embedded import EmbeddedError, PostgresServer, free_port
from deploy.errors import StackError
from deploy.planning import DATABASE
from deploy.stack import RESTORE_MARKER, _ensure_database
from deploy.state import KEYRING_DIR, database_password, lock, postgres_dir, prepare_dir

__all__ = [
    "MARKER",
    "PENDING",
    "Places",
    "RestoreError",
    "RestoreSummary",
    "embedded_places",
    "fetch_platform",
    "load",
    "open_repository",
    "open_target",
    "read_identity",
    "restore_apps",
    "restore_mail",
    "restore_platform",
    "summarize",
]

MARKER = RESTORE_MARKER
PENDING = "restore-pending.json"  # in <data>/apps: {app_id: snapshot folder name}
_WORK = ".restore-work"
_IDENTITY = re.compile(r"AGE-SECRET-KEY-1[02-9AC-HJ-NP-Z]{58}")
_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
_APP_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SNAPSHOT_ID = re.compile(r"[0-9]{14}-[0-9a-f]{16}")


class RestoreError(StackError):
    """A restore (or a look at a target) that cannot go on; the message says why and what to do."""


@dataclass
class RestoreSummary:
    snapshot: str
    time: str
    platform_version: str
    events: int
    sessions_ended: int
    apps: dict[str, str] = field(default_factory=dict)  # app_id -> snapshot folder name


# -- the target and the key -----------------------------------------------------------------


def read_identity(path: Path) -> str:
    """The age secret key in `path` (the downloaded key file or the printed form typed back:
    spaces, dashes between groups and comment lines are ignored). Never quoted in errors."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise RestoreError(f"cannot read the key file {path}: {e.strerror}") from None
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    found = _IDENTITY.search("\n".join(lines).upper())
    if found is None:
        squeezed = re.sub(r"[\s-]", "", "".join(lines).upper()).replace("AGESECRETKEY1", "")
        found = _IDENTITY.search("AGE-SECRET-KEY-1" + squeezed)
    if found is None:
        raise RestoreError(
            f"the key file {path} holds no backup key (a line AGE-SECRET-KEY-1...): give the "
            "file downloaded when backups were set up"
        )
    return found.group(0)


def _credentials(credentials_file: Path | None, env: Mapping[str, str]) -> tuple[str, str]:
    values = {k: env.get(k, "") for k in _CREDENTIALS}
    if credentials_file is not None:
        try:
            text = credentials_file.read_text(encoding="utf-8")
        except OSError as e:
            raise RestoreError(
                f"cannot read the credentials file {credentials_file}: {e.strerror}"
            ) from None
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            key = key.strip().removeprefix("export ").strip()
            if sep and key in _CREDENTIALS:
                values[key] = value.strip().strip("'\"")
    missing = [k for k in _CREDENTIALS if not values[k]]
    if missing:
        raise RestoreError(
            f"an s3:// target needs {' and '.join(missing)}: set them in the environment or "
            "in a --credentials-file of KEY=value lines"
        )
    return values[_CREDENTIALS[0]], values[_CREDENTIALS[1]]


_OPTION = {
    "bucket": "--from (s3://BUCKET/prefix)",
    "prefix": "--from (s3://bucket/PREFIX)",
    "endpoint_url": "--endpoint-url",
    "region": "--region",
    "access_key": "AWS_ACCESS_KEY_ID",
    "secret_key": "AWS_SECRET_ACCESS_KEY",
    "path": "--from",
}


def open_target(
    spec: str,
    *,
    endpoint_url: str | None = None,
    region: str = "us-east-1",
    credentials_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Any:
    """The Target `spec` names: a directory, or s3://bucket/prefix (credentials from `env` or
    the file). The admin's own command: an endpoint on this machine is allowed."""
    from services.backup.targets.factory import TargetSettingsError, target_from_settings

    settings: dict[str, Any]
    if spec.startswith("s3://"):
        url = urlsplit(spec)
        access, secret = _credentials(credentials_file, os.environ if env is None else env)
        settings = {
            "kind": "s3",
            "bucket": url.netloc,
            "prefix": url.path.strip("/"),
            "region": region,
            "access_key": access,
            "secret_key": secret,
        }
        if endpoint_url:
            settings["endpoint_url"] = endpoint_url
    else:
        if "://" in spec:
            raise RestoreError(f"--from {spec[:80]!r}: give a directory or s3://bucket/prefix")
        path = Path(spec).absolute()
        if not path.is_dir():
            raise RestoreError(f"--from {path}: no such directory")
        settings = {"kind": "local", "path": str(path)}
    try:
        return target_from_settings(settings, allow_loopback=True)
    except TargetSettingsError as e:
        where = _OPTION.get(e.field or "", e.field)
        raise RestoreError(f"{where}: {e}") from None


async def open_repository(target: Any) -> Any:
    from services.backup.repo import BackupError
    from services.backup.repo.repository import Repository
    from services.backup.targets.base import TargetError

    try:
        return await Repository.open(target)
    except (BackupError, TargetError) as e:
        raise RestoreError(f"cannot open the backups at {target!r}: {e}") from None


# -- the restore ----------------------------------------------------------------------------


def _is_empty(data_dir: Path) -> bool:
    return not data_dir.exists() or (data_dir.is_dir() and not any(data_dir.iterdir()))


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _stop_leftover_postgres(pg_dir: Path) -> None:
    """The Postgres a crashed restore left running on this data directory (its postmaster.pid
    names it; checked to be a postgres of that pgdata), stopped."""
    pidfile = pg_dir / "pgdata" / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().split("\n", 1)[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    if (
        not cmdline
        or not cmdline[0].endswith(b"postgres")
        or str(pg_dir).encode() not in b" ".join(cmdline)
    ):
        return
    os.kill(pid, signal.SIGINT)
    for _ in range(200):
        if not Path(f"/proc/{pid}").exists():
            return
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        time.sleep(0.1)
    raise RestoreError(f"the Postgres a previous restore left running (pid {pid}) did not stop")


def _clear_half_done(data_dir: Path) -> None:
    marker = data_dir / MARKER
    try:
        doc = json.loads(marker.read_text())
    except (OSError, ValueError):
        doc = {}
    pg = Path(doc.get("postgres_dir") or data_dir / "postgres")
    _stop_leftover_postgres(pg)
    if pg.is_dir() and data_dir not in pg.parents:
        shutil.rmtree(pg)
    for child in data_dir.iterdir():
        if child.name in (MARKER, "stack.lock"):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


async def restore_platform(
    data_dir: Path,
    target: Any,
    identity: str,
    *,
    snapshot: str | None = None,
    say: Callable[[str], None] = print,
) -> RestoreSummary:
    """Restore the platform backup (newest, or `snapshot`) from `target` into `data_dir`."""
    data_dir = await asyncio.to_thread(Path(data_dir).absolute)
    lock_fd, pg_dir = await asyncio.to_thread(_begin, data_dir, say)
    try:
        summary = await _restore_locked(data_dir, pg_dir, target, identity, snapshot, say)
        await asyncio.to_thread(_finish, data_dir)
    except BaseException:
        # The directory was empty: put it back so (a killed process leaves the marker, and
        # the next run clears it).
        with contextlib.suppress(Exception):
            await asyncio.to_thread(_undo, data_dir)
        raise
    finally:
        os.close(lock_fd)
    return summary


def _begin(data_dir: Path, say: Callable[[str], None]) -> tuple[int, Path]:
    """Check the data directory is empty (or holds a half-done restore, cleared now), take
    the stack lock, write the marker; the lock's fd and where Postgres lives."""
    half_done = (data_dir / MARKER).is_file()
    if not half_done and not _is_empty(data_dir):
        raise RestoreError(
            f"the data directory {data_dir} is not empty: restore only into an empty (or new) "
            "directory, e.g. --data-dir /var/lib/homeport-restored"
        )
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock_fd = lock(data_dir)  # another restore or a running stack here: refused
    try:
        if half_done:
            say(f"a previous restore into {data_dir} did not finish: clearing what it wrote")
            _clear_half_done(data_dir)
        prepare_dir(data_dir)
        pg_dir = postgres_dir(data_dir)
        if data_dir not in pg_dir.parents and (pg_dir / "pgdata" / "PG_VERSION").exists():
            raise RestoreError(
                f"{pg_dir} (where this data directory's Postgres lives) holds a database "
                "cluster already: move it away to restore into a new one"
            )
        _write_json(
            data_dir / MARKER,
            {"started": dt.datetime.now(dt.UTC).isoformat(), "postgres_dir": str(pg_dir)},
        )
    except BaseException:
        os.close(lock_fd)
        raise
    return lock_fd, pg_dir


def _finish(data_dir: Path) -> None:
    shutil.rmtree(data_dir / _WORK, ignore_errors=True)
    (data_dir / MARKER).unlink()


def _undo(data_dir: Path) -> None:
    _clear_half_done(data_dir)
    (data_dir / MARKER).unlink()
    (data_dir / "stack.lock").unlink(missing_ok=True)


async def _restore_locked(
    data_dir: Path,
    pg_dir: Path,
    target: Any,
    identity: str,
    snapshot: str | None,
    say: Callable[[str], None],
) -> RestoreSummary:
    repo = await open_repository(target)
    say(f"opened the backups at {target!r}")
    work = data_dir / _WORK
    work.mkdir(mode=0o700)
    chosen, doc, apps = await fetch_platform(repo, work, identity, snapshot, say)
    restored = await restore_apps(repo, data_dir / "apps", apps, identity, say)
    await restore_mail(repo, data_dir / "mail", doc.get("mail"), identity, say)
    summary = await load(embedded_places(data_dir, pg_dir), work / "platform", say)
    return summarize(summary, chosen, doc, restored)


def summarize(
    summary: RestoreSummary, chosen: Any, doc: Mapping[str, Any], apps: dict[str, str]
) -> RestoreSummary:
    """The summary of a restore, with the backup's id, time and version filled in."""
    summary.snapshot = chosen.id
    summary.time = chosen.time.isoformat(timespec="seconds")
    summary.platform_version = str(doc.get("platform_version", "?"))
    summary.apps = apps
    return summary


async def fetch_platform(
    repo: Any, work: Path, identity: str, snapshot: str | None, say: Callable[[str], None]
) -> tuple[Any, dict[str, Any], dict[str, str]]:
    """The platform backup (newest, or `snapshot`) restored into `work/platform` and checked
    (the key opens it, every app backup it names is on the target); (its listing, its
    platform.json, {app_id: app backup id}). Nothing outside `work` is touched."""
    from services.backup.platform import PlatformError, read_platform_json
    from services.backup.repo import BackupError
    from services.backup.targets.base import TargetError

    chosen = await _choose(repo, snapshot)
    say(f"restoring platform backup {chosen.id} of {chosen.time.isoformat(timespec='seconds')}")
    try:
        await repo.restore(chosen.id, work / "platform", identity)
        doc = await asyncio.to_thread(read_platform_json, work / "platform")
    except (BackupError, TargetError, PlatformError) as e:
        raise RestoreError(f"platform backup {chosen.id}: {e}") from None
    apps: dict[str, str] = dict(doc["apps"])
    for app_id, sid in apps.items():  # a path below <data>/apps: nothing else than an id
        if not _APP_ID.fullmatch(app_id) or not _SNAPSHOT_ID.fullmatch(sid):
            raise RestoreError(
                f"platform backup {chosen.id} names an app {app_id[:60]!r} or backup "
                f"{sid[:60]!r} that is not an id: not restored"
            )
    known = {s.id: s for s in await repo.snapshots()}
    missing = [f"{a} ({s})" for a, s in sorted(apps.items()) if s not in known]
    if missing:
        raise RestoreError(
            f"platform backup {chosen.id} names app backups the target no longer holds: "
            f"{', '.join(missing)}; pick an older platform backup with --snapshot "
            "(homeport backup list)"
        )
    for app_id, sid in sorted(apps.items()):
        labels = known[sid].labels
        if labels.get("kind") != "app" or labels.get("app_id") != app_id:
            raise RestoreError(f"backup {sid} is not a backup of app {app_id} (its labels)")
    mail = doc.get("mail")
    if mail is not None:
        if not _SNAPSHOT_ID.fullmatch(mail):
            raise RestoreError(f"platform backup {chosen.id} names a mail backup that is no id")
        if mail not in known:
            raise RestoreError(
                f"platform backup {chosen.id} names the mail backup {mail}, which the target no "
                "longer holds; pick an older platform backup with --snapshot (homeport backup list)"
            )
        if known[mail].labels.get("kind") != "mail":
            raise RestoreError(f"backup {mail} is not a backup of the mail (its labels)")
    return chosen, doc, apps


async def _choose(repo: Any, snapshot: str | None) -> Any:
    snaps = await repo.snapshots()
    if snapshot is not None:
        for s in snaps:
            if s.id == snapshot:
                if s.labels.get("kind") != "platform":
                    raise RestoreError(
                        f"backup {snapshot} is a backup of {s.labels.get('kind', 'something')}"
                        f" {s.labels.get('app_id', '')}, not of the platform".replace("  ", " ")
                    )
                return s
        raise RestoreError(f"the target holds no backup {snapshot[:80]!r} (homeport backup list)")
    platforms = [s for s in snaps if s.labels.get("kind") == "platform"]
    if not platforms:
        raise RestoreError(
            f"the target holds {len(snaps)} backups but no platform backup: back up everything "
            "once (Backups page, Back up now) before a restore onto a new machine"
        )
    return platforms[-1]


async def restore_apps(
    repo: Any, apps_dir: Path, apps: Mapping[str, str], identity: str, say: Callable[[str], None]
) -> dict[str, str]:
    """Each app backup restored into `<apps_dir>/snapshots/<app_id>/<uuid>/`, listed in
    `<apps_dir>/restore-pending.json` for the apps service; {app_id: snapshot folder}."""
    snapshots = apps_dir / "snapshots"
    snapshots.mkdir(mode=0o700, parents=True)
    await asyncio.to_thread(apps_dir.chmod, 0o700)
    out: dict[str, str] = {}
    for app_id, sid in sorted(apps.items()):
        folder = str(uuid.uuid4())
        dest = snapshots / app_id / folder
        dest.parent.mkdir(mode=0o700, exist_ok=True)
        say(f"restoring app {app_id} from backup {sid}")
        await _restore_whole(repo, sid, dest, identity, say, f"app {app_id}")
        out[app_id] = folder
    _write_json(apps_dir / PENDING, out)
    return out


async def restore_mail(
    repo: Any, mail_root: Path, sid: str | None, identity: str, say: Callable[[str], None]
) -> bool:
    """The mail backup `sid` (None: nothing) restored into `<mail_root>/restore-pending/`
    (under `.partial`, renamed when whole), for the mail service to take into its store at its
    next start (services/mail/snapshots.py); whether there was one."""
    from services.mail.snapshots import PENDING

    if sid is None:
        return False
    # the mail root (every server's user passes through it: the mail service makes it so)
    await asyncio.to_thread(mail_root.mkdir, mode=0o755, parents=True, exist_ok=True)
    say(f"restoring the mail from backup {sid}")
    await _restore_whole(repo, sid, mail_root / PENDING, identity, say, "the mail")
    return True


async def _restore_whole(
    repo: Any, sid: str, dest: Path, identity: str, say: Callable[[str], None], what: str
) -> None:
    """Backup `sid` restored into `dest` under `<dest>.partial`, renamed when whole (a restore
    cut short leaves no folder that looks done); what was left out is said."""
    from services.backup.repo import BackupError
    from services.backup.targets.base import TargetError

    partial = dest.with_name(dest.name + ".partial")
    try:
        result = await repo.restore(sid, partial, identity)
    except (BackupError, TargetError) as e:
        raise RestoreError(f"{what}, backup {sid}: {e}") from None
    os.replace(partial, dest)
    for why in result.skipped:
        say(f"  left out: {why}")


@dataclass(frozen=True)
class Places:
    """What differs between restoring into `homeport up`'s data dir and into a server install:
    where the services' keyrings and certificates go, and how the platform's Postgres is reached
    (`database(say)`: entered, the platform database exists and its URL is given)."""

    keyrings: Path  # the folder of <service>/keyring.json
    certs_dir: Path
    database: Callable[[Callable[[str], None]], contextlib.AbstractAsyncContextManager[str]]


def embedded_places(data_dir: Path, pg_dir: Path) -> Places:
    """The data dir of `homeport up`: its own Postgres in `pg_dir`, started for the load."""

    @contextlib.asynccontextmanager
    async def database(say: Callable[[str], None]) -> AsyncIterator[str]:
        pg = PostgresServer(pg_dir, port=free_port(), password=database_password(data_dir))
        say("starting Postgres of the data directory")
        try:
            await asyncio.to_thread(pg.start)
        except EmbeddedError as e:
            raise RestoreError(f"Postgres did not start: {e}") from None
        try:
            dsn = pg.dsn_for(DATABASE)
            await _ensure_database(dsn)
            yield dsn
        finally:
            say("stopping Postgres")
            await asyncio.to_thread(pg.stop)

    return Places(data_dir / KEYRING_DIR, data_dir / "certs", database)


async def load(places: Places, platform_dir: Path, say: Callable[[str], None]) -> RestoreSummary:
    """The event store (hash chain checked), keyrings and certificates of `platform_dir` put
    where `places` says; sessions open at the backup ended; read models built."""
    from services.backup.platform import PlatformError, load_platform

    async with places.database(say) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            say("loading the event store (checking its hash chain), keyrings and certificates")
            loaded = await load_platform(
                platform_dir, conn, keyrings=places.keyrings, certs_dir=places.certs_dir
            )
        except PlatformError as e:
            raise RestoreError(f"the platform backup cannot be loaded: {e}") from None
        finally:
            await conn.close()
        say(f"loaded {loaded['loaded_events']} events")
        ended = await _end_sessions(dsn)
        say(f"ended {ended} sessions that were open (everyone signs in again)")
        await _rebuild_read_models(dsn, say)
        await _hand_over(dsn, say)
    return RestoreSummary("", "", "", int(loaded["loaded_events"]), ended)


async def _hand_over(dsn: str, say: Callable[[str], None]) -> None:
    """The read models just built (as the superuser) given to their services' roles."""
    from libs.events.roles import hand_over_schemas

    conn = await asyncpg.connect(dsn)
    try:
        done = await hand_over_schemas(conn)
    finally:
        await conn.close()
    if done:
        say(f"schemas given to their services' roles: {', '.join(done)}")


async def _end_sessions(dsn: str) -> int:
    """SessionEnded (reason revoked, actor system) for every session started and not ended."""
    from libs.events.store import PostgresEventStore
    from services.identity import events as ev

    async with await PostgresEventStore.open(dsn, max_size=2) as store:
        rows = await store.pool.fetch(
            "SELECT s.data->>'user_id' AS user_id, s.data->>'session_id' AS session_id"
            " FROM events.events s WHERE s.type = 'SessionStarted'"
            " AND NOT EXISTS (SELECT 1 FROM events.events e WHERE e.type = 'SessionEnded'"
            " AND e.stream = s.stream AND e.data->>'session_id' = s.data->>'session_id')"
            " ORDER BY s.position"
        )
        by_user: dict[str, list[str]] = {}
        for r in rows:
            if r["user_id"] and r["session_id"]:
                by_user.setdefault(r["user_id"], []).append(r["session_id"])
        for user_id, sessions in by_user.items():
            ended = [
                ev.SessionEnded(user_id=user_id, session_id=s, reason="revoked") for s in sessions
            ]
            await store.append(ev.user_stream(user_id), ended)
    return sum(len(s) for s in by_user.values())


async def _rebuild_read_models(dsn: str, say: Callable[[str], None]) -> None:
    """Every projection's read model built from the loaded events (as `homeport replay`):
    the ones written inline (identity's users and sessions) are not caught up by their
    service at start. One that cannot be built here catches up when its service starts."""
    from libs.events.projection import ProjectionError, known_projections, replay_by_name
    from libs.service.config import ConfigError

    for name in sorted(known_projections()):
        try:
            count = await replay_by_name(name, dsn)
        except (ProjectionError, ConfigError) as e:
            say(f"read model {name}: left for its service to build at start ({e})")
        except (asyncpg.PostgresError, ValueError, KeyError, TypeError) as e:
            say(
                f"read model {name} could NOT be built ({type(e).__name__}: {str(e)[:200]});"
                f" after start, run `homeport replay {name}` and check its service's log"
            )
        else:
            say(f"read model {name}: built from {count} events")
