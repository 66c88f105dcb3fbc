"""Benchmark of the edge: the app page through nginx against the same page straight from its
server.

`edge_proxy_vs_direct`: req/s of a 1 KB page through the edge nginx (HTTPS, keep-alive,
HTTP/1.1, the rendered config of an app vhost with its headers and limits) over req/s straight
to the upstream's published port (plain HTTP), same run, same `wrk` settings, rounds
interleaved; target >= 0.9 (issue 20; 0.7 in issue 5).

The upstream is a FROM-scratch busybox httpd container (`homeport/busybox:local`, never pulled)
with its port published on 127.0.0.1 when a dockerd answers (HP_DOCKER_HOST, else the tests'
shared one, else the system's); otherwise a second nginx serving the file as a static site.
The output says which; HP_BENCH_EDGE_UPSTREAM=nginx asks for the static nginx.
busybox httpd closes the connection after each answer, so the direct
side then pays a connect per request, as a browser talking to that container would.

The app vhost's per-IP limit is raised for the run (`rate_per_ip`): every wrk connection comes
from 127.0.0.1 and the default 30 r/s would answer 429; the limiter itself stays in the path.
wrk connects to 127.0.0.1 with the vhost's name as SNI and Host (`wrk.resolve` overridden in a
Lua script, like `curl --resolve`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import statistics
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.common import Bench, BenchConfig, BenchError, Benchmark, Result, say
from bench.gateway import _Load, _parse_wrk
from deploy.embedded import EmbeddedError, astop, find_binary, free_port
from services.gateway.edge import EdgeError, EdgeModel, Nginx, Vhost

__all__ = ["BENCHMARKS"]

_TARGET = 0.9  # issue 20, raised from 0.7
_HOST = "blog.example.test"
_PAGE = 1024
_IMAGE = "homeport/busybox:local"
_TEST_DOCKER = "unix:///run/homeport-test/docker.sock"
_RESOLVE_LUA = """-- connect to 127.0.0.1; SNI and Host stay the URL's name
wrk.resolve = function(host, service)
   wrk.addrs = wrk.lookup("127.0.0.1", service)
end
"""


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """An ECDSA P-256 certificate for the bench host (wrk does not verify it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _HOST)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(_HOST)]), critical=False)
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


# -- the upstream ---------------------------------------------------------------------------


def _docker_client() -> docker.DockerClient | None:
    """A client of a dockerd that answers and has the busybox image, else None."""
    candidates = [os.environ.get("HP_DOCKER_HOST", ""), _TEST_DOCKER, "unix:///var/run/docker.sock"]
    for url in filter(None, candidates):
        try:
            client = docker.DockerClient(base_url=url, version="auto", timeout=30)
        except docker.errors.DockerException:
            continue
        try:
            client.ping()
            client.images.get(_IMAGE)
            return client
        except docker.errors.DockerException:
            client.close()
    return None


@contextlib.asynccontextmanager
async def _busybox(client: docker.DockerClient) -> AsyncIterator[int]:
    """A busybox httpd container serving the page; yields its published port on 127.0.0.1."""
    tag = f"hp-bench-edge-{uuid.uuid4().hex[:8]}"
    net = await asyncio.to_thread(client.networks.create, tag, driver="bridge")
    container = None
    try:
        script = (
            f"mkdir -p /tmp/www && head -c {_PAGE} /dev/zero | tr '\\0' x > /tmp/www/index.html"
            " && exec httpd -f -p 8080 -h /tmp/www"
        )
        container = await asyncio.to_thread(
            client.containers.run,
            _IMAGE,
            ["sh", "-c", script],
            name=tag,
            detach=True,
            network=net.name,
            ports={"8080/tcp": ("127.0.0.1", None)},
            user="1000:1000",
            read_only=True,
            tmpfs={"/tmp": "uid=1000"},
            labels={"homeport.bench": "edge"},
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
            raise BenchError(f"container {tag} published no port for 8080/tcp")
        yield port
    finally:
        if container is not None:
            with contextlib.suppress(docker.errors.APIError):
                await asyncio.to_thread(container.remove, force=True)
        with contextlib.suppress(docker.errors.APIError):
            await asyncio.to_thread(net.remove)


@contextlib.asynccontextmanager
async def _static_nginx(folder: Path) -> AsyncIterator[int]:
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
        yield port
    finally:
        await astop(proc, signal.SIGQUIT, 10)


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


@dataclass(slots=True)
class _Side:
    label: str
    url: str
    script: Path | None
    loads: list[_Load] = field(default_factory=list)

    async def round(self, r: int, cfg: BenchConfig) -> None:
        load = await _wrk(self.url, cfg, self.script)
        self.loads.append(load)
        errors = f"; socket errors: {load.errors}" if load.errors else ""
        say(
            f"  round {r + 1}  {self.label:<8} {load.rate:>9,.0f} req/s  "
            f"p50 {load.p50 * 1e3:.2f} ms, p99 {load.p99 * 1e3:.2f} ms{errors}"
        )

    @property
    def rate(self) -> float:
        return statistics.median(x.rate for x in self.loads)


async def edge_proxy_vs_direct(b: Bench) -> Result:
    folder = b.servers.root / f"edge-{uuid.uuid4().hex[:6]}"
    folder.mkdir(mode=0o755)
    cert, key = _self_signed(folder)
    script = folder / "resolve.lua"
    script.write_text(_RESOLVE_LUA)
    wanted = os.environ.get("HP_BENCH_EDGE_UPSTREAM", "container")
    client = await asyncio.to_thread(_docker_client) if wanted == "container" else None
    async with contextlib.AsyncExitStack() as stack:
        if client is not None:
            stack.callback(client.close)
            port = await stack.enter_async_context(_busybox(client))
            source = f"busybox httpd in a container ({_IMAGE}), published on 127.0.0.1:{port}"
        else:
            port = await stack.enter_async_context(_static_nginx(folder / "static"))
            why = "HP_BENCH_EDGE_UPSTREAM=nginx" if wanted != "container" else "no dockerd"
            source = f"{why}: a static nginx on 127.0.0.1:{port} (keep-alive)"
        nginx = Nginx(folder / "edge")
        acme = folder / "acme"
        acme.mkdir(mode=0o755)
        model = EdgeModel(
            vhosts=(Vhost(_HOST, "app", f"127.0.0.1:{port}", cert, key),),
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
        try:
            await nginx.apply(model)
            await nginx.start()
        except EdgeError as e:
            raise BenchError(f"the edge nginx did not start: {e}") from e
        stack.push_async_callback(nginx.stop)
        direct_url = f"http://127.0.0.1:{port}/"
        edge_url = f"https://{_HOST}:{model.https_port}/"
        body = await _fetch(edge_url, f"{_HOST}:{model.https_port}:127.0.0.1")
        if len(body) != _PAGE or body != await _fetch(direct_url, None):
            raise BenchError(f"the page through nginx is {len(body)} bytes, not the {_PAGE} B page")
        say(f"  upstream: {source}")
        say(
            f"  ours: wrk -> nginx (1 worker, HTTPS {edge_url}, keep-alive) -> upstream;"
            f" baseline: wrk -> {direct_url} (plain HTTP); {_PAGE} B page;"
            f" wrk -t1 -c{b.cfg.http_connections} -d{b.cfg.http_seconds}s"
        )
        ours = _Side("ours", edge_url, script)
        base = _Side("baseline", direct_url, None)
        for r in range(b.cfg.rounds):
            for side in (ours, base) if r % 2 == 0 else (base, ours):
                await side.round(r, b.cfg)
    ratio = ours.rate / base.rate
    say(f"  median   ours {ours.rate:,.0f} req/s, baseline {base.rate:,.0f} req/s")
    say(f"  ratio    ours/baseline = {ratio:.3f}")
    return Result("edge_proxy_vs_direct", ratio, _TARGET)


BENCHMARKS: dict[str, Benchmark] = {
    "edge_proxy_vs_direct": Benchmark("edge_proxy_vs_direct", edge_proxy_vs_direct, _TARGET),
}
