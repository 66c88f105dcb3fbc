"""The work of the backup service: one job at a time, in the order asked, each a task.

A job is a coroutine run by `Jobs.run()` under its task: it reports progress and ends the task
once (succeeded, or failed with a message and a code). A job left unended by a killed process
is failed at the next start (`fail_orphans`). The repository is opened once for the current
settings (index loaded) and dropped when the target or key changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libs.events import context
from libs.events.context import Context
from libs.events.envelope import uuid7
from libs.events.sealing import Keyring
from libs.events.store import PostgresEventStore
from libs.events.tasks import Task
from services.backup import events as ev
from services.backup.config import BackupConfig, audit_dir
from services.backup.errors import BackupNotFound, BackupUnavailable, InvalidRequest, JobFailed
from services.backup.platform import PlatformError, dump_platform
from services.backup.repo import (
    BackupError,
    IntegrityError,
    PruneStats,
    Repository,
    SnapshotInfo,
    SnapshotNotFound,
    WrongIdentity,
)
from services.backup.service import metrics
from services.backup.service.apps import AppsPeer
from services.backup.service.mail import MailPeer
from services.backup.service.retention import select_kept
from services.backup.service.settings import Settings, load_settings, make_target
from services.backup.targets.base import Target, TargetError

__all__ = ["Engine", "Job", "snapshot_view"]

log = logging.getLogger("services.backup.jobs")

Job = Callable[[Task], Awaitable[tuple[str, dict[str, Any] | None]]]
_SNAPSHOTS_TTL = 60.0
_UPDATES_LOOK = 30.0  # the read model is looked at this often even without news
_AFTER_EVENT = 1.0  # ... and this long after an AppSnapshotTaken event (its projection's turn)
_STOPPED = "the backup service stopped during this job; run it again (what was uploaded is reused)"
# When a backup run's task last succeeded (LAST_SUCCESS is set as it does) and a backup failed.
_LAST_RUNS = """
SELECT
    (SELECT extract(epoch FROM max(s.recorded_at))::float8 FROM events.events s
     WHERE s.type = 'TaskSucceeded' AND EXISTS (
         SELECT 1 FROM events.events t WHERE t.stream = s.stream AND t.type = 'TaskStarted'
         AND t.data->>'kind' = 'backup.run')) AS success,
    (SELECT extract(epoch FROM max(recorded_at))::float8 FROM events.events
     WHERE type = 'BackupFailed') AS failure
"""
_LABEL_MAX = 200  # the repository's limit on a label's value


def snapshot_view(s: SnapshotInfo) -> dict[str, Any]:
    """A backup as the `backups` query lists it (labels are public; nothing sealed)."""
    labels = s.labels
    return {
        "snapshot_id": s.id,
        "time": s.time.isoformat(),
        "kind": labels.get("kind", "app"),
        "app_id": labels.get("app_id"),
        "location": labels.get("location"),
        "manifest_id": labels.get("manifest_id"),
        "version": labels.get("version"),
        "reason": labels.get("reason"),
        "run": labels.get("run"),
        "size_bytes": s.stats.bytes,
        "new_bytes": s.stats.new_bytes,
    }


@dataclass
class _Queued:
    task: Task
    job: Job


@dataclass
class _Cache:
    key: tuple[Any, ...] | None = None
    repo: Repository | None = None
    target: Target | None = None
    snapshots: list[SnapshotInfo] | None = None
    listed_at: float = 0.0


class Engine:
    """Jobs, the repository of the current settings, and what the runs did."""

    def __init__(
        self,
        cfg: BackupConfig,
        store: PostgresEventStore,
        keys: Keyring,
        apps: AppsPeer,
        *,
        mail: MailPeer | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.keys = keys
        self.apps = apps
        self.mail = mail  # None: no mail service, the mail is not backed up
        self._sleep = sleep
        self.seed = str(cfg.data_dir.resolve())  # the daily jitter differs between machines
        self._queue: asyncio.Queue[_Queued | None] = asyncio.Queue()
        self._cache = _Cache()
        self._retired: list[Target] = []
        self._repo_lock = asyncio.Lock()
        self.idle = asyncio.Event()
        self.idle.set()

    # -- the queue ----------

    async def submit(self, kind: str, title: str, job: Job, *, owner: str | None = None) -> str:
        """Record a task for `job` and queue it; its id at once."""
        who = owner or context.current().actor
        task = await Task.start(self.store, kind=f"backup.{kind}", title=title, owner=who)
        self.idle.clear()
        self._queue.put_nowait(_Queued(task, job))
        return task.id

    async def run(self) -> None:
        """Run the queued jobs one after the other until `stop`."""
        while True:
            item = await self._queue.get()
            if item is None:
                return
            await self._run_one(item)
            if self._queue.empty():
                self.idle.set()

    def stop(self) -> None:
        self._queue.put_nowait(None)

    async def _run_one(self, item: _Queued) -> None:
        task = item.task
        with context.use(Context(actor="system", correlation_id=task.id)):
            try:
                message, result = await item.job(task)
            except JobFailed as e:
                await task.fail(e.message[:500], e.code)
                return
            except asyncio.CancelledError:  # the service stops: say so now if it still can
                with contextlib.suppress(Exception):
                    await task.fail(_STOPPED, "interrupted")
                raise
            except Exception as e:  # a job's bug must not stop the queue; the task says so
                log.exception("backup job %s failed", task.id)
                await task.fail(
                    f"the backup service failed unexpectedly ({type(e).__name__})", "internal"
                )
                return
            await task.succeed(message[:500], result)

    async def fail_orphans(self) -> int:
        """Fail the tasks of jobs a killed process left unended; how many."""
        rows = await self.store.pool.fetch(
            "SELECT s.data->>'task_id' AS task_id FROM events.events s"
            " WHERE s.type = 'TaskStarted' AND s.data->>'kind' LIKE 'backup.%'"
            " AND NOT EXISTS (SELECT 1 FROM events.events e WHERE e.stream = s.stream"
            " AND e.type IN ('TaskSucceeded', 'TaskFailed'))"
        )
        for r in rows:
            task = await Task.load(self.store, r["task_id"])
            if not task.ended:
                await task.fail(_STOPPED, "interrupted")
        return len(rows)

    # -- the repository ----------

    async def settings(self) -> Settings:
        return await load_settings(self.store)

    def forget_repository(self) -> None:
        """Drop the open repository (the target or key changed); a job using it keeps it, and
        its target is closed with the engine."""
        if self._cache.target is not None:
            self._retired.append(self._cache.target)
        self._cache = _Cache()

    async def last_outcomes(self) -> dict[str, Any]:
        """When a backup last completed and last failed (and why)."""
        out: dict[str, Any] = {"last_success": None, "last_failure": None}
        for name, type_ in (("last_success", "BackupCompleted"), ("last_failure", "BackupFailed")):
            row = await self.store.pool.fetchrow(
                "SELECT recorded_at, data FROM events.events WHERE type = $1"
                " ORDER BY position DESC LIMIT 1",
                type_,
            )
            if row is not None:
                data = json.loads(row["data"]) if isinstance(row["data"], str) else row["data"]
                out[name] = {"time": row["recorded_at"].isoformat()}
                if type_ == "BackupFailed":
                    out[name]["reason"] = data.get("reason")
                else:
                    out[name]["snapshot_id"] = data.get("snapshot_id")
        return out

    async def load_metrics(self) -> None:
        """The gauges of the last run's success and failure from the events, at start: the
        alert rules read them, and a restart must not look like "never backed up"."""
        row = await self.store.pool.fetchrow(_LAST_RUNS)
        if row is not None and row["success"] is not None:
            metrics.LAST_SUCCESS.set(row["success"])
        if row is not None and row["failure"] is not None:
            metrics.LAST_FAILURE.set(row["failure"])

    async def discard(self, folder: Path) -> None:
        """Remove a folder this service restored that nobody took."""
        await asyncio.to_thread(shutil.rmtree, folder, True)

    async def repository(self, settings: Settings) -> Repository:
        """The repository of `settings` (opened once, its index loaded), with retries."""
        if not settings.ready or settings.target is None:
            raise JobFailed("no backup target and key are set up: set them first", "not_set_up")
        key = (json.dumps(settings.target, sort_keys=True), settings.recipients)
        async with self._repo_lock:
            if self._cache.key == key and self._cache.repo is not None:
                return self._cache.repo
            target = await make_target(
                settings.target, self.keys, allow_loopback=self.cfg.allow_loopback_targets
            )
            tmp = self.cfg.backup_dir / "tmp"
            await asyncio.to_thread(tmp.mkdir, mode=0o700, parents=True, exist_ok=True)
            try:
                repo: Repository = await self.retrying(
                    "opening the repository",
                    lambda: Repository.open(
                        target, recipients=list(settings.recipients), tmp_dir=str(tmp)
                    ),
                )
            except BaseException:
                await target.close()
                raise
            if self._cache.target is not None:
                self._retired.append(self._cache.target)
            self._cache = _Cache(key, repo, target)
            return repo

    async def close(self) -> None:
        if self._cache.target is not None:
            self._retired.append(self._cache.target)
        self._cache = _Cache()
        for target in self._retired:
            await target.close()
        self._retired.clear()

    async def retrying(self, what: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        """`fn()`; a target that does not answer is tried again with backoff, then JobFailed."""
        tries = self.cfg.target_retries + 1
        for attempt in range(tries):
            try:
                return await fn()
            except (TargetError, OSError) as e:
                if attempt + 1 >= tries:
                    raise JobFailed(
                        f"{what} failed after {tries} tries: {_reason(e)}", "target_unreachable"
                    ) from e
                wait = min(self.cfg.target_backoff_seconds * 2**attempt, 60.0)
                log.warning("%s failed (try %d of %d): %s", what, attempt + 1, tries, _reason(e))
                await self._sleep(wait)
            except BackupError as e:
                raise JobFailed(f"{what} failed: {e}", "repository") from e
        raise AssertionError("unreachable")

    async def snapshots(self, settings: Settings, *, fresh: bool = False) -> list[SnapshotInfo]:
        """Completed backups on the target, oldest first (listed at most once a minute)."""
        repo = await self.repository(settings)
        c = self._cache
        if fresh or c.snapshots is None or time.monotonic() - c.listed_at > _SNAPSHOTS_TTL:
            c.snapshots = await self.retrying("listing the backups", repo.snapshots)
            c.listed_at = time.monotonic()
        return list(c.snapshots)

    def _listed(self, info: SnapshotInfo) -> None:
        if self._cache.snapshots is not None:
            self._cache.snapshots.append(info)

    # -- back up ----------

    def back_up_job(self, run_id: str, app_ids: list[str] | None) -> Job:
        """The job of one run: each app (all installed when `app_ids` is None), then, when it
        is a full run, the mail store and the platform."""

        async def job(task: Task) -> tuple[str, dict[str, Any] | None]:
            return await self._run_backup(task, run_id, app_ids)

        return job

    async def _run_backup(
        self, task: Task, run_id: str, wanted: list[str] | None
    ) -> tuple[str, dict[str, Any] | None]:
        started = time.monotonic()
        stream = ev.run_stream(run_id)
        settings = await self.settings()
        app_ids = wanted or []
        try:
            repo = await self.repository(settings)  # the target first: no snapshot for nothing
            if wanted is None:
                app_ids = [str(a["app_id"]) for a in await self.apps.apps(run_id) if _installed(a)]
        except JobFailed as e:
            await self._started(stream, run_id, task, wanted, app_ids)
            await self._failed(stream, run_id, None, e.message)
            raise
        await self._started(stream, run_id, task, wanted, app_ids)
        done: dict[str, str] = {}
        full = wanted is None
        total = len(app_ids) + (1 if full else 0) + (1 if full and self.mail else 0)
        size = new = 0
        failures: list[str] = []
        unreachable = False
        for i, app_id in enumerate(app_ids):
            await task.progress(int(90 * i / max(total, 1)), f"Backing up app {app_id[:8]}")
            try:
                info = await self._back_up_app(repo, stream, run_id, app_id)
            except JobFailed as e:
                await self._failed(stream, run_id, app_id, e.message)
                failures.append(e.message)
                if e.code == "target_unreachable":
                    unreachable = True
                    break
                continue
            done[app_id] = info.id
            size += info.stats.bytes
            new += info.stats.new_bytes
        mail: str | None = None
        if full and self.mail is not None and not unreachable:
            await task.progress(int(90 * len(app_ids) / max(total, 1)), "Backing up the mail")
            try:
                info_or_none = await self._back_up_mail(repo, stream, run_id)
            except JobFailed as e:
                await self._failed(stream, run_id, None, e.message)
                failures.append(e.message)
                unreachable = e.code == "target_unreachable"
            else:
                if info_or_none is not None:
                    mail = info_or_none.id
                    size += info_or_none.stats.bytes
                    new += info_or_none.stats.new_bytes
        if full and not unreachable:
            await task.progress(int(90 * (total - 1) / max(total, 1)), "Backing up the platform")
            try:
                info = await self._back_up_platform(repo, stream, run_id, done, mail)
                size += info.stats.bytes
                new += info.stats.new_bytes
                done["platform"] = info.id
                if mail is not None:
                    done["mail"] = mail
            except JobFailed as e:
                await self._failed(stream, run_id, None, e.message)
                failures.append(e.message)
        if failures:
            raise JobFailed(
                f"{len(failures)} of {total} backup(s) failed; first: {failures[0]}",
                "backup_failed",
            )
        duration = time.monotonic() - started
        metrics.LAST_SUCCESS.set(time.time())
        metrics.LAST_DURATION.set(duration)
        metrics.LAST_SIZE.set(size)
        metrics.LAST_NEW_BYTES.set(new)
        return (
            f"{len(done)} backup(s) stored ({new} new bytes)",
            {"run_id": run_id, "snapshots": done},
        )

    async def _started(
        self,
        stream: str,
        run_id: str,
        task: Task,
        wanted: list[str] | None,
        app_ids: list[str],
        scope: str | None = None,
    ) -> None:
        scope = scope or ("all" if wanted is None else "app")
        started = ev.BackupStarted(run_id=run_id, task_id=task.id, scope=scope, app_ids=app_ids)
        await self.store.append(stream, [started], expected_version=0)

    async def _failed(self, stream: str, run_id: str, app_id: str | None, reason: str) -> None:
        metrics.LAST_FAILURE.set(time.time())
        version = await self.store.stream_version(stream)
        failed = ev.BackupFailed(run_id=run_id, app_id=app_id, reason=reason[:500])
        await self.store.append(stream, [failed], expected_version=version)

    async def _completed(
        self, stream: str, run_id: str, info: SnapshotInfo, app_id: str | None, took: float
    ) -> None:
        self._listed(info)
        done = ev.BackupCompleted(
            run_id=run_id,
            snapshot_id=info.id,
            kind=info.labels.get("kind", "app"),
            app_id=app_id,
            size_bytes=info.stats.bytes,
            new_bytes=info.stats.new_bytes,
            duration_s=round(took, 3),
        )
        version = await self.store.stream_version(stream)
        await self.store.append(stream, [done], expected_version=version)

    def _folder(self, app_id: str, snapshot_id: str) -> Path:
        return self.cfg.apps_dir / "snapshots" / app_id / snapshot_id

    async def _back_up_app(
        self, repo: Repository, stream: str, run_id: str, app_id: str
    ) -> SnapshotInfo:
        snapshot_id = str(uuid.uuid4())
        await self.apps.snapshot(app_id, snapshot_id, run_id)
        try:
            return await self.store_folder(repo, stream, run_id, app_id, snapshot_id, "backup")
        finally:
            try:
                await self.apps.forget_snapshot(app_id, snapshot_id, run_id)
            except JobFailed as e:  # the disk copy stays; the backup is stored
                log.warning("app %s: snapshot %s not forgotten: %s", app_id, snapshot_id, e)

    async def store_folder(
        self,
        repo: Repository,
        stream: str,
        run_id: str,
        app_id: str,
        snapshot_id: str,
        reason: str,
    ) -> SnapshotInfo:
        """Store an apps snapshot folder in the repository (labels from its app.json)."""
        folder = self._folder(app_id, snapshot_id)
        about = await asyncio.to_thread(_about, folder)
        labels = {
            "kind": "app",
            "app_id": app_id,
            "manifest_id": str(about.get("manifest_id", ""))[:200],
            "version": str(about.get("version", ""))[:200],
            "location": str(about.get("location", ""))[:200],
            "reason": reason,
            "run": run_id,
            "apps_snapshot": snapshot_id,
        }
        meta = {"kind": "app", "app_id": app_id, "snapshot_id": snapshot_id, "app": about}
        started = time.monotonic()
        info: SnapshotInfo = await self.retrying(
            f"storing the backup of app {app_id}",
            lambda: repo.backup(
                folder, meta, labels=labels, cache_dir=self.cfg.backup_dir / "cache"
            ),
        )
        await self._completed(stream, run_id, info, app_id, time.monotonic() - started)
        return info

    async def _back_up_mail(
        self, repo: Repository, stream: str, run_id: str
    ) -> SnapshotInfo | None:
        """The mail store (a snapshot the mail service makes) stored; None when it holds no
        mailbox yet (mail never turned on)."""
        assert self.mail is not None
        snapshot_id = str(uuid.uuid4())
        try:
            mailboxes = await self.mail.snapshot(snapshot_id, run_id)
            if not mailboxes:
                return None
            folder = self.mail.folder(snapshot_id)
            labels = {"kind": "mail", "run": run_id, "mailboxes": str(mailboxes)}
            meta = {"kind": "mail", "run": run_id, "mailboxes": mailboxes}
            started = time.monotonic()
            info: SnapshotInfo = await self.retrying(
                "storing the backup of the mail",
                lambda: repo.backup(
                    folder, meta, labels=labels, cache_dir=self.cfg.backup_dir / "cache"
                ),
            )
        finally:
            try:
                await self.mail.forget(snapshot_id, run_id)
            except JobFailed as e:  # removed by the mail service a day later
                log.warning("mail snapshot %s not forgotten: %s", snapshot_id, e)
        await self._completed(stream, run_id, info, None, time.monotonic() - started)
        return info

    async def _back_up_platform(
        self,
        repo: Repository,
        stream: str,
        run_id: str,
        apps: dict[str, str],
        mail: str | None = None,
    ) -> SnapshotInfo:
        tmp = self.cfg.backup_dir / "tmp" / f"platform-{run_id}"
        started = time.monotonic()
        await asyncio.to_thread(tmp.parent.mkdir, mode=0o700, parents=True, exist_ok=True)
        try:
            async with self.store.pool.acquire() as conn:
                await dump_platform(
                    conn,
                    keyring=self.cfg.keyring,
                    certs_dir=self.cfg.certs_dir,
                    out_dir=tmp,
                    apps=apps,
                    mail=mail,
                    platform_version=_platform_version(),
                    audit_dir=audit_dir(self.cfg),
                )
        except PlatformError as e:
            await asyncio.to_thread(shutil.rmtree, tmp, True)
            raise JobFailed(f"the platform could not be dumped: {e}", "platform_dump") from e
        try:
            labels = {"kind": "platform", "run": run_id}
            if mail is not None:
                labels["mail"] = mail  # the run's mail backup (homeport backup verify)
            listed = ",".join(sorted(apps.values()))
            if len(listed) <= _LABEL_MAX:  # else only in the sealed meta and platform.json
                labels["apps"] = listed
            meta = {"kind": "platform", "run": run_id, "apps": apps, "mail": mail}
            info: SnapshotInfo = await self.retrying(
                "storing the platform backup",
                lambda: repo.backup(
                    tmp, meta, labels=labels, cache_dir=self.cfg.backup_dir / "cache"
                ),
            )
        finally:
            await asyncio.to_thread(shutil.rmtree, tmp, True)
        await self._completed(stream, run_id, info, None, time.monotonic() - started)
        return info

    # -- pre-update snapshots ----------

    async def store_updates(self, nc: Any = None, subject: str = "") -> None:
        """Queue a job for each pre-update snapshot the read model has pending, as they come:
        woken by the `AppSnapshotTaken` events on `subject` (the read model applies the same
        event from the same stream, so the look comes a moment later), and every half minute
        anyway. NATS rather than a LISTEN: no Postgres connection is held at rest."""
        changed = asyncio.Event()

        async def heard(_msg: Any) -> None:
            changed.set()

        await self.store.pool.execute(
            "UPDATE backup.updates SET state = 'pending' WHERE state = 'queued'"
        )
        sub = await nc.subscribe(subject, cb=heard) if nc is not None and subject else None
        try:
            while True:
                changed.clear()
                await self.queue_updates()
                try:
                    await asyncio.wait_for(changed.wait(), _UPDATES_LOOK)
                except TimeoutError:
                    continue
                await asyncio.sleep(_AFTER_EVENT)
        finally:
            if sub is not None:
                with contextlib.suppress(Exception):  # the connection may be closed already
                    await sub.unsubscribe()

    async def queue_updates(self) -> int:
        """Queue the pending pre-update snapshots (kept on the disk only when no target and
        key are set up); how many were queued."""
        settings = await self.settings()
        rows = await self.store.pool.fetch(
            "SELECT app_id, snapshot_id FROM backup.updates WHERE state = 'pending'"
            " ORDER BY taken_at"
        )
        for r in rows:
            app_id, snapshot_id = r["app_id"], r["snapshot_id"]
            if not settings.ready:
                await self._update_state(app_id, snapshot_id, "local")
                continue
            if not await asyncio.to_thread(self._folder(app_id, snapshot_id).is_dir):
                await self._update_state(app_id, snapshot_id, "gone")  # the apps service
                continue  # dropped it meanwhile (or the read model was rebuilt long after)
            await self._update_state(app_id, snapshot_id, "queued")
            title = f"Back up app {app_id[:8]} before its update"
            await self.submit(
                "update", title, self._update_job(app_id, snapshot_id), owner="system"
            )
        return len(rows) if settings.ready else 0

    def _update_job(self, app_id: str, snapshot_id: str) -> Job:
        async def job(task: Task) -> tuple[str, dict[str, Any] | None]:
            run_id = new_run_id()
            stream = ev.run_stream(run_id)
            await self._started(stream, run_id, task, [app_id], [app_id], "update")
            try:
                repo = await self.repository(await self.settings())
                info = await self.store_folder(repo, stream, run_id, app_id, snapshot_id, "update")
            except JobFailed as e:
                await self._failed(stream, run_id, app_id, e.message)
                await self._update_state(app_id, snapshot_id, "failed")
                raise
            await self._update_state(app_id, snapshot_id, "stored", info.id)
            return f"pre-update snapshot stored as backup {info.id}", {"snapshot_id": info.id}

        return job

    async def _update_state(
        self, app_id: str, snapshot_id: str, state: str, backup_id: str | None = None
    ) -> None:
        await self.store.pool.execute(
            "UPDATE backup.updates SET state = $3, backup_id = coalesce($4, backup_id)"
            " WHERE app_id = $1 AND snapshot_id = $2",
            app_id,
            snapshot_id,
            state,
            backup_id,
        )

    # -- retention ----------

    def prune_job(self) -> Job:
        async def job(task: Task) -> tuple[str, dict[str, Any] | None]:
            return await self._prune(task)

        return job

    async def _prune(self, task: Task) -> tuple[str, dict[str, Any] | None]:
        settings = await self.settings()
        repo = await self.repository(settings)
        listed = await self.snapshots(settings, fresh=True)
        await task.progress(10, "Choosing the backups retention keeps")
        groups: dict[tuple[str, str], list[SnapshotInfo]] = {}
        for s in listed:
            if s.labels.get("reason") == "update":
                continue  # pre-update backups: their own group, kept by the same rules
            groups.setdefault((s.labels.get("kind", "app"), s.labels.get("app_id", "")), []).append(
                s
            )
        for s in listed:
            if s.labels.get("reason") == "update":
                groups.setdefault(("update", s.labels.get("app_id", "")), []).append(s)
        forget: list[str] = []
        for members in groups.values():
            kept = select_kept([(s.id, s.time) for s in members], settings.retention)
            forget.extend(s.id for s in members if s.id not in kept)
        if forget:
            await task.progress(30, f"Forgetting {len(forget)} backup(s)")
            await self.retrying("forgetting backups", lambda: repo.forget(forget))
        await task.progress(50, "Deleting data no backup uses")
        stats: PruneStats = await self.retrying("pruning the repository", repo.prune)
        packs, freed = stats.packs_deleted, stats.bytes_freed
        version = await self.store.stream_version(ev.PRUNE_STREAM)
        pruned = ev.BackupPruned(
            snapshot_ids=sorted(forget), packs_deleted=packs, bytes_freed=freed
        )
        await self.store.append(ev.PRUNE_STREAM, [pruned], expected_version=version)
        self._cache.snapshots = None
        return (
            f"{len(forget)} backup(s) forgotten, {freed} bytes freed",
            {"forgotten": len(forget), "packs_deleted": packs, "bytes_freed": freed},
        )

    # -- restore, clone, verify ----------

    async def find(self, settings: Settings, snapshot_id: str) -> SnapshotInfo:
        for fresh in (False, True):
            for s in await self.snapshots(settings, fresh=fresh):
                if s.id == snapshot_id:
                    return s
        raise BackupNotFound(f"no backup {snapshot_id} on the target", field="snapshot_id")

    async def check_identity(
        self, repo: Repository, snapshot_id: str, identity: str
    ) -> dict[str, Any]:
        """The sealed metadata of a backup: proves `identity` opens it (before any change)."""
        try:
            meta: dict[str, Any] = await repo.meta(snapshot_id, identity)
        except WrongIdentity:
            raise InvalidRequest(
                f"this key does not open backup {snapshot_id}: give the private key made when"
                " backups were set up",
                field="identity",
            ) from None
        except SnapshotNotFound:
            raise BackupNotFound(
                f"no backup {snapshot_id} on the target", field="snapshot_id"
            ) from None
        except (TargetError, OSError) as e:
            raise BackupUnavailable(f"the backup target could not be read: {_reason(e)}") from None
        except BackupError as e:
            raise InvalidRequest(
                f"backup {snapshot_id} cannot be opened: {e}", field="identity"
            ) from None
        return meta

    async def restore_into(
        self, repo: Repository, snapshot_id: str, identity: str, dest: Path
    ) -> None:
        """Write a backup into `dest` (`.partial` first, renamed when complete)."""
        partial = dest.with_name(dest.name + ".partial")
        await asyncio.to_thread(partial.mkdir, mode=0o700, parents=True, exist_ok=False)
        try:
            await self.retrying(
                f"restoring backup {snapshot_id}",
                lambda: repo.restore(snapshot_id, partial, identity),
            )
            await asyncio.to_thread(partial.rename, dest)
        except BackupError as e:
            await asyncio.to_thread(shutil.rmtree, partial, True)
            raise JobFailed(
                f"backup {snapshot_id} could not be restored: {e}", "restore_failed"
            ) from e
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, partial, True)
            raise

    def app_snapshot_dir(self, app_id: str, snapshot_id: str) -> Path:
        return self._folder(app_id, snapshot_id)

    def incoming_dir(self, name: str) -> Path:
        return self.cfg.apps_dir / "snapshots" / "incoming" / name

    async def verify(
        self, repo: Repository, info: SnapshotInfo, identity: str | None
    ) -> tuple[str, dict[str, Any]]:
        try:
            report = await self.retrying(
                f"verifying backup {info.id}",
                lambda: repo.verify(info.id, identity, read_data=identity is None),
            )
        except IntegrityError as e:
            report = None
            problems, files = [str(e)], list(e.files)
        if report is not None:
            problems, files = list(report.problems), list(report.files)
        what = _what(info)
        result = {
            "snapshot_id": info.id,
            "ok": not problems,
            "app_id": info.labels.get("app_id"),
            "location": info.labels.get("location"),
            "problems": problems[:20],
            "damaged_files": files[:50],
        }
        if problems:
            hurt = f"; damaged files: {', '.join(files[:5])}" if files else ""
            raise JobFailed(
                f"backup {info.id} of {what} is damaged: {problems[0]}{hurt}", "damaged"
            )
        return f"backup {info.id} of {what} is intact", result


def _what(info: SnapshotInfo) -> str:
    if info.labels.get("kind") == "platform":
        return "the platform"
    if info.labels.get("kind") == "mail":
        return "the mail"
    return f"app {info.labels.get('location') or info.labels.get('app_id')}"


def _installed(app: dict[str, Any]) -> bool:
    return bool(app.get("state", "installed") == "installed")


def _about(folder: Path) -> dict[str, Any]:
    """What the apps snapshot says of the app (app.json, else snapshot.json)."""
    if not folder.is_dir():
        raise JobFailed(f"the snapshot folder {folder.name} is missing", "snapshot_missing")
    for name in ("app.json", "snapshot.json"):
        path = folder / name
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict):
            return doc
    return {}


def _reason(e: BaseException) -> str:
    return str(e)[:300] or type(e).__name__


def _platform_version() -> str:
    try:
        from importlib.metadata import version

        return version("homeport")
    except Exception:
        return "dev"


def new_run_id() -> str:
    return str(uuid7())
