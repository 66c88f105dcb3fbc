"""Automatic app updates: the nightly window, per-app opt-out, and the updates waiting for
approval. Administrators only.

The apps service owns the rules and runs the window (services/apps/autoupdate.py); the bodies
here are its contract's (`libs/contracts/apps.py`), so a malformed time or flag is a 400 naming
its field before anything is sent.
"""

from __future__ import annotations

from typing import Any

from libs.contracts.apps import CONTRACT as APPS_CONTRACT
from libs.contracts.schema import array, boolean, nullable, obj, string
from services.gateway.api.bodies import command_body
from services.gateway.api.routes import Access, Call, Routes

__all__ = ["routes"]

routes = Routes("app_updates")

SETTINGS_BODY = command_body(APPS_CONTRACT, "set_auto_update")
APP_BODY = command_body(APPS_CONTRACT, "set_app_auto_update", without=["app_id"])
APP_PATH = obj(
    {"app_id": string(format="uuid", description="an installed app's id (UUID)")},
    required=["app_id"],
)
SETTINGS = obj(
    {
        "enabled": boolean(),
        "window_start": string(description="HH:MM, the server's time zone"),
        "window_end": string(description="HH:MM; before window_start: spans midnight"),
        "time_zone": string(description="the server's time zone (HP_TIME_ZONE or the system's)"),
        "opted_out": array(string(format="uuid"), description="apps never updated by themselves"),
    },
    required=["enabled", "window_start", "window_end", "time_zone", "opted_out"],
)
APP_SETTING = obj(
    {"app_id": string(format="uuid"), "enabled": boolean()}, required=["app_id", "enabled"]
)
PENDING = obj(
    {
        "items": array(
            obj(
                {
                    "app_id": string(format="uuid"),
                    "location": string(),
                    "domain": string(),
                    "manifest_id": string(),
                    "version": string(),
                    "available_version": string(),
                    "awaiting_approval": boolean(
                        description="an update was requested: POST /apps/{app_id}/update/approve"
                    ),
                    "task_id": nullable(string(format="uuid")),
                },
                required=["app_id", "location", "version", "available_version"],
                additional=True,
            )
        )
    },
    required=["items"],
)


@routes.get(
    "/app-updates/settings",
    access=Access.admin,
    summary="Automatic app updates: on or off, the nightly window, the apps opted out",
    responses={200: SETTINGS},
)
async def get_app_update_settings(call: Call) -> Any:
    return await call.ask("apps", "auto_update", {})


@routes.put(
    "/app-updates/settings",
    access=Access.admin,
    summary="Turn automatic app updates on or off, or change their nightly window",
    description=(
        "Fields left out keep their value. Inside the window every app with a newer catalog "
        "version that needs no approval is updated, one at a time, a snapshot first, rolled "
        "back if the update fails."
    ),
    body=SETTINGS_BODY,
    responses={200: SETTINGS},
)
async def set_app_update_settings(call: Call) -> Any:
    return await call.command("apps", "set_auto_update", dict(call.body))


@routes.put(
    "/apps/{app_id}/auto-update",
    access=Access.admin,
    summary="Update this app automatically in the nightly window, or not",
    path_params=APP_PATH,
    body=APP_BODY,
    responses={200: APP_SETTING},
    problems=("not_found",),
)
async def set_app_auto_update(call: Call) -> Any:
    payload = {**call.path, **call.body}
    return await call.command("apps", "set_app_auto_update", payload)


@routes.get(
    "/app-updates/pending",
    access=Access.admin,
    summary="The app updates waiting for an administrator's approval",
    responses={200: PENDING},
)
async def pending_app_updates(call: Call) -> Any:
    return await call.ask("apps", "pending_updates", {})
