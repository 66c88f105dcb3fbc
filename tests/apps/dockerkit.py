"""Docker helpers for tests: a tiny FROM-scratch probe image, unique names with cleanup, exec.

The fixtures `probe_image`, `runtime` and `dnames` are in tests/apps/conftest.py.

The probe image holds busybox-static and `probe` (tests/apps/probe/probe.c, built with
`gcc -static`): `probe tcp HOST PORT MS` prints open/refused/timeout/unreachable and exits 0,
so a crashed probe (non-zero exit) is never taken for a closed port. Its CMD runs the shell
command in env PROBE_RUN, by default `exec /bin/probe serve 8080` (an HTTP server).
The image is kept between runs (tag hp-test-probe:latest): the build is skipped while the
probe source and busybox are unchanged.
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import json
import random
import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import docker
import docker.errors
import pytest

from services.apps.container import ContainerSpec
from services.apps.runtime import DockerRuntime
from tests.support.servers import need_server

__all__ = [
    "PROBE_IMAGE",
    "DockerNames",
    "app_spec",
    "build_probe_image",
    "connects",
    "docker_exec",
    "docker_names",
    "free_range",
    "host_addresses",
    "probe_many",
    "probe_tcp",
    "wait_for",
    "wait_probe_http",
]

PROBE_IMAGE = "hp-test-probe:latest"
PROBE_SRC = Path(__file__).parent / "probe" / "probe.c"
PROBE_RESULTS = ("open", "refused", "timeout", "unreachable")

_DOCKERFILE = """\
FROM scratch
COPY busybox probe entry.sh /bin/
RUN ["/bin/busybox", "--install", "-s", "/bin"]
CMD ["/bin/sh", "/bin/entry.sh"]
"""
_ENTRY = 'exec /bin/sh -c "${PROBE_RUN:-exec /bin/probe serve 8080}"\n'


def build_probe_context(dest: Path) -> Path:
    """Write the probe image's build context into `dest` (compiling the probe)."""
    dest.mkdir(parents=True, exist_ok=True)
    gcc = shutil.which("gcc")
    if gcc is None:
        raise OSError("gcc not found: apt-get install gcc libc6-dev")
    r = subprocess.run(
        [gcc, "-static", "-O2", "-Wall", "-o", str(dest / "probe"), str(PROBE_SRC)],
        capture_output=True,
        check=False,
    )
    if r.returncode != 0:
        raise OSError(f"gcc -static probe.c failed: {r.stderr.decode(errors='replace')}")
    shutil.copy2("/bin/busybox", dest / "busybox")
    (dest / "entry.sh").write_text(_ENTRY)
    (dest / "Dockerfile").write_text(_DOCKERFILE)
    for p in dest.iterdir():
        p.chmod(0o755)
    return dest


async def _build(docker_host: str, context: Path) -> str:
    async with DockerRuntime(docker_host) as rt:
        return await rt.build_image(PROBE_IMAGE, context)


def build_probe_image(docker_host: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tag of the probe image (built once; both xdist workers wait on one lock)."""
    try:
        context = build_probe_context(tmp_path_factory.mktemp("probe-image"))
        with open(Path(tempfile.gettempdir()) / "hp-test-probe-image.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            asyncio.run(_build(docker_host, context))
    except OSError as e:
        need_server("gcc -static (for the probe image)", e)
    return PROBE_IMAGE


@dataclass(frozen=True)
class DockerNames:
    """Names of one test's Docker objects: `prefix-<what>`; all removed after the test."""

    prefix: str

    def __call__(self, what: str) -> str:
        return f"{self.prefix}-{what}"

    @property
    def labels(self) -> dict[str, str]:
        return {"homeport.test": self.prefix}


def _cleanup(client: docker.DockerClient, prefix: str) -> None:
    api = client.api
    for c in api.containers(all=True, filters={"name": prefix}):
        if any(n.lstrip("/").startswith(prefix) for n in c["Names"]):
            try:
                api.remove_container(c["Id"], force=True)
            except docker.errors.NotFound:
                pass
    for n in api.networks(names=[prefix]):
        if n["Name"].startswith(prefix):
            api.remove_network(n["Id"])
    for v in api.volumes(filters={"name": prefix}).get("Volumes") or []:
        if v["Name"].startswith(prefix):
            api.remove_volume(v["Name"], force=True)
    for img in api.images():
        for tag in img.get("RepoTags") or []:
            if tag.startswith(prefix):
                try:
                    api.remove_image(tag, force=True)
                except docker.errors.NotFound:
                    pass


def docker_names(docker_client: docker.DockerClient) -> Iterator[DockerNames]:
    """Body of a fixture: a unique prefix for one test's Docker objects, cleaned up after."""
    names = DockerNames(f"hpt-{uuid.uuid4().hex[:10]}")
    yield names
    _cleanup(docker_client, names.prefix)


def app_spec(
    names: DockerNames,
    what: str,
    network: str,
    run: str | None = None,
    memory_bytes: int = 64 << 20,
    env: Mapping[str, str] | None = None,
    **kw: object,
) -> ContainerSpec:
    """A ContainerSpec for the probe image running shell command `run` (default: serve 8080)."""
    full_env = dict(env or {})
    if run is not None:
        full_env["PROBE_RUN"] = run
    return ContainerSpec(
        name=names(what),
        image=PROBE_IMAGE,
        network=network,
        env=full_env,
        memory_bytes=memory_bytes,
        labels=names.labels,
        **kw,  # type: ignore[arg-type]
    )


async def docker_exec(
    client: docker.DockerClient, container: str, argv: Sequence[str]
) -> tuple[int, str]:
    """Run argv in the container (as its user): exit code and output."""

    def run() -> tuple[int, str]:
        res = client.containers.get(container).exec_run(list(argv))
        return int(res.exit_code), res.output.decode(errors="replace")

    return await asyncio.to_thread(run)


_END = "--hp-end-of-output--"


async def docker_read(client: docker.DockerClient, container: str, path: str) -> str:
    """A file's text as read in the container (as its user). The exec's output is asked again
    if it came back without its end marker: Docker now and then hands back an exec's output
    short (CI at bbe4832: /proc/1/status without its Cap lines), which is not what the
    container holds."""
    for _ in range(3):
        code, out = await docker_exec(
            client, container, ["/bin/sh", "-c", f'cat "$0" && echo {_END}', path]
        )
        assert code == 0, out
        if out.endswith(f"{_END}\n"):
            return out.removesuffix(f"{_END}\n")
    raise AssertionError(f"reading {path} in {container} kept coming back short: {out!r}")


async def probe_tcp(
    client: docker.DockerClient, container: str, host: str, port: int, timeout_ms: int = 1500
) -> str:
    """open/refused/timeout/unreachable for a TCP connect from inside the container."""
    return (await probe_many(client, container, [(host, port)], timeout_ms))[(host, port)]


async def probe_many(
    client: docker.DockerClient,
    container: str,
    targets: Sequence[tuple[str, int]],
    timeout_ms: int = 1500,
) -> dict[tuple[str, int], str]:
    """Probe all targets at once from inside the container; fails if any probe crashed."""
    lines = []
    for h, p in targets:
        q = shlex.quote(h)
        lines.append(f"(r=$(/bin/probe tcp {q} {p} {timeout_ms}); echo {q} {p} $? $r) &")
    code, out = await docker_exec(client, container, ["/bin/sh", "-c", "\n".join([*lines, "wait"])])
    assert code == 0, f"probe script in {container} exited {code}: {out}"
    results: dict[tuple[str, int], str] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue
        host, port, rc, result = parts
        assert rc == "0", f"probe in {container} crashed for {host}:{port} (exit {rc}): {out}"
        assert result in PROBE_RESULTS, f"probe in {container}: {host}:{port} -> {result}"
        results[(host, int(port))] = result
    missing = [t for t in targets if t not in results]
    assert not missing, f"probe in {container} gave no answer for {missing}: {out}"
    return results


async def wait_for(
    what: str, check: Callable[[], Awaitable[bool]], deadline_s: float = 10.0
) -> None:
    """Poll an async predicate until it is true, failing the test after the deadline."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while loop.time() < end:
        if await check():
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"{what} not within {deadline_s:.0f}s")


async def wait_probe_http(port: int, what: str) -> None:
    """Wait until the probe answers its HTTP request on 127.0.0.1:`port`."""
    async with aiohttp.ClientSession() as http:

        async def answers() -> bool:
            try:
                async with http.get(f"http://127.0.0.1:{port}/") as r:
                    return r.status == 200 and await r.text() == "probe-ok\n"
            except aiohttp.ClientError:
                return False

        await wait_for(what, answers)


async def connects(host: str, port: int) -> bool:
    """Whether a TCP connect from this host to host:port succeeds within 2 s."""
    try:
        _, w = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
    except (OSError, TimeoutError):
        return False
    w.close()
    await w.wait_closed()
    return True


def host_addresses(*own: str) -> list[str]:
    """The host's IPv4 addresses that stay put while a test probes them, sorted: loopback and the
    machine's own links, plus `own` (the gateways of this test's networks).

    Bridges are left out: every other test's Docker network is one, and it may be removed between
    this listing and the probe. A probe to its old address would then leave the machine (a CI run
    saw such an address "open": something off the host answered), which the tests must never do.
    """
    out = subprocess.run(["ip", "-d", "-j", "-4", "addr", "show"], check=True, capture_output=True)
    found = {
        a["local"]
        for link in json.loads(out.stdout)
        if link.get("linkinfo", {}).get("info_kind") != "bridge"
        for a in link.get("addr_info", [])
    }
    return sorted(found | set(own))


def free_range(used: Iterable[str], within: str, prefix: int) -> str:
    """A random /`prefix` of `within` that none of the `used` subnets overlaps (tests running
    at once on the shared dockerd each take their own)."""
    taken = [ipaddress.IPv4Network(u) for u in used]
    ranges = list(ipaddress.IPv4Network(within).subnets(new_prefix=prefix))
    for _ in range(100):
        candidate = random.choice(ranges)
        if not any(candidate.overlaps(u) for u in taken):
            return str(candidate)
    raise AssertionError(f"no free /{prefix} in {within} on the tests' dockerd")
