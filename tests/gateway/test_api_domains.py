"""/api/v1/domains through the API (real identity and dns services, a real PowerDNS zone).

Admins only; bad input is a 400 naming the field with nothing saved; the provider's secret is
never shown back; removal is refused (409) while an app uses the domain.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from services.gateway.api import RouteTable, default_table
from services.gateway.api.handlers import domains
from tests.dns.dnskit import dns_env, pdns_provider, running_dns
from tests.gateway.apichecks import walk
from tests.gateway.apikit import Cast, Client, serve_api
from tests.support.pdns import PdnsServer, PdnsZone

pytestmark = pytest.mark.timeout(120)


def table() -> RouteTable:
    """The production table, with the domains routes while api/table.py does not list them."""
    routes = default_table()
    if routes.find("GET", "/domains") is None:
        routes = routes.extended(*domains.routes)
    return routes


@pytest.fixture
async def api(
    monkeypatch: pytest.MonkeyPatch,
    cast: Cast,
    nc: NATS,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    pdns: PdnsServer,
) -> AsyncIterator[Client]:
    env = dns_env(dsn=dsn, nats_url=nats_url, tmp_path=tmp_path / "dns")
    async with running_dns(monkeypatch, env), serve_api(nc, table=table()) as client:
        yield client


@asynccontextmanager
async def apps_stand_in(nats_url: str, items: Sequence[dict[str, Any]]) -> AsyncIterator[None]:
    """A STAND-IN for the apps service's `apps` query (the real one needs dockerd)."""
    conn = await nats.connect(nats_url)

    async def answer(msg: Msg) -> None:
        await msg.respond(json.dumps({"ok": True, "result": {"items": list(items)}}).encode())

    try:
        await conn.subscribe("hp.qry.apps.apps.*", queue="hp.apps", cb=answer)
        await conn.flush()
        yield
    finally:
        await conn.close()


async def test_admins_add_list_verify_and_remove_a_domain(
    api: Client, cast: Cast, pdns_zone: PdnsZone, nats_url: str
) -> None:
    root, alice = cast.token_root, cast.token_alice
    z = pdns_zone.name
    body = {"domain": z, "provider": pdns_provider(pdns_zone), "server_ipv4": "192.0.2.10"}

    assert (await api.call("GET", "/api/v1/domains", token=alice)).status == 403
    assert (await api.call("POST", "/api/v1/domains", token=alice, body=body)).status == 403
    assert (await api.call("GET", "/api/v1/domains", token=root)).body == {"items": []}

    added = await api.call("POST", "/api/v1/domains", token=root, body=body)
    assert added.status == 201, added.body
    assert added.body["domain"] == z and added.body["verified_at"] is not None
    assert added.body["provider"]["api_key"] == "••••"
    assert pdns_zone.api_key not in json.dumps(added.body)
    listed = await api.call("GET", "/api/v1/domains", token=root)
    assert listed.body == {"items": [added.body]}
    one = await api.call("GET", f"/api/v1/domains/{z}", token=root)
    assert one.status == 200 and one.body == added.body
    assert (await api.call("GET", f"/api/v1/domains/{z}", token=alice)).status == 403
    dup = await api.call("POST", "/api/v1/domains", token=root, body=body)
    assert dup.status == 409 and dup.problem["field"] == "domain"

    verified = await api.call("POST", f"/api/v1/domains/{z}/verify", token=root)
    assert verified.status == 200 and verified.body["verify_error"] is None
    assert (await api.call("POST", f"/api/v1/domains/{z}/verify", token=alice)).status == 403

    assert (await api.call("DELETE", f"/api/v1/domains/{z}", token=alice)).status == 403
    app = {"app_id": "a1", "location": "blog", "domain": z}
    async with apps_stand_in(nats_url, [app]):
        used = await api.call("DELETE", f"/api/v1/domains/{z}", token=root)
    assert used.status == 409 and f"blog.{z}" in used.problem["detail"]
    async with apps_stand_in(nats_url, []):
        gone = await api.call("DELETE", f"/api/v1/domains/{z}", token=root)
    assert gone.status == 204
    missing = await api.call("GET", f"/api/v1/domains/{z}", token=root)
    assert missing.status == 404


async def test_bad_input_is_a_400_naming_the_field_and_saves_nothing(
    api: Client, cast: Cast, pdns_zone: PdnsZone
) -> None:
    root = cast.token_root
    z = pdns_zone.name
    good = pdns_provider(pdns_zone)

    async def problem(body: Any) -> dict[str, Any]:
        answer = await api.call("POST", "/api/v1/domains", token=root, body=body)
        assert answer.status == 400, answer.body
        return answer.problem

    assert (await problem({"domain": z}))["field"] == "provider"
    assert (await problem({"domain": "Not A Domain", "provider": good}))["field"] == "domain"
    assert (await problem({"domain": z, "provider": {"kind": "bind"}}))["field"] == "provider.kind"
    bad_field = await problem({"domain": z, "provider": {**good, "password": "x"}})
    assert bad_field["field"] == "provider.password"
    wrong_key = await problem({"domain": z, "provider": {**good, "api_key": "wrong"}})
    assert wrong_key["field"] == "provider.api_key"
    assert "wrong" not in wrong_key["detail"]
    v4 = await problem({"domain": z, "provider": good, "server_ipv4": "not-an-ip"})
    assert v4["field"] == "server_ipv4"

    assert (await api.call("GET", "/api/v1/domains", token=root)).body == {"items": []}
    upper = await api.call("GET", "/api/v1/domains/EXAMPLE.COM", token=root)
    assert upper.status == 400 and upper.problem["field"] == "domain"
    absent = await api.call("POST", "/api/v1/domains/absent.test/verify", token=root)
    assert absent.status == 404


async def test_every_domains_route_refuses_anonymous_and_non_admin_callers(
    nc: NATS, cast: Cast
) -> None:
    made: list[Any] = []
    async with serve_api(nc, table=RouteTable(domains.routes), api_hook=made.append) as client:
        counts = await walk(client, made[0], cast)
    # GET and HEAD of /domains and /domains/{domain}; POST /domains and its /verify; DELETE
    assert counts == {"anonymous": 0, "user": 0, "admin": 7}
