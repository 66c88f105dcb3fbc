"""The OpenAPI 3.1 document is generated from the route table and covers all of it.

openapi-spec-validator is not installed, so the structure is checked here against the parts of
the OpenAPI 3.1 specification the generator uses (fixed fields, required members, references).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from services.gateway.api import default_table
from services.gateway.api.openapi import openapi_document
from services.gateway.api.version import VERSION
from tests.gateway.apichecks import check_structure
from tests.gateway.apikit import extended_table, running_gateway, serve_api


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
        "/status", "/activity", "/activity/export", "/openapi.json", "/setup", "/setup/restore",
        "/session",
        "/profile", "/users",
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
        "/backups", "/backups/settings", "/backups/target", "/backups/schedule",
        "/backups/retention", "/backups/key", "/apps/{app_id}/backups", "/backups/prune",
        "/backups/{snapshot_id}/restore", "/backups/{snapshot_id}/clone",
        "/backups/{snapshot_id}/verify",
        "/app-updates/settings", "/app-updates/pending", "/apps/{app_id}/auto-update",
        "/mail/domains", "/mail/domains/{domain}", "/mail/domains/{domain}/catch-all",
        "/mail/domains/{domain}/dkim/rotate",
        "/mail/domains/{domain}/addresses/{local_part}", "/mail/mailboxes",
        "/mail/mailboxes/{user_id}",
        "/mail/mailboxes/{user_id}/quota", "/mail/dnsbl", "/mail/relay", "/mail/status",
        "/mail/mailboxes/{user_id}/forwarding",
        "/profile/mail", "/profile/mail/app-passwords", "/profile/mail/app-passwords/{password_id}",
        "/profile/mail/forwarding",
        "/platform/updates", "/platform/updates/check", "/platform/updates/settings",
        "/firewall", "/firewall/allowlists/{scope}", "/firewall/allowlists/{scope}/confirm",
        "/firewall/blocklist", "/firewall/blocklist/add", "/firewall/blocklist/remove",
        "/apps/{app_id}/firewall", "/apps/{app_id}/internet",
        "/notifications", "/notifications/unread", "/notifications/read", "/alerts",
        "/notifications/preferences", "/notifications/test",
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
