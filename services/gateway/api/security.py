"""HTTP security of the gateway (SECURITY.md "HTTP"): headers, CSRF by origin, exact CORS.

- Every response of the gateway (API, dashboard, probes, errors) carries the security headers;
  API responses also `Cache-Control: no-store` and the API's CSP, unless the response already
  names its own: only a handler that writes its answer itself sets them (a catalog icon may be
  cached, and an SVG gets a CSP that sandboxes it).
- CSRF: only POST/PUT/PATCH/DELETE routes change state, and they are refused (403) when the
  `Origin` is not the configured public origin (or a configured CORS origin), or, without an
  `Origin`, when `Sec-Fetch-Site` says the request comes from another site — `same-site` too,
  since apps on sibling subdomains are same-site with the dashboard. Requests without either
  header (the CLI, scripts) are not from a browser and pass, unless the session cookie signs
  them in: a browser sends one of the two with every such request, so a cookie-signed change
  without either is refused. With no public origin configured, the origin must name the host
  the request was sent to (`Host`).
- CORS: `Access-Control-Allow-Origin` is only ever an exact configured origin, never reflected
  from the request; credentials are never allowed cross-origin.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Mapping

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from services.gateway.api.auth import SESSION_COOKIE
from services.gateway.api.problems import CORRELATION_ID, Problem

__all__ = [
    "API_CSP",
    "DASHBOARD_CSP",
    "HSTS",
    "ApiResponse",
    "api_response",
    "check_cookie_origin",
    "check_origin",
    "client_ip",
    "cors_preflight",
    "normalize_origin",
    "response_headers",
]

API_PREFIX = "/api/"
_API_ROOT = "/api"
HSTS = "max-age=31536000; includeSubDomains"
_LOCKDOWN = "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    f"connect-src 'self'; font-src 'self'; form-action 'self'; {_LOCKDOWN}"
)
API_CSP = f"default-src 'none'; form-action 'none'; {_LOCKDOWN}"
_HEADERS = {
    "Strict-Transport-Security": HSTS,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
_CROSS = frozenset({"cross-site", "same-site"})
_PREFLIGHT_HEADERS = "Authorization, Content-Type"
_PREFLIGHT_MAX_AGE = "600"
_DEFAULT_PORTS = {"http": 80, "https": 443}


ResponseHook = Callable[[web.Request, web.StreamResponse], Awaitable[None]]
# What the hook gives an API answer, made once: an answer of the dispatcher copies it.
_API_HEADERS = CIMultiDict(
    {**_HEADERS, "Content-Security-Policy": API_CSP, "Cache-Control": "no-store"}
)
_API_JSON_HEADERS = CIMultiDict({**_API_HEADERS, "Content-Type": "application/json"})
_HEADERS_CI = CIMultiDict(_HEADERS)  # `in` without regard to case


class ApiResponse(web.Response):
    """An answer of the API's dispatcher, made by `api_response` with every header the
    `response_headers` hook would add but the CORS ones: the hook adds only those. Copying
    one prepared set of headers costs a fifth of adding them one by one."""


def api_response(
    body: bytes | None, status: int, cid: str, headers: Mapping[str, str] | None = None
) -> ApiResponse:
    """The dispatcher's answer: JSON `body` (None: no body, no Content-Type), the security
    headers, `X-Correlation-Id: cid`. As in the hook, the handler's `headers` name their own
    CSP or Cache-Control, never another value of the headers every response carries."""
    h = (_API_JSON_HEADERS if body is not None else _API_HEADERS).copy()
    h["X-Correlation-Id"] = cid
    if headers:
        h.update({k: v for k, v in headers.items() if k not in _HEADERS_CI})
    return ApiResponse(body=body, status=status, headers=h)


def response_headers(cors: frozenset[str]) -> ResponseHook:
    """on_response_prepare of the gateway's root app: the security headers on every response.

    A response the API dispatched (it has a correlation id) also carries `X-Correlation-Id`,
    and, for a configured CORS origin only, `Access-Control-Allow-Origin` naming it exactly.
    """

    async def headers(request: web.Request, response: web.StreamResponse) -> None:
        h = response.headers
        if type(response) is ApiResponse:  # made with the others (api_response)
            if cors:
                _allow_origin(request, h, cors)
            return
        h.update(_HEADERS)
        path = request.path
        if not (path.startswith(API_PREFIX) or path == _API_ROOT):
            h["Content-Security-Policy"] = DASHBOARD_CSP
            h.setdefault("Cache-Control", "no-store")
            return
        h.setdefault("Content-Security-Policy", API_CSP)
        h.setdefault("Cache-Control", "no-store")
        cid = request.get(CORRELATION_ID)
        if cid is None:
            return
        h["X-Correlation-Id"] = cid
        if cors:
            _allow_origin(request, h, cors)

    return headers


def _allow_origin(request: web.Request, h: CIMultiDict[str], cors: frozenset[str]) -> None:
    """CORS headers naming the request's Origin, if it is one of `cors` exactly."""
    given = request.headers.get("Origin")
    origin = normalize_origin(given) if given else None
    if origin is not None and origin in cors:
        h["Access-Control-Allow-Origin"] = origin
        h["Access-Control-Expose-Headers"] = "X-Correlation-Id, Location"
        h["Vary"] = "Origin"


def normalize_origin(value: str) -> str | None:
    """`scheme://host[:port]` in lower case without a default port; None if not an origin."""
    try:
        url = URL(value.strip())
    except (ValueError, TypeError):
        return None
    scheme = (url.scheme or "").lower()
    host = url.host
    if scheme not in _DEFAULT_PORTS or not host or url.user or url.password:
        return None
    if url.raw_path not in ("", "/") or url.raw_query_string or url.raw_fragment:
        return None
    port = url.explicit_port
    host = host.lower()
    if ":" in host:  # IPv6
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _host_of(origin: str) -> str:
    return origin.split("://", 1)[1]


def _request_host(request: web.Request, scheme: str) -> str | None:
    # Behind the edge, Host has no port; nginx (on loopback) names the origin's host and port in
    # X-Forwarded-Host, believed only from loopback like X-Real-IP.
    forwarded = request.headers.get("X-Forwarded-Host")
    peer = request.remote
    loopback = _loopback(peer) if peer is not None else None
    host = forwarded if forwarded and loopback else request.headers.get("Host")
    if not host:
        return None
    norm = normalize_origin(f"{scheme}://{host}")
    return _host_of(norm) if norm else None


def check_origin(
    request: web.Request, public_origin: str | None, trusted: Iterable[str] = ()
) -> None:
    """Raise a 403 Problem if this state-changing request comes from another origin."""
    raw = request.headers.get("Origin")
    if raw is not None:
        origin = normalize_origin(raw)
        if origin is not None:
            if origin == public_origin or origin in set(trusted):
                return
            scheme = origin.split("://", 1)[0]
            if public_origin is None and _host_of(origin) == _request_host(request, scheme):
                return
        raise Problem(
            "forbidden",
            "cross-origin request refused: state changes are accepted only from the "
            "dashboard's own origin",
        )
    site = request.headers.get("Sec-Fetch-Site", "").lower()
    if site in _CROSS:
        raise Problem(
            "forbidden",
            f"cross-origin request refused (Sec-Fetch-Site: {site}): state changes are "
            "accepted only from the dashboard's own origin",
        )


def check_cookie_origin(request: web.Request) -> None:
    """Raise a 403 Problem if this state-changing request is signed in by the session cookie
    alone and says nothing of where it comes from: browsers send `Origin` (or
    `Sec-Fetch-Site`) on every such request, so one without is not the dashboard's. Requests
    with `Authorization` (API tokens) carry no ambient credential and are not concerned."""
    if "Authorization" in request.headers or SESSION_COOKIE not in request.cookies:
        return
    if (
        request.headers.get("Origin", "").strip()
        or request.headers.get("Sec-Fetch-Site", "").strip()
    ):
        return
    raise Problem(
        "forbidden",
        "a change signed in by the session cookie must come from the dashboard (a browser "
        "sends its Origin); programs send an API token as Authorization: Bearer <token>",
    )


def cors_preflight(
    request: web.Request, allowed_methods: Iterable[str], cors_origins: Iterable[str]
) -> web.Response | None:
    """The answer to a CORS preflight from a configured origin; None if it is not one."""
    origin = normalize_origin(request.headers.get("Origin", ""))
    wanted = request.headers.get("Access-Control-Request-Method", "")
    methods = sorted(set(allowed_methods))
    if origin is None or origin not in set(cors_origins) or wanted not in methods:
        return None
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": ", ".join(methods),
            "Access-Control-Allow-Headers": _PREFLIGHT_HEADERS,
            "Access-Control-Max-Age": _PREFLIGHT_MAX_AGE,
            "Vary": "Origin",
        },
    )


@functools.lru_cache(maxsize=4096)
def _loopback(peer: str) -> bool | None:
    """Whether `peer` is a loopback address (None: not an IP address); the same few peers
    (nginx on loopback) ask on every request."""
    try:
        return ipaddress.ip_address(peer).is_loopback
    except ValueError:
        return None


def client_ip(request: web.Request) -> str | None:
    """The caller's address; `X-Real-IP` is believed only from a proxy on loopback (nginx)."""
    peer = request.remote
    if peer is None:
        return None
    loopback = _loopback(peer)
    if loopback is None:
        return peer
    real = request.headers.get("X-Real-IP")
    if loopback and real:
        try:
            return str(ipaddress.ip_address(real.strip()))
        except ValueError:
            return peer
    return peer
