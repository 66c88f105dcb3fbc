"""Checks that several API test modules run: the walk of every served route as anonymous, user,
read-only user and admin, and the OpenAPI 3.1 structure of a generated document."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute

from libs.contracts.schema import check_schema
from services.gateway.api import API_STATE, SESSION_COOKIE, Access, Route, RouteTable
from tests.gateway.apikit import Cast, Client

__all__ = ["WRONG", "check_structure", "walk"]

WRONG = "hp_" + "z" * 43  # shaped like a token, known to nobody


def served_routes(api: web.Application) -> list[tuple[AbstractRoute, Route | None]]:
    """Every route the API app serves, with its table entry (None: it has none)."""
    entries = api[API_STATE].entries
    return [(r, entries.get(r)) for r in api.router.routes()]


def concrete(route: AbstractRoute) -> str:
    return re.sub(r"\{[^}]+\}", "abc", route.resource.canonical if route.resource else "")


def signs_out(entry: Route | None) -> bool:
    return entry is not None and (entry.method, entry.path) == ("DELETE", "/session")


async def walk(client: Client, api: web.Application, cast: Cast) -> dict[str, int]:
    """Call every served route as anonymous, user, read-only user and admin; assert refusals.

    The user is alice by her session, the admin root by his token. Signing out ends alice's
    session for real, so that route is walked last."""
    served = sorted(served_routes(api), key=lambda pair: signs_out(pair[1]))
    missing = [f"{r.method} {concrete(r)}" for r, e in served if e is None]
    assert not missing, f"routes served without a route-table entry: {missing}"
    table = api[API_STATE].table
    entries = {e for _, e in served}
    assert entries == set(table), "every route of the table is served"
    counts = {"anonymous": 0, "user": 0, "admin": 0}
    for route, entry in served:
        assert entry is not None
        method, url = route.method, concrete(route)
        head = method == "HEAD"
        counts[entry.access.value] += 1

        anon = await client.call(method, url)
        wrong = await client.call(method, url, token=WRONG)
        user = await client.call(method, url, session=cast.session_alice)
        admin = await client.call(method, url, token=cast.token_root)
        where = f"{method} {url} ({entry.access.value})"
        if entry.access is Access.anonymous:
            for a in (anon, wrong, user, admin):
                assert a.status not in (401, 403), where
            continue
        for a in (anon, wrong):
            assert a.status == 401, where
            assert a.headers["WWW-Authenticate"].startswith("Bearer"), where
            if not head:
                assert a.problem["code"] == "unauthorized", where
        assert admin.status not in (401, 403), (where, admin.body)
        if entry.access is Access.admin:
            assert user.status == 403, where
            if not head:
                assert user.problem["code"] == "forbidden", where
        elif entry.owner is None:
            assert user.status not in (401, 403), (where, user.body)
        if not entry.safe:
            for read in (cast.token_alice_read, cast.token_root_read):
                ro = await client.call(method, url, token=read)
                assert ro.status in (401, 403), where
                if entry.access is Access.user or read == cast.token_root_read:
                    assert ro.status == 403 and "read-only" in ro.problem["detail"], where
    return counts


_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
_OPERATION = {
    "tags", "summary", "description", "externalDocs", "operationId", "parameters",
    "requestBody", "responses", "callbacks", "deprecated", "security", "servers",
}  # fmt: skip
_PARAMETER = {"name", "in", "description", "required", "deprecated", "schema"}


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, f"unresolved $ref {ref}"
        node = node[part]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def check_structure(doc: dict[str, Any], table: RouteTable) -> None:
    """OpenAPI 3.1 structure, and the table fully described."""
    assert doc["openapi"] == "3.1.0"
    assert set(doc) <= {
        "openapi", "info", "jsonSchemaDialect", "servers", "paths", "webhooks",
        "components", "security", "tags", "externalDocs",
    }  # fmt: skip
    assert isinstance(doc["info"]["title"], str) and isinstance(doc["info"]["version"], str)
    assert all(isinstance(s["url"], str) for s in doc["servers"])
    schemes = doc["components"]["securitySchemes"]
    assert schemes["session"] == {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE}
    assert schemes["token"] == {"type": "http", "scheme": "bearer"}
    for requirement in doc["security"]:
        assert set(requirement) <= set(schemes)
    for ref in refs(doc):
        resolve(doc, ref)
    ids: set[str] = set()
    operations = 0
    for path, item in doc["paths"].items():
        assert path.startswith("/"), path
        assert set(item) <= _METHODS, item.keys()
        template = set(re.findall(r"\{([^}]+)\}", path))
        for method, op in item.items():
            operations += 1
            where = f"{method.upper()} {path}"
            assert set(op) - _OPERATION <= {"x-homeport-access"}, where
            assert op["operationId"] not in ids, where
            ids.add(op["operationId"])
            route = table.find(method.upper(), path)
            assert route is not None, f"{where} is documented but not in the table"
            assert op["x-homeport-access"] == route.access.value
            assert op["responses"], where
            for status, answer in op["responses"].items():
                assert re.fullmatch(r"[1-5][0-9][0-9]", status), (where, status)
                answer = resolve(doc, answer["$ref"]) if "$ref" in answer else answer
                assert isinstance(answer["description"], str), (where, status)
                for media in answer.get("content", {}).values():
                    if "$ref" not in media["schema"]:
                        check_schema(media["schema"])
            codes = set(op["responses"])
            assert any(c.startswith("2") for c in codes), where
            assert {"500", "503"} <= codes, where
            if route.access is Access.anonymous:
                assert op["security"] == [], where
            else:
                assert "security" not in op and {"401", "403"} <= codes, where
            if not route.safe:
                assert "403" in codes, where
            params = op.get("parameters", [])
            for p in params:
                assert set(p) <= _PARAMETER and p["in"] in ("path", "query"), (where, p)
                check_schema(p["schema"])
                if p["in"] == "path":
                    assert p["required"] is True, where
            assert {p["name"] for p in params if p["in"] == "path"} == template, where
            if route.query is not None:
                assert {p["name"] for p in params if p["in"] == "query"} == set(
                    route.query["properties"]
                )
                assert "400" in codes
            if route.body is not None:
                body = op["requestBody"]
                assert body["required"] is True
                assert body["content"]["application/json"]["schema"] == route.body
                assert {"400", "413", "415"} <= codes
            else:
                assert "requestBody" not in op
    assert operations == len(table), "every route of the table is documented"
