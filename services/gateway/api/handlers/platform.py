"""The platform itself: version, setup state, health, and this API's description."""

from __future__ import annotations

import logging
from typing import Any

from libs.contracts.schema import array, boolean, nullable, obj, string
from libs.events.bus import BusError, Internal
from services.gateway.api.routes import Access, Call, Routes
from services.gateway.api.version import VERSION

__all__ = ["routes"]

log = logging.getLogger("homeport.gateway.api")

routes = Routes("platform")

SETUP_STATE_TIMEOUT = 2.0  # seconds for identity to say whether setup is done
_DETAIL = {
    "unavailable": "not running or not reachable",
    "deadline_exceeded": "not answering in time",
}

SERVICE = obj(
    {
        "name": string(),
        "ok": boolean(),
        "detail": string(description="why the service is not ok"),
    },
    required=["name", "ok"],
)
STATUS = obj(
    {
        "version": string(description="the Homeport version"),
        "setup_done": nullable(
            boolean(description="whether the first admin exists; null when unknown")
        ),
        "ok": boolean(description="every service below is ok"),
        "services": array(SERVICE),
    },
    required=["version", "setup_done", "ok", "services"],
)


@routes.get(
    "/status",
    access=Access.anonymous,
    summary="Version, setup state and health of the platform",
    responses={200: STATUS},
)
async def status(call: Call) -> Any:
    identity: dict[str, Any] = {"name": "identity", "ok": True}
    setup_done: bool | None = None
    try:
        reply = await call.ask("identity", "setup_state", {}, timeout=SETUP_STATE_TIMEOUT)
        done = reply.get("setup_done") if isinstance(reply, dict) else None
        if not isinstance(done, bool):
            raise Internal(f"identity answered setup_state without setup_done: {reply!r:.200}")
        setup_done = done
    except BusError as e:
        log.warning("status: identity is not healthy: %r", e)
        identity = {"name": "identity", "ok": False, "detail": _DETAIL.get(e.code, "failing")}
    services = [{"name": "gateway", "ok": True}, identity]
    return {
        "version": VERSION,
        "setup_done": setup_done,
        "ok": all(s["ok"] for s in services),
        "services": services,
    }


@routes.get(
    "/openapi.json",
    access=Access.anonymous,
    summary="This API as an OpenAPI 3.1 document",
    responses={200: {"type": "object", "description": "an OpenAPI 3.1 document"}},
)
async def openapi(call: Call) -> Any:
    return call.state.openapi()
