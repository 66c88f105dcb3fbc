"""Every API error as an RFC 9457 problem: one middleware, one table of codes to statuses.

A problem body is `{"type", "title", "status", "detail", "code"}`, plus `"field"` when one input
is at fault, plus `"correlation_id"` (also in the `X-Correlation-Id` header) to find the logs.
`code` is the bus error code (or an HTTP-level one such as `unsupported_media_type`), so
clients switch on it rather than on wording. Internal errors never show their message.

Codes and statuses (bad input is 400 throughout; 422 is not used):

| code                   | status | from                                               |
| ---------------------- | ------ | -------------------------------------------------- |
| invalid                | 400    | Invalid, schema validation, malformed JSON         |
| unauthorized           | 401    | Unauthorized, no or unknown credentials            |
| forbidden              | 403    | Forbidden, not an admin, read-only token, CSRF     |
| not_found              | 404    | NotFound, unknown route                            |
| method_not_allowed     | 405    | a method the route does not declare (with Allow)   |
| conflict               | 409    | Conflict                                           |
| payload_too_large      | 413    | a body over the route's limit                      |
| unsupported_media_type | 415    | a body that is not application/json                |
| internal               | 500    | Internal, unknown codes, unexpected exceptions     |
| unavailable            | 503    | Unavailable (no responders, NATS down, stopping)   |
| deadline_exceeded      | 504    | DeadlineExceeded                                   |
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from libs.events.bus import BusError
from services.gateway.errors import GatewayError

__all__ = [
    "CORRELATION_ID",
    "PROBLEM_JSON",
    "PROBLEM_TYPE",
    "STATUS",
    "TITLES",
    "Problem",
    "problem_of",
    "problem_response",
]

log = logging.getLogger("homeport.gateway.api")

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE = "tag:homeport,2026:problem:"  # + code; a stable, non-dereferenceable URI
CORRELATION_ID = web.RequestKey("homeport_correlation_id", str)

STATUS: Mapping[str, int] = {
    "invalid": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "internal": 500,
    "unavailable": 503,
    "deadline_exceeded": 504,
}
TITLES: Mapping[str, str] = {
    "invalid": "Invalid request",
    "unauthorized": "Authentication required",
    "forbidden": "Forbidden",
    "not_found": "Not found",
    "method_not_allowed": "Method not allowed",
    "conflict": "Conflict",
    "payload_too_large": "Request body too large",
    "unsupported_media_type": "Unsupported media type",
    "internal": "Internal error",
    "unavailable": "Service unavailable",
    "deadline_exceeded": "Deadline exceeded",
}
_BY_STATUS = {status: code for code, status in STATUS.items()}
_WWW_AUTHENTICATE = 'Bearer realm="homeport"'


class Problem(GatewayError):
    """A refusal decided in the HTTP layer itself (method, media type, size, origin)."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if code not in STATUS:
            raise ValueError(f"unknown problem code {code!r}")
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.field = field
        self.headers = dict(headers or {})


def problem_response(
    code: str,
    detail: str,
    *,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
    correlation_id: str | None = None,
) -> web.Response:
    """The problem+json response of `code`; unknown codes are reported as internal."""
    if code not in STATUS:
        code = "internal"
    status = STATUS[code]
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + code,
        "title": TITLES[code],
        "status": status,
        "detail": detail,
        "code": code,
    }
    if field is not None:
        body["field"] = field
    if correlation_id is not None:
        body["correlation_id"] = correlation_id
    out = dict(headers or {})
    if status == 401:
        out.setdefault("WWW-Authenticate", _WWW_AUTHENTICATE)
    return web.Response(
        body=json.dumps(body, ensure_ascii=False).encode(),
        status=status,
        headers=out,
        content_type=PROBLEM_JSON,
    )


def _from_bus(err: BusError, cid: str | None) -> web.Response:
    code = err.code if err.code in STATUS else "internal"
    if code == "internal":
        log.error(
            "internal error answering the API: %r",
            err,
            extra={"correlation_id": cid, "code": err.code},
        )
        return problem_response("internal", _generic(cid), correlation_id=cid)
    return problem_response(code, err.message, field=err.field, correlation_id=cid)


def _from_http(exc: web.HTTPException, cid: str | None) -> web.Response:
    code = _BY_STATUS.get(exc.status, "internal" if exc.status >= 500 else "invalid")
    headers: dict[str, str] = {}
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = sorted(exc.allowed_methods)
        headers["Allow"] = ", ".join(allowed)
        detail = f"{exc.method} is not allowed here; use {', '.join(allowed)}"
    elif code == "not_found":
        detail = "no such API route; see /api/v1/openapi.json"
    elif code == "payload_too_large":
        detail = "the request body is too large"
    elif code == "internal":
        detail = _generic(cid)
    else:
        detail = exc.reason
    return problem_response(code, detail, headers=headers, correlation_id=cid)


def _generic(cid: str | None) -> str:
    return "internal error; the server log has the details" + (
        f" under correlation id {cid}" if cid else ""
    )


def problem_of(request: web.Request, error: Exception) -> web.StreamResponse:
    """The problem+json response of whatever the API raised (the dispatcher's except clause);
    an HTTPException under 400 (a redirect) is an answer, not a problem: raised again."""
    if isinstance(error, Problem):
        cid = request.get(CORRELATION_ID)
        return problem_response(
            error.code, error.detail, field=error.field, headers=error.headers, correlation_id=cid
        )
    if isinstance(error, BusError):
        return _from_bus(error, request.get(CORRELATION_ID))
    if isinstance(error, web.HTTPException):
        if error.status < 400:
            raise error
        return _from_http(error, request.get(CORRELATION_ID))
    cid = request.get(CORRELATION_ID)
    log.error(
        "unexpected error answering %s %s",
        request.method,
        request.path,
        exc_info=error,
        extra={"correlation_id": cid},
    )
    return problem_response("internal", _generic(cid), correlation_id=cid)
