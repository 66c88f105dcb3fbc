"""The ACME adapter against a real Pebble (Debian package) with pebble-challtestsrv as DNS."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import DNSName
from cryptography.x509.verification import PolicyBuilder, Store

from services.certs.acme_client import AcmeAccount, AcmeError, Issued
from tests.support.pebble import ChallDns, PebbleServer, query_txt, run_pebble

CHALLENGE_PATH = "/.well-known/acme-challenge/"


# Pebble servers: one set per xdist worker, stopped at the end of the session; they share
# the directory and the challenge DNS of tests/conftest.py's `certs_pebble`.


@pytest.fixture(scope="session")
def pebble(certs_pebble_dir: Path, certs_challdns: ChallDns) -> Iterator[PebbleServer]:
    """Pebble with its defaults: 5 % of nonces rejected, validation sleeps of up to 15 s."""
    yield from run_pebble(certs_pebble_dir / "defaults", certs_challdns)


@pytest.fixture(scope="session")
def pebble_fast(certs_pebble_dir: Path, certs_challdns: ChallDns) -> Iterator[PebbleServer]:
    """PEBBLE_VA_NOSLEEP=1, default nonce rejection (5 %)."""
    yield from run_pebble(certs_pebble_dir / "fast", certs_challdns, nosleep=True)


@pytest.fixture(scope="session")
def pebble_nonce50(certs_pebble_dir: Path, certs_challdns: ChallDns) -> Iterator[PebbleServer]:
    """PEBBLE_WFE_NONCEREJECT=50 (half of all nonces rejected), PEBBLE_VA_NOSLEEP=1."""
    yield from run_pebble(
        certs_pebble_dir / "nonce50", certs_challdns, nosleep=True, nonce_reject=50
    )


@pytest.fixture(scope="session")
def pebble_reuse(certs_pebble_dir: Path, certs_challdns: ChallDns) -> Iterator[PebbleServer]:
    """PEBBLE_AUTHZREUSE=100: valid authorizations are always reused (as Let's Encrypt does)."""
    env = {"PEBBLE_AUTHZREUSE": "100"}
    yield from run_pebble(certs_pebble_dir / "reuse", certs_challdns, nosleep=True, env=env)


class Responder:
    """The edge's part of http-01: an aiohttp server on Pebble's httpPort serving tokens."""

    def __init__(self, *, wrong: bool = False, hang: bool = False) -> None:
        self.tokens: dict[str, str] = {}
        self.seen: list[str] = []
        self.wrong = wrong  # serve a key authorization that does not match
        self.hang = hang  # put() never returns (to test the deadline)

    async def put(self, token: str, key_authorization: str) -> None:
        self.seen.append(token)
        self.tokens[token] = key_authorization + ("x" if self.wrong else "")
        if self.hang:
            await asyncio.Event().wait()

    async def remove(self, token: str) -> None:
        self.tokens.pop(token, None)

    async def handle(self, request: web.Request) -> web.Response:
        value = self.tokens.get(request.match_info["token"])
        if value is None:
            return web.Response(status=404)
        return web.Response(text=value)


@asynccontextmanager
async def serving(responder: Responder, port: int) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get(CHALLENGE_PATH + "{token}", responder.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class ChallTxt:
    """The dns service's part of dns-01, writing into pebble-challtestsrv."""

    def __init__(self, dns: ChallDns, *, mangle: bool = False) -> None:
        self.dns = dns
        self.records: dict[str, list[str]] = {}
        self.published: list[tuple[str, str]] = []
        self.mangle = mangle  # publish a wrong value

    async def publish(self, name: str, value: str) -> None:
        self.published.append((name, value))
        self.records.setdefault(name, []).append(value + ("x" if self.mangle else ""))
        await asyncio.to_thread(self.dns.set_txt, name, self.records[name])

    async def remove(self, name: str, value: str) -> None:
        values = self.records.get(name, [])
        self.records[name] = [v for v in values if v != value + ("x" if self.mangle else "")]
        await asyncio.to_thread(self.dns.set_txt, name, self.records[name])


async def served(base: str, token: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(base + CHALLENGE_PATH + token) as r:
        return r.status


def domain() -> str:
    return f"t{uuid.uuid4().hex[:10]}.example.test"


async def account_at(server: PebbleServer) -> AcmeAccount:
    return await AcmeAccount.register(
        server.directory_url, "admin@example.test", ca_bundle=server.ca_bundle, ca_name="Pebble"
    )


def verify_chain(issued: Issued, root_pem: str, name: str) -> None:
    """Verify like a TLS client: the chain ends at Pebble's root and is valid for `name`."""
    certs = x509.load_pem_x509_certificates(issued.chain_pem.encode())
    store = Store(x509.load_pem_x509_certificates(root_pem.encode()))
    verifier = PolicyBuilder().store(store).build_server_verifier(DNSName(name))
    verifier.verify(certs[0], certs[1:])  # raises VerificationError


def assert_p256(issued: Issued) -> None:
    key = serialization.load_pem_private_key(issued.key_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    leaf = x509.load_pem_x509_certificates(issued.chain_pem.encode())[0]
    pub = leaf.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    assert pub.public_numbers() == key.public_key().public_numbers()


async def test_http01_with_pebble_defaults(pebble: PebbleServer) -> None:
    """Pebble defaults: 5 % nonce rejection and validation sleeps of up to 15 s."""
    name = f"blog.{domain()}"
    responder = Responder()
    steps: list[str] = []

    async def progress(msg: str) -> None:
        steps.append(msg)

    async with serving(responder, pebble.http_port) as base:
        account = await account_at(pebble)
        try:
            issued = await account.issue([name], http=responder, progress=progress, deadline=120)
        finally:
            await account.aclose()
        verify_chain(issued, pebble.root_pem, name)
        assert issued.info.names == (name,)
        assert not issued.info.self_signed
        assert issued.info.not_before <= datetime.now(UTC) < issued.info.not_after
        assert_p256(issued)
        assert steps[0] == f"asking Pebble for {name}"
        assert f"answering the http-01 challenge for {name}" in steps
        assert steps[-2:] == ["finalizing", "downloading the certificate"]
        # the token is gone: nothing is served any more
        assert responder.seen
        assert responder.tokens == {}
        for token in responder.seen:
            assert await served(base, token) == 404


async def test_twenty_orders_in_a_row_with_half_the_nonces_rejected(
    pebble_nonce50: PebbleServer,
) -> None:
    responder = Responder()
    async with serving(responder, pebble_nonce50.http_port):
        account = await account_at(pebble_nonce50)
        try:
            d = domain()
            keys = set()
            for i in range(20):
                name = f"app{i}.{d}"
                issued = await account.issue([name], http=responder, deadline=60)
                verify_chain(issued, pebble_nonce50.root_pem, name)
                keys.add(issued.key_pem)
        finally:
            await account.aclose()
    assert len(keys) == 20  # a new key per order
    assert responder.tokens == {}


async def test_reused_authorization_needs_no_challenge(pebble_reuse: PebbleServer) -> None:
    name = f"blog.{domain()}"
    responder = Responder()
    async with serving(responder, pebble_reuse.http_port):
        account = await account_at(pebble_reuse)
        try:
            first = await account.issue([name], http=responder)
            assert len(responder.seen) == 1
            responder.wrong = True  # a challenge answered now would fail
            second = await account.issue([name], http=responder)
        finally:
            await account.aclose()
    assert len(responder.seen) == 1  # no token published for the second order
    assert second.info.fingerprint_sha256 != first.info.fingerprint_sha256
    verify_chain(second, pebble_reuse.root_pem, name)


async def test_dns01_wildcard_and_apex(pebble_fast: PebbleServer) -> None:
    d = domain()
    publisher = ChallTxt(pebble_fast.dns)
    steps: list[str] = []

    async def progress(msg: str) -> None:
        steps.append(msg)

    account = await account_at(pebble_fast)
    try:
        issued = await account.issue([f"*.{d}", d], dns=publisher, progress=progress)
    finally:
        await account.aclose()
    assert set(issued.info.names) == {f"*.{d}", d}
    verify_chain(issued, pebble_fast.root_pem, f"blog.{d}")
    verify_chain(issued, pebble_fast.root_pem, d)
    assert_p256(issued)
    # both authorizations answered through the same TXT name, then withdrawn
    assert {n for n, _ in publisher.published} == {f"_acme-challenge.{d}"}
    assert len(publisher.published) == 2
    assert f"answering the dns-01 challenge for *.{d}" in steps
    assert query_txt(pebble_fast.dns.dns_port, f"_acme-challenge.{d}") == []


async def test_only_dns_given_uses_dns01_for_plain_names(pebble_fast: PebbleServer) -> None:
    name = f"www.{domain()}"
    publisher = ChallTxt(pebble_fast.dns)
    account = await account_at(pebble_fast)
    try:
        issued = await account.issue([name], dns=publisher)
    finally:
        await account.aclose()
    verify_chain(issued, pebble_fast.root_pem, name)
    assert publisher.published == [(f"_acme-challenge.{name}", publisher.published[0][1])]
    assert query_txt(pebble_fast.dns.dns_port, f"_acme-challenge.{name}") == []


async def test_wrong_key_authorization_is_unauthorized_and_cleaned_up(
    pebble_fast: PebbleServer,
) -> None:
    name = f"blog.{domain()}"
    responder = Responder(wrong=True)
    async with serving(responder, pebble_fast.http_port) as base:
        account = await account_at(pebble_fast)
        try:
            with pytest.raises(AcmeError) as caught:
                await account.issue([name], http=responder)
        finally:
            await account.aclose()
        err = caught.value
        assert err.code == "unauthorized"
        assert name in str(err) and "http-01" in str(err) and "Pebble" in str(err)
        assert responder.seen and responder.tokens == {}
        for token in responder.seen:
            assert await served(base, token) == 404


async def test_wrong_txt_value_is_unauthorized_and_cleaned_up(pebble_fast: PebbleServer) -> None:
    d = domain()
    publisher = ChallTxt(pebble_fast.dns, mangle=True)
    account = await account_at(pebble_fast)
    try:
        with pytest.raises(AcmeError) as caught:
            await account.issue([f"*.{d}"], dns=publisher)
    finally:
        await account.aclose()
    assert caught.value.code == "unauthorized"
    assert f"*.{d}" in str(caught.value) and "dns-01" in str(caught.value)
    assert publisher.published
    assert query_txt(pebble_fast.dns.dns_port, f"_acme-challenge.{d}") == []


async def test_deadline_stops_the_order_and_withdraws_the_token(
    pebble_fast: PebbleServer,
) -> None:
    name = f"slow.{domain()}"
    responder = Responder(hang=True)
    account = await account_at(pebble_fast)
    try:
        started = time.monotonic()
        with pytest.raises(AcmeError) as caught:
            await account.issue([name], http=responder, deadline=1.5)
        assert time.monotonic() - started < 5
    finally:
        await account.aclose()
    assert caught.value.code == "timeout"
    assert name in str(caught.value)
    assert responder.seen and responder.tokens == {}


async def test_same_key_finds_the_same_account(pebble_fast: PebbleServer) -> None:
    first = await account_at(pebble_fast)
    await first.aclose()
    again = await AcmeAccount.register(
        pebble_fast.directory_url,
        None,
        account_key_pem=first.account_key_pem,
        ca_bundle=pebble_fast.ca_bundle,
    )
    await again.aclose()
    other = await account_at(pebble_fast)
    await other.aclose()
    assert first.uri.startswith("https://127.0.0.1:")
    assert again.uri == first.uri
    assert other.uri != first.uri
    key = serialization.load_pem_private_key(first.account_key_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)


async def test_wildcard_without_dns_is_refused_before_ordering(
    pebble_fast: PebbleServer,
) -> None:
    account = await account_at(pebble_fast)
    try:
        with pytest.raises(AcmeError) as caught:
            await account.issue(["*.example.test"], http=Responder())
    finally:
        await account.aclose()
    assert caught.value.code == "invalid_order"
    assert "DNS-01" in str(caught.value)


@pytest.mark.parametrize(
    "name", ["bad name.example.test", "-x.example.test", "a.*.example.test", "localhost", "é.test"]
)
async def test_names_outside_the_dns_grammar_are_refused(
    pebble_fast: PebbleServer, name: str
) -> None:
    responder = Responder()
    account = await account_at(pebble_fast)
    try:
        with pytest.raises(AcmeError) as caught:
            await account.issue([name], http=responder)
    finally:
        await account.aclose()
    assert caught.value.code == "invalid_order"
    assert repr(name) in str(caught.value)
    assert responder.seen == []


async def test_unreachable_directory_is_a_connection_error() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(AcmeError) as caught:
        await AcmeAccount.register(f"https://127.0.0.1:{port}/dir", None)
    assert caught.value.code == "connection"
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert time.monotonic() - started >= 3  # retried with backoff (0.5 + 1 + 2 s)


async def test_untrusted_tls_certificate_is_a_connection_error(pebble_fast: PebbleServer) -> None:
    started = time.monotonic()
    with pytest.raises(AcmeError) as caught:
        await AcmeAccount.register(pebble_fast.directory_url, None)  # no ca_bundle
    assert caught.value.code == "connection"
    assert "not trusted" in str(caught.value)
    assert time.monotonic() - started < 2  # not retried: it cannot get better


# Pebble never sends rateLimited (its README: "Pebble does not enforce any rate limits"), so
# this one error path runs against a small ACME-like stub; everything else uses real Pebble.


@asynccontextmanager
async def rate_limiting_stub(retry_after: str) -> AsyncIterator[str]:
    nonces = iter(range(1_000_000))

    def headers() -> dict[str, str]:
        return {"Replay-Nonce": f"nonce{next(nonces)}"}

    async def directory(request: web.Request) -> web.Response:
        base = f"http://{request.host}"
        return web.json_response(
            {"newNonce": base + "/nonce", "newAccount": base + "/acct", "newOrder": base + "/order"}
        )

    async def nonce(request: web.Request) -> web.Response:
        return web.Response(headers=headers())

    async def new_account(request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "valid"},
            status=201,
            headers={**headers(), "Location": f"http://{request.host}/acct/1"},
        )

    async def new_order(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "type": "urn:ietf:params:acme:error:rateLimited",
                "detail": "too many certificates already issued for example.test",
                "status": 429,
            },
            status=429,
            content_type="application/problem+json",
            headers={**headers(), "Retry-After": retry_after},
        )

    app = web.Application()
    app.router.add_get("/dir", directory)
    app.router.add_route("HEAD", "/nonce", nonce)
    app.router.add_post("/acct", new_account)
    app.router.add_post("/order", new_order)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/dir"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("header", "expected"),
    [("3600", 3600.0), ("Wed, 21 Oct 2099 07:28:00 GMT", None)],
)
async def test_rate_limited_carries_retry_after(header: str, expected: float | None) -> None:
    async with rate_limiting_stub(header) as url:
        account = await AcmeAccount.register(url, None)
        try:
            with pytest.raises(AcmeError) as caught:
                await account.issue(["blog.example.test"], http=Responder())
        finally:
            await account.aclose()
    err = caught.value
    assert err.code == "rate_limited"
    assert err.retry_after is not None
    if expected is not None:
        assert err.retry_after == expected
    else:  # an HTTP date: seconds from now until then
        until = datetime(2099, 10, 21, 7, 28, tzinfo=UTC) - datetime.now(UTC)
        assert abs(err.retry_after - until.total_seconds()) < 60
    assert "blog.example.test" in str(err) and "retry after" in str(err)
