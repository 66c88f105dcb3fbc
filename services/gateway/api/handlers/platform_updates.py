"""The platform's own updates: the running version, the newer signed release and its changelog,
the last check and update, the nightly update's switch, and Debian's reboot flag.
Administrators only.

The apps service owns them (services/apps/platform.py); installing is `homeport update`'s, as
root, never the API's.
"""

from __future__ import annotations

from typing import Any

from libs.contracts.apps import CONTRACT as APPS_CONTRACT
from libs.contracts.schema import array, boolean, nullable, obj, string
from services.gateway.api.bodies import command_body
from services.gateway.api.routes import Access, Call, Routes

__all__ = ["routes"]

routes = Routes("platform_updates")

CHECK_TIMEOUT = 100.0  # the release URL's three small files, 30 s each at most

SETTINGS_BODY = command_body(APPS_CONTRACT, "set_platform_auto_update")
UPDATES = obj(
    {
        "version": string(description="the version running"),
        "server_install": boolean(
            description="false under `homeport up`: updates come with a server install"
        ),
        "checked_at": nullable(string(description="when the release URL was last checked")),
        "available": nullable(
            obj(
                {"version": string(), "changelog": string(), "created": string()},
                required=["version", "changelog"],
                description="the newer signed release (its signature checked)",
            )
        ),
        "check_error": nullable(
            string(description="why the last check found nothing usable (unsigned, altered...)")
        ),
        "auto_update": boolean(description="the nightly `homeport update --scheduled` installs"),
        "last_update": nullable(
            obj(
                {
                    "outcome": string(enum=["started", "updated", "rolled_back", "refused"]),
                    "summary": string(),
                    "at": string(),
                    "from_version": nullable(string()),
                    "to_version": nullable(string()),
                },
                required=["outcome", "summary", "at"],
            )
        ),
        "reboot_required": boolean(description="Debian asks for a reboot"),
        "reboot_packages": array(string(), description="the packages that ask for it"),
    },
    required=[
        "version",
        "server_install",
        "checked_at",
        "available",
        "check_error",
        "auto_update",
        "last_update",
        "reboot_required",
        "reboot_packages",
    ],
)


@routes.get(
    "/platform/updates",
    access=Access.admin,
    summary="The running version, a newer signed release and its changelog, the last update",
    responses={200: UPDATES},
)
async def get_platform_updates(call: Call) -> Any:
    return await call.ask("apps", "platform_update", {})


@routes.post(
    "/platform/updates/check",
    access=Access.admin,
    summary="Check the release URL for a newer signed release now",
    responses={200: UPDATES},
)
async def check_platform_updates(call: Call) -> Any:
    return await call.command("apps", "check_platform_update", {}, timeout=CHECK_TIMEOUT)


@routes.put(
    "/platform/updates/settings",
    access=Access.admin,
    summary="Turn the nightly platform update on or off (default: off)",
    description=(
        "On: `homeport-update.timer` installs a newer signed release every night, rolled back "
        "by itself when a service fails its health check."
    ),
    body=SETTINGS_BODY,
    responses={200: UPDATES},
)
async def set_platform_update_settings(call: Call) -> Any:
    return await call.command("apps", "set_platform_auto_update", dict(call.body))
