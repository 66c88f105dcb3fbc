"""nginx for the edge tests: a test CA and leaf certificates, an upstream app that echoes what
it was sent, a model on free high ports, and a running nginx (the fixtures `pki`, `edge_root`,
`upstream` and `edge` in tests/edge/conftest.py are made from these)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy.embedded import EmbeddedError, find_binary, free_port
from services.gateway.edge import EdgeModel, Nginx, Vhost
from tests.support.servers import need_server

BLOG = "blog.example.test"
MY = "my.example.test"
HOSTS = (BLOG, MY, "wiki.example.test")


# -- certificates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A test CA (ca.pem) and an ECDSA P-256 leaf per host (<host>.pem / <host>.key)."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    def cert(self, host: str) -> Path:
        return self.root / f"{host}.pem"

    def key(self, host: str) -> Path:
        return self.root / f"{host}.key"

    def client_context(self) -> ssl.SSLContext:
        """A client that trusts only the test CA."""
        return ssl.create_default_context(cafile=str(self.ca))


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_pki(root: Path, hosts: tuple[str, ...]) -> Pki:
    """A CA and one leaf certificate per host (plus `default`, self-signed)."""
    root.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Homeport test CA"))
        .issuer_name(_name("Homeport test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (root / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for host in (*hosts, "default"):
        key = ec.generate_private_key(ec.SECP256R1())
        issuer_key, issuer = (key, _name(host)) if host == "default" else (ca_key, ca.subject)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(host))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
            .sign(issuer_key, hashes.SHA256())
        )
        (root / f"{host}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        path = root / f"{host}.key"
        path.write_bytes(_key_pem(key))
        path.chmod(0o600)
    return Pki(root)


# -- the upstream app -----------------------------------------------------------------------


async def _echo(request: web.Request) -> web.StreamResponse:
    if request.path == "/slow":
        await asyncio.sleep(float(request.query.get("s", "1")))
    body = {
        "path": request.path_qs,
        "method": request.method,
        "peer": request.remote,
        "headers": {k.lower(): v for k, v in request.headers.items()},
    }
    resp = web.json_response(body)
    if request.path == "/framed":
        resp.headers["X-Frame-Options"] = "ALLOWALL"  # nginx must hide this
    return resp


async def _ws(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            await ws.send_str(f"echo: {msg.data}")
    return ws


@dataclass
class Upstream:
    """The echo app: `/ws` echoes WebSocket text, everything else echoes the request as JSON."""

    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def upstream_app() -> AsyncIterator[Upstream]:
    app = web.Application()
    app.router.add_get("/ws", _ws)
    app.router.add_route("*", "/{tail:.*}", _echo)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield Upstream(port)
    finally:
        await runner.cleanup()


# -- clients --------------------------------------------------------------------------------


class LoopbackResolver(AbstractResolver):
    """Every name resolves to 127.0.0.1 (like `curl --resolve`): SNI and Host stay the name."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host="127.0.0.1",
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        return None


def session(pki: Pki, **kw: Any) -> aiohttp.ClientSession:
    """An HTTP client that trusts the test CA, resolves everything to loopback, and does not
    follow redirects unless asked."""
    conn = aiohttp.TCPConnector(ssl=pki.client_context(), resolver=LoopbackResolver())
    return aiohttp.ClientSession(connector=conn, **kw)


async def tls_handshake(
    port: int, server_name: str | None, ctx: ssl.SSLContext
) -> tuple[str | None, tuple[str, str, int] | None, ssl.SSLSession | None]:
    """(protocol, cipher, session) of a TLS handshake with 127.0.0.1:port; raises on refusal."""
    _, writer = await asyncio.wait_for(
        asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname=server_name, ssl_handshake_timeout=5
        ),
        10,
    )
    try:
        obj = writer.get_extra_info("ssl_object")
        assert isinstance(obj, ssl.SSLObject)
        return obj.version(), obj.cipher(), obj.session
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def raw_http(port: int, request: bytes) -> bytes:
    """Send raw bytes to 127.0.0.1:port, read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def decode(body: bytes) -> dict[str, Any]:
    out = json.loads(body)
    assert isinstance(out, dict)
    return out


# -- the edge -------------------------------------------------------------------------------


@dataclass
class Edge:
    """A running nginx, its model, and what the tests need around it."""

    nginx: Nginx
    model: EdgeModel
    pki: Pki
    upstream: Upstream
    acme_dir: Path

    @property
    def http_port(self) -> int:
        return self.model.http_port

    @property
    def https_port(self) -> int:
        return self.model.https_port

    def vhost(self, host: str, kind: str = "app", **kw: Any) -> Vhost:
        return Vhost(
            host=host,
            kind="dashboard" if kind == "dashboard" else "app",
            upstream=self.upstream.address,
            cert=self.pki.cert(host),
            key=self.pki.key(host),
            **kw,
        )

    def with_vhosts(self, *vhosts: Vhost) -> EdgeModel:
        return replace(self.model, vhosts=vhosts)

    def url(self, host: str, path: str = "/") -> str:
        return f"https://{host}:{self.https_port}{path}"


def nginx_binary() -> str:
    try:
        return find_binary("nginx")
    except EmbeddedError as e:
        need_server("nginx", e)
        raise


def traversable_dir(tmp_root: Path) -> Iterator[Path]:
    """A directory nginx's workers (www-data) can traverse: tmp_root is 0755, tmp_path is not."""
    root = tmp_root / f"edge-{uuid.uuid4().hex[:10]}"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def build_model(nginx: Nginx, root: Path, pki: Pki, vhosts: tuple[Vhost, ...]) -> EdgeModel:
    acme = root / "acme"
    acme.mkdir(mode=0o755, exist_ok=True)
    return EdgeModel(
        vhosts=vhosts,
        http_port=free_port(),
        https_port=free_port(),
        acme_dir=acme,
        default_cert=pki.cert("default"),
        default_key=pki.key("default"),
        log_dir=nginx.log_dir,
        pid_file=nginx.pid_file,
        temp_dir=nginx.temp_dir,
        user=nginx.user,
        bind=("127.0.0.1",),
        worker_processes=1,
    )


@contextlib.asynccontextmanager
async def running_edge(edge_root: Path, pki: Pki, upstream: Upstream) -> AsyncIterator[Edge]:
    """nginx serving the dashboard at my.example.test and an app at blog.example.test."""
    nginx = Nginx(edge_root / "nginx", binary=nginx_binary())
    model = build_model(nginx, edge_root, pki, ())
    e = Edge(nginx, model, pki, upstream, model.acme_dir)
    model = e.with_vhosts(e.vhost(BLOG), e.vhost(MY, "dashboard"))
    e.model = model
    await nginx.apply(model)
    await nginx.start()
    try:
        yield e
    finally:
        await nginx.stop()
