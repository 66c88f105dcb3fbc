"""Keeps the edge true to the platform: one vhost per routed app and one `my.<domain>` per
domain (plus the local domain).

It follows the events that change what it serves, app (installed, moved, removed), domain
(added, removed) and certificate (ordered, issued, forgotten) ones, as the relay publishes them
(`<prefix>.<category>.<Type>`), and reconciles at once, a burst of events once (`debounce`).
An event is only a nudge: each round reads the whole picture again from the read models (the
domains from dns, the apps from apps, the certificate files from certs, each written in the
same transaction as its events), so a missed event costs nothing but time: every `interval`
seconds (a slow safety net) it reconciles anyway. A round:
- for an app's host: reads its certificate files from certs (apps owns the host's DNS record and
  certificate, services/apps) and skips the host until certs has some; for a host of the local
  domain (`localhost` by default: browsers resolve `*.localhost` to this machine) it serves a
  self-signed certificate made here, with no DNS and no ACME;
- for `my.<domain>`, the edge's own host: sets its A/AAAA record (dns) and asks certs for its
  certificate once (a self-signed fallback is served until the real one is issued), and
  removes both when the domain goes;
- for an app that signs users in at the edge (its manifest's `signIn`, read from the catalog)
  and whose access list is not everyone: has nginx ask the gateway about every request
  (signin.py), and hands the gateway the app's list before nginx asks;
- serves the dashboard at the server's own addresses (https://<address>/, render.py's
  `EdgeModel.address`) until the platform has a domain of its own whose `my.<domain>` is served
  with a certificate a CA issued (or one uploaded): the installer's setup link names the
  address, and a domain just added (its DNS not pointed here yet, its certificate not issued)
  must not take the only way to the dashboard away; then the address is refused as any
  unknown host is;
- for every dashboard: who may reach it, the firewall's allow list for scope `dashboard` (the
  last `AllowListChanged` of its stream, read from the event store each round, which holds the
  list in force: a trial's and its undoing too); an `AllowListChanged` event starts a round;
- renders the model and applies it to nginx (checked with `nginx -t`; a bad config is never
  applied and the old one keeps serving), and keeps nginx running.
`serves(host)` says whether the live generation (applied and reloaded) has a vhost for `host`:
the gateway's `edge_host` query, which apps waits on before saying "installed at https://...".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from libs.events.bus import BusClient, BusError
from libs.events.context import Context
from libs.events.nats_access import GATEWAY
from libs.events.relay import DEFAULT_PREFIX
from libs.events.store import PostgresEventStore
from libs.tls import self_signed_pem_apart
from services.gateway.config import GatewayConfig
from services.gateway.edge.nginx import Nginx
from services.gateway.edge.render import EdgeModel, Vhost
from services.gateway.edge.signin import EdgeAccess, Rule
from services.gateway.errors import EdgeError

__all__ = [
    "DASHBOARD_ALLOW_STREAM",
    "FOLLOWED",
    "FOLLOWED_TYPES",
    "ROUTED_STATES",
    "EdgeSettings",
    "EdgeSync",
    "edge_settings",
]

log = logging.getLogger("homeport.gateway.edge")

# the gateway acting for itself (never "system": libs/events/bus.py refuses that from it)
AS_GATEWAY = Context(GATEWAY, "edge-sync", None, None)
ROUTED_STATES = {"installed", "pending_configure", "pending_update", "pending_restore"}
FOLLOWED = ("app", "domain", "cert")  # the event categories that change what the edge serves
# ... and the events of other categories that do: who may reach the dashboard
FOLLOWED_TYPES = ("firewall.AllowListChanged",)
# The firewall's stream of the dashboard's allow list (services/firewall/events.py: each
# AllowListChanged holds the whole list in force after it).
DASHBOARD_ALLOW_STREAM = "firewall-allow-dashboard"
DASHBOARD = "dashboard"  # the owner of my.<domain>'s record
ISSUED = ("acme", "custom")  # kinds of certificate (certs' `files`) a browser trusts


@dataclass(frozen=True)
class EdgeSettings:
    prefix: Path
    http_port: int
    https_port: int
    acme_dir: Path
    dashboard_upstream: str  # 127.0.0.1:<gateway port>
    bind: tuple[str, ...] = ()
    local_domain: str = "localhost"
    interval: float = 30.0  # seconds between rounds when no event comes (the safety net)
    retry: float = 2.0  # ... and when dns or apps did not answer (not up yet, after a reboot)
    debounce: float = 0.05  # seconds an event waits for the rest of its burst
    events_prefix: str = DEFAULT_PREFIX  # the relay's subjects: <prefix>.<category>.<Type>
    user: str | None = None


def edge_settings(cfg: GatewayConfig, gateway_port: int) -> EdgeSettings:
    """The edge of a gateway whose HTTP port (the dashboard's upstream) is `gateway_port`."""
    return EdgeSettings(
        prefix=cfg.edge_dir.absolute(),
        http_port=cfg.edge_http_port,
        https_port=cfg.edge_https_port,
        acme_dir=cfg.acme_dir.absolute(),
        dashboard_upstream=f"127.0.0.1:{gateway_port}",
        bind=cfg.edge_bind,
        local_domain=cfg.local_domain,
        interval=cfg.edge_interval,
        events_prefix=cfg.events_prefix,
    )


@dataclass
class _Host:
    """What the edge has asked for one `my.<domain>`, so it asks once."""

    record: bool = False
    certificate: bool = False


@dataclass
class EdgeSync:
    settings: EdgeSettings
    nc: NATS  # the bus to dns, apps and certs; the events the relay publishes
    access: EdgeAccess = field(default_factory=EdgeAccess)  # what the gateway's check reads
    # the event store, for the dashboard's allow list; None: the dashboard is open to all
    store: PostgresEventStore | None = None
    bus: BusClient = field(init=False)
    nginx: Nginx = field(init=False)
    last_error: str | None = None
    rounds: int = 0  # reconciliations begun
    _hosts: dict[str, _Host] = field(default_factory=dict)  # my.<domain> of registered domains
    _applied: EdgeModel | None = None
    _live: frozenset[str] = frozenset()  # hosts of the generation nginx serves
    _files: dict[Path, float] = field(default_factory=dict)  # certificate files' mtimes
    _sign_in: dict[tuple[str, str], str] = field(default_factory=dict)  # (id, version) -> how
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _kick: asyncio.Event = field(default_factory=asyncio.Event)
    # Services that did not answer in the last round (not started yet, e.g. after a reboot):
    # the next round comes after `retry`, not after the 30 s safety net, so apps are served
    # again as soon as the apps service is up.
    _unavailable: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.bus = BusClient(self.nc, sender=GATEWAY, default_timeout=10)
        self.nginx = Nginx(self.settings.prefix, user=self.settings.user)

    # -- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()

    def kick(self) -> None:
        """Reconcile now (an event came)."""
        self._kick.set()

    async def run(self) -> None:
        await asyncio.to_thread(_stop_stale, self.nginx.pid_file)
        subs: list[Subscription] = []
        try:
            # Subscribed before the first round reads anything: no change slips in between.
            subjects = [*(f"{c}.>" for c in FOLLOWED), *FOLLOWED_TYPES]
            for subject in subjects:
                full = f"{self.settings.events_prefix}.{subject}"
                subs.append(await self.nc.subscribe(full, cb=self._event))
            while not self._stop.is_set():
                try:
                    await self.reconcile()
                    self.last_error = None
                except (EdgeError, BusError, OSError, ValueError) as e:
                    self.last_error = str(e)
                    log.error("the edge could not be brought up to date: %s", e)
                wait = self.settings.interval
                if self._unavailable:
                    wait = min(self.settings.retry, wait)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), wait)
                with contextlib.suppress(TimeoutError):  # the rest of a burst comes along
                    await asyncio.wait_for(self._stop.wait(), self.settings.debounce)
                self._kick.clear()
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):  # the connection may be closed already
                    await sub.unsubscribe()
            self._live = frozenset()
            await self.nginx.stop()

    async def _event(self, msg: Msg) -> None:
        self.kick()

    def up(self) -> bool:
        """Whether nginx runs and serves a generation (the gateway's readiness): not as soon
        as its process is spawned, while it is still coming up."""
        return self.nginx.running and bool(self._live)

    def serves(self, host: str) -> bool:
        """Whether the nginx generation that is live has a vhost for `host`."""
        return self.nginx.running and host in self._live

    # -- one round -------------------------------------------------------------------------

    async def _ask(self, service: str, name: str, payload: dict[str, Any]) -> Any:
        return await self.bus.query(service, name, payload, ctx=AS_GATEWAY, timeout=10)

    async def _domains(self) -> dict[str, Mapping[str, Any]]:
        try:
            answer = await self._ask("dns", "domains", {})
        except BusError as e:
            if e.code == "unavailable":
                self._unavailable.add("dns")
                return {}  # no dns service: only the local domain is served
            raise
        self._unavailable.discard("dns")
        return {d["domain"]: d for d in answer.get("items", [])}

    async def _apps(self) -> list[Mapping[str, Any]]:
        try:
            answer = await self._ask("apps", "apps", {})
        except BusError as e:
            if e.code == "unavailable":
                self._unavailable.add("apps")
                return []
            raise
        self._unavailable.discard("apps")
        return [a for a in answer.get("items", []) if a.get("state") in ROUTED_STATES]

    async def _signs_in_at_edge(self, app: Mapping[str, Any]) -> bool:
        """Whether the edge signs `app`'s users in: unless its manifest says they sign in to
        the app itself ("ldap", the default with the ldap addon). "none" apps are refused a
        list that is not everyone, but one may come with an update: the edge enforces it
        then, as it does when the catalog cannot tell (fail closed)."""
        key = (str(app.get("manifest_id")), str(app.get("version")))
        how = self._sign_in.get(key)
        if how is None:
            try:
                entry = await self._ask(
                    "apps", "catalog_app", {"manifest_id": key[0], "version": key[1]}
                )
            except BusError as e:
                log.warning("how %s %s signs users in is unknown (%s): at the edge", *key, e)
                if e.code == "not_found":  # gone from the catalog: not worth asking again
                    self._sign_in[key] = "edge"
                return True
            how = entry.get("sign_in") or ("ldap" if "ldap" in entry.get("addons", []) else "edge")
            self._sign_in[key] = how
        return how != "ldap"

    async def _rule(self, app: Mapping[str, Any]) -> Rule | None:
        """The rule the gateway enforces for `app`, None when the edge has nothing to check."""
        access = app.get("access") or {"all_users": True}
        if access.get("all_users") or not await self._signs_in_at_edge(app):
            return None
        return Rule(frozenset(access.get("user_ids", [])), frozenset(access.get("groups", [])))

    async def _dashboard_allow(self) -> tuple[str, ...]:
        """Who may reach the dashboard: the list of the last AllowListChanged of scope
        dashboard (empty: everyone, also when there is none or no store)."""
        if self.store is None:
            return ()
        stream = DASHBOARD_ALLOW_STREAM
        try:
            version = await self.store.stream_version(stream)
            last = await self.store.read_stream(stream, version - 1, 1) if version else []
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            raise EdgeError(f"the dashboard's allow list could not be read: {e}") from e
        if not last:
            return ()
        cidrs = last[0].data.get("cidrs")
        if not isinstance(cidrs, list) or not all(isinstance(c, str) for c in cidrs):
            raise EdgeError(
                f"the last event of {stream} (version {version}) has no list of CIDRs: "
                "the dashboard keeps the list it had"
            )
        return tuple(cidrs)

    async def reconcile(self) -> None:
        """One round: read what should be served, render, apply (EdgeError if a host failed)."""
        self.rounds += 1
        s = self.settings
        allow = await self._dashboard_allow()  # first: a failure keeps the config as it is
        domains = await self._domains()
        apps = await self._apps()
        wanted: dict[str, tuple[str, str]] = {}  # host -> (kind, upstream)
        rules: dict[str, Rule] = {}  # hosts signed in at the edge
        for domain in sorted({*domains, s.local_domain}):
            wanted[f"my.{domain}"] = (DASHBOARD, s.dashboard_upstream)
        for app in apps:
            if not app.get("http_port"):
                continue
            if app["domain"] in domains or app["domain"] == s.local_domain:
                host = f"{app['location']}.{app['domain']}"
                # its container's own address (a subnet of the pool: subnets.py), else the
                # port published on 127.0.0.1, through docker-proxy. A stopped app's too: its
                # address would keep a visitor ~3 s (the neighbour lookup) before the 502
                # that a closed port gives at once.
                upstream = app.get("upstream") if app.get("run_state") != "stopped" else None
                wanted[host] = ("app", upstream or f"127.0.0.1:{app['http_port']}")
                rule = await self._rule(app)
                if rule is not None:
                    rules[host] = rule
        await self._forget_gone(set(wanted))
        vhosts: list[Vhost] = []
        problems: list[str] = []
        issued = False  # a my.<domain> of a domain of its own served with a real certificate
        for host, (kind, upstream) in sorted(wanted.items()):
            domain = host.split(".", 1)[1]
            files: tuple[Path, Path, str] | None
            try:
                if domain == s.local_domain:
                    files = (*await self._local_certificate(host), "local")
                elif kind == DASHBOARD:
                    files = await self._own_certificate(host, domains.get(domain, {}))
                else:
                    files = await self._certificate_files(host)
            except BusError as e:  # one host's trouble must not hold back the others
                problems.append(f"{host}: {e.message}")
                continue
            if files is None:
                continue
            cert, key, how = files
            if kind == DASHBOARD and how in ISSUED:
                issued = True
            auth = s.dashboard_upstream if host in rules else None
            local = domain == s.local_domain
            vhosts.append(
                Vhost(host, kind, upstream, cert, key, auth=auth, loopback=local)  # type: ignore[arg-type]
            )
        self.access.replace(rules)  # before nginx asks about a host newly signed in here
        await self._apply(tuple(vhosts), None if issued else s.dashboard_upstream, allow)
        if problems:
            raise EdgeError("some hosts are not served yet: " + "; ".join(problems))

    async def _own_certificate(
        self, host: str, view: Mapping[str, Any]
    ) -> tuple[Path, Path, str] | None:
        """my.<domain> (`view`: the domain as dns lists it): its A/AAAA record and its
        certificate, asked for once; then its files."""
        entry = self._hosts.setdefault(host, _Host())
        if not entry.record:
            for rtype in ("A", "AAAA"):
                address = view.get("server_ipv4" if rtype == "A" else "server_ipv6")
                if address:
                    payload = {"name": host, "type": rtype, "values": [address], "owner": DASHBOARD}
                    await self.bus.command("dns", "set_record", payload, ctx=AS_GATEWAY, timeout=60)
            entry.record = True
        if not entry.certificate:
            await self.bus.command("certs", "ensure", {"names": [host]}, ctx=AS_GATEWAY, timeout=60)
            entry.certificate = True
        return await self._certificate_files(host)

    async def _certificate_files(self, host: str) -> tuple[Path, Path, str] | None:
        """The certificate and key certs keeps for `host` and their kind (acme, custom,
        fallback); None while it has none."""
        try:
            files = await self._ask("certs", "files", {"host": host})
        except BusError as e:
            if e.code == "not_found":
                return None
            raise
        return Path(files["cert"]), Path(files["key"]), str(files.get("kind") or "fallback")

    async def _local_certificate(self, host: str) -> tuple[Path, Path]:
        """A self-signed certificate for a host of the local domain, made once (in a child
        process: the gateway does not keep cryptography's x509 loaded for it)."""
        folder = self.settings.prefix / "local-certs" / host
        cert, key = folder / "fullchain.pem", folder / "privkey.pem"
        if not cert.exists() or not key.exists():
            folder.mkdir(parents=True, mode=0o700, exist_ok=True)
            chain_pem, key_pem = await self_signed_pem_apart([host], days=825)
            key.write_text(key_pem)
            key.chmod(0o600)
            cert.write_text(chain_pem)
        return cert, key

    async def _forget_gone(self, wanted: set[str]) -> None:
        """The record and certificate of a `my.<domain>` whose domain went away; what could
        not be forgotten yet (dns or certs unavailable) is tried again at the next round."""
        for host in sorted(set(self._hosts) - wanted):
            entry = self._hosts[host]
            try:
                if entry.record:
                    for rtype in ("A", "AAAA"):
                        await _unless_gone(
                            self.bus.command(
                                "dns",
                                "remove_record",
                                {"name": host, "type": rtype, "owner": DASHBOARD},
                                ctx=AS_GATEWAY,
                                timeout=60,
                            )
                        )
                    entry.record = False
                if entry.certificate:
                    await _unless_gone(
                        self.bus.command(
                            "certs", "forget", {"primary": host}, ctx=AS_GATEWAY, timeout=60
                        )
                    )
                    entry.certificate = False
            except BusError as e:
                log.warning("%s is no longer served; forgetting it failed: %s", host, e.message)
                continue  # asked again at the next round
            del self._hosts[host]

    async def _apply(
        self, vhosts: tuple[Vhost, ...], address: str | None, allow: tuple[str, ...] = ()
    ) -> None:
        """Serve `vhosts`, and the dashboard at `address` (its upstream) on the server's own
        addresses unless None; the dashboard to `allow` (and loopback) only, unless empty."""
        s = self.settings
        default_cert, default_key = await self._local_certificate("default.invalid")
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
            address=address,
            dashboard_allow=allow,
        )
        files = await asyncio.to_thread(_mtimes, vhosts)
        if model != self._applied or files != self._files:  # a renewed certificate: reload
            await self.nginx.apply(model)  # reloaded when running: the new generation is live
            self._applied, self._files = model, files
            log.info("edge configuration applied: %d vhost(s)", len(vhosts))
        if not self.nginx.running:
            await self.nginx.start()
        self._live = frozenset(v.host for v in model.vhosts)


async def _unless_gone(call: Awaitable[Any]) -> None:
    """Await a removal; one whose target is not there (never set, or gone already) is done."""
    try:
        await call
    except BusError as e:
        if e.code != "not_found":
            raise


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
