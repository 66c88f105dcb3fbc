"""The route table of `/api/v1`: every route declared once, with who may call it and its shapes.

A route is one declaration in a handlers module:

    routes = Routes("apps")

    @routes.get("/apps/{app_id}", access=Access.user, owner=owns_app, summary="One app",
                path=obj({"app_id": string(pattern=APP_ID)}, required=["app_id"]),
                responses={200: APP})
    async def get_app(call: Call) -> Any:
        return await call.ask("apps", "get", {"id": call.path["app_id"]})

The gateway serves only routes of the table (api/table.py lists the handlers modules) and the
dispatcher decides authorization from the declaration alone; see api/app.py.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import asyncpg
from aiohttp import web

from libs.contracts.schema import Schema, SchemaError, check_schema
from libs.events.context import Context
from services.gateway.api.auth import Principal
from services.gateway.api.problems import STATUS

if TYPE_CHECKING:
    from services.gateway.api.app import ApiState

__all__ = [
    "DEFAULT_MAX_BODY",
    "JSON",
    "SAFE_METHODS",
    "Access",
    "Call",
    "Handler",
    "OwnerCheck",
    "Reply",
    "Route",
    "RouteTable",
    "Routes",
]

DEFAULT_MAX_BODY = 1024 * 1024  # bytes of a request body; more is 413
JSON = "application/json"
SAFE_METHODS = frozenset({"GET", "HEAD"})
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_PATH = re.compile(r"(/([a-z0-9][a-z0-9_.-]*|\{[a-z_][a-z0-9_]*\}))+")
_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_MEDIA = re.compile(r"[a-z]+/[a-z0-9.+-]+")
_SCALARS = frozenset({"string", "integer", "number", "boolean"})


class Access(StrEnum):
    """Who may call a route: anyone, any signed-in user, or admins only."""

    anonymous = "anonymous"
    user = "user"
    admin = "admin"


@dataclass(frozen=True, slots=True)
class Reply:
    """A handler's answer when 200 with a JSON body is not enough."""

    body: Any = None
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class Call:
    """One API request as a handler sees it: who, validated inputs, and the backends. Not
    frozen (one is made per request; a frozen dataclass sets each field through
    object.__setattr__); nothing sets a field after the dispatcher made it."""

    request: web.Request
    route: Route
    principal: Principal | None
    context: Context
    path: dict[str, Any]
    query: dict[str, Any]
    body: Any
    state: ApiState

    @property
    def user(self) -> Principal:
        """The caller of a `user` or `admin` route (never None there)."""
        if self.principal is None:
            raise RuntimeError(f"{self.route.label} is anonymous: it has no user")
        return self.principal

    @property
    def pool(self) -> asyncpg.Pool:
        """The gateway's Postgres pool (its own read models)."""
        return self.state.backend.pool()

    async def ask(
        self,
        service: str,
        name: str,
        payload: dict[str, Any],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the wire deadline, not a local wait
    ) -> Any:
        """Query `hp.qry.<service>.<name>` as this caller."""
        bus = self.state.backend.bus()
        return await bus.query(service, name, payload, ctx=self.context, timeout=timeout)

    async def command(
        self,
        service: str,
        verb: str,
        payload: dict[str, Any],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the wire deadline, not a local wait
    ) -> Any:
        """Send command `hp.cmd.<service>.<verb>` as this caller; never from a GET route."""
        if self.route.method in SAFE_METHODS:
            # SECURITY.md: state changes only on POST/PUT/PATCH/DELETE.
            raise RuntimeError(f"{self.route.label} is a GET route: it may not send commands")
        bus = self.state.backend.bus()
        try:
            return await bus.command(service, verb, payload, ctx=self.context, timeout=timeout)
        finally:
            if service == "identity" and self.state.principals is not None:
                # Identity announces what changed, but its message may be handled after the
                # reply; this gateway's next request must not race it (principals.py).
                actor = self.principal.user_id if self.principal is not None else None
                self.state.principals.after_command(verb, payload, actor)


Handler = Callable[[Call], Awaitable[Any]]
OwnerCheck = Callable[[Call], Awaitable[bool]]
Decorator = Callable[[Handler], Handler]


@dataclass(frozen=True, eq=False)
class Route:
    """One operation of the API. Paths are below /api/v1 and written in OpenAPI form."""

    method: str
    path: str
    handler: Handler
    access: Access
    summary: str
    responses: Mapping[int, Schema | None]
    owner: OwnerCheck | None = None  # user routes: may this user act on this resource?
    body: Schema | None = None
    query: Schema | None = None
    path_params: Schema | None = None
    description: str = ""
    name: str = ""  # the operationId; the handler's name by default
    tags: tuple[str, ...] = ()
    max_body: int = DEFAULT_MAX_BODY
    # Of the 2xx answers. Any other than JSON (text/event-stream, an image) is written by the
    # handler, which returns the web.StreamResponse (or web.Response) it made; its schema then
    # only documents it. `alt_media_types`: others the same answer may have (PNG beside SVG).
    media_type: str = JSON
    alt_media_types: tuple[str, ...] = ()
    # Text media types the request body may come in besides JSON (text/plain, for a list sent
    # with curl -T): the handler gets such a body as its text (str, UTF-8), checked by nothing
    # else, and validates it itself (its command's contract does when it is sent on).
    alt_body_types: tuple[str, ...] = ()
    # Problem codes the handler itself may answer (e.g. "conflict" when a name is taken), on
    # top of those the dispatcher answers; they are documented in the OpenAPI document.
    problems: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        label = f"{self.method} {self.path}"
        if self.method not in _METHODS:
            raise ValueError(f"{label}: method must be one of {', '.join(_METHODS)}")
        if not _PATH.fullmatch(self.path):
            raise ValueError(f"{label}: path must be /lower-case/{{param}} segments")
        if not isinstance(self.access, Access):
            raise ValueError(f"{label}: access must be an Access, got {self.access!r}")
        if not self.summary.strip():
            raise ValueError(f"{label}: a summary is required")
        if not self.name:
            object.__setattr__(self, "name", getattr(self.handler, "__name__", ""))
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"{label}: name {self.name!r} must be lower_snake_case")
        if self.owner is not None and self.access is not Access.user:
            raise ValueError(f"{label}: an ownership check needs access=Access.user")
        if self.body is not None and self.method not in _BODY_METHODS:
            raise ValueError(f"{label}: only POST, PUT and PATCH take a request body")
        if self.max_body < 0:
            raise ValueError(f"{label}: max_body must be >= 0")
        unknown = [code for code in self.problems if code not in STATUS]
        if unknown:
            raise ValueError(f"{label}: unknown problem codes {unknown}")
        if not _MEDIA.fullmatch(self.media_type):
            raise ValueError(f"{label}: media_type must be a media type such as {JSON}")
        if self.alt_media_types and self.media_type == JSON:
            raise ValueError(f"{label}: a JSON route has no other media types")
        if not all(_MEDIA.fullmatch(m) for m in self.alt_media_types):
            raise ValueError(f"{label}: alt_media_types must be media types such as image/png")
        if self.alt_body_types and self.body is None:
            raise ValueError(f"{label}: alt_body_types need a body (its JSON form)")
        if not all(_MEDIA.fullmatch(m) and m.startswith("text/") for m in self.alt_body_types):
            raise ValueError(f"{label}: alt_body_types must be text media types (text/plain)")
        if not self.responses or not all(200 <= s <= 299 for s in self.responses):
            raise ValueError(f"{label}: declare the success responses (2xx) and their schemas")
        try:
            for status, schema in self.responses.items():
                if schema is not None:
                    check_schema(schema, f"response {status}")
            if self.body is not None:
                check_schema(self.body, "body")
            self._check_params("query", self.query)
            self._check_params("path", self.path_params)
        except SchemaError as e:
            raise ValueError(f"{label}: {e}") from None
        declared = set((self.path_params or {}).get("properties", {}))
        wanted = set(_PARAM.findall(self.path))
        if declared != wanted:
            raise ValueError(
                f"{label}: path_params must declare exactly {sorted(wanted)}, "
                f"got {sorted(declared)}"
            )

    @staticmethod
    def _check_params(where: str, schema: Schema | None) -> None:
        if schema is None:
            return
        check_schema(schema, where)
        if schema.get("type") != "object":
            raise SchemaError(f"{where} parameters must be an object schema")
        for name, sub in schema.get("properties", {}).items():
            types = sub.get("type")
            types = [types] if isinstance(types, str) else list(types or [])
            if not types or not set(types) <= _SCALARS | {"null"}:
                raise SchemaError(f"{where} parameter {name} must be a string, number or boolean")

    @functools.cached_property
    def label(self) -> str:
        return f"{self.method} {self.path}"

    @functools.cached_property
    def safe(self) -> bool:
        """GET routes never change state."""
        return self.method in SAFE_METHODS

    @functools.cached_property
    def success(self) -> int:
        """The status of a plain (non-Reply) answer: the lowest declared 2xx."""
        return min(self.responses)


class Routes:
    """The routes of one handlers module; each decorator is one complete declaration."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.routes: list[Route] = []

    def __iter__(self) -> Iterator[Route]:
        return iter(self.routes)

    def add(self, method: str, path: str, handler: Handler, **declared: Any) -> Route:
        tags = declared.pop("tags", (self.tag,))
        route = Route(method, path, handler, tags=tuple(tags), **declared)
        self.routes.append(route)
        return route

    def _decorator(self, method: str, path: str, declared: dict[str, Any]) -> Decorator:
        def register(handler: Handler) -> Handler:
            self.add(method, path, handler, **declared)
            return handler

        return register

    def get(self, path: str, *, access: Access, summary: str, **kw: Any) -> Decorator:
        return self._decorator("GET", path, {"access": access, "summary": summary, **kw})

    def post(self, path: str, *, access: Access, summary: str, **kw: Any) -> Decorator:
        return self._decorator("POST", path, {"access": access, "summary": summary, **kw})

    def put(self, path: str, *, access: Access, summary: str, **kw: Any) -> Decorator:
        return self._decorator("PUT", path, {"access": access, "summary": summary, **kw})

    def patch(self, path: str, *, access: Access, summary: str, **kw: Any) -> Decorator:
        return self._decorator("PATCH", path, {"access": access, "summary": summary, **kw})

    def delete(self, path: str, *, access: Access, summary: str, **kw: Any) -> Decorator:
        return self._decorator("DELETE", path, {"access": access, "summary": summary, **kw})


class RouteTable:
    """All routes of the API; the only way a route reaches the router."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)
        seen: dict[tuple[str, str], Route] = {}
        names: dict[str, Route] = {}
        shapes: dict[tuple[str, str], str] = {}
        for r in self.routes:
            if (r.method, r.path) in seen:
                raise ValueError(f"{r.label} is declared twice")
            # /apps/{id} and /apps/{name} would shadow each other in the router.
            shape = (r.method, _PARAM.sub("{}", r.path))
            if shape in shapes:
                raise ValueError(f"{r.label} shadows {shapes[shape]}")
            if r.name in names:
                raise ValueError(f"{r.label} and {names[r.name].label} are both named {r.name}")
            seen[(r.method, r.path)] = r
            shapes[shape] = r.label
            names[r.name] = r

    def __iter__(self) -> Iterator[Route]:
        return iter(self.routes)

    def __len__(self) -> int:
        return len(self.routes)

    def find(self, method: str, path: str) -> Route | None:
        """The route declared for `method` and `path` (as declared, e.g. `/apps/{app_id}`)."""
        for r in self.routes:
            if r.method == method and r.path == path:
                return r
        return None

    def extended(self, *routes: Route) -> RouteTable:
        """This table plus `routes`."""
        return RouteTable([*self.routes, *routes])
