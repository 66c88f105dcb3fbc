"""A real PowerDNS authoritative server (pdns_server + gsqlite3) for tests, on free loopback ports.

The fixtures `pdns` and `pdns_zone` (tests/conftest.py) are made from `run_pdns`/`fresh_zone`.

`pdns` is one server per xdist worker (session scope): DNS on 127.0.0.1:<port> over UDP and TCP,
the HTTP API on 127.0.0.1:<port> with a random api-key, config, socket dir and sqlite database in
a temporary folder. Caches are off, so a test sees its change on the DNS port at once.
`pdns_zone` is a fresh zone per test (`z<hex>.test`, SOA + NS ns1.<zone> -> 127.0.0.1), deleted
at the end. Debian packages: pdns-server, pdns-backend-sqlite3.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sqlite3
import subprocess
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.servers import (
    free_udp_tcp_port,
    spawn_logged,
    started,
    stop_process,
    wait_answering,
)

__all__ = [
    "PdnsServer",
    "PdnsZone",
    "create_zone",
    "fresh_zone",
    "run_pdns",
]

_SCHEMAS = (
    Path("/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql"),
    Path("/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql"),
)


class PdnsUnavailable(RuntimeError):
    """pdns_server or its sqlite backend is missing, or it did not start."""


@dataclass
class PdnsServer:
    """pdns_server as our child, with its files in `workdir`."""

    workdir: Path
    dns_port: int = 0
    api_port: int = 0
    api_key: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def nameservers(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", self.dns_port)]

    def start(self, deadline_s: float = 20.0) -> None:
        binary = shutil.which("pdns_server", path="/usr/sbin:/usr/bin:/sbin:/bin")
        if binary is None:
            raise PdnsUnavailable("pdns_server not found: apt-get install pdns-server")
        schema = next((p for p in _SCHEMAS if p.is_file()), None)
        if schema is None:
            raise PdnsUnavailable("gsqlite3 schema not found: apt-get install pdns-backend-sqlite3")
        self.workdir.mkdir(parents=True, exist_ok=True)
        db = self.workdir / "pdns.sqlite3"
        with sqlite3.connect(db) as conn:
            conn.executescript(schema.read_text())
        conn.close()
        self.dns_port = self.dns_port or free_udp_tcp_port()
        self.api_port = self.api_port or free_udp_tcp_port()
        conf = self.workdir / "pdns.conf"
        conf.write_text(
            "\n".join(
                [
                    "launch=gsqlite3",
                    f"gsqlite3-database={db}",
                    "local-address=127.0.0.1",
                    f"local-port={self.dns_port}",
                    "api=yes",
                    f"api-key={self.api_key}",
                    "webserver=yes",
                    "webserver-address=127.0.0.1",
                    f"webserver-port={self.api_port}",
                    "webserver-allow-from=127.0.0.0/8",
                    "cache-ttl=0",
                    "negquery-cache-ttl=0",
                    "query-cache-ttl=0",
                    "zone-cache-refresh-interval=0",
                    "distributor-threads=1",
                    "receiver-threads=1",
                    "loglevel=4",
                    "",
                ]
            )
        )
        conf.chmod(0o600)
        self._proc = spawn_logged(
            [
                binary,
                f"--config-dir={self.workdir}",
                f"--socket-dir={self.workdir}",
                "--daemon=no",
                "--guardian=no",
                "--disable-syslog",
                "--write-pid=no",
            ],
            self.workdir / "pdns.log",
        )
        wait_answering(
            self._proc,
            self.workdir / "pdns.log",
            lambda: self.api("GET", "/api/v1/servers/localhost"),
            what=f"pdns_server (API on {self.api_url})",
            deadline_s=deadline_s,
            error=PdnsUnavailable,
            step=0.05,
        )

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """A blocking API call (fixture set-up only); returns the decoded JSON or None."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.api_url + path,
            data=data,
            method=method,
            headers={"X-API-Key": self.api_key, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None


@dataclass(frozen=True)
class PdnsZone:
    """A zone on the test PowerDNS: what a provider needs to reach it."""

    name: str
    server: PdnsServer

    @property
    def api_url(self) -> str:
        return self.server.api_url

    @property
    def api_key(self) -> str:
        return self.server.api_key

    @property
    def nameservers(self) -> list[tuple[str, int]]:
        return self.server.nameservers

    async def put(self, name: str, type: str, contents: Sequence[str], ttl: int = 60) -> None:
        """Write an RRset straight through the API (contents in PowerDNS syntax), as a user would
        with another tool: used to make foreign records."""
        await self._patch(
            {
                "name": name.rstrip(".") + ".",
                "type": type,
                "ttl": ttl,
                "changetype": "REPLACE",
                "records": [{"content": c, "disabled": False} for c in contents],
            }
        )

    async def _patch(self, rrset: dict[str, Any]) -> None:
        async with aiohttp.ClientSession() as s:
            async with s.patch(
                f"{self.api_url}/api/v1/servers/localhost/zones/{self.name}.",
                json={"rrsets": [rrset]},
                headers={"X-API-Key": self.api_key},
            ) as r:
                assert r.status == 204, await r.text()


def create_zone(server: PdnsServer, zone: str) -> None:
    """Create `zone` (Native) with SOA and NS ns1.<zone>, and ns1.<zone> A 127.0.0.1."""
    server.api(
        "POST",
        "/api/v1/servers/localhost/zones",
        {
            "name": f"{zone}.",
            "kind": "Native",
            "nameservers": [],
            "rrsets": [
                {
                    "name": f"{zone}.",
                    "type": "SOA",
                    "ttl": 60,
                    "records": [
                        {
                            "content": f"ns1.{zone}. hostmaster.{zone}. 1 10800 3600 604800 5",
                            "disabled": False,
                        }
                    ],
                },
                {
                    "name": f"{zone}.",
                    "type": "NS",
                    "ttl": 60,
                    "records": [{"content": f"ns1.{zone}.", "disabled": False}],
                },
                {
                    "name": f"ns1.{zone}.",
                    "type": "A",
                    "ttl": 60,
                    "records": [{"content": "127.0.0.1", "disabled": False}],
                },
            ],
        },
    )


def run_pdns() -> Iterator[PdnsServer]:
    """Body of a session fixture: PowerDNS, or a skip (a failure under CI=true)."""
    server = PdnsServer(Path(tempfile.mkdtemp(prefix="hp-pdns-")))
    yield from started(server, "pdns_server", PdnsUnavailable)
    shutil.rmtree(server.workdir, ignore_errors=True)


def fresh_zone(pdns: PdnsServer) -> Iterator[PdnsZone]:
    """Body of a fixture: a fresh zone for one test, removed at the end."""
    zone = f"z{uuid.uuid4().hex[:12]}.test"
    create_zone(pdns, zone)
    yield PdnsZone(zone, pdns)
    pdns.api("DELETE", f"/api/v1/servers/localhost/zones/{zone}.")
