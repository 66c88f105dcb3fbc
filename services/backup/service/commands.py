"""Command handlers of the backup service: settings (checked before kept) and jobs.

The contract (`libs/contracts/backup.py`) has checked each payload's shape. Settings changes
run one at a time and append to `backup-settings` at the version they read. The S3 secret is
sealed before it is kept; the private key of `setup_key` is answered once and never kept.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyrage

from libs.events import context
from libs.events.bus import BusClient
from libs.events.handlers import command, query
from libs.events.sealing import Keyring
from libs.events.store import PostgresEventStore
from services.backup import events as ev
from services.backup.config import platform_dirs
from services.backup.errors import (
    BackupConflict,
    BackupUnavailable,
    InvalidRequest,
    JobFailed,
    NotAdmin,
)
from services.backup.repo import (
    BackupError,
    KeyInvalid,
    Repository,
    RepositoryError,
    SnapshotInfo,
    SnapshotNotFound,
    WrongIdentity,
    new_identity,
)
from services.backup.service.jobs import Engine, new_run_id
from services.backup.service.settings import (
    SECRET,
    TO_CONTRACT,
    Settings,
    factory_settings,
    make_target,
)
from services.backup.targets.base import Target, TargetError, TargetMissing
from services.backup.targets.factory import TargetSettingsError, target_from_settings

__all__ = ["RESTORE_FAILED", "RESTORE_REQUEST", "Commands"]

RESTORE_REQUEST = "restore-request.json"  # deploy/stack.py RESTORE_REQUEST
RESTORE_FAILED = "restore-failed.json"  # deploy/stack.py RESTORE_FAILED

IDENTITY_COPY = "recovery/identity.age"  # not under keys/: prune owns that
_LOCAL = ("kind", "path")
_S3 = ("kind", "endpoint_url", "region", "bucket", "prefix", "access_key_id", SECRET)


def admin_only() -> None:
    """Refuse a caller the gateway does not vouch for as an administrator (or the platform)."""
    if not context.current().is_admin:
        raise NotAdmin()


class Commands:
    """The command side: each `@command` method is one bus command of the backup service."""

    def __init__(
        self,
        engine: Engine,
        store: PostgresEventStore,
        keys: Keyring,
        bus: BusClient | None = None,
    ) -> None:
        self.engine = engine
        self.bus = bus  # to ask identity whether a setup token is the one
        self.store = store
        self.keys = keys
        self.cfg = engine.cfg
        self._lock = asyncio.Lock()

    # -- settings ----------

    @command("set_target")
    async def set_target(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        admin_only()
        kind = payload["kind"]
        allowed = _LOCAL if kind == "local" else _S3
        extra = sorted(k for k in payload if k not in allowed and payload[k] is not None)
        if extra:
            raise InvalidRequest(f"{extra[0]} is not a setting of a {kind} target", field=extra[0])
        given = {k: v for k, v in payload.items() if v is not None}
        async with self._lock:
            settings = await self.engine.settings()
            if (
                kind == "s3"
                and SECRET not in given
                and settings.target is not None
                and settings.target.get("kind") == "s3"
                and settings.target.get("access_key_id") == given.get("access_key_id")
                and settings.target.get("endpoint_url") == given.get("endpoint_url")
            ):  # the same key for the same server, without its secret: keep the sealed one
                # (never sent to another server: that would hand it to whoever runs it)
                target = await make_target(
                    {**given, SECRET: settings.target[SECRET]},
                    self.keys,
                    allow_loopback=self.cfg.allow_loopback_targets,
                )
                sealed = settings.target[SECRET]
            else:
                target = self._target(given)
                sealed = None
            try:
                await _checked(target, kind)
                if settings.recipients:
                    await _open_or_init(target, list(settings.recipients))
            finally:
                await target.close()
            recorded = {k: v for k, v in given.items() if k != SECRET}
            if kind == "s3":
                recorded[SECRET] = sealed or await asyncio.to_thread(
                    self.keys.seal_for, ev.SETTINGS_STREAM, str(given[SECRET])
                )
            await self._append(settings, ev.BackupTargetSet(target=recorded))
            self.engine.forget_repository()
        return await self._settings_view()

    def _target(self, given: dict[str, Any]) -> Target:
        """A target from an admin's settings: checked, and never inside the platform's data."""
        try:
            return target_from_settings(
                factory_settings(given),
                allow_loopback=self.cfg.allow_loopback_targets,
                data_dirs=platform_dirs(self.cfg),
            )
        except TargetSettingsError as e:
            name = TO_CONTRACT.get(e.field or "", e.field)
            message = re.sub(
                r"\b(access_key|secret_key)\b", lambda m: TO_CONTRACT[m.group(1)], e.message
            )
            raise InvalidRequest(message, field=name) from None

    @command("setup_key")
    async def setup_key(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        admin_only()
        second = payload.get("second_recipient")
        passphrase = payload.get("passphrase")
        async with self._lock:
            settings = await self.engine.settings()
            if passphrase is not None and settings.target is None:
                raise InvalidRequest(
                    "a copy of the key protected by a passphrase is stored on the target:"
                    " set the target first",
                    field="passphrase",
                )
            identity, recipient = new_identity()
            recipients = [recipient] + ([second] if second else [])
            if settings.target is not None:
                target = await make_target(
                    settings.target, self.keys, allow_loopback=self.cfg.allow_loopback_targets
                )
                try:
                    await _rekeyed(target, list(settings.recipients), recipients)
                    if passphrase is not None:
                        sealed = await asyncio.to_thread(
                            pyrage.passphrase.encrypt, identity.encode(), passphrase
                        )
                        await target.put(IDENTITY_COPY, sealed)
                except TargetError as e:
                    raise BackupUnavailable(f"the backup target failed: {e}") from None
                finally:
                    await target.close()
            key_set = ev.BackupKeySet(recipients=recipients, passphrase_copy=passphrase is not None)
            await self._append(settings, key_set)
            self.engine.forget_repository()
        return {
            "identity": identity,
            "recipients": recipients,
            "passphrase_copy": IDENTITY_COPY if passphrase is not None else None,
        }

    @command("set_schedule")
    async def set_schedule(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        admin_only()
        async with self._lock:
            settings = await self.engine.settings()
            s = settings.schedule
            new = ev.BackupScheduleSet(
                enabled=bool(payload.get("enabled", s.enabled)),
                time=str(payload.get("time", s.time)),
                jitter_minutes=int(payload.get("jitter_minutes", s.jitter_minutes)),
            )
            await self._append(settings, new)
        return await self._settings_view()

    @command("set_retention")
    async def set_retention(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        admin_only()
        async with self._lock:
            settings = await self.engine.settings()
            r = settings.retention.as_dict()
            r.update({k: int(v) for k, v in payload.items() if v is not None})
            await self._append(settings, ev.BackupRetentionSet(**r))
        return await self._settings_view()

    async def _append(self, settings: Settings, event: object) -> None:
        await self.store.append(ev.SETTINGS_STREAM, [event], expected_version=settings.version)

    async def _settings_view(self) -> dict[str, Any]:
        from services.backup.service.queries import settings_view

        return settings_view(await self.engine.settings(), self.engine.seed)

    # -- jobs ----------

    async def _ready(self) -> Settings:
        settings = await self.engine.settings()
        if settings.target is None:
            raise BackupConflict("no backup target is set: set one first", field="target")
        if not settings.recipients:
            raise BackupConflict("no backup key is set up: set one up first", field="key")
        return settings

    @command("back_up")
    async def back_up(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        admin_only()
        await self._ready()
        app_id = payload.get("app_id")
        run_id = new_run_id()
        if app_id is not None:
            app_id = str(uuid.UUID(app_id))
            try:
                app = await self.engine.apps.app(app_id, run_id)
            except JobFailed as e:
                raise BackupUnavailable(e.message) from None
            if app is None:
                raise InvalidRequest(f"no app {app_id} is installed", field="app_id")
        job = self.engine.back_up_job(run_id, [app_id] if app_id else None)
        title = f"Back up app {app_id[:8]}" if app_id else "Back up everything"
        task_id = await self.engine.submit("run", title, job)
        return {"task_id": task_id, "run_id": run_id}

    @command("prune")
    async def prune(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        admin_only()
        await self._ready()
        job = self.engine.prune_job()
        return {"task_id": await self.engine.submit("prune", "Apply retention", job)}

    @command("restore")
    async def restore(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        admin_only()
        snapshot_id, identity = payload["snapshot_id"], payload["identity"]
        repo, info, _ = await self._app_backup(snapshot_id, identity)
        app_id = info.labels.get("app_id", "")
        try:
            app = await self.engine.apps.app(app_id, snapshot_id)
        except JobFailed as e:
            raise BackupUnavailable(e.message) from None
        if app is None:
            raise BackupConflict(
                f"the app of backup {snapshot_id} is not installed any more: clone it to a new"
                " location",
                field="snapshot_id",
            )

        async def job(task: Any) -> tuple[str, dict[str, Any] | None]:
            folder_id = str(uuid.uuid4())
            await task.progress(5, "Reading the backup")
            dest = self.engine.app_snapshot_dir(app_id, folder_id)
            await self.engine.restore_into(repo, snapshot_id, identity, dest)
            await task.progress(60, "Restoring the app")
            try:
                await self.engine.apps.adopt(app_id, folder_id, task.id)
            except JobFailed:  # the app did not take it: the folder goes
                await self.engine.discard(dest)
                raise
            said = await self.engine.apps.restore(app_id, folder_id, task.id)
            return said or f"app restored from backup {snapshot_id}", {"app_id": app_id}

        where = info.labels.get("location") or app_id[:8]
        task_id = await self.engine.submit("restore", f"Restore {where} from a backup", job)
        return {"task_id": task_id}

    @command("clone")
    async def clone(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        admin_only()
        snapshot_id, identity = payload["snapshot_id"], payload["identity"]
        repo, info, meta = await self._app_backup(snapshot_id, identity)
        found = meta.get("app")
        about: dict[str, Any] = found if isinstance(found, dict) else {}
        install: dict[str, Any] = {
            "manifest_id": about.get("manifest_id") or info.labels.get("manifest_id"),
            "version": about.get("version") or info.labels.get("version"),
            "location": payload["location"],
        }
        if payload.get("domain"):
            install["domain"] = payload["domain"]
        for name in ("access", "memory_bytes", "env"):
            if about.get(name) is not None:
                install[name] = about[name]

        async def job(task: Any) -> tuple[str, dict[str, Any] | None]:
            folder_id = str(uuid.uuid4())
            await task.progress(5, "Reading the backup")
            await self.engine.restore_into(
                repo, snapshot_id, identity, self.engine.incoming_dir(folder_id)
            )
            await task.progress(60, "Installing the copy")
            try:
                new_id, said = await self.engine.apps.install(
                    {**install, "from_snapshot": folder_id}, task.id
                )
            except JobFailed:  # refused (the location is taken...): the copy goes
                await self.engine.discard(self.engine.incoming_dir(folder_id))
                raise
            return said or f"cloned from backup {snapshot_id}", {"app_id": new_id}

        title = f"Clone a backup to {payload['location']}"
        return {"task_id": await self.engine.submit("clone", title, job)}

    @command("verify")
    async def verify(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        admin_only()
        snapshot_id, identity = payload["snapshot_id"], payload.get("identity")
        settings = await self._ready()
        info = await self._found(settings, snapshot_id)
        repo = await self._repo(settings)
        if identity is not None:
            await self.engine.check_identity(repo, snapshot_id, identity)

        async def job(task: Any) -> tuple[str, dict[str, Any] | None]:
            await task.progress(5, "Checking every chunk")
            return await self.engine.verify(repo, info, identity)

        return {"task_id": await self.engine.submit("verify", f"Verify backup {snapshot_id}", job)}

    # -- the setup wizard's platform restore ----------

    @command("platform_restore")
    async def platform_restore(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Check a platform backup opens with the key; without check_only, ask the stack to
        restore it (RESTORE_REQUEST in the data dir, read and deleted by deploy/stack.py)."""
        token = payload.get("setup_token")
        if token is None:
            admin_only()
        elif self.bus is None:
            raise BackupUnavailable("the setup token cannot be checked without the bus")
        else:  # the setup wizard's caller, before any account exists: its token is its proof
            await self.bus.query("identity", "check_setup_token", {"setup_token": token})
        kind = payload["kind"]
        allowed = _LOCAL if kind == "local" else _S3
        own = {"identity", "snapshot_id", "check_only", "setup_token"}
        extra = sorted(k for k in payload if k not in allowed and k not in own and payload[k])
        if extra:
            raise InvalidRequest(f"{extra[0]} is not a setting of a {kind} target", field=extra[0])
        given = {k: payload[k] for k in allowed if payload.get(k) is not None}
        target = self._target(given)
        try:
            chosen, apps = await _platform_backup(target, kind, payload)
        finally:
            await target.close()
        answer = {
            "snapshot_id": chosen.id,
            "time": chosen.time.isoformat(timespec="seconds"),
            "apps": apps,
        }
        if payload.get("check_only"):
            return answer
        request = {
            "version": 1,
            "target": factory_settings(given),
            "allow_loopback": self.cfg.allow_loopback_targets,
            "identity": payload["identity"],
            "snapshot_id": chosen.id,
        }
        await asyncio.to_thread(_write_request, self.cfg.data_dir, request)
        return {**answer, "requested": True}

    @query("platform_restore_state")
    async def platform_restore_state(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(_restore_state, self.cfg.data_dir)

    async def _repo(self, settings: Settings) -> Repository:
        try:
            return await self.engine.repository(settings)
        except JobFailed as e:
            raise BackupUnavailable(e.message) from None

    async def _app_backup(
        self, snapshot_id: str, identity: str
    ) -> tuple[Repository, Any, dict[str, Any]]:
        """The repository, listing and (opened with `identity`, before any change) metadata of
        an app's backup; a platform backup is refused."""
        settings = await self._ready()
        info = await self._found(settings, snapshot_id)
        if info.labels.get("kind") == "platform":
            raise BackupConflict(
                f"backup {snapshot_id} is of the platform: restore a platform with `homeport"
                " restore` on a new machine",
                field="snapshot_id",
            )
        repo = await self._repo(settings)
        return repo, info, await self.engine.check_identity(repo, snapshot_id, identity)

    async def _found(self, settings: Settings, snapshot_id: str) -> Any:
        try:
            return await self.engine.find(settings, snapshot_id)
        except JobFailed as e:
            raise BackupUnavailable(e.message) from None


async def _checked(target: Target, kind: str) -> None:
    """The target answers and keeps a probe object (else Invalid naming the setting to check)."""
    try:
        await target.check()
    except TargetError as e:
        message = re.sub(r"\b(access_key|secret_key)\b", lambda m: TO_CONTRACT[m.group(1)], str(e))
        raise InvalidRequest(
            f"the target failed its check, so nothing was saved: {message}",
            field=_field_of(kind, message),
        ) from None


def _field_of(kind: str, message: str) -> str:
    """The setting a target's message tells to check (`path`, or for S3 `endpoint_url`)."""
    if kind == "local":
        return "path"
    _, sep, advice = message.rpartition("check ")
    for name in ("bucket", "region", "access_key_id", "secret_access_key"):
        if sep and re.search(rf"\b{name}\b", advice):
            return name
    return "endpoint_url"


async def _open_or_init(target: Target, recipients: list[str]) -> None:
    """The repository on `target` opens with `recipients`, or one is made (empty target)."""
    try:
        if await target.stat("config") is None:
            await Repository.init(target, recipients)
            return
        await Repository.open(target, recipients=recipients)
    except RepositoryError as e:
        raise BackupConflict(
            f"the target holds a backup repository made for other keys, so it was not used ({e}):"
            " choose an empty place, or set up the key it was made with",
            field="kind",
        ) from None
    except TargetError as e:
        raise BackupUnavailable(f"the backup target failed: {e}") from None


async def _rekeyed(target: Target, old: list[str], new: list[str]) -> None:
    """Make the repository on `target` use `new` recipients (made when there is none)."""
    try:
        if await target.stat("config") is None:
            await Repository.init(target, new)
            return
        repo = await Repository.open(target)
    except (RepositoryError, TargetMissing) as e:
        raise BackupConflict(f"the target's repository cannot be used: {e}", field="kind") from None
    if not old or sorted(repo.recipients) != sorted(old):
        raise BackupConflict(
            "the target holds a backup repository made for other keys: set up the key on an"
            " empty target, or restore with the key it was made with",
            field="kind",
        )
    await repo.set_recipients(new)


async def _platform_backup(
    target: Target, kind: str, payload: Mapping[str, Any]
) -> tuple[SnapshotInfo, int]:
    """The platform backup (newest or `snapshot_id`) on `target`, proved to open with the
    payload's identity, and how many app backups it names. Invalid naming the field else."""
    where = "path" if kind == "local" else "bucket"
    try:
        if await target.stat("config") is None:
            raise InvalidRequest("this target holds no backups", field=where)
        repo = await Repository.open(target)
        snaps = await repo.snapshots()
    except (RepositoryError, TargetError, BackupError) as e:
        message = re.sub(r"\b(access_key|secret_key)\b", lambda m: TO_CONTRACT[m.group(1)], str(e))
        raise InvalidRequest(
            f"the backups on this target cannot be read: {message}", field=_field_of(kind, message)
        ) from None
    wanted = payload.get("snapshot_id")
    platforms = [s for s in snaps if s.labels.get("kind") == "platform"]
    if wanted is not None:
        platforms = [s for s in platforms if s.id == wanted]
        if not platforms:
            raise InvalidRequest(
                f"this target holds no platform backup {wanted}", field="snapshot_id"
            )
    if not platforms:
        raise InvalidRequest(
            'this target holds no platform backup (a "back up now" of everything makes one)',
            field=where,
        )
    chosen = platforms[-1]
    try:
        await repo.meta(chosen.id, payload["identity"])
    except (WrongIdentity, KeyInvalid):
        raise InvalidRequest(
            f"this key does not open backup {chosen.id}: give the private key made when backups"
            " were set up",
            field="identity",
        ) from None
    except (SnapshotNotFound, BackupError, TargetError) as e:
        raise InvalidRequest(f"backup {chosen.id} cannot be read: {e}", field=where) from None
    named = chosen.labels.get("apps", "")
    return chosen, len([a for a in named.split(",") if a])


def _write_request(data_dir: Path, request: dict[str, Any]) -> None:
    """The request for the stack, 0600, never over a file or a link already there."""
    path = data_dir / RESTORE_REQUEST
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise BackupConflict(
            "a restore is already requested: wait for the platform to restart", field="kind"
        ) from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(request))
        f.flush()
        os.fsync(f.fileno())


def _restore_state(data_dir: Path) -> dict[str, Any]:
    failed: str | None = None
    try:
        doc = json.loads((data_dir / RESTORE_FAILED).read_text(encoding="utf-8"))
        failed = str(doc.get("message", ""))[:2000] or None
    except (OSError, ValueError, AttributeError):
        failed = None
    return {"pending": (data_dir / RESTORE_REQUEST).exists(), "failed": failed}
