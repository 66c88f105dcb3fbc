"""Inputs that used to end in a 500: numbers beyond the JSON parser's limits, NUL bytes and text
that is not UTF-8 in the path, the query string, a header or a body. Each is a 400 naming the
problem, for anonymous callers before authentication and for admins on every GET route."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from libs.events.bus import Bus
from tests.dns.dnskit import dns_env, pdns_provider, running_dns
from tests.gateway.apikit import Answer, Cast, Client, running_gateway, serve_api
from tests.support.pdns import PdnsZone

HUGE = "9" * 5000  # over Python's 4,300-digit limit for int()


@pytest.fixture
async def client(nc: NATS) -> AsyncIterator[Client]:
    async with serve_api(nc) as c:
        yield c


def refused(a: Answer, field: str | None = None) -> str:
    """The 400 problem's detail; `field` is the one it names, if given."""
    assert a.status == 400, (a.status, a.body)
    p = a.problem
    assert p["code"] == "invalid", p
    if field is not None:
        assert p.get("field") == field, p
    assert p["correlation_id"] == a.headers["X-Correlation-Id"]
    return str(p["detail"])


async def raw(client: Client, method: str, path: str, body: bytes, token: str = "") -> Answer:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return await client.call(method, path, data=body, headers=headers)


async def test_numbers_beyond_the_parser_are_400_for_anonymous_callers(client: Client) -> None:
    """POST /session is anonymous: its body is parsed with no credentials at all."""
    for body, says in [
        (b'{"username": "root", "password": ' + HUGE.encode() + b"}", "4300 digits"),
        (b'{"username": "root", "password": [{"x": -' + HUGE.encode() + b"}]}", "4300 digits"),
        (b'{"username": "root", "password": 1e999}', "too large"),
        (b'{"username": "root", "password": -1.5e400}', "too large"),
        (b'{"username": "root", "password": NaN}', "not a JSON value"),
        (b'{"username": "root", "password": Infinity}', "not a JSON value"),
    ]:
        detail = refused(await raw(client, "POST", "/api/v1/session", body))
        assert says in detail, (body[:60], detail)


async def test_numbers_beyond_the_parser_are_400_for_admins(
    client: Client, token_cast: Cast
) -> None:
    body = b'{"username": "carol", "email": "c@example.com", "size": ' + HUGE.encode() + b"}"
    a = await raw(client, "POST", "/api/v1/users", body, token=token_cast.token_root)
    assert "4300 digits" in refused(a)


async def test_nul_and_lone_surrogates_in_body_strings_name_the_field(
    client: Client, token_cast: Cast
) -> None:
    root = token_cast.token_root
    for text in ("Team\\u0000A", "Team\\ud800A"):
        body = ('{"name": "' + text + '"}').encode()
        a = await raw(client, "POST", "/api/v1/groups", body, token=root)
        refused(a, "name")
    for text in ("x\\u0000", "x\\udfff"):
        body = ('{"display_name": "' + text + '"}').encode()
        a = await raw(client, "PATCH", "/api/v1/profile", body, token=root)
        refused(a, "display_name")


async def test_unfit_query_and_path_values_are_400_before_authentication(client: Client) -> None:
    """Anonymous callers of an admin route get the 400, not a 401 then a 500 for an admin."""
    for path, field in [
        ("/api/v1/activity?actor=x%00", "actor"),
        ("/api/v1/activity?actor=%ff%fe", "actor"),
        ("/api/v1/activity?actor=%ed%a0%80", "actor"),  # an encoded surrogate is not UTF-8
        ("/api/v1/groups/a%00b", "group_id"),
        ("/api/v1/status?x=%00", "x"),
    ]:
        refused(await client.call("GET", path), field)
    assert "UTF-8" in refused(await client.call("GET", "/api/v1/groups/a%ffb"))
    assert "NUL" in refused(await client.call("GET", "/api/v1/status?a%00=1"))


async def _raw_get(client: Client, header: bytes) -> tuple[bytes, bytes]:
    host, port = re.fullmatch(r"http://(.+):(\d+)", client.base).groups()  # type: ignore[union-attr]
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n"
            b"Connection: close\r\n\r\n"
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


async def test_header_values_that_are_not_utf8_are_400(client: Client) -> None:
    """aiohttp refuses a raw NUL in a header itself; bytes that are not UTF-8 reach us."""
    for header in (b"X-Name: caf\xe9", b"User-Agent: \xff\xfe"):
        head, body = await _raw_get(client, header)
        assert head.startswith(b"HTTP/1.1 400 "), head
        assert b'"code": "invalid"' in body and b"UTF-8" in body, body


async def test_odd_cookies_are_no_session_not_an_error(client: Client) -> None:
    """Another host of the domain may set a cookie of odd bytes on the parent domain: the API
    still answers (it only reads its own cookie); an odd value of ours is simply no session."""
    foreign = await _raw_get(client, b"Cookie: theme=\xff\xfe")
    ours = await _raw_get(client, b"Cookie: __Host-hp_session=\xff\xfe")
    plain = await _raw_get(client, b"X-Nothing: 1")
    status = plain[0].split(b"\r\n", 1)[0]
    assert foreign[0].split(b"\r\n", 1)[0] == status, foreign
    assert ours[0].split(b"\r\n", 1)[0] == status, ours


async def test_repeated_and_unknown_query_parameters_are_400(
    client: Client, token_cast: Cast
) -> None:
    root = token_cast.token_root
    a = await client.call("GET", "/api/v1/users?x=1", token=root)
    refused(a, "x")
    a = await client.call("GET", "/api/v1/status?x=1&x=2")
    assert a.status in (200, 400), a.body  # anonymous /status ignores or refuses, never 500


def _params(op: dict[str, Any], where: str) -> list[str]:
    return [p["name"] for p in op.get("parameters", []) if p["in"] == where]


async def test_every_get_route_with_a_nul_or_a_huge_number_in_every_parameter(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
    cast: Cast,
) -> None:
    """The production wiring: every GET of the OpenAPI document, as an admin."""
    async with running_gateway(
        monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path
    ) as gw:
        doc = (await gw.client.call("GET", "/api/v1/openapi.json")).body
        tried = 0
        crashed: list[str] = []
        vague: list[tuple[str, int, str]] = []
        for path, item in sorted(doc["paths"].items()):
            op = item.get("get")
            if op is None:
                continue
            names = _params(op, "path")
            queries = _params(op, "query")
            plain = {n: "abc" for n in names}
            cases: list[tuple[str, str, str | None]] = []
            for bad, label in (("a%00b", "nul"), (HUGE, "huge")):
                for n in names:
                    url = path.format(**{**plain, n: bad})
                    cases.append((url, label, n))
                for q in queries:
                    cases.append((path.format(**plain) + f"?{q}={bad}", label, q))
            for url, label, field in cases:
                tried += 1
                a = await gw.client.call("GET", "/api/v1" + url, token=cast.token_root)
                where = f"GET {url[:60]} ({label})"
                if a.status >= 500 and a.problem["code"] != "unavailable":
                    crashed.append(where)
                elif label == "nul":
                    p = a.problem
                    if a.status != 400 or p.get("field") != field or "NUL" not in p["detail"]:
                        vague.append((where, a.status, p["detail"]))
    assert not crashed, crashed
    assert not vague, vague
    assert tried >= 40


async def test_numbers_beyond_the_parser_over_the_bus_are_invalid(nc: NATS, uniq: str) -> None:
    """A request on the bus with such a number is refused before its handler (which would
    otherwise answer 1e999 as infinity, not JSON, and fail)."""
    bus = Bus(nc, f"nums{uniq}".replace("-", ""))

    @bus.query("echo")
    async def echo(payload: dict[str, Any]) -> Any:
        return payload

    await bus.start()
    try:
        head = '{"actor": "a", "correlation_id": "c", "deadline": %f, "payload": {"x": ' % (
            time.time() + 30
        )
        for value, says in [("1", None), ("1e999", "too large"), ("NaN", "NaN is not"),
                            (HUGE, "4300 digits")]:  # fmt: skip
            reply = await nc.request(
                f"hp.qry.{bus.service}.echo.gateway", (head + value + "}}").encode(), timeout=10
            )
            answer = json.loads(reply.data)
            if says is None:
                assert answer == {"ok": True, "result": {"x": 1}}
                continue
            assert answer["ok"] is False and answer["error"]["code"] == "invalid", answer
            assert says in answer["error"]["message"], answer
    finally:
        await bus.stop(grace=1)


async def test_provider_urls_on_this_server_are_400_naming_the_field(
    monkeypatch: pytest.MonkeyPatch,
    nc: NATS,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    token_cast: Cast,
    pdns_zone: PdnsZone,
) -> None:
    """The dns service as configured by default (no HP_ALLOW_LOOPBACK_PROVIDERS): an admin's
    PowerDNS URL on loopback, open port or closed, gets the same 400."""
    env = dns_env(
        dsn=dsn,
        nats_url=nats_url,
        tmp_path=tmp_path / "dns",
        extra={"HP_ALLOW_LOOPBACK_PROVIDERS": ""},  # unset: the default
    )
    async with running_dns(monkeypatch, env), serve_api(nc) as client:
        details = set()
        for url in (pdns_zone.api_url, "http://127.0.0.1:1"):
            provider = pdns_provider(pdns_zone, api_url=url, nameservers=None)
            body = {"domain": pdns_zone.name, "provider": provider}
            a = await client.call("POST", "/api/v1/domains", token=token_cast.token_root, body=body)
            detail = refused(a, "provider.api_url")
            assert "must not point at this server itself" in detail, detail
            details.add(detail)
        assert len(details) == 1, details
        a = await client.call("GET", "/api/v1/domains", token=token_cast.token_root)
        assert a.body == {"items": []}
