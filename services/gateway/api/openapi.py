"""The OpenAPI 3.1 document of the API, generated from the route table (never written by hand).

Each operation lists its parameters, request body, declared answers and the problem answers
the dispatcher can give it (which follow from its declaration), its access level under
`x-homeport-access`, and its security: anonymous operations `[]`, the others the session
cookie or a bearer token. GET operations also answer HEAD.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

from services.gateway.api.auth import SESSION_COOKIE
from services.gateway.api.problems import PROBLEM_JSON, PROBLEM_TYPE, STATUS, TITLES
from services.gateway.api.routes import Access, Route

__all__ = ["OPENAPI_VERSION", "openapi_document", "problem_codes"]

OPENAPI_VERSION = "3.1.0"
_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)\}")

_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "An RFC 9457 problem; `code` is stable, `field` names the input at fault.",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string", "description": f"{PROBLEM_TYPE}<code>"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "enum": sorted(STATUS)},
        "field": {"type": "string"},
        "correlation_id": {"type": "string"},
    },
}


def _component(code: str) -> str:
    return "".join(part.capitalize() for part in code.split("_"))


def problem_codes(route: Route) -> list[str]:
    """The problem codes the dispatcher may answer `route` with (beyond its handler's own)."""
    codes = {"internal", "unavailable", "deadline_exceeded", *route.problems}
    if route.query is not None or route.path_params is not None or route.body is not None:
        codes.add("invalid")
    if route.access is not Access.anonymous:
        codes |= {"unauthorized", "forbidden"}
    if not route.safe:
        codes.add("forbidden")  # CSRF
    if route.path_params is not None or route.owner is not None:
        codes.add("not_found")
    if route.body is not None:
        codes |= {"payload_too_large", "unsupported_media_type"}
    return sorted(codes, key=lambda c: STATUS[c])


def _parameters(route: Route) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    path_props = (route.path_params or {}).get("properties", {})
    for name in _PARAM.findall(route.path):
        schema = copy.deepcopy(dict(path_props[name]))
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    query = route.query or {}
    required = set(query.get("required", ()))
    for name, schema in query.get("properties", {}).items():
        p: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": copy.deepcopy(dict(schema)),
        }
        if "description" in schema:
            p["description"] = schema["description"]
        params.append(p)
    return params


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.name,
        "summary": route.summary,
        "tags": list(route.tags),
        "x-homeport-access": route.access.value,
    }
    if route.description:
        op["description"] = route.description
    if route.access is Access.anonymous:
        op["security"] = []
    params = _parameters(route)
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": copy.deepcopy(dict(route.body))},
                **{t: {"schema": {"type": "string"}} for t in route.alt_body_types},
            },
        }
    responses: dict[str, Any] = {}
    for status, schema in sorted(route.responses.items()):
        answer: dict[str, Any] = {"description": HTTPStatus(status).phrase}
        if schema is not None:
            answer["content"] = {
                media: {"schema": copy.deepcopy(dict(schema))}
                for media in (route.media_type, *route.alt_media_types)
            }
        responses[str(status)] = answer
    for code in problem_codes(route):
        responses.setdefault(
            str(STATUS[code]), {"$ref": f"#/components/responses/{_component(code)}"}
        )
    op["responses"] = responses
    return op


def openapi_document(routes: Iterable[Route], *, version: str, prefix: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document describing `routes`, served below `prefix`."""
    routes = sorted(routes, key=lambda r: (r.path, r.method))
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    tags = sorted({t for r in routes for t in r.tags})
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Homeport API",
            "version": version,
            "description": (
                "The public REST API of Homeport. Errors are application/problem+json "
                "(RFC 9457). Send the session cookie or an API token as a bearer token. "
                "Every GET operation also answers HEAD."
            ),
        },
        "servers": [{"url": prefix}],
        "tags": [{"name": t} for t in tags],
        "security": [{"session": []}, {"token": []}],
        "paths": paths,
        "components": {
            "schemas": {"Problem": _PROBLEM_SCHEMA},
            "responses": {
                _component(code): {
                    "description": TITLES[code],
                    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
                }
                for code in sorted(STATUS, key=lambda c: STATUS[c])
            },
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE},
                "token": {"type": "http", "scheme": "bearer"},
            },
        },
    }
