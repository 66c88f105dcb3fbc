"""Keeps the edge true to the platform: one vhost per installed app and one `my.<domain>` per
domain, each with its DNS record and certificate.

Every `interval` seconds (and at once after a change) it reads the domains (dns service), the
installed apps (apps service) and the certificate files (certs service), and:
- for a host of a registered domain: asks certs for its certificate (a self-signed fallback is
  served until the real one is issued), and for `my.<domain>` dns for its A/AAAA record (apps
  point their own names as a step of their install, services/apps/engine.py);
- for a host of the local domain (`localhost` by default: browsers resolve `*.localhost` to this
  machine): serves a self-signed certificate made here, with no DNS and no ACME;
- for a host that went away (app moved or uninstalled): removes its record and certificate;
- renders the model and applies it to nginx (checked with `nginx -t`; a bad config is never
  applied and the old one keeps serving), and keeps nginx running.
The read models it asks are fed by the events (domain added, app installed/moved/removed,
certificate issued), so the edge follows the events within one interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libs.events.bus import BusClient, BusError
from libs.events.context import Context
from libs.tls import self_signed_pem
from services.gateway.edge.nginx import EdgeError, Nginx
from services.gateway.edge.render import EdgeModel, Vhost

__all__ = ["EdgeSettings", "EdgeSync"]

log = logging.getLogger("homeport.gateway.edge")

SYSTEM = Context("system", "edge-sync", None, None)
ROUTED_STATES = {"installed", "pending_configure", "pending_update", "pending_restore"}


@dataclass(frozen=True)
class EdgeSettings:
    prefix: Path
    http_port: int
    https_port: int
    acme_dir: Path
    dashboard_upstream: str  # 127.0.0.1:<gateway port>
    bind: tuple[str, ...] = ()
    local_domain: str = "localhost"
    interval: float = 2.0
    user: str | None = None


@dataclass
class _Host:
    """What the edge has asked for one host, so it asks once."""

    owner: str
    domain: str
    record: bool = False
    certificate: bool = False


@dataclass
class EdgeSync:
    settings: EdgeSettings
    bus: BusClient
    nginx: Nginx = field(init=False)
    _hosts: dict[str, _Host] = field(default_factory=dict)
    _applied: EdgeModel | None = None
    _known_domains: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    _files: dict[Path, float] = field(default_factory=dict)  # certificate files' mtimes
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _kick: asyncio.Event = field(default_factory=asyncio.Event)
    last_error: str | None = None

    def __post_init__(self) -> None:
        self.nginx = Nginx(self.settings.prefix, user=self.settings.user)

    # -- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()

    def kick(self) -> None:
        """Look again now (after a change the caller knows of)."""
        self._kick.set()

    async def run(self) -> None:
        await asyncio.to_thread(_stop_stale, self.nginx.pid_file)
        try:
            while not self._stop.is_set():
                try:
                    await self.reconcile()
                    self.last_error = None
                except (EdgeError, BusError, OSError, ValueError) as e:
                    self.last_error = str(e)
                    log.error("the edge could not be brought up to date: %s", e)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), self.settings.interval)
                self._kick.clear()
        finally:
            await self.nginx.stop()

    @property
    def ready(self) -> bool:
        return self.nginx.running

    # -- one round -------------------------------------------------------------------------

    async def _ask(self, service: str, name: str, payload: dict[str, Any]) -> Any:
        return await self.bus.query(service, name, payload, ctx=SYSTEM, timeout=10)

    async def _domains(self) -> dict[str, Mapping[str, Any]]:
        try:
            answer = await self._ask("dns", "domains", {})
        except BusError as e:
            if e.code == "unavailable":
                return {}  # no dns service: only the local domain is served
            raise
        return {d["domain"]: d for d in answer.get("items", [])}

    async def _apps(self) -> list[Mapping[str, Any]]:
        try:
            answer = await self._ask("apps", "apps", {"is_admin": True})
        except BusError as e:
            if e.code == "unavailable":
                return []
            raise
        return [a for a in answer.get("items", []) if a.get("state") in ROUTED_STATES]

    async def reconcile(self) -> None:
        s = self.settings
        domains = await self._domains()
        apps = await self._apps()
        wanted: dict[str, tuple[str, str, str]] = {}  # host -> (kind, upstream, owner)
        for domain in sorted({*domains, s.local_domain}):
            wanted[f"my.{domain}"] = ("dashboard", s.dashboard_upstream, "dashboard")
        self._known_domains = domains
        for app in apps:
            if not app.get("http_port"):
                continue
            if app["domain"] in domains or app["domain"] == s.local_domain:
                host = f"{app['location']}.{app['domain']}"
                wanted[host] = ("app", f"127.0.0.1:{app['http_port']}", f"app-{app['app_id']}")
        await self._forget_gone(set(wanted))
        vhosts: list[Vhost] = []
        problems: list[str] = []
        for host, (kind, upstream, owner) in sorted(wanted.items()):
            domain = host.split(".", 1)[1]
            try:
                files = await self._certificate(host, owner, domain, local=domain == s.local_domain)
            except BusError as e:  # one host's trouble must not hold back the others
                problems.append(f"{host}: {e.message}")
                continue
            if files is None:
                continue
            cert, key = files
            vhosts.append(Vhost(host, kind, upstream, cert, key))  # type: ignore[arg-type]
        await self._apply(tuple(vhosts))
        if problems:
            raise EdgeError("some hosts are not served yet: " + "; ".join(problems))

    async def _certificate(
        self, host: str, owner: str, domain: str, *, local: bool
    ) -> tuple[Path, Path] | None:
        if local:
            return await asyncio.to_thread(self._local_certificate, host)
        entry = self._hosts.setdefault(host, _Host(owner, domain))
        if not entry.record and owner == "dashboard":  # apps point their own names (apps)
            view = self._known_domains.get(domain, {})
            for rtype in ("A", "AAAA"):
                address = view.get("server_ipv4" if rtype == "A" else "server_ipv6")
                if address:
                    payload = {"name": host, "type": rtype, "values": [address], "owner": owner}
                    await self.bus.command("dns", "set_record", payload, ctx=SYSTEM, timeout=60)
            entry.record = True
        if not entry.certificate:
            await self.bus.command("certs", "ensure", {"names": [host]}, ctx=SYSTEM, timeout=60)
            entry.certificate = True
        try:
            files = await self._ask("certs", "files", {"host": host})
        except BusError as e:
            if e.code == "not_found":
                return None
            raise
        return Path(files["cert"]), Path(files["key"])

    def _local_certificate(self, host: str) -> tuple[Path, Path]:
        """A self-signed certificate for a host of the local domain, made once."""
        folder = self.settings.prefix / "local-certs" / host
        cert, key = folder / "fullchain.pem", folder / "privkey.pem"
        if not cert.exists() or not key.exists():
            folder.mkdir(parents=True, mode=0o700, exist_ok=True)
            chain_pem, key_pem = self_signed_pem([host], days=825)
            key.write_text(key_pem)
            key.chmod(0o600)
            cert.write_text(chain_pem)
        return cert, key

    async def _forget_gone(self, wanted: set[str]) -> None:
        for host in sorted(set(self._hosts) - wanted):
            entry = self._hosts[host]
            with contextlib.suppress(BusError):
                if entry.record:
                    for rtype in ("A", "AAAA"):
                        with contextlib.suppress(BusError):  # not found: never set
                            await self.bus.command(
                                "dns",
                                "remove_record",
                                {"name": host, "type": rtype, "owner": entry.owner},
                                ctx=SYSTEM,
                                timeout=60,
                            )
                if entry.certificate:
                    await self.bus.command(
                        "certs", "forget", {"primary": host}, ctx=SYSTEM, timeout=60
                    )
            del self._hosts[host]

    async def _apply(self, vhosts: tuple[Vhost, ...]) -> None:
        s = self.settings
        default_cert, default_key = await asyncio.to_thread(
            self._local_certificate, "default.invalid"
        )
        s.acme_dir.mkdir(parents=True, exist_ok=True)
        model = EdgeModel(
            vhosts=vhosts,
            http_port=s.http_port,
            https_port=s.https_port,
            acme_dir=s.acme_dir,
            default_cert=default_cert,
            default_key=default_key,
            log_dir=self.nginx.log_dir,
            pid_file=self.nginx.pid_file,
            temp_dir=self.nginx.temp_dir,
            user=self.nginx.user,
            bind=s.bind,
        )
        files = await asyncio.to_thread(_mtimes, vhosts)
        if model != self._applied or files != self._files:  # a renewed certificate: reload
            await self.nginx.apply(model)
            self._applied, self._files = model, files
            log.info("edge configuration applied: %d vhost(s)", len(vhosts))
        if not self.nginx.running:
            await self.nginx.start()


def _mtimes(vhosts: tuple[Vhost, ...]) -> dict[Path, float]:
    out: dict[Path, float] = {}
    for v in vhosts:
        for path in (v.cert, v.key):
            with contextlib.suppress(OSError):
                out[path] = path.stat().st_mtime
    return out


def _stop_stale(pid_file: Path) -> None:
    """An nginx left by a gateway that was killed (-9) holds the ports: end it first."""
    try:
        pid = int(pid_file.read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return
    if comm != "nginx":
        return
    log.warning("stopping the nginx (pid %d) a previous gateway left running", pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGQUIT)
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
