"""The catalog and installed apps.

Admins manage apps; a signed-in user lists only the apps their access list lets them open.
Catalog entries with an icon carry `icon_url`; the icon answers with its own media type, may be
cached privately for an hour (ETag: the SHA-256 the signed catalog pins it to), and an SVG gets a
CSP that sandboxes it, so one opened directly runs no script.
Lifecycle operations answer 202 with the task that reports their progress
(`/tasks/{task_id}/events`); start, stop and restart answer when done. Logs: the last lines as
JSON, or followed as Server-Sent Events (`id:` is a cursor; Last-Event-ID resumes after it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
from typing import Any
from urllib.parse import quote

from aiohttp import web

from libs.contracts.apps import CONTRACT as APPS_CONTRACT
from libs.contracts.schema import array, boolean, integer, nullable, obj, string
from libs.events.bus import BusError, Internal, Invalid
from services.gateway.api.app import API_PREFIX, caller_of
from services.gateway.api.bodies import command_body
from services.gateway.api.handlers.tasks import (
    EVENT_STREAM,
    LAST_EVENT_ID,
    RETRY_MS,
    TaskStreams,
    task_streams,
)
from services.gateway.api.routes import Access, Call, Reply, Routes

__all__ = ["routes"]

routes = Routes("apps")
log = logging.getLogger("homeport.gateway.api")

APP_ID = string(format="uuid", description="an installed app's id (UUID)")
MANIFEST_ID = string(
    pattern=r"^[a-z0-9]+(\.[a-z0-9-]+)+$", maxLength=100, description="a catalog app id"
)
VERSION = string(maxLength=64, description="a version (semver)")
WHEN = string(format="date-time")
STATES = [
    "pending_install",
    "pending_configure",
    "pending_update",
    "pending_restore",
    "pending_uninstall",
    "error",
    "installed",
]

APP_PATH = obj({"app_id": APP_ID}, required=["app_id"])
CATALOG_PATH = obj({"manifest_id": MANIFEST_ID}, required=["manifest_id"])
CATALOG_QUERY = obj(
    {"text": string(maxLength=200), "tag": string(maxLength=32)},
)
CATALOG_APP_QUERY = obj({"version": VERSION})
MAX_LOG_LINES = 5000
LOGS_QUERY = obj({"tail": integer(minimum=1, maximum=MAX_LOG_LINES, default=100)})
FOLLOW_LINES = MAX_LOG_LINES  # a followed log asks for at most this many new lines a second
LOG_CURSOR = r"^[0-9T:.+\-Z]{10,40}$"
LOGS_STREAM_QUERY = obj(
    {
        "tail": integer(minimum=1, maximum=MAX_LOG_LINES, default=100),
        "since": string(
            pattern=LOG_CURSOR,
            description="start after this cursor (the `cursor` of GET /apps/{app_id}/logs)",
        ),
    }
)

# The bodies the lifecycle routes send on as apps' commands (the app id comes from the path).
_MEMORY = {"memory_bytes": {"description": "memory limit in bytes"}}
INSTALL_BODY = command_body(APPS_CONTRACT, "install", notes=_MEMORY)
CONFIGURE_BODY = command_body(APPS_CONTRACT, "configure", without=["app_id"], notes=_MEMORY)
UPDATE_BODY = command_body(APPS_CONTRACT, "update", without=["app_id"])
RESTORE_BODY = command_body(APPS_CONTRACT, "restore", without=["app_id"])
CLONE_BODY = command_body(APPS_CONTRACT, "clone", without=["app_id"])

MANIFEST = obj(
    {
        "id": string(),
        "version": string(),
        "title": string(),
        "tagline": string(),
        "description": string(),
        "tags": array(string()),
        "changelog": string(),
        "http_port": integer(),
        "memory_limit": integer(),
        "addons": array(string()),
        "single_user": boolean(),
        "post_install_message": nullable(string()),
        "update_needs_approval": boolean(),
        "min_platform_version": nullable(string()),
        "versions": array(string()),
        "icon_url": string(
            description="where the icon is (relative), present when the app has one"
        ),
        "ports": array(
            obj(
                {
                    "name": string(description="the key of tcp_ports / udp_ports at install"),
                    "protocol": string(enum=["tcp", "udp"]),
                    "container_port": integer(),
                    "title": string(),
                    "default_host_port": nullable(integer()),
                },
                required=["name", "protocol", "container_port", "title", "default_host_port"],
            ),
            description="the TCP and UDP ports the app publishes on the server",
        ),
    },
    required=["id", "version", "title", "tagline", "tags", "addons"],
    additional=True,
)
CATALOG = obj({"items": array(MANIFEST), "tags": array(string())}, required=["items", "tags"])
APP_FIELDS = {
    "app_id": string(format="uuid"),
    "manifest_id": string(),
    "version": string(),
    "location": string(),
    "domain": string(),
    "url": string(),
    "access": obj({}, additional=True),
    "memory_bytes": integer(),
    "state": string(enum=STATES),
    "run_state": string(enum=["running", "stopped"]),
    "health": string(enum=["unknown", "healthy", "unhealthy", "dead"]),
    "error": nullable(string()),
    "task_id": nullable(string(format="uuid")),
    "operation": nullable(string()),
    "awaiting_approval": boolean(),
    "target_version": nullable(string()),
    "clone_of": nullable(string(format="uuid")),
    "http_port": nullable(integer(description="the app's HTTP port on 127.0.0.1")),
    "upstream": nullable(
        string(description="where the edge reaches the app: its container's <address>:<port>")
    ),
    "ports": array(
        obj(
            {
                "name": string(),
                "protocol": string(enum=["tcp", "udp"]),
                "container_port": nullable(integer()),
                "host_port": integer(),
                "title": string(),
            },
            required=["name", "protocol", "container_port", "host_port", "title"],
        ),
        description="the server's ports the app publishes (all IPv4 addresses)",
    ),
    "created_at": WHEN,
    "updated_at": WHEN,
}
APP_REQUIRED = ["app_id", "manifest_id", "version", "location", "domain", "state", "run_state"]
APP = obj(APP_FIELDS, required=APP_REQUIRED, additional=True)
APP_DETAIL = obj(
    {
        **APP_FIELDS,
        "env_names": array(
            string(), description="the names of the app's environment variables (never values)"
        ),
        "container": nullable(
            obj({"status": string(), "running": boolean(), "port": nullable(integer())})
        ),
    },
    required=[*APP_REQUIRED, "env_names"],
    additional=True,
)
APPS = obj({"items": array(APP)}, required=["items"])
STARTED = obj(
    {
        "app_id": string(format="uuid"),
        "task_id": string(format="uuid"),
        "needs_approval": boolean(),
    },
    required=["app_id", "task_id"],
)
RUN_STATE = obj(
    {"app_id": string(format="uuid"), "running": boolean()}, required=["app_id", "running"]
)
SNAPSHOTS = obj(
    {
        "items": array(
            obj(
                {
                    "snapshot_id": string(format="uuid"),
                    "version": string(),
                    "reason": string(),
                    "size_bytes": integer(),
                    "created_at": WHEN,
                },
                required=["snapshot_id", "version", "reason", "size_bytes", "created_at"],
            )
        )
    },
    required=["items"],
)
LOGS = obj({"lines": array(string()), "cursor": nullable(string())}, required=["lines", "cursor"])
LOG_EVENTS = string(
    description="Server-Sent Events `event: line`, `data:` one log line, `id:` a cursor to resume"
)
_CURSOR = re.compile(LOG_CURSOR)
SVG = "image/svg+xml"
PNG = "image/png"
ICON = string(description="the icon's bytes: SVG or PNG")
ICON_CACHE = "private, max-age=3600"
# An SVG opened by itself is a document: no script, no plugin, no form, nothing fetched.
SVG_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
_SHA256 = re.compile(r"[0-9a-f]{64}")

# -- catalog ----------------------------------------------------------------------------------


@routes.get(
    "/catalog",
    access=Access.user,
    summary="Search the catalog (latest version of each app)",
    query=CATALOG_QUERY,
    responses={200: CATALOG},
)
async def search_catalog(call: Call) -> Any:
    reply = await call.ask("apps", "catalog", dict(call.query))
    items = reply.get("items") if isinstance(reply, dict) else None
    if not isinstance(items, list):
        raise Internal("apps answered catalog without items")
    return {**reply, "items": [_with_icon_url(item) for item in items]}


@routes.get(
    "/catalog/{manifest_id}",
    access=Access.user,
    summary="One catalog app (a version, latest by default) and its versions",
    path_params=CATALOG_PATH,
    query=CATALOG_APP_QUERY,
    responses={200: MANIFEST},
)
async def get_catalog_app(call: Call) -> Any:
    reply = await call.ask("apps", "catalog_app", {**call.path, **call.query})
    return _with_icon_url(reply, pinned="version" in call.query)


@routes.get(
    "/catalog/{manifest_id}/icon",
    access=Access.user,
    summary="A catalog app's icon (of a version, latest by default)",
    description=(
        "SVG or PNG, `Cache-Control: private, max-age=3600`, an ETag (If-None-Match answers "
        "304); an SVG carries a sandboxing Content-Security-Policy. 404 when the app or its "
        "icon does not exist."
    ),
    path_params=CATALOG_PATH,
    query=CATALOG_APP_QUERY,
    media_type=SVG,
    alt_media_types=(PNG,),
    responses={200: ICON},
)
async def get_catalog_icon(call: Call) -> Any:
    reply = await call.ask("apps", "catalog_icon", {**call.path, **call.query})
    media_type = reply.get("media_type") if isinstance(reply, dict) else None
    digest = reply.get("sha256") if isinstance(reply, dict) else None
    encoded = reply.get("data") if isinstance(reply, dict) else None
    if media_type not in (SVG, PNG) or not isinstance(digest, str) or not isinstance(encoded, str):
        raise Internal("apps answered catalog_icon without a media type, sha256 and data")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise Internal("apps answered catalog_icon with data that is not base64") from None
    if not _SHA256.fullmatch(digest) or hashlib.sha256(data).hexdigest() != digest:
        raise Internal("apps answered catalog_icon with bytes that differ from their sha256")
    etag = f'"{digest}"'
    headers = {"ETag": etag, "Cache-Control": ICON_CACHE, "X-Content-Type-Options": "nosniff"}
    if media_type == SVG:
        headers["Content-Security-Policy"] = SVG_CSP
    if _etag_matches(call.request.headers.get("If-None-Match", ""), etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=data, content_type=str(media_type), headers=headers)


def _with_icon_url(view: Any, *, pinned: bool = False) -> Any:
    """A catalog view with `icon_url` where apps says the app has an icon (of that version,
    when the caller asked for one)."""
    if not isinstance(view, dict):
        raise Internal("apps answered the catalog with an entry that is not an object")
    out = {k: v for k, v in view.items() if k != "has_icon"}
    manifest_id = view.get("id")
    if view.get("has_icon") is True and isinstance(manifest_id, str):
        url = f"{API_PREFIX}/catalog/{quote(manifest_id, safe='')}/icon"
        version = view.get("version")
        if pinned and isinstance(version, str):
            url += f"?version={quote(version, safe='')}"
        out["icon_url"] = url
    return out


def _etag_matches(header: str, etag: str) -> bool:
    """If-None-Match (RFC 9110 13.1.2): `*` or a list of tags, weak ones compared weakly."""
    tags = [t.strip() for t in header.split(",")]
    return any(t == "*" or t.removeprefix("W/") == etag for t in tags if t)


# -- apps -------------------------------------------------------------------------------------


@routes.get(
    "/apps",
    access=Access.user,
    summary="Installed apps (admins: all; users: those they may open)",
    responses={200: APPS},
)
async def list_apps(call: Call) -> Any:
    return await call.ask("apps", "apps", {})


@routes.post(
    "/apps",
    access=Access.admin,
    summary="Install a catalog app at a location",
    description=(
        "Answers 202 with the task; 409 when the location or a host port (`tcp_ports`, "
        "`udp_ports`: the manifest's port name to the server's port) is taken."
    ),
    body=INSTALL_BODY,
    responses={202: STARTED},
    problems=("conflict", "not_found"),
)
async def install_app(call: Call) -> Any:
    return Reply(await call.command("apps", "install", dict(call.body)), status=202)


@routes.get(
    "/apps/{app_id}",
    access=Access.admin,
    summary="One installed app, with its environment variables' names and container status",
    path_params=APP_PATH,
    responses={200: APP_DETAIL},
)
async def get_app(call: Call) -> Any:
    return await call.ask("apps", "app", dict(call.path))


@routes.patch(
    "/apps/{app_id}",
    access=Access.admin,
    summary="Change an app's location, access, memory, environment or host ports",
    description=(
        "Answers 202 with the task; 409 while another operation runs or when a host port is "
        "taken. `env` changes only the variables it names (null removes one); the others are "
        "kept. `tcp_ports` / `udp_ports` change only the ports they name."
    ),
    path_params=APP_PATH,
    body=CONFIGURE_BODY,
    responses={202: STARTED},
    problems=("conflict",),
)
async def configure_app(call: Call) -> Any:
    payload = {**call.path, **call.body}
    return Reply(await call.command("apps", "configure", payload), status=202)


@routes.delete(
    "/apps/{app_id}",
    access=Access.admin,
    summary="Uninstall an app: container, data, addon databases and credentials go",
    path_params=APP_PATH,
    responses={202: STARTED},
    problems=("conflict",),
)
async def uninstall_app(call: Call) -> Any:
    return Reply(await call.command("apps", "uninstall", dict(call.path)), status=202)


def _run_route(verb: str, summary: str) -> None:
    @routes.post(
        f"/apps/{{app_id}}/{verb}",
        access=Access.admin,
        summary=summary,
        path_params=APP_PATH,
        responses={200: RUN_STATE},
        problems=("conflict",),
        name=f"{verb}_app",
    )
    async def handler(call: Call) -> Any:
        return await call.command("apps", verb, dict(call.path), timeout=60.0)


_run_route("start", "Start an app")
_run_route("stop", "Stop an app")
_run_route("restart", "Restart an app")


@routes.post(
    "/apps/{app_id}/update",
    access=Access.admin,
    summary="Update an app to a newer catalog version (latest by default)",
    description=(
        "A snapshot of the app's data is taken first. When the version needs approval, the "
        "task waits until POST /apps/{app_id}/update/approve."
    ),
    path_params=APP_PATH,
    body=UPDATE_BODY,
    responses={202: STARTED},
    problems=("conflict", "not_found"),
)
async def update_app(call: Call) -> Any:
    payload = {**call.path, **(call.body or {})}
    return Reply(await call.command("apps", "update", payload), status=202)


@routes.post(
    "/apps/{app_id}/update/approve",
    access=Access.admin,
    summary="Approve the update that waits for it",
    path_params=APP_PATH,
    responses={202: STARTED},
    problems=("conflict",),
)
async def approve_app_update(call: Call) -> Any:
    return Reply(await call.command("apps", "approve_update", dict(call.path)), status=202)


@routes.get(
    "/apps/{app_id}/snapshots",
    access=Access.admin,
    summary="Snapshots of an app, newest first",
    path_params=APP_PATH,
    responses={200: SNAPSHOTS},
)
async def list_app_snapshots(call: Call) -> Any:
    return await call.ask("apps", "snapshots", dict(call.path))


@routes.post(
    "/apps/{app_id}/snapshots",
    access=Access.admin,
    summary="Take a snapshot of an app now (its data volume and addon databases)",
    path_params=APP_PATH,
    responses={202: STARTED},
    problems=("conflict",),
)
async def take_app_snapshot(call: Call) -> Any:
    return Reply(await call.command("apps", "snapshot", dict(call.path)), status=202)


@routes.post(
    "/apps/{app_id}/restore",
    access=Access.admin,
    summary="Restore an app to a snapshot (its data and the version it was taken with)",
    path_params=APP_PATH,
    body=RESTORE_BODY,
    responses={202: STARTED},
    problems=("conflict", "not_found"),
)
async def restore_app(call: Call) -> Any:
    payload = {**call.path, **call.body}
    return Reply(await call.command("apps", "restore", payload), status=202)


@routes.post(
    "/apps/{app_id}/clone",
    access=Access.admin,
    summary="Install a copy of an app (with its data) at another location",
    path_params=APP_PATH,
    body=CLONE_BODY,
    responses={202: STARTED},
    problems=("conflict",),
)
async def clone_app(call: Call) -> Any:
    payload = {**call.path, **call.body}
    return Reply(await call.command("apps", "clone", payload), status=202)


@routes.post(
    "/apps/{app_id}/repair",
    access=Access.admin,
    summary="Try the failed operation of an app in error again",
    path_params=APP_PATH,
    responses={202: STARTED},
    problems=("conflict",),
)
async def repair_app(call: Call) -> Any:
    return Reply(await call.command("apps", "repair", dict(call.path)), status=202)


@routes.get(
    "/apps/{app_id}/logs",
    access=Access.admin,
    summary="The last lines an app wrote",
    path_params=APP_PATH,
    query=LOGS_QUERY,
    responses={200: LOGS},
)
async def app_logs(call: Call) -> Any:
    return await call.ask("apps", "logs", {**call.path, "tail": call.query.get("tail", 100)})


@routes.get(
    "/apps/{app_id}/logs/stream",
    access=Access.admin,
    summary="An app's log lines as Server-Sent Events, following new ones",
    description=(
        "Sends the last `tail` lines (or every line after `since`), then new lines as they "
        "come. Send Last-Event-ID (the `id:` of the last event) to resume after it."
    ),
    path_params=APP_PATH,
    query=LOGS_STREAM_QUERY,
    media_type=EVENT_STREAM,
    responses={200: LOG_EVENTS},
)
async def follow_app_logs(call: Call) -> Any:
    cursor = call.request.headers.get(LAST_EVENT_ID, "").strip() or None
    if cursor is not None and not _CURSOR.fullmatch(cursor):
        raise Invalid(f"{LAST_EVENT_ID} must be the id of an earlier event", field=LAST_EVENT_ID)
    cursor = cursor or call.query.get("since")
    payload: dict[str, Any] = {**call.path, "tail": call.query.get("tail", 100)}
    if cursor is not None:  # resuming: every line after the cursor
        payload = {**payload, "tail": FOLLOW_LINES, "since": cursor}
    first = await call.ask("apps", "logs", payload)  # 404 before the stream
    streams = task_streams(call)
    response = web.StreamResponse(
        headers={"Content-Type": f"{EVENT_STREAM}; charset=utf-8", "X-Accel-Buffering": "no"}
    )
    if call.request.method == "HEAD":
        return response
    with streams.opened(caller_of(call)):
        await _send_logs(call, response, payload, first, streams)
    return response


async def _send_logs(
    call: Call,
    response: web.StreamResponse,
    payload: dict[str, Any],
    answer: dict[str, Any],
    streams: TaskStreams,
) -> None:
    """Send `answer`'s lines, then new ones once a second, until the client goes away."""
    try:
        await response.prepare(call.request)
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        quiet = 0.0
        while True:
            lines = answer["lines"]
            for line in lines:
                data = json.dumps(line, ensure_ascii=False)
                event = f"id: {answer['cursor']}\nevent: line\ndata: {data}\n\n"
                await response.write(event.encode())
            if lines:
                quiet = 0.0
            elif quiet >= streams.heartbeat:
                await response.write(b": keep-alive\n\n")
                quiet = 0.0
            transport = call.request.transport
            if transport is None or transport.is_closing():
                return
            if await streams.pause(1.0):
                return
            quiet += 1.0
            # every line since the last one sent (`tail` limits only the first answer)
            more = {**payload, "tail": FOLLOW_LINES, "since": answer["cursor"]}
            answer = await call.ask("apps", "logs", more)
    except ConnectionError:
        return  # the client went away
    except BusError as e:
        # The answer has begun: no problem response can follow, so the stream ends (the
        # browser reconnects; an uninstalled app's 404 then ends it for good).
        log.info("log stream of app %s ended: %s", payload["app_id"], e.message)
