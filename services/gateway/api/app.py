"""The `/api/v1` application: the route table installed, and the one dispatcher that runs it.

Every request goes through `_dispatcher`, in this order; the first refusal answers (before it,
inputs.py refuses a NUL byte or non-UTF-8 text in the path, query or headers, 400):
1. the route: unknown path 404, undeclared method 405 (with Allow), no table entry 500;
2. CSRF (POST/PUT/PATCH/DELETE only): a request from another origin 403, one signed in by the
   session cookie without Origin or Sec-Fetch-Site 403;
3. authentication (user and admin routes): no or invalid credentials 401;
4. authorization: a non-admin on an admin route 403; a read-only token on a non-GET route 403;
   an admin who must enrol a second factor first, on any route but ENROLMENT_ROUTES 403;
5. path and query parameters against the route's schemas 400;
6. the ownership check, if the route has one (admins pass) 403;
7. the body: over the limit 413, not JSON (nor a text type the route also takes) 415, against
   the schema 400 (a text body is handed to the handler as it is);
8. the handler, whose errors the problems middleware turns into problem+json.
Anonymous routes skip 3, 4 and 6: their handlers get no principal.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler as AiohttpHandler
from aiohttp.typedefs import Middleware
from aiohttp.web_urldispatcher import AbstractRoute

from libs.contracts.schema import Schema, coerce_params, json_float, json_int, validate
from libs.events import context
from libs.events.bus import Internal, Invalid
from libs.events.context import Context
from libs.events.envelope import uuid7_str
from libs.service.logs import bind_correlation
from services.gateway.api.auth import Authenticator, Principal, Scope, credentials_of
from services.gateway.api.backend import Backend
from services.gateway.api.config import ApiConfig
from services.gateway.api.inputs import check_inputs
from services.gateway.api.liveness import Caller, calling
from services.gateway.api.openapi import openapi_document
from services.gateway.api.principals import CachingAuthenticator, PrincipalCache
from services.gateway.api.problems import CORRELATION_ID, Problem, problem_of
from services.gateway.api.routes import JSON, Access, Call, Reply, Route, RouteTable
from services.gateway.api.security import (
    check_cookie_origin,
    check_origin,
    client_ip,
    cors_preflight,
    normalize_origin,
    security_headers,
)
from services.gateway.api.version import VERSION

__all__ = ["API_PREFIX", "API_STATE", "ENROLMENT_ROUTES", "ApiState", "build_api", "mount_api"]

log = logging.getLogger("homeport.gateway.api")

API_PREFIX = "/api/v1"
_NO_PARAMS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
_CHUNK = 64 * 1024
ResponseHook = Callable[[web.Request, web.StreamResponse], Awaitable[None]]
_INVALID_TOKEN = 'Bearer realm="homeport", error="invalid_token"'  # noqa: S105 - a header
# What an admin may do while administrators must use TOTP and they have none yet (identity's
# whoami says `totp_enrolment_required`): read the profile, enrol TOTP, sign out.
ENROLMENT_ROUTES = frozenset(
    {
        "GET /profile",
        "DELETE /session",
        "GET /profile/totp",
        "POST /profile/totp",
        "POST /profile/totp/confirm",
    }
)


@dataclass(eq=False)
class ApiState:
    """What the dispatcher and handlers share; one per API application."""

    table: RouteTable
    backend: Backend
    authenticator: Authenticator
    config: ApiConfig
    check_responses: bool = False
    principals: PrincipalCache | None = None  # dropped after every identity command (routes.py)
    entries: dict[AbstractRoute, Route] = field(default_factory=dict)
    _openapi: dict[str, Any] | None = None

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document of the table (built once)."""
        if self._openapi is None:
            self._openapi = openapi_document(self.table, version=VERSION, prefix=API_PREFIX)
        return self._openapi


API_STATE = web.AppKey("homeport_api_state", ApiState)


def build_api(
    table: RouteTable,
    *,
    backend: Backend,
    authenticator: Authenticator,
    config: ApiConfig | None = None,
    check_responses: bool = False,
    principal_cache: PrincipalCache | None = None,
) -> web.Application:
    """The API application serving exactly the routes of `table`; mount it with mount_api.

    `check_responses` validates every answer against its declared schema (for tests).
    `principal_cache` keeps the authenticator's answers (principals.py), kept in step with
    identity by an IdentityChanges the caller starts.
    """
    if principal_cache is not None:
        authenticator = CachingAuthenticator(authenticator, principal_cache)
    state = ApiState(
        table, backend, authenticator, config or ApiConfig(), check_responses, principal_cache
    )
    app = web.Application(middlewares=[_dispatcher(state)])
    for route in sorted(table, key=lambda r: (r.path, r.method)):
        methods = ("GET", "HEAD") if route.method == "GET" else (route.method,)
        for method in methods:
            state.entries[app.router.add_route(method, route.path, _not_dispatched)] = route
    app[API_STATE] = state
    app.on_response_prepare.append(_api_headers(state))
    return app


def mount_api(root: web.Application, api: web.Application) -> None:
    """Serve `api` under /api/v1 of the gateway's app, security headers on every response."""
    root.add_subapp(API_PREFIX, api)
    root.on_response_prepare.append(security_headers)


async def _not_dispatched(request: web.Request) -> web.StreamResponse:
    # Routes are answered by the dispatcher; reaching this means it is not installed.
    raise RuntimeError(f"{request.method} {request.path} reached the router without dispatch")


def _api_headers(state: ApiState) -> ResponseHook:
    async def api_headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.setdefault("Cache-Control", "no-store")  # security.py: unless set
        cid = request.get(CORRELATION_ID)
        if cid is not None:
            response.headers["X-Correlation-Id"] = cid
        given = request.headers.get("Origin")
        origin = normalize_origin(given) if given else None
        if origin is not None and origin in state.config.cors:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = "X-Correlation-Id, Location"
            response.headers["Vary"] = "Origin"

    return api_headers


def _dispatcher(state: ApiState) -> Middleware:
    """The API's one middleware: the input check, the steps above, and whatever they raise
    turned into problem+json (problems.py). One frame per request, not one per concern."""

    @web.middleware
    async def dispatch(request: web.Request, handler: AiohttpHandler) -> web.StreamResponse:
        cid = uuid7_str()
        request[CORRELATION_ID] = cid
        with bind_correlation(cid):
            try:
                check_inputs(request)  # a NUL byte or non-UTF-8 text in path, query, headers
                return await _dispatch(state, request, cid)
            except Exception as e:
                return problem_of(request, e)

    return dispatch


async def _dispatch(state: ApiState, request: web.Request, cid: str) -> web.StreamResponse:
    match = request.match_info
    error = match.http_exception
    if error is not None:
        if request.method == "OPTIONS" and isinstance(error, web.HTTPMethodNotAllowed):
            preflight = cors_preflight(request, error.allowed_methods, state.config.cors)
            if preflight is not None:
                return preflight
        raise error
    route = state.entries.get(match.route)
    if route is None:
        log.error("%s %s is routed but has no entry in the route table", request.method, match)
        raise Internal("route without a declaration")

    if not route.safe:
        check_origin(request, state.config.origin, state.config.cors)
        check_cookie_origin(request)
    ip = client_ip(request)
    principal: Principal | None = None
    ctx = Context(actor="anonymous", correlation_id=cid, ip=ip)
    if route.access is not Access.anonymous:
        principal = await _authenticate(state, request, ctx)
        _authorize(route, principal)
        ctx = Context(actor=principal.user_id, correlation_id=cid, ip=ip, admin=principal.is_admin)

    path = _params(route.path_params, match)
    query = _params(route.query, request.query)
    call = Call(request, route, principal, ctx, path, query, None, state)
    if not await _owns(call):
        raise Problem("forbidden", "this belongs to another user: only its owner or an admin may")
    if route.body is not None:
        call = dataclasses.replace(call, body=await _read_body(request, route))
    elif await _has_body(request, route):
        raise Problem("invalid", f"{route.label} takes no request body")

    with context.use(ctx), calling(lambda: _caller(state, call)):
        result = await route.handler(call)
    return _render(state, route, result)


def _authorize(route: Route, principal: Principal) -> None:
    """Refuse (403) a principal the route is not for (step 4)."""
    if route.access is Access.admin and not principal.is_admin:
        raise Problem("forbidden", f"{route.label} is for administrators only")
    if principal.scope is Scope.read and not route.safe:
        raise Problem("forbidden", "this token is read-only: it may only GET")
    if principal.totp_enrolment_required and route.label not in ENROLMENT_ROUTES:
        raise Problem(
            "forbidden",
            "administrators must use a second factor: enrol TOTP first "
            "(POST /profile/totp, then POST /profile/totp/confirm)",
        )


async def _owns(call: Call) -> bool:
    """The route's ownership check (step 6): admins and anonymous routes pass."""
    who = call.principal
    if call.route.owner is None or who is None or who.is_admin:
        return True
    return await call.route.owner(call)


def _caller(state: ApiState, call: Call) -> Caller | None:
    """How a long answer (an event stream) checks its caller again (liveness.py): the same
    credential authenticated anew, then steps 4 and 6 for the principal it is now."""
    first = call.principal
    creds = credentials_of(call.request)
    if first is None or creds is None:
        return None

    async def recheck() -> bool:
        now = await state.authenticator.authenticate(creds, call.context)
        if now is None or now.user_id != first.user_id:
            return False
        try:
            _authorize(call.route, now)
        except Problem:
            return False
        return await _owns(dataclasses.replace(call, principal=now))

    listen = state.principals.listen if state.principals is not None else None
    return Caller(first.user_id, recheck, listen)


def _params(schema: Schema | None, given: Mapping[str, str]) -> dict[str, Any]:
    """Path or query parameters against the route's schema (none declared: none taken)."""
    if schema is None and not given:
        return {}  # the common case, without a validation of nothing
    return coerce_params(schema or _NO_PARAMS, given.items())


async def _authenticate(state: ApiState, request: web.Request, ctx: Context) -> Principal:
    creds = credentials_of(request)
    if creds is None:
        raise Problem(
            "unauthorized", "sign in, or send an API token as Authorization: Bearer <token>"
        )
    principal = await state.authenticator.authenticate(creds, ctx)
    if principal is None:
        raise Problem(
            "unauthorized",
            f"the {creds.via.value} is not valid (unknown, expired or revoked): sign in again",
            headers={"WWW-Authenticate": _INVALID_TOKEN},
        )
    return principal


async def _has_body(request: web.Request, route: Route) -> bool:
    if request.content_length is not None:
        return request.content_length > 0
    if not request.body_exists:
        return False
    return bool((await _read_limited(request, route.max_body)).strip())


async def _read_limited(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise Problem("payload_too_large", f"the request body is over {limit} bytes")
    parts: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise Problem("payload_too_large", f"the request body is over {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def _read_body(request: web.Request, route: Route) -> Any:
    assert route.body is not None
    if request.content_length is not None and request.content_length > route.max_body:
        raise Problem("payload_too_large", f"the request body is over {route.max_body} bytes")
    ctype = request.content_type
    utf8 = (request.charset or "utf-8").lower() in ("utf-8", "utf8")
    if ctype in route.alt_body_types and utf8:
        try:  # the handler validates the text (routes.py, alt_body_types)
            return (await _read_limited(request, route.max_body)).decode("utf-8")
        except UnicodeDecodeError:
            raise Invalid("the body is not UTF-8 text") from None
    if ctype != "application/json" or not utf8:
        got = request.headers.get("Content-Type", "none")
        types = " or ".join(("application/json", *route.alt_body_types))
        raise Problem(
            "unsupported_media_type",
            f"send the body as Content-Type: {types} (UTF-8), not {got[:100]}",
        )
    data = await _read_limited(request, route.max_body)
    if not data.strip():
        raise Invalid("send a JSON body")
    value = _strict_json(data)
    validate(route.body, value)
    return value


def _strict_json(data: bytes) -> Any:
    """JSON as RFC 8259 has it: UTF-8, no NaN/Infinity, no key given twice."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise Invalid(f"{key} appears twice in the body", field=key)
            out[key] = value
        return out

    def constant(name: str) -> Any:
        raise Invalid(f"the body is not JSON: {name} is not a JSON value")

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("the body is not UTF-8 text") from None
    try:
        return json.loads(
            text,
            object_pairs_hook=pairs,
            parse_constant=constant,
            parse_int=json_int,
            parse_float=json_float,
        )
    except json.JSONDecodeError as e:
        raise Invalid(
            f"the body is not JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    except RecursionError:
        raise Invalid("the body is nested too deeply") from None


def _json(value: Any) -> bytes:
    """The answer as UTF-8 JSON, by orjson (a fifth of `json`'s time): non-string keys become
    strings as `json` has it; a NaN or an infinity becomes null (JSON has neither)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # an int over 64 bits: json writes it
        pass
    return json.dumps(value, ensure_ascii=False, allow_nan=False).encode()


def _render(state: ApiState, route: Route, result: Any) -> web.StreamResponse:
    if route.media_type != JSON:
        if not isinstance(result, web.StreamResponse):
            raise RuntimeError(f"{route.label} streams: its handler must return its response")
        return result
    reply = result if isinstance(result, Reply) else Reply(result, route.success)
    if reply.status not in route.responses:
        raise RuntimeError(f"{route.label} answered {reply.status}, which it does not declare")
    schema = route.responses[reply.status]
    if schema is None:
        return web.Response(status=reply.status, headers=reply.headers)
    if state.check_responses:
        try:
            validate(schema, reply.body)
        except Invalid as e:
            raise RuntimeError(
                f"{route.label} answered {reply.status} with a body off its schema: {e.message}"
            ) from None
    body = _json(reply.body)
    return web.Response(
        body=body, status=reply.status, headers=reply.headers, content_type="application/json"
    )
