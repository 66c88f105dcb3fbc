"""python -m services.backup: backups of apps and the platform to a target, and restores.

At start it fails the tasks of jobs a killed run left unended and reads the last outcomes back
into its gauges, then serves its bus, runs its jobs one at a time and the daily schedule.
Settings are events (`backup-settings`); the S3 secret is sealed with the keyring and the
private backup key is never kept.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from libs.contracts.backup import CONTRACT
from libs.events.checkpoints import Checkpointer
from libs.events.wiring import connections, following, loop, opened_keyring, serve
from libs.service.config import load_config
from libs.service.runner import Service, main
from services.backup.config import BackupConfig, audit_dir
from services.backup.projections import UpdateSnapshots
from services.backup.service.apps import AppsPeer
from services.backup.service.commands import Commands
from services.backup.service.jobs import Engine
from services.backup.service.mail import MailPeer
from services.backup.service.queries import Queries
from services.backup.service.scheduler import Scheduler

__all__ = ["build"]


def build(cfg: BackupConfig | None = None) -> Service:
    """The backup process: its bus, job queue and schedule on the service lifecycle."""
    cfg = cfg if cfg is not None else load_config(BackupConfig)
    svc = Service("backup", cfg)
    svc.use(partial(_parts, cfg))
    return svc


def _now() -> dt.datetime:
    return dt.datetime.now().astimezone()


@asynccontextmanager
async def _parts(cfg: BackupConfig, svc: Service) -> AsyncIterator[None]:
    async with connections(svc) as conn, opened_keyring(cfg.keyring) as keys:
        apps = AppsPeer(
            conn.client(), conn.store, timeout=cfg.apps_timeout, task_seconds=cfg.apps_task_seconds
        )
        mail = None
        if cfg.mail_dir is not None:
            mail = MailPeer(conn.client(), cfg.mail_dir.absolute(), timeout=cfg.mail_timeout)
        engine = Engine(cfg, conn.store, keys, apps, mail=mail)
        await engine.fail_orphans()
        await engine.load_metrics()
        scheduler = Scheduler(engine, _now, seed=engine.seed)
        updates = UpdateSnapshots()
        at = {"stream": cfg.events_stream, "prefix": cfg.events_prefix}
        try:
            async with (
                following(svc, conn, updates, **at),
                # a stop cancels the job running (its task ends failed, "interrupted")
                loop(svc, "backup.jobs", engine.run(), engine.stop, cancel=True),
                loop(
                    svc,
                    "backup.updates",
                    engine.store_updates(conn.nc, f"{cfg.events_prefix}.app.AppSnapshotTaken"),
                    cancel=True,
                ),
                serve(
                    svc,
                    conn.nc,
                    CONTRACT,
                    Commands(engine, conn.store, keys, conn.client()),
                    Queries(engine),
                ),
            ):
                async with contextlib.AsyncExitStack() as more:
                    if cfg.schedule_loop:
                        await more.enter_async_context(
                            loop(svc, "backup.schedule", scheduler.run(), scheduler.stop)
                        )
                    if cfg.checkpoint_seconds > 0:
                        checkpoints = Checkpointer(
                            conn.store, audit_dir(cfg), cfg.checkpoint_seconds
                        )
                        await more.enter_async_context(
                            loop(svc, "backup.checkpoints", checkpoints.run(), checkpoints.stop)
                        )
                    yield
        finally:
            await engine.close()


if __name__ == "__main__":
    main(build)
