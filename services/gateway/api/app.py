"""The `/api/v1` application: the route table installed, and the one dispatcher that runs it.

Every request below /api/v1 goes through `_endpoint` (see mount_api), in this order; the first
refusal answers (before it, inputs.py refuses a NUL byte or non-UTF-8 text in the path, query
or headers, 400):
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
8. the handler, whose errors `_endpoint` turns into problem+json (problems.py).
Anonymous routes skip 3, 4 and 6: their handlers get no principal.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute, UrlDispatcher

from libs.contracts.schema import Schema, coerce_params, json_float, json_int, validate
from libs.events import context
from libs.events.bus import Internal, Invalid
from libs.events.context import Context
from libs.events.envelope import uuid7_str
from libs.service.logs import bind_correlation
from services.gateway.api.auth import (
    Authenticator,
    Credentials,
    Principal,
    Scope,
    credentials_of,
)
from services.gateway.api.backend import Backend
from services.gateway.api.config import ApiConfig
from services.gateway.api.inputs import check_inputs
from services.gateway.api.liveness import Caller
from services.gateway.api.openapi import openapi_document
from services.gateway.api.principals import CachingAuthenticator, PrincipalCache
from services.gateway.api.problems import CORRELATION_ID, Problem, problem_of
from services.gateway.api.routes import JSON, Access, Call, Reply, Route, RouteTable
from services.gateway.api.security import (
    api_response,
    check_cookie_origin,
    check_origin,
    client_ip,
    cors_preflight,
    response_headers,
)
from services.gateway.api.version import VERSION

__all__ = [
    "API_APP",
    "API_PREFIX",
    "API_STATE",
    "ENROLMENT_ROUTES",
    "ApiState",
    "build_api",
    "caller_of",
    "mount_api",
]

log = logging.getLogger("homeport.gateway.api")

API_PREFIX = "/api/v1"
_NO_PARAMS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
_NO_QUERY: Mapping[str, str] = {}
_CHUNK = 64 * 1024
Answer = Callable[[web.Request, str], Awaitable[web.StreamResponse]]
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


def _nobody_known(_: Credentials) -> Principal | None:
    return None  # no principal cache: every credential is asked of the authenticator


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
    # A live answer of the principal cache, looked up without a coroutine (most requests)
    known: Callable[[Credentials], Principal | None] = _nobody_known
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
    known: Callable[[Credentials], Principal | None] = _nobody_known
    if principal_cache is not None:
        caching = CachingAuthenticator(authenticator, principal_cache)
        authenticator, known = caching, caching.known
    state = ApiState(
        table,
        backend,
        authenticator,
        config or ApiConfig(),
        check_responses,
        principal_cache,
        known=known,
    )
    app = web.Application()  # never served itself: mount_api serves its routes
    for route in sorted(table, key=lambda r: (r.path, r.method)):
        methods = ("GET", "HEAD") if route.method == "GET" else (route.method,)
        for method in methods:
            state.entries[app.router.add_route(method, route.path, _not_dispatched)] = route
    app[API_STATE] = state
    return app


API_APP = web.AppKey("homeport_api", web.Application)


def mount_api(root: web.Application, api: web.Application) -> None:
    """Serve `api` under /api/v1 of the gateway's app, security headers on every response.

    Its routes go on the root's own router, each answered through the dispatcher, rather than
    mounting `api` as a sub-application: a sub-application's resolve, middleware frames and
    second signal cost 5-8 % of a cached GET's CPU. A route served without a table entry 500s;
    any other path below /api/v1 is resolved by `api`'s router for its 404 or 405 (and a CORS
    preflight). `api` stays reachable as `root[API_APP]`.
    """
    state = api[API_STATE]
    router = api.router
    for resource in router.resources():  # as aiohttp's add_subapp does
        router.unindex_resource(resource)
        resource.add_prefix(API_PREFIX)
        router.index_resource(resource)
    for served in router.routes():
        route = state.entries.get(served)
        answer = partial(_dispatch, state, route) if route is not None else _undeclared
        assert served.resource is not None
        root.router.add_route(served.method, served.resource.canonical, _endpoint(answer))
    unrouted = _endpoint(partial(_unrouted, state, router))
    root.router.add_route("*", API_PREFIX, unrouted)
    root.router.add_route("*", API_PREFIX + "/{tail:.*}", unrouted)
    root[API_APP] = api
    root.on_response_prepare.append(response_headers(state.config.cors))
    caching = state.authenticator
    if isinstance(caching, CachingAuthenticator):  # its questions under way end with the app

        async def close(_: web.Application) -> None:
            await caching.close()

        root.on_cleanup.append(close)


async def _not_dispatched(request: web.Request) -> web.StreamResponse:
    # `api` itself is never served (mount_api); reaching this means it was mounted otherwise.
    raise RuntimeError(f"{request.method} {request.path} reached the router without dispatch")


def _endpoint(answer: Answer) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The handler of an API route: the input check, then `answer`; whatever they raise is
    turned into problem+json (problems.py). One frame per request, not one per concern."""

    async def endpoint(request: web.Request) -> web.StreamResponse:
        cid = uuid7_str()
        request[CORRELATION_ID] = cid
        with bind_correlation(cid):
            try:
                check_inputs(request)  # a NUL byte or non-UTF-8 text in path, query, headers
                return await answer(request, cid)
            except Exception as e:
                return problem_of(request, e)

    return endpoint


async def _unrouted(
    state: ApiState, router: UrlDispatcher, request: web.Request, cid: str
) -> web.StreamResponse:
    """A path below /api/v1 no route serves with this method: 404, or 405 with Allow (an
    OPTIONS one may be a CORS preflight)."""
    error = (await router.resolve(request)).http_exception
    if error is None:  # served by `api`'s router but not the root's: mounted otherwise
        log.error("%s %s is routed by the API but not served", request.method, request.path)
        raise Internal("route not served")
    if request.method == "OPTIONS" and isinstance(error, web.HTTPMethodNotAllowed):
        preflight = cors_preflight(request, error.allowed_methods, state.config.cors)
        if preflight is not None:
            return preflight
    raise error


async def _undeclared(request: web.Request, cid: str) -> web.StreamResponse:
    log.error("%s %s is routed but has no entry in the route table", request.method, request.path)
    raise Internal("route without a declaration")


async def _dispatch(
    state: ApiState, route: Route, request: web.Request, cid: str
) -> web.StreamResponse:
    """Steps 2 to 8 of the module's docstring for a request `route` serves."""
    if not route.safe:
        check_origin(request, state.config.origin, state.config.cors)
        check_cookie_origin(request)
    ip = client_ip(request)
    principal: Principal | None = None
    if route.access is Access.anonymous:
        ctx = Context(actor="anonymous", correlation_id=cid, ip=ip)
    else:
        creds = credentials_of(request)
        principal = state.known(creds) if creds is not None else None  # no await: most are
        if principal is None:
            asking = Context(actor="anonymous", correlation_id=cid, ip=ip)
            principal = await _authenticate(state, creds, asking)
        _authorize(route, principal)
        ctx = Context(actor=principal.user_id, correlation_id=cid, ip=ip, admin=principal.is_admin)

    path = _params(route.path_params, request.match_info)
    # request.query parses the URL's query: only when there is one
    query = _params(route.query, request.query if "?" in request.raw_path else _NO_QUERY)
    call = Call(request, route, principal, ctx, path, query, None, state)
    if route.owner is not None and not await _owns(call):
        raise Problem("forbidden", "this belongs to another user: only its owner or an admin may")
    if route.body is not None:
        call = dataclasses.replace(call, body=await _read_body(request, route))
    elif request.body_exists and await _has_body(request, route):
        raise Problem("invalid", f"{route.label} takes no request body")

    with context.use(ctx):
        result = await route.handler(call)
    return _render(state, route, result, cid)


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


def caller_of(call: Call) -> Caller | None:
    """How a long answer (an event stream) checks its caller again (liveness.py): the same
    credential authenticated anew, then steps 4 and 6 for the principal it is now. None for
    an anonymous call."""
    state = call.state
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


async def _authenticate(state: ApiState, creds: Credentials | None, ctx: Context) -> Principal:
    """Who `creds` are, asked of the authenticator (step 3); 401 if nobody."""
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


def _render(state: ApiState, route: Route, result: Any, cid: str) -> web.StreamResponse:
    if route.media_type != JSON:
        if not isinstance(result, web.StreamResponse):
            raise RuntimeError(f"{route.label} streams: its handler must return its response")
        return result
    if isinstance(result, Reply):
        status, value, headers = result.status, result.body, result.headers
    else:
        status, value, headers = route.success, result, None
    if status not in route.responses:
        raise RuntimeError(f"{route.label} answered {status}, which it does not declare")
    schema = route.responses[status]
    if schema is None:
        return api_response(None, status, cid, headers)
    if state.check_responses:
        try:
            validate(schema, value)
        except Invalid as e:
            raise RuntimeError(
                f"{route.label} answered {status} with a body off its schema: {e.message}"
            ) from None
    return api_response(_json(value), status, cid, headers)
