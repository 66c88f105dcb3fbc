"""Benchmark of the edge: app pages through nginx against the same pages straight from their
servers.

`edge_proxy_vs_direct`: req/s of an app page through the edge nginx (HTTPS, keep-alive,
HTTP/1.1, the rendered config of an app vhost with its headers and limits) to the container's
own address, as the edge reaches an app whose network is of the apps service's subnet pool
(services/apps/subnets.py), over req/s straight to the port the container publishes on
127.0.0.1 (plain HTTP, through docker-proxy: how one reaches a `docker run -p`), same run,
same `wrk` settings, rounds interleaved, medians; target >= 0.9 (issue 20; 0.7 in issue 5),
"with an app that keeps connections open, e.g. the Notes app, alongside busybox". Two
upstreams, each against its own direct baseline, measured in the same run:

- Notes 1.0.1 (the bundled app, built from its folder on `homeport/debian-base:bookworm`, once,
  not measured): a Python ThreadingHTTPServer that keeps connections open (HTTP/1.1), serving
  GET /login, a page without a database round trip. It connects to its Postgres at start: a
  Postgres of the bench's own, listening on the gateway address of the container's network, as
  the stack's addon Postgres does; its LDAP variables are dummies (only signing in uses LDAP).
  Its ratio is the RESULT.
- busybox httpd (`homeport/busybox:local`, never pulled), which closes the connection after
  each answer, so its direct side pays a connect per request, as a browser talking to that
  container would; its ratio is printed beside and is a miss when under the target too.
  HP_BENCH_EDGE_UPSTREAM=nginx puts a static nginx (keep-alive) in its place.

Both containers sit in a network made as the apps service makes one (a /28, icc off, the
container at the second address; the bench takes a free /28 of 10.215.240.0/20) and publish
their port on 127.0.0.1 only, on a dockerd of HP_DOCKER_HOST, else the system's, else the
tests' shared one (started if needed, as bench/apps.py does). Each round prints req/s, p50 and
p99 of every side, and CPU per request of the edge nginx, docker-proxy (the direct side's path),
the app and wrk; the edge rounds of Notes also count the edge's connections
to it (sockets in /proc/net/tcp, sampled every 0.2 s): all seen, and those not seen in an
earlier round (the edge reuses them; nginx replaces one after 1000 requests, its default
upstream keepalive_requests).

One edge nginx serves both vhosts, rendered by the real EdgeModel. Its per-IP limit is raised
for the run (`rate_per_ip`): every wrk connection comes from 127.0.0.1 and the default 30 r/s
would answer 429; the limiter itself stays in the path. wrk connects to 127.0.0.1 with the
vhost's name as SNI and Host (`wrk.resolve` overridden in a Lua script, like `curl --resolve`).
Everything started (containers, network, Postgres, nginx) is stopped at the end, also on a
failure or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import os
import resource
import secrets
import signal
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import docker
import docker.errors
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.apps import _docker_url
from bench.common import Bench, BenchConfig, BenchError, Benchmark, Result, say, tree_cpu
from bench.gateway import _Load, _parse_wrk
from deploy.embedded import EmbeddedError, PostgresServer, astop, find_binary, free_port
from services.apps.base_image import BaseImageError, ensure_base_image
from services.apps.runtime import app_ipam, network_subnets
from services.apps.subnets import PREFIX, app_address
from services.gateway.edge import EdgeError, EdgeModel, Nginx, Vhost

__all__ = ["BENCHMARKS"]

_TARGET = 0.9  # issue 20, raised from 0.7
# the bench's app networks: apart from the apps service's default pool (10.214.0.0/16)
_BENCH_SUBNETS = "10.215.240.0/20"
_BUSYBOX_HOST = "static.example.test"
_NOTES_HOST = "notes.example.test"
_PAGE = 1024
_IMAGE = "homeport/busybox:local"
_NOTES = Path(__file__).resolve().parents[1] / "services/apps/bundled/org.homeport.notes/1.0.1"
_NOTES_PATH = "/login"  # the sign-in form: no database round trip
# where the tests keep the debootstrap tarball the base image is imported from
_BASE_CACHE = Path("/var/lib/homeport-test/base-image-cache")
_BUILD_S = 1800  # a cold machine: debootstrap, then apt in the build
_HEALTHY_S = 90.0
_SAMPLE_S = 0.2
_RESOLVE_LUA = """-- connect to 127.0.0.1; SNI and Host stay the URL's name
wrk.resolve = function(host, service)
   wrk.addrs = wrk.lookup("127.0.0.1", service)
end
"""

_T = TypeVar("_T")


def _self_signed(folder: Path, hosts: tuple[str, ...]) -> tuple[Path, Path]:
    """An ECDSA P-256 certificate for the bench hosts (wrk does not verify it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


async def _to_thread_to_end(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """`fn` in a thread; cancelled, it still waits for `fn` to end, so whatever `fn` started
    (a container, a server) exists by the time the clean-up looks for it."""
    fut = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await fut
        raise


# -- the upstreams --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Upstream:
    """An app server published on 127.0.0.1:`port` (the direct side), reached by the edge at
    `address` (its container's own, as the apps service's upstream), serving `path` as vhost
    `host`."""

    label: str
    connections: str  # how it treats connections: "connection per request" or "keep-alive"
    host: str
    port: int
    path: str
    source: str
    app_pid: int | None  # the host pid of its server process (CPU per request)
    proxy_pid: int | None  # docker-proxy of the published port (the direct side's path)
    address: str  # <ip>:<port> the edge proxies to


def _docker_proxy(port: int) -> int | None:
    """The pid of the docker-proxy publishing 127.0.0.1:`port`, if dockerd uses one."""
    want = ["-host-ip", "127.0.0.1", "-host-port", str(port)]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv and argv[0].endswith("docker-proxy"):
            if any(argv[i : i + len(want)] == want for i in range(len(argv))):
                return int(entry.name)
    return None


def _free_subnet(client: docker.DockerClient) -> str:
    """A /28 of `_BENCH_SUBNETS` no network of this dockerd overlaps."""
    used = [ipaddress.IPv4Network(s) for s in network_subnets(client.api)]
    for subnet in ipaddress.IPv4Network(_BENCH_SUBNETS).subnets(new_prefix=PREFIX):
        if not any(subnet.overlaps(u) for u in used):
            return str(subnet)
    raise BenchError(f"no /{PREFIX} of {_BENCH_SUBNETS} is free on this dockerd")


@contextlib.asynccontextmanager
async def _network(client: docker.DockerClient, name: str) -> AsyncIterator[tuple[str, str]]:
    """A bridge network `name` as the apps service makes one from its pool (services/apps/
    subnets.py: a /28, the container at its second address); yields its gateway and subnet."""
    try:
        subnet = await asyncio.to_thread(_free_subnet, client)
        net = await _to_thread_to_end(
            client.networks.create, name, driver="bridge", ipam=app_ipam(subnet),
            options={"com.docker.network.bridge.enable_icc": "false"},
        )  # fmt: skip
        await asyncio.to_thread(net.reload)
        ipam = net.attrs["IPAM"]["Config"][0]
        yield ipam["Gateway"], ipam["Subnet"]
    finally:
        for n in await asyncio.to_thread(client.networks.list, names=[name]):
            with contextlib.suppress(docker.errors.APIError):
                await asyncio.to_thread(n.remove)


@contextlib.asynccontextmanager
async def _container(
    client: docker.DockerClient, name: str, image: str, network: str, subnet: str, **kwargs: Any
) -> AsyncIterator[tuple[Any, int]]:
    """A container `name` under the apps' rules with port 8080 published on 127.0.0.1, at the
    second address of `subnet` on `network` (as services/apps/operations/common.py makes an
    app's); yields it and the published port. Removed at the end, found by name (also when its
    start was interrupted)."""
    endpoint = client.api.create_endpoint_config(ipv4_address=app_address(subnet))
    try:
        container = await _to_thread_to_end(
            client.containers.run,
            image,
            name=name,
            detach=True,
            ports={"8080/tcp": ("127.0.0.1", None)},
            user="1000:1000",
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            pids_limit=256,
            labels={"homeport.bench": "edge"},
            network=network,
            networking_config={network: endpoint},
            **kwargs,
        )
        port = 0
        for _ in range(100):
            await asyncio.to_thread(container.reload)
            bound = container.ports.get("8080/tcp")
            if bound:
                port = int(bound[0]["HostPort"])
                break
            await asyncio.sleep(0.05)
        if not port:
            raise BenchError(f"container {name} published no port for 8080/tcp")
        yield container, port
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            found = await asyncio.to_thread(client.containers.get, name)
            with contextlib.suppress(docker.errors.APIError):
                await asyncio.to_thread(found.remove, force=True)


@contextlib.asynccontextmanager
async def _busybox(client: docker.DockerClient) -> AsyncIterator[_Upstream]:
    """busybox httpd serving the 1 KB page; it closes the connection after each answer."""
    tag = f"hp-bench-edge-{uuid.uuid4().hex[:8]}"
    script = (
        f"mkdir -p /tmp/www && head -c {_PAGE} /dev/zero | tr '\\0' x > /tmp/www/index.html"
        " && exec httpd -f -p 8080 -h /tmp/www"
    )
    async with contextlib.AsyncExitStack() as stack:
        _, subnet = await stack.enter_async_context(_network(client, tag))
        container, port = await stack.enter_async_context(
            _container(
                client, tag, _IMAGE, tag, subnet, command=["sh", "-c", script],
                tmpfs={"/tmp": "uid=1000"},
            )
        )  # fmt: skip
        address = f"{app_address(subnet)}:8080"
        source = (
            f"busybox httpd in a container ({_IMAGE}), at {address}, published on 127.0.0.1:{port}"
        )
        pid = int(container.attrs["State"]["Pid"]) or None
        yield _Upstream(
            "busybox", "connection per request", _BUSYBOX_HOST, port, "/", source, pid,
            _docker_proxy(port), address,
        )  # fmt: skip


@contextlib.asynccontextmanager
async def _static_nginx(folder: Path) -> AsyncIterator[_Upstream]:
    """A second nginx serving the page as a static file on a free port of 127.0.0.1."""
    folder.mkdir(mode=0o755, parents=True)
    (folder / "www").mkdir(mode=0o755)
    (folder / "www" / "index.html").write_bytes(b"x" * _PAGE)
    port = free_port()
    user = "user www-data;\n" if os.geteuid() == 0 else ""
    (folder / "nginx.conf").write_text(
        f"{user}worker_processes 1;\npid {folder}/nginx.pid;\n"
        f"error_log {folder}/error.log warn;\nevents {{ worker_connections 1024; }}\n"
        f"http {{ access_log off; client_body_temp_path {folder}/tmp; "
        f"proxy_temp_path {folder}/tmp; fastcgi_temp_path {folder}/tmp; "
        f"uwsgi_temp_path {folder}/tmp; scgi_temp_path {folder}/tmp; keepalive_requests 100000;"
        f" server {{ listen 127.0.0.1:{port}; root {folder}/www; }} }}\n"
    )
    try:
        binary = find_binary("nginx")
    except EmbeddedError as e:
        raise BenchError("nginx not found: install the Debian package nginx-light") from e
    proc = await asyncio.create_subprocess_exec(
        binary, "-e", "stderr", "-p", f"{folder}/", "-c", str(folder / "nginx.conf"),
        "-g", "daemon off;", stdin=asyncio.subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        for _ in range(200):
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            await asyncio.sleep(0.05)
        else:
            raise BenchError(f"the static nginx did not listen on 127.0.0.1:{port}")
        source = f"HP_BENCH_EDGE_UPSTREAM=nginx: a static nginx on 127.0.0.1:{port} (keep-alive)"
        yield _Upstream(
            "nginx", "keep-alive", _BUSYBOX_HOST, port, "/", source, proc.pid, None,
            f"127.0.0.1:{port}",
        )  # fmt: skip
    finally:
        await astop(proc, signal.SIGQUIT, 10)


def _build_notes(url: str) -> str:
    """The Notes 1.0.1 image, built from its bundle folder as the tests build it; its tag."""
    manifest = json.loads((_NOTES / "manifest.json").read_text())
    tag = f"homeport-app/{manifest['id']}:{manifest['version']}"
    client = docker.DockerClient(base_url=url, version="auto", timeout=_BUILD_S)
    try:
        # the build reaches the Debian mirror through the host's network
        client.images.build(path=str(_NOTES), tag=tag, network_mode="host", rm=True, forcerm=True)
    except docker.errors.BuildError as e:
        log = "".join(str(c.get("stream", c.get("error", ""))) for c in e.build_log)
        raise BenchError(f"docker build of {tag} failed: {e}\n{log[-2000:]}") from e
    except docker.errors.DockerException as e:
        raise BenchError(f"docker build of {tag} failed: {e}") from e
    finally:
        client.close()
    return tag


@contextlib.asynccontextmanager
async def _notes_postgres(folder: Path, gateway: str, subnet: str) -> AsyncIterator[str]:
    """A Postgres on 127.0.0.1 and the network's gateway address (the network's subnet logs in
    with a password, as at the addon Postgres) with a database for Notes; yields its URL as
    the container sees it."""
    folder.mkdir(mode=0o755)
    hba = folder / "pg_hba.conf"
    hba.write_text(
        "local all all trust\n"
        "host all postgres 127.0.0.1/32 trust\n"
        f"host all all {subnet} scram-sha-256\n"
    )
    hba.chmod(0o644)
    pg = PostgresServer(
        folder, fsync=False, listen=("127.0.0.1", gateway), hba_file=hba, max_connections=20
    )
    try:
        try:
            await _to_thread_to_end(pg.start)
        except EmbeddedError as e:
            raise BenchError(f"the Postgres for Notes did not start: {e}") from e
        password = secrets.token_urlsafe(24)
        conn = await asyncpg.connect(pg.dsn)
        try:
            await conn.execute(f"CREATE ROLE notes LOGIN PASSWORD '{password}'")
            await conn.execute("CREATE DATABASE notes OWNER notes")
        finally:
            await conn.close()
        yield f"postgresql://notes:{password}@{gateway}:{pg.port}/notes"
    finally:
        with contextlib.suppress(EmbeddedError):
            await asyncio.to_thread(pg.stop)


async def _healthy(container: Any, port: int) -> None:
    """Until GET /healthz (the manifest's check, a database round trip) answers 200."""
    end = time.monotonic() + _HEALTHY_S
    while time.monotonic() < end:
        await asyncio.to_thread(container.reload)
        if container.status == "exited":
            break
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            try:
                w.write(b"GET /healthz HTTP/1.1\r\nHost: notes\r\nConnection: close\r\n\r\n")
                line = await asyncio.wait_for(r.readline(), 5)
            finally:
                w.close()
            if line.split()[1:2] == [b"200"]:
                return
        await asyncio.sleep(0.2)
    logs = (await asyncio.to_thread(container.logs, tail=30)).decode(errors="replace")
    raise BenchError(f"Notes did not answer 200 on /healthz within {_HEALTHY_S:.0f} s:\n{logs}")


@contextlib.asynccontextmanager
async def _notes(client: docker.DockerClient, url: str, folder: Path) -> AsyncIterator[_Upstream]:
    """Notes 1.0.1 in a container of its own network, its Postgres on the gateway address."""
    image = await _to_thread_to_end(_build_notes, url)
    manifest = json.loads((_NOTES / "manifest.json").read_text())
    tag = f"hp-bench-notes-{uuid.uuid4().hex[:8]}"
    async with contextlib.AsyncExitStack() as stack:
        gateway, subnet = await stack.enter_async_context(_network(client, tag))
        database = await stack.enter_async_context(_notes_postgres(folder, gateway, subnet))
        dummy = "unused-only-sign-in-uses-ldap"
        env = {
            "HOMEPORT_POSTGRESQL_URL": database,
            "HOMEPORT_LDAP_HOST": gateway,
            "HOMEPORT_LDAP_PORT": "389",
            "HOMEPORT_LDAP_BIND_DN": f"cn={dummy}",
            "HOMEPORT_LDAP_BIND_PASSWORD": dummy,
            "HOMEPORT_LDAP_USERS_BASE_DN": f"ou={dummy}",
            "HOMEPORT_APP_ORIGIN": f"https://{_NOTES_HOST}",
        }
        container, port = await stack.enter_async_context(
            _container(
                client, tag, image, tag, subnet, environment=env,
                tmpfs={"/tmp": "", "/app/data": "uid=1000,gid=1000"},
                mem_limit=int(manifest["memoryLimit"]),
            )
        )  # fmt: skip
        await _healthy(container, port)
        await asyncio.to_thread(container.reload)
        pid = int(container.attrs["State"]["Pid"]) or None
        address = f"{app_address(subnet)}:8080"
        source = (
            f"Notes {manifest['version']} in a container ({image}, HTTP/1.1 keep-alive), at"
            f" {address}, published on 127.0.0.1:{port}; GET {_NOTES_PATH}"
        )
        yield _Upstream(
            "notes", "keep-alive", _NOTES_HOST, port, _NOTES_PATH, source, pid,
            _docker_proxy(port), address,
        )  # fmt: skip


# -- measuring ------------------------------------------------------------------------------


async def _wrk(url: str, cfg: BenchConfig, script: Path | None) -> _Load:
    try:
        wrk = find_binary("wrk")
    except EmbeddedError as e:
        raise BenchError("wrk not found: `make bench` installs it (Debian package wrk)") from e
    argv = [wrk, "-t1", f"-c{cfg.http_connections}", f"-d{cfg.http_seconds}s", "--latency"]
    if script is not None:
        argv += ["-s", str(script)]
    proc = await asyncio.create_subprocess_exec(
        *argv, url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), cfg.http_seconds + 30)
    finally:
        await astop(proc, signal.SIGTERM, 5)
    if proc.returncode != 0:
        raise BenchError(f"wrk exited with code {proc.returncode}:\n{out.decode(errors='replace')}")
    return _parse_wrk(out.decode(errors="replace"))


async def _fetch(url: str, resolve: str | None) -> bytes:
    """One GET with curl (-k: the bench's certificate is self-signed); the body."""
    argv = ["curl", "-sS", "-k", "--fail", "--http1.1", url]
    if resolve is not None:
        argv[1:1] = ["--resolve", resolve]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    if proc.returncode != 0:
        raise BenchError(f"GET {url} failed: {err.decode(errors='replace').strip()}")
    return out


def _connections_to(address: str) -> set[int]:
    """Local ports of the established connections to `address` (<ip>:<port>, /proc/net/tcp)."""
    ip, _, port = address.rpartition(":")
    remote = f"{bytes(reversed(ipaddress.IPv4Address(ip).packed)).hex().upper()}:{int(port):04X}"
    out: set[int] = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            cols = line.split()
            if cols[2] == remote and cols[3] == "01":
                out.add(int(cols[1].rsplit(":", 1)[1], 16))
    return out


class _ConnectionWatch:
    """The edge's connections to an upstream seen while in `async with` (sampled)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.seen: set[int] = set()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.seen |= _connections_to(self.address)
            await asyncio.sleep(_SAMPLE_S)

    async def __aenter__(self) -> _ConnectionWatch:
        self.seen = set()
        self._task = asyncio.create_task(self._run(), name="edge-connection-watch")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


@dataclass(slots=True)
class _Side:
    label: str
    url: str
    script: Path | None
    upstream: _Upstream
    edge_pid: Callable[[], int | None] | None  # the edge nginx's master, on the edge sides
    watch: bool = False  # count the edge's connections to the upstream
    loads: list[_Load] = field(default_factory=list)
    known: set[int] = field(default_factory=set)

    def _cpu(self) -> dict[str, float]:
        pids = {"app": self.upstream.app_pid, "docker-proxy": self.upstream.proxy_pid}
        if self.edge_pid is not None:
            pids = {"nginx": self.edge_pid(), **pids}
        cpu = {name: tree_cpu(pid) for name, pid in pids.items() if pid is not None}
        done = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once it has ended
        return {**cpu, "wrk": done.ru_utime + done.ru_stime}

    async def round(self, r: int, cfg: BenchConfig) -> None:
        before = self._cpu()
        async with contextlib.AsyncExitStack() as stack:
            watch = None
            if self.watch:
                watch = await stack.enter_async_context(_ConnectionWatch(self.upstream.address))
            load = await _wrk(self.url, cfg, self.script)
        self.loads.append(load)
        after = self._cpu()
        per = 1e6 / max(load.requests, 1)
        cpu = ", ".join(f"{k} {(after[k] - before[k]) * per:.0f} us" for k in after)
        errors = f"; socket errors: {load.errors}" if load.errors else ""
        conns = ""
        if watch is not None:
            new = watch.seen - self.known
            self.known |= watch.seen
            conns = f"; upstream connections {len(watch.seen)}, new {len(new)}"
        say(
            f"  round {r + 1}  {self.label:<16} {load.rate:>9,.0f} req/s  "
            f"p50 {load.p50 * 1e3:.2f} ms, p99 {load.p99 * 1e3:.2f} ms  "
            f"(cpu/req: {cpu}{conns}){errors}"
        )

    @property
    def rate(self) -> float:
        return statistics.median(x.rate for x in self.loads)

    def summary(self) -> str:
        p50 = statistics.median(x.p50 for x in self.loads) * 1e3
        p99 = statistics.median(x.p99 for x in self.loads) * 1e3
        return f"{self.label:<16} {self.rate:>9,.0f} req/s  p50 {p50:.2f} ms, p99 {p99:.2f} ms"


async def edge_proxy_vs_direct(b: Bench) -> Result:
    folder = b.servers.root / f"edge-{uuid.uuid4().hex[:6]}"
    folder.mkdir(mode=0o755)
    cert, key = _self_signed(folder, (_NOTES_HOST, _BUSYBOX_HOST))
    script = folder / "resolve.lua"
    script.write_text(_RESOLVE_LUA)
    url = await asyncio.to_thread(_docker_url)
    async with contextlib.AsyncExitStack() as stack:
        client = docker.DockerClient(base_url=url, version="auto", timeout=60)
        stack.callback(client.close)
        try:
            await ensure_base_image(url, _BASE_CACHE)  # and the busybox image
        except BaseImageError as e:
            raise BenchError(f"the images the upstreams are built from: {e}") from e
        if os.environ.get("HP_BENCH_EDGE_UPSTREAM", "container") == "nginx":
            closing = await stack.enter_async_context(_static_nginx(folder / "static"))
        else:
            closing = await stack.enter_async_context(_busybox(client))
        notes = await stack.enter_async_context(_notes(client, url, folder / "notes-pg"))
        nginx = Nginx(folder / "edge")
        acme = folder / "acme"
        acme.mkdir(mode=0o755)
        model = EdgeModel(
            vhosts=tuple(Vhost(u.host, "app", u.address, cert, key) for u in (closing, notes)),
            http_port=free_port(),
            https_port=free_port(),
            acme_dir=acme,
            default_cert=cert,
            default_key=key,
            log_dir=nginx.log_dir,
            pid_file=nginx.pid_file,
            temp_dir=nginx.temp_dir,
            user=nginx.user,
            bind=("127.0.0.1",),
            rate_per_ip="1000000r/s",
            worker_processes=1,
        )
        stack.push_async_callback(nginx.stop)
        try:
            await nginx.apply(model)
            await nginx.start()
        except EdgeError as e:
            raise BenchError(f"the edge nginx did not start: {e}") from e
        sides: list[_Side] = []
        for u in (closing, notes):
            edge_url = f"https://{u.host}:{model.https_port}{u.path}"
            direct_url = f"http://127.0.0.1:{u.port}{u.path}"
            body = await _fetch(edge_url, f"{u.host}:{model.https_port}:127.0.0.1")
            direct = await _fetch(direct_url, None)
            if u is notes:
                if b"Sign in" not in body or b"Sign in" not in direct:
                    raise BenchError(f"{edge_url} or {direct_url} is not Notes' sign-in page")
            elif len(body) != _PAGE or body != direct:
                raise BenchError(f"the page through nginx is {len(body)} bytes, not the {_PAGE} B")
            say(f"  upstream: {u.source}")
            watch = u is notes
            sides += [
                _Side(f"{u.label} edge", edge_url, script, u, lambda: nginx.pid, watch),
                _Side(f"{u.label} direct", direct_url, None, u, None),
            ]
        say(
            f"  edge: wrk -> nginx (1 worker, HTTPS, keep-alive, upstream keepalive as rendered)"
            f" -> the container's address; direct: wrk -> its published port (plain HTTP);"
            f" wrk -t1 -c{b.cfg.http_connections} -d{b.cfg.http_seconds}s"
        )
        for r in range(b.cfg.rounds):
            for side in sides if r % 2 == 0 else sides[::-1]:
                await side.round(r, b.cfg)
    for side in sides:
        say(f"  median   {side.summary()}")
    ratio = sides[2].rate / sides[3].rate  # notes
    other = sides[0].rate / sides[1].rate
    say(
        f"  ratio    edge/direct: notes ({notes.connections}) {ratio:.3f},"
        f" {closing.label} ({closing.connections}) {other:.3f}"
    )
    misses: tuple[str, ...] = ()
    if other < _TARGET:
        misses = (
            f"{closing.label} ({closing.connections}): edge/direct {other:.3f} < {_TARGET:g}",
        )
    return Result("edge_proxy_vs_direct", ratio, _TARGET, misses=misses)


BENCHMARKS: dict[str, Benchmark] = {
    "edge_proxy_vs_direct": Benchmark("edge_proxy_vs_direct", edge_proxy_vs_direct, _TARGET),
}
