"""The wire contract of the apps service: the payload of every command and query it serves.

The shapes are checked here, on both sides of the bus; the rules that need the service's state
or catalog stay in the service (a reserved or taken location, an env name the platform sets,
who may open a single-user app, whether a version exists).
"""

from __future__ import annotations

from libs.contracts import Contract
from libs.contracts.common import LOCATION_PATTERN, MAX_ENV_VALUE, MAX_IDS, location, memory, uuid
from libs.contracts.schema import array, boolean, integer, nullable, obj, string

__all__ = ["CONTRACT", "MAX_LOG_LINES"]

MAX_LOG_LINES = 5000

_APP_ID = uuid(description="an installed app's id (UUID)")
_MANIFEST_ID = string(minLength=1, maxLength=200, description="a catalog app id")
_VERSION = string(minLength=1, maxLength=200, description="a version (semver)")
_LABEL = LOCATION_PATTERN.removeprefix("^").removesuffix("$")  # one DNS label
_DOMAIN = string(
    pattern=rf"^{_LABEL}(\.{_LABEL})*$",
    maxLength=253,
    description="a lower-case domain name",
)
# The id lists are checked for their UUID form by the service: a bad one names the list.
_ACCESS = nullable(
    obj(
        {
            "all_users": boolean(),
            "groups": array(string(), maxItems=MAX_IDS, description="group ids"),
            "user_ids": array(string(), maxItems=MAX_IDS, description="user ids"),
        },
        description="who may open the app (default: all users)",
    )
)
_ENV_VALUE = string(
    maxLength=MAX_ENV_VALUE, pattern=r"^[^\x00]*$", description="text without NUL characters"
)
# Names are checked by the service (libs/contracts/common.py env_name_problem).
_ENV = {
    "type": "object",
    "additionalProperties": _ENV_VALUE,
    "description": "environment variables NAME: value",
}
_ENV_CHANGES = {
    "type": "object",
    "additionalProperties": nullable(_ENV_VALUE),
    "description": "NAME: value sets one, NAME: null removes one; variables not named are kept",
}
# Names (a manifest's tcpPorts/udpPorts keys) are checked by the service against the app's
# manifest; a name left out at install takes the manifest's defaultHostPort.
_HOST_PORT = integer(minimum=1, maximum=65535, description="a port on the server, 1 to 65535")


def _host_ports(protocol: str, left_out: str) -> dict[str, object]:
    return nullable(
        {
            "type": "object",
            "additionalProperties": _HOST_PORT,
            "description": f"the server's {protocol.upper()} port for each of the manifest's"
            f" {protocol}Ports, NAME: port ({left_out})",
        }
    )


_LOCATION = location(
    description="a DNS label: 1 to 63 lower-case letters, digits or '-', not starting or"
    " ending with '-'"
)
_APP = obj({"app_id": _APP_ID}, required=["app_id"])
_SNAPSHOT_ID = uuid(
    description="a snapshot's id (for `snapshot`, chosen by the caller: the same id again"
    " answers the same task instead of taking a second snapshot)"
)
_SNAPSHOT = obj(
    {"app_id": _APP_ID, "snapshot_id": _SNAPSHOT_ID}, required=["app_id", "snapshot_id"]
)
_CATALOG_ENTRY = obj({"manifest_id": _MANIFEST_ID, "version": _VERSION}, required=["manifest_id"])
_HHMM = string(
    pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$",
    description="HH:MM, 24-hour, in the server's time zone",
)

CONTRACT = Contract(
    "apps",
    commands={
        "install": obj(
            {
                "manifest_id": _MANIFEST_ID,
                "version": _VERSION,
                "location": _LOCATION,
                "domain": _DOMAIN,
                "access": _ACCESS,
                "memory_bytes": nullable(memory()),
                "env": _ENV,
                "tcp_ports": _host_ports("tcp", "a name left out takes its defaultHostPort"),
                "udp_ports": _host_ports("udp", "a name left out takes its defaultHostPort"),
                "from_snapshot": uuid(
                    description="the id of a snapshot folder the backup service put under"
                    " <snapshots>/incoming/: the new app starts with its data"
                ),
            },
            required=["manifest_id", "location"],
        ),
        "configure": obj(
            {
                "app_id": _APP_ID,
                "location": _LOCATION,
                "access": _ACCESS,
                "memory_bytes": nullable(memory()),
                "env": _ENV_CHANGES,
                "tcp_ports": _host_ports("tcp", "names left out keep their port; null: unchanged"),
                "udp_ports": _host_ports("udp", "names left out keep their port; null: unchanged"),
            },
            required=["app_id"],
        ),
        "start": _APP,
        "stop": _APP,
        "restart": _APP,
        "update": obj({"app_id": _APP_ID, "version": _VERSION}, required=["app_id"]),
        "approve_update": _APP,
        "restore": _SNAPSHOT,
        "clone": obj(
            {
                "app_id": _APP_ID,
                "location": _LOCATION,
                "domain": _DOMAIN,
                # as at install: the source keeps its ports, so a copy needs others
                "tcp_ports": _host_ports("tcp", "a name left out takes its defaultHostPort"),
                "udp_ports": _host_ports("udp", "a name left out takes its defaultHostPort"),
            },
            required=["app_id", "location"],
        ),
        "uninstall": _APP,
        "repair": _APP,
        "snapshot": obj(
            {
                "app_id": _APP_ID,
                "reason": string(
                    enum=["manual", "backup"],
                    description='"backup": taken for the backup service, not offered for restore'
                    ' (default "manual")',
                ),
                "snapshot_id": _SNAPSHOT_ID,
            },
            required=["app_id"],
        ),
        "forget_snapshot": _SNAPSHOT,
        "adopt_snapshot": _SNAPSHOT,
        # Automatic updates (services/apps/autoupdate.py), administrators only: on or off and
        # the nightly window (an end before the start spans midnight); fields left out keep
        # their value. Answers the settings as `auto_update` does.
        "set_auto_update": obj(
            {
                "enabled": boolean(description="update apps automatically (default: on)"),
                "window_start": _HHMM,
                "window_end": _HHMM,
            }
        ),
        # One app updated automatically (default) or not. Answers {app_id, enabled}.
        "set_app_auto_update": obj(
            {"app_id": _APP_ID, "enabled": boolean()}, required=["app_id", "enabled"]
        ),
        # The platform's own updates (services/apps/platform.py), administrators only. Both
        # answer as `platform_update` does: check the release URL now; turn the nightly
        # `homeport update --scheduled` on or off (default: off).
        "check_platform_update": obj({}),
        "set_platform_auto_update": obj(
            {"enabled": boolean(description="install newer signed releases every night")},
            required=["enabled"],
        ),
    },
    queries={
        "catalog": obj({"text": string(maxLength=200), "tag": string(maxLength=200)}),
        "catalog_app": _CATALOG_ENTRY,
        "catalog_icon": _CATALOG_ENTRY,
        # Who asks decides what is listed: the bus context's actor and admin flag, never a
        # payload field (an `is_admin` in the payload is refused as an unknown field).
        "apps": obj({}),
        "app": _APP,
        "snapshots": _APP,
        "logs": obj(
            {
                "app_id": _APP_ID,
                "tail": integer(minimum=1, maximum=MAX_LOG_LINES),
                "since": string(maxLength=64, description="a cursor from an earlier answer"),
            },
            required=["app_id"],
        ),
        "stats": obj({}),
        # Administrators only. {enabled, window_start, window_end, time_zone, opted_out: [ids]}
        "auto_update": obj({}),
        # Administrators only: the apps whose update waits for one (a newer release marked as
        # needing approval, or an update requested and awaiting `approve_update`):
        # {items: [{app_id, location, domain, manifest_id, version, available_version,
        # awaiting_approval, task_id}]}
        "pending_updates": obj({}),
        # Administrators only: {version, server_install, checked_at, available: {version,
        # changelog, created} | null, check_error, auto_update, last_update: {outcome, summary,
        # at, from_version, to_version} | null, reboot_required, reboot_packages: [names]}
        "platform_update": obj({}),
    },
)
