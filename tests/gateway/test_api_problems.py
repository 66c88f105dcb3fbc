"""Errors as RFC 9457 problems, request bodies, security headers, CSRF and CORS."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from libs.events.bus import Bus, Conflict
from services.gateway.api import ApiConfig
from services.gateway.api.problems import PROBLEM_TYPE
from tests.gateway.apikit import (
    SECURITY_HEADERS,
    Answer,
    Cast,
    Client,
    extended_table,
    root_token,
    serve_api,
)
from tests.identity.kit import Identity

MIB = 1024 * 1024
PUBLIC = "https://my.example.com"


@pytest.fixture
async def client(nc: NATS) -> AsyncIterator[Client]:
    """The API. A test that calls it with credentials also asks for `identity` or a cast, which
    runs the real identity service; anonymous calls never reach identity."""
    async with serve_api(nc, table=extended_table(), config=ApiConfig(public_origin=PUBLIC)) as c:
        yield c


def assert_problem(a: Answer, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    p = a.problem
    assert a.status == status, (a.status, p)
    assert p["status"] == status and p["code"] == code
    assert p["type"] == PROBLEM_TYPE + code
    assert isinstance(p["title"], str) and p["title"]
    assert isinstance(p["detail"], str) and p["detail"]
    assert p.get("field") == field, p
    assert p["correlation_id"] == a.headers["X-Correlation-Id"]
    assert_secure(a)
    return p


def assert_secure(a: Answer) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert a.headers.get(name) == value, (name, a.headers.get(name))
    csp = a.headers["Content-Security-Policy"]
    for part in ("object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'"):
        assert part in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "Access-Control-Allow-Origin" not in a.headers


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=ten", "limit"),
        ("limit=1.5", "limit"),
        ("limit=5&limit=6", "limit"),
        ("since=yesterday", "since"),
        ("until=2026-11-22T08:00:00", "until"),
        ("type=app+installed", "type"),
        ("target=App%20Blog", "target"),
        ("cursor=" + "x" * 41, "cursor"),
        ("colour=red", "colour"),
    ],
)
async def test_bad_query_parameters_name_the_field(
    client: Client, identity: Identity, query: str, field: str
) -> None:
    a = await client.call("GET", f"/api/v1/activity?{query}", token=await root_token(identity))
    p = assert_problem(a, 400, "invalid", field)
    assert field in p["detail"]
    assert a.headers["Cache-Control"] == "no-store"


async def test_a_query_on_a_route_that_takes_none_is_refused(client: Client) -> None:
    """The query is parsed only when the URL has one (app.py): then, on a route without query
    parameters, any parameter is refused naming it; a `?` written encoded is part of the path."""
    assert (await client.call("GET", "/api/v1/status")).status == 200
    assert_problem(await client.call("GET", "/api/v1/status?colour=red"), 400, "invalid", "colour")
    assert_problem(await client.call("GET", "/api/v1/status%3Fcolour=red"), 404, "not_found")


async def test_unknown_routes_and_methods(client: Client, cast: Cast) -> None:
    for path in ("/api/v1/nope", "/api/v1", "/api/v1/", "/api/v1/status/", "/api/v1/STATUS"):
        assert_problem(await client.call("GET", path), 404, "not_found")
    a = await client.call("POST", "/api/v1/status")
    assert_problem(a, 405, "method_not_allowed")
    assert a.headers["Allow"] == "GET, HEAD"
    a = await client.call("PUT", "/api/v1/things/alice", token=cast.token_root)
    assert_problem(a, 405, "method_not_allowed")
    assert a.headers["Allow"] == "DELETE, GET, HEAD"
    # a state change over GET: POST-only routes answer 405 to GET
    a = await client.call("GET", "/api/v1/echo", session=cast.session_alice)
    assert_problem(a, 405, "method_not_allowed")
    assert a.headers["Allow"] == "POST"


async def test_bodies_json_only_within_the_limit(client: Client, token_cast: Cast) -> None:
    path = "/api/v1/echo"
    alice = token_cast.token_alice
    a = await client.call("POST", path, token=alice, body={"name": "ok", "tags": ["a"]})
    assert a.status == 200 and a.body["body"] == {"name": "ok", "tags": ["a"]}
    assert_secure(a)
    ok = {"Content-Type": "application/json; charset=utf-8"}
    a = await client.call("POST", path, token=alice, headers=ok, data=b'{"name": "x"}')
    assert a.status == 200
    for ctype in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/json; charset=latin-1",
    ):
        a = await client.call(
            "POST", path, token=alice, headers={"Content-Type": ctype}, data=b'{"name":"x"}'
        )
        assert_problem(a, 415, "unsupported_media_type")
    a = await client.call("POST", path, token=alice, data=b'{"name":"x"}')
    assert_problem(a, 415, "unsupported_media_type")
    # over 1 MiB: refused by Content-Length, and when streamed without one
    big = b'{"name": "' + b"x" * MIB + b'"}'
    a = await client.call("POST", path, token=alice, headers=ok, data=io.BytesIO(big))
    assert_problem(a, 413, "payload_too_large")

    async def stream() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        for _ in range(17):
            yield b"y" * 65536
        yield b'"}'

    a = await client.call("POST", path, token=alice, headers=ok, data=stream())
    assert_problem(a, 413, "payload_too_large")
    # a route may set its own limit
    a = await client.call("POST", "/api/v1/small", headers=ok, data=b'{"x": "' + b"y" * 40 + b'"}')
    assert_problem(a, 413, "payload_too_large")
    a = await client.call("POST", "/api/v1/small", body={"x": "y"})
    assert a.status == 201 and a.body == {"got": {"x": "y"}}
    assert a.headers["Location"] == "/api/v1/small/1"
    # a route without a body schema takes no body
    a = await client.call("POST", "/api/v1/poke", token=token_cast.token_root, body={"x": 1})
    assert_problem(a, 400, "invalid")


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"", None),
        (b"   ", None),
        (b"{", None),
        (b"[]", None),
        (b"null", None),
        (b'{"name": NaN}', None),
        (b'{"name": "a", "name": "b"}', "name"),
        (b"\xff\xfe", None),
        (b"[" * 100_000 + b"]" * 100_000, None),
        (b"{}", "name"),
        (b'{"name": ""}', "name"),
        (b'{"name": 7}', "name"),
        (b'{"name": "' + b"n" * 21 + b'"}', "name"),
        (b'{"name": "a", "extra": 1}', "extra"),
        (b'{"name": "a", "tags": ["ok", "NOT"]}', "tags.1"),
        (b'{"name": "a", "tags": ["a", "b", "c", "d"]}', "tags"),
        (b'{"name": "a", "size": 11}', "size"),
        (b'{"name": "a", "size": true}', "size"),
        (b'{"name": "a", "size": 1.0}', "size"),
        (b'{"name": "a", "meta": {"colour": "green"}}', "meta.colour"),
        (b'{"name": "a", "meta": {"shade": "red"}}', "meta.shade"),
    ],
)
async def test_bad_bodies_name_the_first_bad_field(
    client: Client, identity: Identity, raw: bytes, field: str | None
) -> None:
    ok = {"Content-Type": "application/json"}
    token = await root_token(identity)
    a = await client.call("POST", "/api/v1/echo", token=token, headers=ok, data=raw)
    assert_problem(a, 400, "invalid", field)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("invalid", 400),
        ("unauthorized", 401),
        ("forbidden", 403),
        ("not_found", 404),
        ("conflict", 409),
        ("unavailable", 503),
        ("deadline_exceeded", 504),
        ("internal", 500),
        ("brand_new_code", 500),
        ("crash", 500),
    ],
)
async def test_error_codes_map_to_statuses(client: Client, code: str, status: int) -> None:
    a = await client.call("GET", f"/api/v1/fail/{code}")
    known = status != 500
    p = assert_problem(
        a,
        status,
        code if known else "internal",
        "name" if code in ("invalid", "conflict") else None,
    )
    if known:
        assert p["detail"] == f"message of {code}"
    else:
        assert "message of" not in p["detail"] and "hunter2" not in p["detail"]
        assert a.headers["X-Correlation-Id"] in p["detail"]
    if status == 401:
        assert a.headers["WWW-Authenticate"].startswith("Bearer")


async def test_errors_from_another_service_over_the_real_bus(nc: NATS, client: Client) -> None:
    # nobody serves "things": 503; a slow one: 504; a conflict keeps its message and field
    a = await client.call("GET", "/api/v1/ask/things")
    assert_problem(a, 503, "unavailable")
    release = asyncio.Event()
    bus = Bus(nc, "things")

    @bus.query("thing")
    async def thing(payload: dict[str, Any]) -> Any:
        if payload.get("n") == 1 and not release.is_set():
            await release.wait()
        raise Conflict("thing n was changed meanwhile: reload it", field="n")

    await bus.start()
    try:
        a = await client.call("GET", "/api/v1/ask/things")
        assert_problem(a, 504, "deadline_exceeded")
        release.set()
        a = await client.call("GET", "/api/v1/ask/things")
        p = assert_problem(a, 409, "conflict", "n")
        assert p["detail"] == "thing n was changed meanwhile: reload it"
    finally:
        await bus.stop(grace=1)


async def test_get_routes_cannot_send_commands(
    nc: NATS, client: Client, identity: Identity
) -> None:
    seen: list[dict[str, Any]] = []
    bus = Bus(nc, "things")

    @bus.command("change")
    async def change(payload: dict[str, Any]) -> Any:
        seen.append(payload)
        return {}

    await bus.start()
    try:
        a = await client.call("GET", "/api/v1/sneaky", token=await root_token(identity))
        assert_problem(a, 500, "internal")
    finally:
        await bus.stop(grace=1)
    assert seen == []


async def test_answers_off_their_schema_are_caught(client: Client) -> None:
    assert_problem(await client.call("GET", "/api/v1/wrong"), 500, "internal")


async def test_security_headers_everywhere(client: Client, token_cast: Cast) -> None:
    answers = [
        await client.call("GET", "/api/v1/status"),
        await client.call("HEAD", "/api/v1/status"),
        await client.call("GET", "/api/v1/openapi.json"),
        await client.call("GET", "/api/v1/activity"),
        await client.call("GET", "/api/v1/activity", token=token_cast.token_alice),
        await client.call("GET", "/api/v1/nope"),
        await client.call("DELETE", "/api/v1/status"),
        await client.call("GET", "/api/v1/fail/crash"),
    ]
    assert [a.status for a in answers] == [200, 200, 200, 401, 403, 404, 405, 500]
    for a in answers:
        assert_secure(a)
        assert a.headers["Cache-Control"] == "no-store"
        assert a.headers["Content-Security-Policy"].startswith("default-src 'none'")
    head = answers[1]
    assert head.body == b"" and head.headers["Content-Type"].startswith("application/json")
    # the dashboard and anything else the gateway serves carry them too
    for path in ("/", "/missing"):
        a = await client.call("GET", path)
        assert_secure(a)
        assert "default-src 'self'" in a.headers["Content-Security-Policy"]


async def test_csrf_cross_origin_state_changes_are_refused(client: Client, cast: Cast) -> None:
    body = {"name": "x"}
    post = "/api/v1/echo"
    for headers in (
        {"Origin": "https://evil.example.net"},
        {"Origin": "https://blog.example.com"},  # a sibling app: same site, other origin
        {"Origin": "http://my.example.com"},  # downgraded scheme
        {"Origin": "https://my.example.com:8443"},
        {"Origin": "null"},
        {"Origin": "https://my.example.com.evil.net"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ):
        a = await client.call("POST", post, session=cast.session_alice, headers=headers, body=body)
        p = assert_problem(a, 403, "forbidden")
        assert "cross-origin" in p["detail"], headers
        # the anonymous and the admin are refused alike, before anything else happens
        a = await client.call("POST", "/api/v1/small", headers=headers, body={"x": "y"})
        assert a.status == 403
        a = await client.call("DELETE", "/api/v1/things/a", token=cast.token_root, headers=headers)
        assert a.status == 403
    for headers in (
        {"Origin": PUBLIC},
        {"Origin": "HTTPS://MY.EXAMPLE.COM:443"},
        {"Origin": PUBLIC, "Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},
        {},  # not a browser: the CLI with a token
    ):
        a = await client.call("POST", post, session=cast.session_alice, headers=headers, body=body)
        assert a.status == 200, (headers, a.body)
    # reads from other origins are served but never readable by them (no CORS)
    a = await client.call("GET", "/api/v1/status", headers={"Origin": "https://evil.example.net"})
    assert a.status == 200
    assert_secure(a)


async def test_csrf_without_a_configured_origin_compares_the_host(nc: NATS) -> None:
    async with serve_api(nc, table=extended_table()) as client:
        host = client.base.removeprefix("http://")
        a = await client.call("POST", "/api/v1/small", headers={"Origin": client.base}, body={})
        assert a.status == 201, a.body
        for origin in ("https://evil.example.net", f"http://{host}.evil.net", "http://127.0.0.1"):
            a = await client.call("POST", "/api/v1/small", headers={"Origin": origin}, body={})
            assert_problem(a, 403, "forbidden")


async def test_cors_only_for_exact_configured_origins(nc: NATS, token_cast: Cast) -> None:
    partner = "https://partner.example.org"
    config = ApiConfig(public_origin=PUBLIC, cors_origins=(partner,))
    async with serve_api(nc, table=extended_table(), config=config) as client:
        a = await client.call("GET", "/api/v1/status", headers={"Origin": partner})
        assert a.headers["Access-Control-Allow-Origin"] == partner
        assert a.headers["Vary"] == "Origin"
        assert "Access-Control-Allow-Credentials" not in a.headers
        for other in ("https://evil.example.net", "https://partner.example.org.evil.net", "*"):
            a = await client.call("GET", "/api/v1/status", headers={"Origin": other})
            assert "Access-Control-Allow-Origin" not in a.headers
        pre = {"Origin": partner, "Access-Control-Request-Method": "POST"}
        a = await client.call("OPTIONS", "/api/v1/echo", headers=pre)
        assert a.status == 204
        assert a.headers["Access-Control-Allow-Origin"] == partner
        assert a.headers["Access-Control-Allow-Methods"] == "POST"
        a = await client.call(
            "OPTIONS", "/api/v1/echo", headers={**pre, "Origin": "https://evil.example.net"}
        )
        assert_problem(a, 405, "method_not_allowed")
        # the configured partner may also change state (it is trusted by configuration)
        named = {"name": "p"}
        a = await client.call(
            "POST",
            "/api/v1/echo",
            token=token_cast.token_alice,
            headers={"Origin": partner},
            body=named,
        )
        assert a.status == 200


def test_cors_configuration_is_checked() -> None:
    from libs.service.config import ConfigError, load_config

    cfg = load_config(ApiConfig, {"HP_PUBLIC_ORIGIN": "https://My.Example.com:443"})
    assert cfg.origin == PUBLIC and cfg.cors == frozenset()
    for env in (
        {"HP_PUBLIC_ORIGIN": "my.example.com"},
        {"HP_PUBLIC_ORIGIN": "https://my.example.com/path"},
        {"HP_CORS_ORIGINS": "*"},
        {"HP_CORS_ORIGINS": "https://a.example, ftp://b.example"},
    ):
        with pytest.raises(ConfigError):
            load_config(ApiConfig, env)
