"""The real certs service against a real Pebble, in this process or as a child process.

Pieces for tests (no tests here; the Pebble fixtures are in tests/conftest.py): the
service's environment, the service run in-process (`running_certs`) or as a child process
(`CertsProcess`, for kill -9), the edge's part of HTTP-01 (`serving_tokens`: a tiny aiohttp
static server over acme_dir on Pebble's httpPort, standing in for nginx), a stand-in for the
dns service (`dns_stand_in`), and a CA of our own for custom certificates.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from nats.aio.client import Client as NATS

from libs.events.bus import Bus, BusClient
from libs.events.context import Context
from libs.events.store import PostgresEventStore
from tests.support.bus import ActorBus
from tests.support.pebble import ChallDns, PebbleServer
from tests.support.serving import serving
from tests.support.waits import wait_until

ROOT = Path(__file__).resolve().parents[2]
ADMIN_CTX = Context("admin-test", "certs-test", None, None)
CHALLENGE_PATH = "/.well-known/acme-challenge/"


def domain() -> str:
    return f"t{uuid.uuid4().hex[:10]}.example.test"


# -- the service ------------------------------------------------------------------------------


def certs_env(
    *,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    pebble: PebbleServer,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    return {
        "HP_DATABASE_URL": dsn,
        "HP_NATS_URL": nats_url,
        "HP_KEYRING": str(tmp_path / "keyring.json"),
        "HP_DATA_DIR": str(tmp_path),
        "HP_DRAIN_SECONDS": "1",
        "HP_HTTP_PORT": "0",
        "HP_ACME_DIRECTORY": pebble.directory_url,
        "HP_ACME_CA_BUNDLE": pebble.ca_bundle,
        "HP_ACME_EMAIL": "admin@example.test",
        "HP_CERTS_DIR": str(tmp_path / "certs"),
        "HP_ACME_DIR": str(tmp_path / "acme-challenge"),
        "HP_ORDER_DEADLINE_S": "120",
        **(extra or {}),
    }


@dataclass
class Certs:
    bus: BusClient
    store: PostgresEventStore
    env: Mapping[str, str]

    @property
    def certs_dir(self) -> Path:
        return Path(self.env["HP_CERTS_DIR"])

    @property
    def acme_dir(self) -> Path:
        return Path(self.env["HP_ACME_DIR"])

    async def cmd(self, verb: str, payload: dict[str, Any]) -> Any:
        return await self.bus.command("certs", verb, payload, ctx=ADMIN_CTX, timeout=30)

    async def ask(self, name: str, payload: dict[str, Any]) -> Any:
        return await self.bus.query("certs", name, payload, ctx=ADMIN_CTX, timeout=30)

    async def wait_task(self, task_id: str, timeout: float = 90) -> dict[str, Any]:
        """Until the task ends; its last event's data and type."""
        end = time.monotonic() + timeout
        events: list[Any] = []
        while time.monotonic() < end:
            events = await self.store.read_stream(f"task-{task_id}")
            if events and events[-1].type in ("TaskSucceeded", "TaskFailed"):
                return {"type": events[-1].type, **events[-1].data}
            await asyncio.sleep(0.1)
        raise AssertionError(f"task {task_id} did not end within {timeout} s: {events[-1:]}")

    async def stream(self, primary: str) -> list[Any]:
        """The events of `cert-<primary>`."""
        from services.certs.events import cert_stream

        return await self.store.read_stream(cert_stream(primary))

    async def types(self, primary: str) -> list[str]:
        return [e.type for e in await self.stream(primary)]

    async def item(self, primary: str) -> dict[str, Any]:
        listed = await self.ask("certificates", {})
        found = [i for i in listed["items"] if i["primary"] == primary]
        assert found, f"{primary} not in {[i['primary'] for i in listed['items']]}"
        return dict(found[0])


@asynccontextmanager
async def connected(env: Mapping[str, str]) -> AsyncIterator[Certs]:
    nc = await nats.connect(env["HP_NATS_URL"])
    store = await PostgresEventStore.open(env["HP_DATABASE_URL"], max_size=2)
    try:
        yield Certs(ActorBus(nc, default_timeout=30), store, env)
    finally:
        await store.close()
        await nc.close()


@asynccontextmanager
async def running_certs(
    monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]
) -> AsyncIterator[Certs]:
    """The certs service (services.certs.__main__.build) in this process, ready."""
    from services.certs.__main__ import build

    async with serving(monkeypatch, build, env, "certs"), connected(env) as certs:
        yield certs


class CertsProcess:
    """`python -m services.certs` as a child process, for tests that kill it."""

    def __init__(self, env: Mapping[str, str], log: Path) -> None:
        self.env = {**os.environ, **env}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.certs"],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(5)
        self.proc = None
        return code

    def tail(self, n: int = 40) -> str:
        with suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""


# -- the edge's part of HTTP-01, standing in for nginx ---------------------------------------


@asynccontextmanager
async def serving_tokens(acme_dir: Path, port: int) -> AsyncIterator[list[str]]:
    """Serve `acme_dir` at /.well-known/acme-challenge/ on 127.0.0.1:`port` (what nginx will
    do); yields the list of tokens asked for."""
    asked: list[str] = []

    async def token(request: web.Request) -> web.StreamResponse:
        name = request.match_info["token"]
        asked.append(name)
        path = acme_dir / name
        if "/" in name or name.startswith(".") or not path.is_file():
            return web.Response(status=404)
        return web.Response(body=path.read_bytes(), content_type="text/plain")

    app = web.Application()
    app.router.add_get(CHALLENGE_PATH + "{token}", token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield asked
    finally:
        await runner.cleanup()


# -- a stand-in for the dns service ----------------------------------------------------------


@dataclass
class DnsStandIn:
    """What the stand-in was asked; `hang` makes publish_txt never answer."""

    published: list[tuple[str, str]] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)
    records: dict[str, list[str]] = field(default_factory=dict)
    hang: bool = False


@asynccontextmanager
async def dns_stand_in(
    nc: NATS, challdns: ChallDns, *, hang: bool = False
) -> AsyncIterator[DnsStandIn]:
    """A STAND-IN for the dns service (not the real one): serves hp.cmd.dns.publish_txt and
    remove_txt on the bus by writing TXT records into pebble-challtestsrv, the DNS server
    Pebble asks. publish_txt answers once the record is set (there is nothing to propagate)."""
    seen = DnsStandIn(hang=hang)
    bus = Bus(nc, "dns")

    async def sync(name: str) -> None:
        await asyncio.to_thread(challdns.set_txt, name, seen.records.get(name, []))

    @bus.command("publish_txt")
    async def publish_txt(payload: dict[str, Any]) -> dict[str, Any]:
        name, value = str(payload["name"]), str(payload["value"])
        seen.published.append((name, value))
        if seen.hang:
            await asyncio.Event().wait()
        seen.records.setdefault(name, []).append(value)
        await sync(name)
        return {"name": name, "propagated": True}

    @bus.command("remove_txt")
    async def remove_txt(payload: dict[str, Any]) -> dict[str, Any]:
        name, value = str(payload["name"]), str(payload["value"])
        seen.removed.append((name, value))
        seen.records[name] = [v for v in seen.records.get(name, []) if v != value]
        await sync(name)
        return {"name": name}

    await bus.start()
    try:
        yield seen
    finally:
        await bus.stop(grace=0.5)


# -- certificates: checks, and a CA of our own for custom uploads -----------------------------


def verify_chain(chain_pem: str, root_pem: str, name: str) -> None:
    """Verify like a TLS client: the chain ends at `root_pem` and is valid for `name`."""
    certs = x509.load_pem_x509_certificates(chain_pem.encode())
    store = Store(x509.load_pem_x509_certificates(root_pem.encode()))
    verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName(name))
    verifier.verify(certs[0], certs[1:])  # raises VerificationError


def key_matches(chain_pem: str, key_pem: str) -> bool:
    leaf = x509.load_pem_x509_certificates(chain_pem.encode())[0]
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return leaf.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def leaf_of(chain_pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificates(chain_pem.encode())[0]


def _pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@dataclass
class OwnCa:
    """A root and an intermediate made in the test; `issue` signs leaves with the latter."""

    root: x509.Certificate
    inter: x509.Certificate
    inter_key: ec.EllipticCurvePrivateKey

    @classmethod
    def make(cls) -> OwnCa:
        now = datetime.now(UTC)
        root_key = ec.generate_private_key(ec.SECP256R1())
        root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test own root")])
        root = (
            x509.CertificateBuilder()
            .subject_name(root_name)
            .issuer_name(root_name)
            .public_key(root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=30))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .sign(root_key, hashes.SHA256())
        )
        inter_key = ec.generate_private_key(ec.SECP256R1())
        inter_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test own issuing CA")])
        inter = (
            x509.CertificateBuilder()
            .subject_name(inter_name)
            .issuer_name(root_name)
            .public_key(inter_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=30))
            .not_valid_after(now + timedelta(days=1825))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(root_key, hashes.SHA256())
        )
        return cls(root, inter, inter_key)

    def issue(
        self, names: list[str], *, not_before: datetime | None = None, days: int = 365
    ) -> tuple[str, str]:
        """(chain PEM: leaf then intermediate, key PEM) for `names`."""
        start = not_before or datetime.now(UTC) - timedelta(hours=1)
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.inter.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.inter_key, hashes.SHA256())
        )
        chain = (
            leaf.public_bytes(serialization.Encoding.PEM)
            + self.inter.public_bytes(serialization.Encoding.PEM)
        ).decode()
        return chain, _pem(key)


def other_key() -> str:
    return _pem(ec.generate_private_key(ec.SECP256R1()))


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    await wait_until(check, timeout, what, step=0.2)
