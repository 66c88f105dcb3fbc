"""Pebble (the Debian package) for ACME tests, with pebble-challtestsrv as its DNS server.

Fixtures (conftest.py, or a test module for a Pebble of its own) are made from
`run_challdns`/`run_pebble`, one server per xdist worker.

Pebble needs a TLS certificate for its own listener: the kit makes a throwaway CA (like the
minica root Pebble ships in its source tree) and a `localhost`/127.0.0.1 certificate. Pebble
resolves every name through pebble-challtestsrv (A 127.0.0.1 for any name, no AAAA, TXT
records set through its management API), so http-01 validation connects to 127.0.0.1:httpPort.
Each xdist worker starts its own servers on free ports and stops them at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import ssl
import struct
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.servers import (
    free_udp_tcp_port,
    need_server,
    spawn_logged,
    stop_process,
    wait_answering,
)

__all__ = [
    "ChallDns",
    "PebbleServer",
    "query_txt",
    "run_challdns",
    "run_pebble",
    "start_challdns",
    "start_pebble",
]


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} not found: apt-get install pebble")
    return path


def _wait_http(
    url: str, proc: subprocess.Popen[bytes], log: Path, ctx: ssl.SSLContext | None
) -> None:
    def answers() -> None:
        try:
            with urllib.request.urlopen(url, timeout=2, context=ctx):
                pass
        except urllib.error.HTTPError:
            pass  # it answers

    wait_answering(proc, log, answers, what=f"{proc.args!r} on {url}", deadline_s=15)


# pebble-challtestsrv: the DNS server Pebble asks


@dataclass
class ChallDns:
    """A running pebble-challtestsrv serving mock DNS on `dns_port` (UDP and TCP)."""

    proc: subprocess.Popen[bytes]
    dns_port: int
    management_url: str

    @property
    def dns_address(self) -> str:
        return f"127.0.0.1:{self.dns_port}"

    def _post(self, path: str, body: Mapping[str, str]) -> None:
        req = urllib.request.Request(
            self.management_url + path, data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=5):
            pass

    def set_txt(self, name: str, values: list[str]) -> None:
        """Make `name` answer exactly these TXT values (none: no TXT record)."""
        host = name.rstrip(".") + "."
        self._post("/clear-txt", {"host": host})
        for v in values:
            self._post("/set-txt", {"host": host, "value": v})

    def stop(self) -> None:
        stop_process(self.proc)


def start_challdns(workdir: Path) -> ChallDns:
    binary = _binary("pebble-challtestsrv")
    dns_port, mgmt_port = free_udp_tcp_port(), free_udp_tcp_port()
    log = workdir / "challtestsrv.log"
    argv = [
        binary,
        "-dns01", f"127.0.0.1:{dns_port}",
        "-management", f"127.0.0.1:{mgmt_port}",
        "-http01", "",
        "-https01", "",
        "-tlsalpn01", "",
        "-defaultIPv4", "127.0.0.1",
        "-defaultIPv6", "",
    ]  # fmt: skip
    proc = spawn_logged(argv, log, cwd=workdir)
    srv = ChallDns(proc, dns_port, f"http://127.0.0.1:{mgmt_port}")
    try:
        _wait_http(srv.management_url + "/", proc, log, None)
    except BaseException:
        srv.stop()
        raise
    return srv


def query_txt(server_port: int, name: str, timeout: float = 2.0) -> list[str]:
    """Ask 127.0.0.1:`server_port` over UDP for the TXT records of `name` (what Pebble sees)."""
    qid = secrets.randbelow(65536)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    packet = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 16, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(packet, ("127.0.0.1", server_port))
        data, _ = s.recvfrom(4096)
    rid, _flags, qd, an, _ns, _ar = struct.unpack("!HHHHHH", data[:12])
    assert rid == qid, "DNS answer for another query"
    pos = 12
    for _ in range(qd):
        pos = _skip_name(data, pos) + 4
    out: list[str] = []
    for _ in range(an):
        pos = _skip_name(data, pos)
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", data[pos : pos + 10])
        pos += 10
        rdata = data[pos : pos + rdlen]
        pos += rdlen
        if rtype == 16:
            i, parts = 0, []
            while i < len(rdata):
                n = rdata[i]
                parts.append(rdata[i + 1 : i + 1 + n].decode())
                i += 1 + n
            out.append("".join(parts))
    return out


def _skip_name(data: bytes, pos: int) -> int:
    while True:
        n = data[pos]
        if n == 0:
            return pos + 1
        if n & 0xC0 == 0xC0:
            return pos + 2
        pos += 1 + n


# Pebble


@dataclass
class PebbleServer:
    """A running Pebble; `ca_bundle` trusts its listener, `root_pem` is its issuing root."""

    proc: subprocess.Popen[bytes]
    directory_url: str
    management_url: str
    http_port: int
    tls_port: int
    ca_bundle: str
    root_pem: str
    dns: ChallDns
    log: Path

    def stop(self) -> None:
        stop_process(self.proc)


def _listener_cert(workdir: Path) -> Path:
    """A throwaway CA and a certificate for localhost/127.0.0.1; returns the CA bundle path."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "homeport test pebble listener CA")]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (workdir / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (workdir / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    bundle = workdir / "listener-ca.pem"
    bundle.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return bundle


def start_pebble(
    workdir: Path,
    dns: ChallDns,
    *,
    nosleep: bool = False,
    nonce_reject: int | None = None,
    env: Mapping[str, str] | None = None,
    validity_seconds: int | None = None,
) -> PebbleServer:
    """Start Pebble on free ports; `nonce_reject` None keeps Pebble's default (5 %);
    `validity_seconds` shortens the certificates it issues (default: about five years)."""
    binary = _binary("pebble")
    workdir.mkdir(parents=True, exist_ok=True)
    bundle = _listener_cert(workdir)
    acme_port, mgmt_port, http_port, tls_port = (free_udp_tcp_port() for _ in range(4))
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{acme_port}",
            "managementListenAddress": f"127.0.0.1:{mgmt_port}",
            "certificate": str(workdir / "cert.pem"),
            "privateKey": str(workdir / "key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    if validity_seconds is not None:
        config["pebble"]["certificateValidityPeriod"] = validity_seconds
    (workdir / "pebble-config.json").write_text(json.dumps(config))
    penv = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_")}
    # Every order is validated: Pebble would otherwise reuse a valid authorization at random
    # (50 % by default), and a test of a failing validation would pass or not by chance.
    penv["PEBBLE_AUTHZREUSE"] = "0"
    if nosleep:
        penv["PEBBLE_VA_NOSLEEP"] = "1"
    if nonce_reject is not None:
        penv["PEBBLE_WFE_NONCEREJECT"] = str(nonce_reject)
    penv.update(env or {})
    log = workdir / "pebble.log"
    argv = [binary, "-config", str(workdir / "pebble-config.json"), "-dnsserver", dns.dns_address]
    proc = spawn_logged(argv, log, cwd=workdir, env=penv)
    ctx = ssl.create_default_context(cafile=str(bundle))
    try:
        _wait_http(f"https://127.0.0.1:{acme_port}/dir", proc, log, ctx)
        with urllib.request.urlopen(
            f"https://127.0.0.1:{mgmt_port}/roots/0", timeout=5, context=ctx
        ) as r:
            root_pem = r.read().decode()
    except BaseException:
        stop_process(proc)
        raise
    return PebbleServer(
        proc=proc,
        directory_url=f"https://127.0.0.1:{acme_port}/dir",
        management_url=f"https://127.0.0.1:{mgmt_port}",
        http_port=http_port,
        tls_port=tls_port,
        ca_bundle=str(bundle),
        root_pem=root_pem,
        dns=dns,
        log=log,
    )


def run_challdns(workdir: Path) -> Iterator[ChallDns]:
    """Body of a session fixture: pebble-challtestsrv, or a skip (a failure under CI=true)."""
    try:
        srv = start_challdns(workdir)
    except OSError as e:
        need_server("pebble-challtestsrv", e)
    yield srv
    srv.stop()


def run_pebble(
    workdir: Path,
    dns: ChallDns,
    *,
    nosleep: bool = False,
    nonce_reject: int | None = None,
    env: Mapping[str, str] | None = None,
    validity_seconds: int | None = None,
) -> Iterator[PebbleServer]:
    """Body of a session fixture: Pebble, or a skip (a failure under CI=true)."""
    try:
        srv = start_pebble(
            workdir,
            dns,
            nosleep=nosleep,
            nonce_reject=nonce_reject,
            env=env,
            validity_seconds=validity_seconds,
        )
    except OSError as e:
        need_server("pebble", e)
    yield srv
    srv.stop()
