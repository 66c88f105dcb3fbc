"""/api/v1/certificates through the API, the real identity service and the real certs service
(against a real Pebble): admins only, 400 naming the field, 202 with the renewal's task."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from services.gateway.api import RouteTable, default_table
from services.gateway.api.handlers import certificates
from tests.certs.certskit import (
    Certs,
    OwnCa,
    certs_env,
    domain,
    other_key,
    running_certs,
    serving_tokens,
    verify_chain,
)
from tests.gateway.apikit import Cast, Client, serve_api
from tests.support.pebble import PebbleServer

pytestmark = pytest.mark.timeout(180)


def _table() -> RouteTable:
    """The production table, with the certificate routes added if it does not list them yet."""
    table = default_table()
    if table.find("GET", "/certificates") is None:
        table = table.extended(*certificates.routes)
    return table


@pytest.fixture
async def certs(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    certs_pebble: PebbleServer,
) -> AsyncIterator[Certs]:
    env = certs_env(dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, pebble=certs_pebble)
    async with running_certs(monkeypatch, env) as running:
        yield running


@pytest.fixture
async def api(nc: NATS, cast: Cast, certs: Certs) -> AsyncIterator[Client]:
    async with serve_api(nc, table=_table()) as client:
        yield client


async def test_only_admins_see_and_change_certificates(api: Client, cast: Cast) -> None:
    d = domain()
    chain, key = OwnCa.make().issue([f"shop.{d}"])
    body = {"names": [f"shop.{d}"], "chain_pem": chain, "key_pem": key}
    for method, path, payload in (
        ("GET", "/api/v1/certificates", None),
        ("POST", "/api/v1/certificates", body),
        ("POST", f"/api/v1/certificates/shop.{d}/renew", None),
    ):
        anonymous = await api.call(method, path, body=payload)
        assert anonymous.status == 401, (path, anonymous.body)
        alice = await api.call(method, path, token=cast.token_alice, body=payload)
        assert alice.status == 403, (path, alice.body)
        read_only = await api.call(method, path, token=cast.token_root_read, body=payload)
        assert read_only.status in (200, 403), (path, read_only.body)
        if method == "POST":
            assert read_only.status == 403
    listed = await api.call("GET", "/api/v1/certificates", token=cast.token_root)
    assert listed.status == 200 and listed.body == {"items": []}  # nothing was uploaded


async def test_upload_is_checked_naming_the_field_then_listed(
    api: Client, cast: Cast, certs: Certs
) -> None:
    d = domain()
    shop = f"shop.{d}"
    ca = OwnCa.make()
    chain, key = ca.issue([shop], days=60)
    root = cast.token_root

    async def upload(body: dict[str, object]) -> tuple[int, str | None]:
        answer = await api.call("POST", "/api/v1/certificates", token=root, body=body)
        if answer.status == 201:
            return 201, None
        return answer.status, answer.problem.get("field")

    good = {"names": [shop], "chain_pem": chain, "key_pem": key}
    assert await upload({**good, "key_pem": other_key()}) == (400, "key")
    assert await upload({**good, "names": [f"www.{d}"]}) == (400, "names")
    old, old_key = ca.issue([shop], days=1, not_before=_days_ago(10))
    assert await upload({"names": [shop], "chain_pem": old, "key_pem": old_key}) == (
        400,
        "certificate",
    )
    assert await upload({"names": [shop], "chain_pem": chain}) == (400, "key_pem")
    assert await upload({**good, "names": ["not a host"]}) == (400, "names.0")
    assert await certs.types(shop) == []

    created = await api.call("POST", "/api/v1/certificates", token=root, body=good)
    assert created.status == 201, created.body
    assert created.body["kind"] == "custom" and created.body["primary"] == shop
    listed = await api.call("GET", "/api/v1/certificates", token=root)
    [item] = listed.body["items"]
    assert item["primary"] == shop and item["kind"] == "custom"
    assert item["days_left"] in (58, 59) and item["not_after"] == created.body["not_after"]
    assert "key_pem" not in item and "BEGIN" not in str(listed.body)

    refused = await api.call("POST", f"/api/v1/certificates/{shop}/renew", token=root)
    assert refused.status == 409 and refused.problem["field"] == "primary"
    unknown = await api.call("POST", f"/api/v1/certificates/nope.{d}/renew", token=root)
    assert unknown.status == 404


async def test_renew_answers_202_with_the_task_of_a_new_certificate(
    api: Client, cast: Cast, certs: Certs, certs_pebble: PebbleServer
) -> None:
    blog = f"blog.{domain()}"
    async with serving_tokens(certs.acme_dir, certs_pebble.http_port):
        first = await certs.cmd("ensure", {"names": [blog]})
        assert (await certs.wait_task(first["task_id"]))["type"] == "TaskSucceeded"
        before = (certs.certs_dir / blog / "fullchain.pem").read_text()
        renewing = await api.call(
            "POST", f"/api/v1/certificates/{blog}/renew", token=cast.token_root
        )
        assert renewing.status == 202, renewing.body
        assert renewing.body["primary"] == blog
        done = await certs.wait_task(renewing.body["task_id"])
        assert done["type"] == "TaskSucceeded", done
    after = (certs.certs_dir / blog / "fullchain.pem").read_text()
    assert after != before
    verify_chain(after, certs_pebble.root_pem, blog)
    listed = await api.call("GET", "/api/v1/certificates", token=cast.token_root)
    [item] = listed.body["items"]
    assert item["kind"] == "acme" and item["state"] == "valid" and item["days_left"] > 30


def _days_ago(n: int) -> datetime:
    return datetime.now(UTC) - timedelta(days=n)
