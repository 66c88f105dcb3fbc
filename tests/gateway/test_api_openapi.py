"""The OpenAPI 3.1 document is generated from the route table and covers all of it.

openapi-spec-validator is not installed, so the structure is checked here against the parts of
the OpenAPI 3.1 specification the generator uses (fixed fields, required members, references).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from services.gateway.api import SESSION_COOKIE, Access, RouteTable, default_table
from services.gateway.api.openapi import openapi_document
from libs.contracts.schema import check_schema
from services.gateway.api.version import VERSION
from tests.gateway.apikit import extended_table, running_gateway, serve_api

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


async def test_served_document_covers_the_production_table(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
) -> None:
    async with running_gateway(
        monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path
    ) as gw:
        a = await gw.client.call("GET", "/api/v1/openapi.json")
    assert a.status == 200 and a.headers["Content-Type"].startswith("application/json")
    doc = a.body
    table = default_table()
    check_structure(doc, table)
    assert doc["info"]["version"] == VERSION
    assert set(doc["paths"]) == {
        "/status", "/activity", "/openapi.json", "/setup", "/session", "/profile", "/users",
        "/users/{user_id}/disable", "/users/{user_id}/enable", "/users/{user_id}",
        "/tasks/{task_id}", "/tasks/{task_id}/events",
        "/groups", "/groups/{group_id}", "/groups/{group_id}/members/{user_id}", "/invitations",
        "/invitations/{invitation_id}", "/invitations/accept", "/password-reset",
        "/password-reset/complete", "/users/{user_id}/password-reset",
        "/session/totp", "/profile/totp", "/profile/totp/confirm", "/profile/totp/disable",
        "/profile/tokens", "/profile/tokens/{token_id}", "/settings/mfa",
        "/profile/password", "/profile/sessions", "/profile/sessions/{session_id}",
        "/catalog", "/catalog/{manifest_id}", "/catalog/{manifest_id}/icon", "/apps",
        "/apps/{app_id}",
        "/apps/{app_id}/start", "/apps/{app_id}/stop", "/apps/{app_id}/restart",
        "/apps/{app_id}/update", "/apps/{app_id}/update/approve", "/apps/{app_id}/snapshots",
        "/apps/{app_id}/restore", "/apps/{app_id}/clone", "/apps/{app_id}/repair",
        "/apps/{app_id}/logs", "/apps/{app_id}/logs/stream",
        "/domains", "/domains/{domain}", "/domains/{domain}/verify",
        "/certificates", "/certificates/{primary}/renew", "/metrics/history",
    }  # fmt: skip
    assert doc["servers"] == [{"url": "/api/v1"}]
    activity = doc["paths"]["/activity"]["get"]
    limit = next(p for p in activity["parameters"] if p["name"] == "limit")
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}
    problem = doc["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail", "code"}


async def test_document_of_every_kind_of_route(nc: NATS) -> None:
    table = extended_table()
    check_structure(openapi_document(table, version="1", prefix="/api/v1"), table)
    async with serve_api(nc, table=table) as client:
        a = await client.call("GET", "/api/v1/openapi.json")
    doc = a.body
    check_structure(doc, table)
    thing = doc["paths"]["/things/{thing_id}"]
    assert set(thing) == {"get", "delete"}
    assert set(thing["delete"]["responses"]["204"]) == {"description"}
    assert thing["get"]["parameters"][0] == {
        "name": "thing_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[a-z]{1,20}$"},
    }
    assert "413" in doc["paths"]["/echo"]["post"]["responses"]
