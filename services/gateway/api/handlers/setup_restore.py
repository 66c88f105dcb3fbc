"""The setup wizard's "Restore from a backup": before setup, with the one-time setup token.

`POST /setup/restore` checks the token with identity (403 naming setup_token, 409 once setup
is done), then asks the backup service, as the platform, whether the platform backup on the
given target opens with the given key (400 naming the field when not). With check_only it only
answers which backup that is; else the backup service leaves a request in the data directory
and the stack (deploy/stack.py) stops every service, restores the platform into the data
directory (the old contents moved aside) and starts again. `GET /setup/restore` says whether a
request waits or why the last one failed. Secrets (the key, an S3 secret) travel in the body
once and are never answered back or logged.
"""

from __future__ import annotations

from typing import Any

from libs.contracts.backup import CONTRACT as BACKUP_CONTRACT
from libs.contracts.schema import boolean, integer, nullable, obj, string
from services.gateway.api.bodies import command_body
from services.gateway.api.handlers.identity import SETUP_TOKEN
from services.gateway.api.routes import Access, Call, Reply, Routes

__all__ = ["routes"]

routes = Routes("setup")

_TIMEOUT = 60.0  # opening a target and reading a backup's metadata (S3 can be slow)
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

_BASE = command_body(BACKUP_CONTRACT, "platform_restore")
RESTORE_BODY = {
    **_BASE,
    "properties": {**_BASE["properties"], "setup_token": SETUP_TOKEN},
    "required": [*_BASE.get("required", ()), "setup_token"],
}
CHECKED = obj(
    {
        "snapshot_id": string(description="the platform backup restored"),
        "time": string(format="date-time", description="when it was taken"),
        "apps": integer(minimum=0, description="how many app backups it names"),
        "requested": boolean(description="the restore is asked for: the platform restarts"),
    },
    required=["snapshot_id", "time", "apps"],
)
STATE = obj(
    {
        "setup_done": boolean(),
        "pending": boolean(description="a restore waits for the stack to run it"),
        "failed": nullable(string(description="why the last restore failed (nothing changed)")),
    },
    required=["setup_done", "pending", "failed"],
)


@routes.post(
    "/setup/restore",
    access=Access.anonymous,
    summary="Restore the platform from a backup (setup wizard, before setup)",
    description=(
        "Needs the one-time setup token (403 naming setup_token when wrong; 409 once setup is "
        "done). The platform backup (newest, or snapshot_id) on the target must open with "
        "identity, else 400 naming the field. check_only: 200 with the backup it would restore; "
        "else 202: the platform stops, restores it (the old data directory's contents kept "
        "aside) and starts again; sign in with the old accounts then."
    ),
    body=RESTORE_BODY,
    responses={200: CHECKED, 202: CHECKED},
    problems=("forbidden", "conflict", "unavailable"),
)
async def setup_restore(call: Call) -> Any:
    payload = dict(call.body)
    await call.ask("identity", "check_setup_token", {"setup_token": payload["setup_token"]})
    # the token is the proof, checked again by the backup service (the gateway never acts as
    # the platform: libs/events/bus.py)
    reply = await call.command("backup", "platform_restore", payload, timeout=_TIMEOUT)
    status = 200 if payload.get("check_only") else 202
    return Reply(reply, status=status, headers=NO_STORE)


@routes.get(
    "/setup/restore",
    access=Access.anonymous,
    summary="Whether a restore from the setup wizard waits, or why the last one failed",
    responses={200: STATE},
)
async def setup_restore_state(call: Call) -> Any:
    done = await call.ask("identity", "setup_state", {})
    if isinstance(done, dict) and done.get("setup_done"):
        return {"setup_done": True, "pending": False, "failed": None}
    state = await call.ask("backup", "platform_restore_state", {})
    return {"setup_done": False, "pending": bool(state["pending"]), "failed": state["failed"]}
