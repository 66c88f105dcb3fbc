"""A Debian 12 "server" for installer tests: a container on the tests' dockerd with systemd as
PID 1, Docker inside it, and every Debian package deploy/install.sh installs already there.

The image: the apps' Debian base (services/apps/base_image.py: debootstrap bookworm minbase,
cached as a tarball, imported as `homeport/debian-base:bookworm`) plus `apt-get install` of the
server packages (`deploy/install-system-deps.sh --server --list`) and systemd, systemd-sysv,
dbus, curl, run in a build container with network mode host (as base_image.py builds apps), then
`docker export`ed to `/var/cache/homeport-test/systemd-box-<key>.tar` (key: a hash of the
package list and this recipe) and `docker import`ed. A second debootstrap is not needed: the
base tarball is shared with the apps' tests. Built once under a lock file (xdist workers).

The box: not privileged (the tests' own container lacks CAP_SYS_RESOURCE, and privileged asks
for every capability): every other capability, seccomp and AppArmor unconfined, a private
cgroup namespace, tmpfs on /run, /run/lock and /tmp, stop signal SIGRTMIN+3, container=docker.
Docker leaves the cgroup v1 hierarchies read-only; a oneshot unit of the image
(hpbox-cgroup-rw.service, before docker.service) remounts them read-write at every boot so the
inner dockerd can run containers with limits. The inner dockerd's /var/lib/docker is a docker
volume (overlay on overlay fails). The box is on a user-defined bridge network of its own (the
tests' dockerd runs `--bridge none`), never on the host's network: the firewall service writes
nftables rules.

The wheelhouse for the box's venv: `pip wheel` of the platform's dependencies pinned by
constraints.txt (plus setuptools to build the platform itself), into
`/var/cache/homeport-test/wheels/<key>`, built once under a lock; mounted read-only in the box.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from deploy.units import RESTORE_RECOVER

__all__ = [
    "BOX_RELEASES",
    "BOX_SRC",
    "BOX_WHEELS",
    "Boxes",
    "SystemdBox",
    "base_tarball",
    "box_api",
    "box_curl",
    "box_units",
    "checkout",
    "ensure_box_image",
    "ensure_wheelhouse",
    "host_relay",
    "server_packages",
    "until",
]

REPO = Path(__file__).resolve().parents[2]
CACHE = Path("/var/cache/homeport-test")
BOX_WHEELS = "/srv/wheels"  # where the wheelhouse is mounted in the box
BOX_SRC = "/srv/homeport"  # the checkout (read-only), whose deploy/install.sh the tests run
BOX_RELEASES = "/srv/releases"  # a host folder for release archives (`Boxes.releases`)
BOX_PACKAGES = ("systemd", "systemd-sysv", "dbus", "curl")
_RECIPE = "3"  # bump when the build below changes: the cached tarball is rebuilt
_BASE_IMAGE = "homeport/debian-base:bookworm"
_BASE_TARBALL = "debian-bookworm-minbase.tar"
# where the apps' tests keep the debootstrap tarball (tests/apps/appskit.py, test_bundled_apps.py)
_BASE_CACHES = (CACHE, Path("/var/lib/homeport-test/base-image-cache"))
# Every capability but CAP_SYS_RESOURCE (which the tests' own container does not have).
_CAPS = (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP "
    "LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER "
    "SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_TIME "
    "SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG "
    "WAKE_ALARM BLOCK_SUSPEND AUDIT_READ"
).split()
_CGROUP_UNIT = """[Unit]
Description=Remount the cgroup v1 hierarchies read-write (test box: Docker mounts them ro)
DefaultDependencies=no
Before=docker.service sysinit.target
ConditionPathIsReadWrite=!/sys/fs/cgroup/memory

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'for d in /sys/fs/cgroup/*; do \\
  [ -L "$d" ] || mount -o remount,bind,rw "$d" || true; done'

[Install]
WantedBy=sysinit.target
"""
_BUILD_SCRIPT = """set -e
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends {packages} >/tmp/apt.log 2>&1 \\
  || {{ tail -20 /tmp/apt.log; exit 1; }}
apt-get clean
rm -rf /var/lib/apt/lists/* /tmp/apt.log
systemctl enable hpbox-cgroup-rw.service >/dev/null
systemctl mask apt-daily.timer apt-daily-upgrade.timer getty@tty1.service >/dev/null
echo homeport-box >/etc/hostname
"""


def server_packages() -> list[str]:
    """The Debian packages deploy/install.sh installs on a server (its one list)."""
    out = subprocess.run(
        ["bash", str(REPO / "deploy" / "install-system-deps.sh"), "--server", "--list"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return sorted({p for p in out.split() if p})


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # both xdist workers get here: one builds
        yield


def _say(message: str) -> None:
    print(f"[systemd-box] {message}", file=sys.stderr, flush=True)


# -- the image -------------------------------------------------------------------------------


def ensure_box_image(client: docker.DockerClient, docker_host: str) -> str:
    """The box image's tag on this dockerd: imported from the cached tarball, built first when
    the tarball is missing."""
    packages = sorted({*server_packages(), *BOX_PACKAGES})
    key = hashlib.sha256(
        "\n".join([_RECIPE, _BUILD_SCRIPT, _CGROUP_UNIT, *packages]).encode()
    ).hexdigest()[:12]
    tag = f"homeport-test/systemd-box:{key}"
    tarball = CACHE / f"systemd-box-{key}.tar"
    with _locked(CACHE / "systemd-box.lock"):
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.get(tag)
            return tag
        if not tarball.is_file():
            _build_tarball(client, docker_host, packages, tarball)
            _forget_other_boxes(client, tarball, tag)
        started = time.monotonic()
        repository, _, version = tag.partition(":")
        client.api.import_image_from_file(
            str(tarball),
            repository=repository,
            tag=version,
            changes=[
                "ENV container=docker",
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                'CMD ["/sbin/init"]',
            ],
        )
        _say(f"imported {tarball.name} as {tag} in {time.monotonic() - started:.0f} s")
    return tag


def _forget_other_boxes(client: docker.DockerClient, keep: Path, tag: str) -> None:
    """Tarballs and images of earlier recipes or package lists (850 MB each) go."""
    for old in keep.parent.glob("systemd-box-*.tar"):
        if old != keep:
            old.unlink(missing_ok=True)
    repository = tag.partition(":")[0]
    for image in client.images.list(name=repository):
        for old_tag in image.tags:
            if old_tag != tag:
                with contextlib.suppress(docker.errors.DockerException):
                    client.images.remove(old_tag)


def _build_tarball(
    client: docker.DockerClient, docker_host: str, packages: list[str], tarball: Path
) -> None:
    started = time.monotonic()
    import asyncio

    from services.apps.base_image import ensure_base_image

    asyncio.run(ensure_base_image(docker_host, CACHE))  # the apps' tests share this tarball
    _say(f"building the box image: apt-get install {' '.join(packages)}")
    script = _BUILD_SCRIPT.format(packages=" ".join(packages))
    box = client.containers.create(
        _BASE_IMAGE,
        ["/bin/sh", "-c", script],
        network_mode="host",  # reaches the Debian mirror as the apps' builds do
        name=f"hpbox-build-{uuid.uuid4().hex[:8]}",
    )
    try:
        unit = _CGROUP_UNIT.encode()
        box.put_archive("/etc/systemd/system", _tar({"hpbox-cgroup-rw.service": unit}))
        box.start()
        result = box.wait(timeout=1800)
        logs = box.logs().decode(errors="replace")
        if result.get("StatusCode") != 0:
            raise RuntimeError(f"building the systemd box image failed:\n{logs[-3000:]}")
        partial = tarball.with_name(tarball.name + ".partial")
        with partial.open("wb") as f:
            for chunk in box.export(chunk_size=1 << 20):
                f.write(chunk)
        os.replace(partial, tarball)  # a half-written tarball is never taken as cached
    finally:
        box.remove(force=True)
    _say(f"built {tarball} in {time.monotonic() - started:.0f} s")


def _tar(files: dict[str, bytes], mode: int = 0o644) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def base_tarball(docker_host: str) -> Path:
    """The apps' debootstrap tarball on this machine, made (once, under base_image.py's lock)
    when no test made it yet: the box's installer then reuses it instead of debootstrapping."""
    for cache in _BASE_CACHES:
        if (cache / _BASE_TARBALL).is_file():
            return cache / _BASE_TARBALL
    import asyncio

    from services.apps import base_image

    async def make() -> Path:
        async with base_image._locked(CACHE, None):
            return await base_image._make_tarball(CACHE, base_image.DEFAULT_MIRROR, None)

    CACHE.mkdir(parents=True, exist_ok=True)
    return asyncio.run(make())


# -- the wheelhouse --------------------------------------------------------------------------


def ensure_wheelhouse(python: str = sys.executable) -> Path:
    """`pip wheel` of the platform's dependencies (constraints.txt) and setuptools, once."""
    constraints = (REPO / "constraints.txt").read_bytes()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    deps = sorted(project["project"]["dependencies"])
    build = [*sorted(project["build-system"]["requires"]), "wheel"]
    key = hashlib.sha256(constraints + "\n".join(deps + build).encode()).hexdigest()[:12]
    out = CACHE / "wheels" / key
    with _locked(CACHE / "wheels.lock"):
        if (out / ".complete").is_file():
            return out
        started = time.monotonic()
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        pip = [python, "-m", "pip", "--disable-pip-version-check", "-q"]
        for argv in (
            [*pip, "wheel", "-c", str(REPO / "constraints.txt"), "-w", str(out), *deps],
            [*pip, "wheel", "-w", str(out), *build],
        ):
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=1200, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(argv[3:5])} failed: {proc.stderr[-2000:]}")
        (out / ".complete").write_text("")
        _say(f"wheelhouse {out} made in {time.monotonic() - started:.0f} s")
    return out


# -- the box ---------------------------------------------------------------------------------


_EXEC_DIR = "/var/lib/hp-test-exec"  # where `SystemdBox.run` has output written (not a tmpfs:
# the archive API does not see into the tmpfs mounts, such as /run and /tmp)


class SystemdBox:
    """One running box; `remove()` (or the context manager) deletes it, its network and volume."""

    def __init__(
        self,
        client: docker.DockerClient,
        image: str,
        *,
        mounts: dict[str, str] | None = None,  # host path -> box path, read-only
    ) -> None:
        self.client = client
        self.name = f"hpbox-{uuid.uuid4().hex[:10]}"
        self.network = client.networks.create(self.name, driver="bridge")
        self.volume = client.volumes.create(f"{self.name}-docker")
        volumes = {self.volume.name: {"bind": "/var/lib/docker", "mode": "rw"}}
        for host, box in (mounts or {}).items():
            volumes[host] = {"bind": box, "mode": "ro"}
        self.ok = False  # a test sets it when it passed; else the fixture prints diagnose()
        try:
            self.container: Container = self._start(image, volumes)
        except docker.errors.DockerException:
            self.network.remove()
            self.volume.remove(force=True)
            raise

    def _start(self, image: str, volumes: dict[str, dict[str, str]]) -> Container:
        return self.client.containers.run(
            image,
            detach=True,
            name=self.name,
            hostname="homeport-box",
            cap_add=list(_CAPS),
            security_opt=["seccomp=unconfined", "apparmor=unconfined"],
            cgroupns="private",
            tmpfs={"/run": "", "/run/lock": "", "/tmp": ""},
            stop_signal="SIGRTMIN+3",
            environment={"container": "docker"},
            network=self.network.name,
            volumes=volumes,
        )

    def __enter__(self) -> SystemdBox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    @property
    def address(self) -> str:
        """The box's address on its network (reachable from the tests' host)."""
        self.container.reload()
        nets = self.container.attrs["NetworkSettings"]["Networks"]
        return str(nets[self.network.name]["IPAddress"])

    @property
    def host_address(self) -> str:
        """The tests' host on the box's network (the bridge's gateway): what the box reaches
        of it, as another machine on a server's network."""
        self.network.reload()
        return str(self.network.attrs["IPAM"]["Config"][0]["Gateway"])

    def run(self, *argv: str, check: bool = True, env: dict[str, str] | None = None) -> str:
        """Run argv in the box (as root); its output (stdout and stderr). Nonzero exit with
        `check` raises with the output's end."""
        code, text = self._exec(argv, env)
        if check and code != 0:
            raise AssertionError(f"{' '.join(argv)} exited with {code}:\n{text[-4000:]}")
        return text

    def _exec(self, argv: Iterable[str], env: dict[str, str] | None = None) -> tuple[int, str]:
        """argv's exit code and output, written to files in the box and read back through the
        archive API: Docker's exec now and then loses a short-lived command's output on a
        loaded machine (`date`, `sha256sum`, `systemctl show` came back empty in CI runs)."""
        folder = f"{_EXEC_DIR}/{uuid.uuid4().hex}"
        script = 'mkdir -p "$0" && { "$@" > "$0/out" 2>&1; echo "$?" > "$0/rc"; }'
        self.container.exec_run(["/bin/sh", "-c", script, folder, *argv], environment=env)
        try:
            chunks, _ = self.container.get_archive(folder)
            with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
                files = {
                    Path(m.name).name: f.read()
                    for m in tar.getmembers()
                    if m.isfile() and (f := tar.extractfile(m)) is not None
                }
        except docker.errors.NotFound:
            raise AssertionError(f"{' '.join(argv)}: the box did not run it") from None
        finally:
            self.container.exec_run(["rm", "-rf", folder])
        if "rc" not in files:
            raise AssertionError(f"{' '.join(argv)}: no exit code (the box stopped it?)")
        return int(files["rc"]), files.get("out", b"").decode(errors="replace")

    def read(self, *argv: str) -> str:
        """`run` of a command that always prints something (date, sha256sum)."""
        text = self.run(*argv)
        if not text.strip():
            raise AssertionError(f"{' '.join(argv)} printed nothing")
        return text

    def status(self, *argv: str) -> tuple[int, str]:
        """Run argv in the box; its exit code and output."""
        return self._exec(argv)

    def sh(self, script: str, check: bool = True) -> str:
        return self.run("/bin/sh", "-c", script, check=check)

    def put(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write one file in the box (its folder must exist)."""
        folder, name = path.rsplit("/", 1)
        self.container.put_archive(folder or "/", _tar({name: data}, mode))

    def copy_in(self, host_file: Path, folder: str) -> None:
        """Copy one host file (streamed) into an existing folder of the box."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(str(host_file), arcname=host_file.name)
        self.container.put_archive(folder, buf.getvalue())

    def wait_booted(self, timeout: float = 120.0) -> str:
        """Wait until systemd finished booting; its state (`running` or `degraded`)."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            _, out = self.container.exec_run(["systemctl", "is-system-running"])
            state = out.decode(errors="replace").strip() if out else ""
            if state in ("running", "degraded"):
                return state
            time.sleep(0.25)
        raise AssertionError(f"systemd in {self.name} did not finish booting: {state!r}")

    def diagnose(self) -> str:
        """What went wrong, for a failed test's output: failed units and the journal's end."""
        return self.sh(
            "systemctl --failed --no-pager; systemctl list-units 'homeport*' --all --no-pager;"
            " journalctl -b --no-pager -n 150 -u 'homeport*' | cut -c1-400;"
            # a failed unit's own last lines whole (a service's error is at the end of a long
            # JSON line)
            " for u in $(systemctl --failed --plain --no-legend 'homeport*' | cut -d' ' -f1"
            ' | head -3); do echo "== $u"; journalctl -b --no-pager -n 4 -o cat -u $u'
            " | cut -c1-3000; done",
            check=False,
        )

    def restart(self, timeout: int = 60) -> None:
        """`docker restart`: systemd stops every unit (SIGRTMIN+3), the box boots again."""
        self.container.restart(timeout=timeout)

    def remove(self) -> None:
        with contextlib.suppress(docker.errors.DockerException):
            self.container.remove(force=True, v=True)
        with contextlib.suppress(docker.errors.DockerException):
            self.network.remove()
        with contextlib.suppress(docker.errors.DockerException):
            self.volume.remove(force=True)


class Boxes:
    """The boxes of one test session (tests/deploy/conftest.py `boxes`), each with the checkout,
    the wheelhouse and a release folder mounted and the apps' base tarball in its data dir.

    Booting a box and installing the platform on it take a minute: the installer's tests
    (test_install.py) take a `fresh()` box and, once done, `keep()` it installed; the server
    restore test (test_server_restore.py, after them in the xdist group `systemd-box`) takes
    that platform with `installed()` instead of installing one more on a box of its own. Run
    in another order or alone, each still gets a box of its own, never one a test changed in
    a way it does not expect. Every box is removed at the end of the session."""

    def __init__(self, tmp_path_factory: Any) -> None:
        self._tmp = tmp_path_factory
        self._client: docker.DockerClient | None = None
        self._image = ""
        self._mounts: dict[str, str] = {}
        self._base: Path | None = None
        self._boxes: list[SystemdBox] = []
        self._kept: SystemdBox | None = None
        self.releases: Path | None = None  # the host side of BOX_RELEASES

    def _ready(self, docker_host: str) -> docker.DockerClient:
        if self._client is None:
            client = docker.DockerClient(base_url=docker_host, timeout=1800)
            try:
                client.ping()
                started = time.monotonic()
                self._image = ensure_box_image(client, docker_host)
                wheels = ensure_wheelhouse()
                self._base = base_tarball(docker_host)
            except BaseException:
                client.close()
                raise
            src = checkout(self._tmp.mktemp("checkout"))
            self.releases = self._tmp.mktemp("releases")
            self._mounts = {str(src): BOX_SRC, str(wheels): BOX_WHEELS,
                            str(self.releases): BOX_RELEASES}  # fmt: skip
            _say(f"image, wheelhouse and base tarball ready in {time.monotonic() - started:.0f} s")
            self._client = client
        return self._client

    def fresh(self, docker_host: str) -> SystemdBox:
        """A new box, booted, nothing installed on it yet."""
        client = self._ready(docker_host)
        box = SystemdBox(client, self._image, mounts=self._mounts)
        try:
            box.wait_booted()
            # the apps' base image tarball is on the host already: no second debootstrap
            box.run("install", "-d", "/var/lib/homeport/base-cache")
            assert self._base is not None
            box.copy_in(self._base, "/var/lib/homeport/base-cache")
        except BaseException:
            box.remove()
            raise
        self._boxes.append(box)
        return box

    def keep(self, box: SystemdBox) -> None:
        """`box` has the platform installed and running (the installer's tests passed on it):
        left for `installed()`."""
        self._kept = box

    def done(self, box: SystemdBox) -> None:
        """`box` is of no more use: removed now (a box runs a whole platform)."""
        if box is self._kept:
            self._kept = None
        if box in self._boxes:
            self._boxes.remove(box)
        box.remove()

    def installed(self, docker_host: str) -> SystemdBox:
        """The box the installer's tests kept (once: it is the taker's now), else a fresh one
        for the taker to install on."""
        box, self._kept = self._kept, None
        return box if box is not None else self.fresh(docker_host)

    def close(self) -> None:
        for box in self._boxes:
            box.remove()
        if self._client is not None:
            self._client.close()


# -- shared by the box tests (tests/deploy/test_install.py keeps its own copies) -------------


def checkout(into: Path) -> Path:
    """The checkout's files as a user's copy holds them: tracked and new (not ignored) files,
    and the built dashboard; no .git, no venv."""
    from deploy.release import DASHBOARD_DIST

    out = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    names = {n for n in out.decode().split("\0") if n}
    dist = REPO / DASHBOARD_DIST
    if dist.is_dir():
        names.update(p.relative_to(REPO).as_posix() for p in dist.rglob("*") if p.is_file())
    for name in sorted(names):
        src = REPO / name
        if not src.is_file() or src.is_symlink():
            continue
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, into / name)
    return into


def box_units(box: SystemdBox) -> dict[str, dict[str, str]]:
    """{unit: its properties} of every homeport-*.service the box has loaded (not the recovery
    after a cut-off restore: a oneshot the others require, skipped unless one was cut off)."""
    out = box.run(
        "systemctl", "show", "--property=Id,ActiveState,SubState,MainPID", "homeport-*.service"
    )
    blocks = [dict(line.split("=", 1) for line in b.splitlines() if "=" in line)
              for b in out.strip().split("\n\n")]  # fmt: skip
    return {
        b["Id"]: b
        for b in blocks
        if b.get("Id", "").startswith("homeport-") and b["Id"] != RESTORE_RECOVER
    }


def box_curl(box: SystemdBox, host: str, path: str, *args: str) -> tuple[int, str]:
    """HTTPS to `host` on the box's port 443 (as a browser on the server: *.localhost is the
    loopback address); (status, body)."""
    argv = ["curl", "-sk", "--max-time", "20", "--resolve", f"{host}:443:127.0.0.1",
            "-w", "\n%{http_code}", *args, f"https://{host}{path}"]  # fmt: skip
    out = box.run(*argv, check=False)
    body, _, code = out.rpartition("\n")
    return int(code) if code.isdigit() else 0, body


def box_api(
    box: SystemdBox, method: str, path: str, body: object = None, host: str = "my.localhost"
) -> tuple[int, object]:
    """The dashboard's API in the box, with the cookie jar /root/jar; (status, JSON body)."""
    args = ["-X", method, "-b", "/root/jar", "-c", "/root/jar", "-H", f"Origin: https://{host}"]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    status, text = box_curl(box, host, path, *args)
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text


def until(what: str, check: object, timeout: float) -> None:
    """Wait until `check()` is true; an AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        if check():  # type: ignore[operator]
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.5)  # a look is a `docker exec` or two (a probe runs python): not 1 s each


# -- a server of the tests' host, for the box ------------------------------------------------


@contextlib.contextmanager
def host_relay(address: str, ports: Iterable[int]) -> Iterator[None]:
    """Each of `ports` on `address` (the box's `host_address`) forwarded, TCP and UDP, to the
    same port on this host's loopback, where the tests run their servers (PowerDNS): to the box
    they are a DNS host on its network. Threads, ended when the block ends."""
    listeners: list[socket.socket] = []  # and the connections they took
    threads: list[threading.Thread] = []
    stopping = threading.Event()

    def start(target: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        threads.append(t)

    def pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def serve_tcp(listener: socket.socket, port: int) -> None:
        while not stopping.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            listeners.extend((client, upstream))
            start(pump, client, upstream)
            start(pump, upstream, client)

    def answer_udp(listener: socket.socket, port: int, query: bytes, peer: tuple[str, int]) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as upstream:
            upstream.settimeout(5)
            with contextlib.suppress(OSError):
                upstream.sendto(query, ("127.0.0.1", port))
                listener.sendto(upstream.recv(65536), peer)

    def serve_udp(listener: socket.socket, port: int) -> None:
        while not stopping.is_set():
            try:
                query, peer = listener.recvfrom(65536)
            except OSError:
                return
            start(answer_udp, listener, port, query, peer)

    try:
        for port in ports:
            tcp = socket.create_server((address, port))
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            listeners += [tcp, udp]
            udp.bind((address, port))
            start(serve_tcp, tcp, port)
            start(serve_udp, udp, port)
        yield
    finally:
        stopping.set()
        for s in listeners:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in threads:
            t.join(timeout=5)
