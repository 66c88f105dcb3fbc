"""Backups: where they go (a directory or S3), the key, schedule and retention, the list, back up
now, restore an app in place, clone one from a backup, verify, prune. Administrators only.

The backup service owns the rules (a target is checked with a probe object before it is kept, a
key must open a backup, a snapshot must exist); the bodies here are its contract's
(`libs/contracts/backup.py`), so a malformed value is a 400 naming its field before anything is
sent. Secrets: the S3 secret goes in once and is never answered back; the private key is in the
answer of `POST /backups/key` once (`Cache-Control: no-store`) and never kept by the server; an
`identity` sent to restore, clone or verify is used in memory only. None of them is logged: the
gateway logs no request bodies, and these routes' answers carry no secret but the key's.
"""

from __future__ import annotations

from typing import Any

from libs.contracts.backup import CONTRACT as BACKUP_CONTRACT
from libs.contracts.backup import SNAPSHOT_ID
from libs.contracts.common import uuid
from libs.contracts.schema import array, integer, nullable, obj, string
from services.gateway.api.bodies import command_body
from services.gateway.api.routes import Access, Call, Reply, Routes

__all__ = ["routes"]

routes = Routes("backups")

# Checking a target writes, reads back and deletes a probe object (S3 can be slow); a key setup
# may create the repository there.
_TIMEOUT = 60.0
# Private answers: the key is shown once, so no cache, proxy or browser history may keep it.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

_SECRET = {"writeOnly": True}
TARGET_BODY = command_body(
    BACKUP_CONTRACT,
    "set_target",
    notes={
        "kind": {"description": "local (a directory, e.g. a mounted disk) or s3"},
        "secret_access_key": {
            **_SECRET,
            "description": "s3: the secret (sealed, never shown back)",
        },
    },
)
KEY_BODY = command_body(BACKUP_CONTRACT, "setup_key")
SCHEDULE_BODY = command_body(BACKUP_CONTRACT, "set_schedule")
RETENTION_BODY = command_body(BACKUP_CONTRACT, "set_retention")
BACK_UP_BODY = command_body(
    BACKUP_CONTRACT,
    "back_up",
    notes={"app_id": {"description": "one app (its id); none: every app and the platform"}},
)
RESTORE_BODY = command_body(BACKUP_CONTRACT, "restore", without=["snapshot_id"])
CLONE_BODY = command_body(BACKUP_CONTRACT, "clone", without=["snapshot_id"])
VERIFY_BODY = command_body(BACKUP_CONTRACT, "verify", without=["snapshot_id"])

SNAPSHOT_PATH = obj(
    {"snapshot_id": string(pattern=SNAPSHOT_ID, description="a backup's id (from the list)")},
    required=["snapshot_id"],
)
APP_PATH = obj({"app_id": uuid(description="an app's id")}, required=["app_id"])
LIST_QUERY = obj({"app_id": uuid(description="only this app's backups (also an uninstalled one)")})

WHEN = string(format="date-time")
SETTINGS = obj(
    {
        "target": nullable(
            obj(
                {"kind": string(enum=["local", "s3"])},
                additional=True,
                description="where backups go; never the secret (`secret_set` says it is kept)",
            )
        ),
        "recipients": array(string(), description="the public keys backups are encrypted to"),
        "schedule": obj({}, additional=True),
        "retention": obj({}, additional=True),
    },
    additional=True,
)
KEY = obj(
    {
        "identity": string(description="the private key: shown this once, never kept"),
        "recipients": array(string(), description="the public keys backups now open with"),
    },
    required=["identity"],
    additional=True,
)
BACKUP = obj(
    {
        "snapshot_id": string(pattern=SNAPSHOT_ID),
        "time": WHEN,
        "kind": string(enum=["app", "platform"]),
        "app_id": nullable(string()),
        "location": nullable(string()),
        "manifest_id": nullable(string()),
        "version": nullable(string()),
        "reason": nullable(string(description="backup, or update: taken before an update")),
        "size_bytes": nullable(integer()),
        "new_bytes": nullable(integer(description="bytes this backup added to the target")),
    },
    required=["snapshot_id", "kind"],
    additional=True,
)
BACKUPS = obj({"items": array(BACKUP)}, required=["items"], additional=True)
STARTED = obj(
    {"task_id": string(format="uuid"), "run_id": string()},
    required=["task_id"],
    additional=True,
)
DONE = obj({}, additional=True)
ANY_SETTINGS = obj({}, additional=True, description="the settings as they are now")


# -- settings ---------------------------------------------------------------------------------


@routes.get(
    "/backups/settings",
    access=Access.admin,
    summary="Where backups go, their keys, schedule and retention, and the last results",
    description="Never a secret: the S3 secret shows only as set or not.",
    responses={200: SETTINGS},
)
async def get_backup_settings(call: Call) -> Any:
    return await call.ask("backup", "settings", {})


def _setting_route(path: str, verb: str, body: Any, summary: str, description: str) -> None:
    @routes.put(
        f"/backups/{path}",
        access=Access.admin,
        summary=summary,
        description=description,
        body=body,
        responses={200: ANY_SETTINGS},
        problems=("conflict",),
        name=f"set_backup_{path}",
    )
    async def handler(call: Call) -> Any:
        reply = await call.command("backup", verb, dict(call.body), timeout=_TIMEOUT)
        return reply if isinstance(reply, dict) else {}


_setting_route(
    "target",
    "set_target",
    TARGET_BODY,
    "Set where backups go: a directory or S3-compatible storage",
    "Checked before it is kept (a probe object is written, read back and deleted); a failed "
    "check is a 400 naming the setting and nothing is kept. The secret is never shown back.",
)
_setting_route(
    "schedule",
    "set_schedule",
    SCHEDULE_BODY,
    "Set the daily backup: on or off, at what time",
    "Daily at `time` (server time) plus up to `jitter_minutes`.",
)
_setting_route(
    "retention",
    "set_retention",
    RETENTION_BODY,
    "Set how many backups are kept: the last N, and daily, weekly and monthly ones",
    "Older backups are forgotten and their unused data pruned after each run.",
)


@routes.post(
    "/backups/key",
    access=Access.admin,
    summary="Make the backup key pair; the answer holds the private key, this once",
    description=(
        "The server keeps the public keys only: store the private key (`identity`) now; it "
        "is needed to restore and is never shown again. `second_recipient`: another age "
        "public key backups also open with. `passphrase`: a copy of the private key, "
        "encrypted with it, is stored on the target too. Answered with Cache-Control: no-store."
    ),
    body=KEY_BODY,
    responses={200: KEY},
    problems=("conflict",),
)
async def setup_backup_key(call: Call) -> Any:
    reply = await call.command("backup", "setup_key", dict(call.body or {}), timeout=_TIMEOUT)
    return Reply(reply, headers=NO_STORE)


# -- the list and back up now -----------------------------------------------------------------


@routes.get(
    "/backups",
    access=Access.admin,
    summary="Backups on the target, newest first: the platform's and the apps'",
    query=LIST_QUERY,
    responses={200: BACKUPS},
)
async def list_backups(call: Call) -> Any:
    return await call.ask("backup", "backups", dict(call.query), timeout=_TIMEOUT)


@routes.get(
    "/apps/{app_id}/backups",
    access=Access.admin,
    summary="One app's backups on the target, newest first",
    path_params=APP_PATH,
    responses={200: BACKUPS},
    tags=("backups", "apps"),
)
async def list_app_backups(call: Call) -> Any:
    return await call.ask("backup", "backups", dict(call.path), timeout=_TIMEOUT)


@routes.post(
    "/backups",
    access=Access.admin,
    summary="Back up now: one app, or every app and the platform",
    description="Answers 202 with the task (its progress: /tasks/{task_id}/events).",
    body=BACK_UP_BODY,
    responses={202: STARTED},
    problems=("conflict", "not_found"),
)
async def back_up_now(call: Call) -> Any:
    payload = dict(call.body or {})
    return Reply(await call.command("backup", "back_up", payload), status=202)


# -- one backup -------------------------------------------------------------------------------


def _task_route(verb: str, body: Any, summary: str, description: str) -> None:
    @routes.post(
        f"/backups/{{snapshot_id}}/{verb}",
        access=Access.admin,
        summary=summary,
        description=description,
        path_params=SNAPSHOT_PATH,
        body=body,
        responses={202: STARTED},
        problems=("conflict", "not_found"),
        name=f"{verb}_backup",
    )
    async def handler(call: Call) -> Any:
        payload = {**call.path, **(call.body or {})}
        return Reply(await call.command("backup", verb, payload, timeout=_TIMEOUT), status=202)


_task_route(
    "restore",
    RESTORE_BODY,
    "Restore an app to one of its backups (its data and the version it ran)",
    "`identity` (the private key) is used in memory only. A wrong key is a 400 naming it and "
    "nothing changes; a backup of an app no longer installed is a 409 (clone it instead).",
)
_task_route(
    "clone",
    CLONE_BODY,
    "Install a new app from an app's backup at its own location",
    "Works for uninstalled apps too. `identity` is used in memory only; 409 when the "
    "location is taken.",
)
_task_route(
    "verify",
    VERIFY_BODY,
    "Check a backup",
    "With `identity`: every chunk is decrypted and checked. Without: every chunk exists with "
    "its size. The task's result names damaged files and the apps they belong to.",
)


@routes.post(
    "/backups/prune",
    access=Access.admin,
    summary="Apply the retention now: forget old backups and delete data none uses",
    description="Answers 202 with the task when it runs as one, else 200 with what was freed.",
    responses={202: STARTED, 200: DONE},
    problems=("conflict",),
)
async def prune_backups(call: Call) -> Any:
    reply = await call.command("backup", "prune", {}, timeout=_TIMEOUT)
    if isinstance(reply, dict) and "task_id" in reply:
        return Reply(reply, status=202)
    return reply if isinstance(reply, dict) else {}
