"""The local images bundled apps build FROM: a Debian base (debootstrap → `docker import`) and
a busybox one, made on this machine so no registry is ever needed.

`homeport/debian-base:bookworm` is `debootstrap --variant=minbase` of bookworm from the
configured mirror, kept as `cache_dir/debian-bookworm-minbase.tar` (built once, reused) and
imported with `docker import`. Its apt sources point at that mirror, so an app's Dockerfile
installs its Debian packages with `RUN apt-get update && apt-get install ...`: the build
container needs to reach the mirror, which works here with the build's network mode `host`
(docker SDK `images.build(network_mode="host")`; a user-defined bridge reaches it too where
dockerd masquerades). That was preferred over installing packages into per-app copies of the
debootstrap tree with chroot: Dockerfiles stay ordinary, layers of the base are shared, and a
build context is self-sufficient given the base image.

`homeport/busybox:local` is the host's statically linked /bin/busybox (Debian package
`busybox-static`) with a symlink per applet, imported the same way. A committed build
context holds source only, so it cannot COPY a binary from outside itself; it says
`FROM homeport/busybox:local` instead. `ensure_base_image` makes both images, so the
runtime's one call before building any bundled app is enough.

Two processes (or two tasks) making the images at once serialize on a lock file in
`cache_dir`; the one that comes second finds the image and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import docker
import docker.errors

from services.apps.errors import AppsError

__all__ = [
    "BASE_IMAGE",
    "BUSYBOX_IMAGE",
    "DEFAULT_MIRROR",
    "BaseImageError",
    "ensure_base_image",
    "ensure_busybox_image",
]

BASE_IMAGE = "homeport/debian-base:bookworm"
BUSYBOX_IMAGE = "homeport/busybox:local"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
_SUITE = "bookworm"
_TARBALL = "debian-bookworm-minbase.tar"
_LOCK = "base-image.lock"
_BUSYBOX = Path("/bin/busybox")
_LOCK_WAIT_S = 1800.0  # a cold debootstrap on a slow mirror may take this long
_DEBOOTSTRAP_S = 1500.0
_TAR_S = 300.0
_IMPORT_S = 600.0
_TAIL_LINES = 15
# what `docker import` records as the image config (Dockerfile syntax, one line each)
_BASE_CHANGES = [
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    "ENV DEBIAN_FRONTEND=noninteractive",
    'CMD ["/bin/bash"]',
]
_BUSYBOX_CHANGES = ["ENV PATH=/bin", 'CMD ["/bin/sh"]']
# an unprivileged app user, so `USER 1000` has a name in both images
_ETC_USERS = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/app/data:/bin/sh\n"
_GROUP = "root:x:0:\napp:x:1000:\n"
# no apt caches or lists in the image: every Dockerfile runs `apt-get update` first anyway
_APT_CLEAN = 'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'

Progress = Callable[[str], Awaitable[None]]


class BaseImageError(AppsError):
    """A base image could not be made; the message says which step failed and why."""


async def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        await progress(message)


def _client(docker_base_url: str) -> docker.DockerClient:
    try:
        return docker.DockerClient(base_url=docker_base_url, timeout=_IMPORT_S)
    except docker.errors.DockerException as e:
        raise BaseImageError(f"cannot reach dockerd at {docker_base_url}: {e}") from e


def _has_image(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.DockerException as e:
        raise BaseImageError(f"cannot look up image {tag}: {e}") from e
    return True


@contextlib.asynccontextmanager
async def _locked(cache_dir: Path, progress: Progress | None) -> AsyncIterator[None]:
    """Hold an exclusive flock on cache_dir/base-image.lock (polled, with a deadline)."""
    fd = os.open(cache_dir / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + _LOCK_WAIT_S
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise BaseImageError(f"cannot lock {cache_dir / _LOCK}: {e}") from e
            if time.monotonic() > deadline:
                raise BaseImageError(
                    f"another process held {cache_dir / _LOCK} for {_LOCK_WAIT_S:.0f}s while"
                    " making the base image: check for a stuck debootstrap"
                )
            if not told:
                await _say(progress, "waiting for another process making the base image")
                told = True
            await asyncio.sleep(0.5)
        yield
    finally:
        os.close(fd)  # closing releases the lock


async def _run(argv: list[str], what: str, timeout_s: float) -> None:
    """Run argv (no shell); on failure raise BaseImageError with the output's last lines."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BaseImageError(f"{what} did not finish within {timeout_s:.0f}s") from None
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        tail = "\n".join(out.decode(errors="replace").splitlines()[-_TAIL_LINES:])
        raise BaseImageError(f"{what} failed (exit code {proc.returncode}):\n{tail}")


def _finish_tree(root: Path, mirror: str) -> None:
    """Sources for the mirror, the app user, and no apt caches in the image."""
    (root / "etc/apt/sources.list").write_text(
        f"deb {mirror} {_SUITE} main\ndeb {mirror} {_SUITE}-updates main\n"
    )
    conf = root / "etc/apt/apt.conf.d"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "90homeport").write_text(
        _APT_CLEAN + 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n'
    )
    with (root / "etc/passwd").open("a") as f:
        f.write("app:x:1000:1000:app:/app/data:/usr/sbin/nologin\n")
    with (root / "etc/group").open("a") as f:
        f.write("app:x:1000:\n")
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for p in (root / junk).glob("*"):
            if p.is_file():
                p.unlink()
    for p in (root / "var/cache/apt").glob("*.bin"):
        p.unlink()
    # Docker copies this folder's owner to an empty volume mounted on it: the app user's
    data = root / "app/data"
    data.mkdir(parents=True, exist_ok=True)
    os.chown(data, 1000, 1000)


async def _make_tarball(cache_dir: Path, mirror: str, progress: Progress | None) -> Path:
    tarball = cache_dir / _TARBALL
    if tarball.is_file():
        await _say(progress, f"using the cached Debian tree {tarball}")
        return tarball
    if shutil.which("debootstrap", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
        raise BaseImageError("debootstrap is not installed: apt-get install debootstrap")
    work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=cache_dir))
    try:
        root = work / "rootfs"
        await _say(progress, f"debootstrap {_SUITE} (minbase) from {mirror}")
        argv = ["debootstrap", "--variant=minbase", _SUITE, str(root), mirror]
        await _run(argv, "debootstrap", _DEBOOTSTRAP_S)
        await _say(progress, "packing the Debian tree")
        await asyncio.to_thread(_finish_tree, root, mirror)
        partial = work / _TARBALL
        argv = ["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(partial), "."]
        await _run(argv, "packing the Debian tree with tar", _TAR_S)
        os.replace(partial, tarball)  # atomic: a half-written tarball is never taken as cached
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
    return tarball


def _import_file(client: docker.DockerClient, path: Path, tag: str, changes: list[str]) -> None:
    repository, _, version = tag.partition(":")
    try:
        client.api.import_image_from_file(
            str(path), repository=repository, tag=version, changes=changes
        )
    except docker.errors.DockerException as e:
        raise BaseImageError(f"docker import of {path} as {tag} failed: {e}") from e
    if not _has_image(client, tag):
        raise BaseImageError(f"docker import of {path} reported no error but {tag} is missing")


async def ensure_base_image(
    docker_base_url: str,
    cache_dir: Path,
    progress: Progress | None = None,
    *,
    mirror: str = DEFAULT_MIRROR,
) -> str:
    """Make `homeport/debian-base:bookworm` (and the busybox image) if missing; return its tag."""
    await asyncio.to_thread(cache_dir.mkdir, parents=True, exist_ok=True)
    client = _client(docker_base_url)
    try:
        async with _locked(cache_dir, progress):
            if not await asyncio.to_thread(_has_image, client, BASE_IMAGE):
                tarball = await _make_tarball(cache_dir, mirror, progress)
                await _say(progress, f"importing {tarball.name} as {BASE_IMAGE}")
                await asyncio.wait_for(
                    asyncio.to_thread(_import_file, client, tarball, BASE_IMAGE, _BASE_CHANGES),
                    _IMPORT_S,
                )
            await _ensure_busybox(client, progress)
    finally:
        client.close()
    await _say(progress, f"{BASE_IMAGE} is ready")
    return BASE_IMAGE


def _busybox_tar(busybox: Path) -> bytes:
    """A root filesystem: /bin/busybox, a symlink per applet, passwd/group, /tmp, /app/data."""
    try:
        listing = subprocess.run(
            [str(busybox), "--list"], capture_output=True, check=True, timeout=10
        ).stdout.decode()
    except (OSError, subprocess.SubprocessError) as e:
        raise BaseImageError(f"{busybox} --list failed: {e}: install busybox-static") from e
    buf = io.BytesIO()
    now = int(time.time())

    def add(name: str, *, kind: bytes = tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644,
            link: str = "", uid: int = 0) -> None:  # fmt: skip
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime, info.linkname = kind, mode, now, link
        info.uid = info.gid = uid
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "etc", "app", "run", "var", "var/www"):
            add(d, kind=tarfile.DIRTYPE, mode=0o755)
        add("tmp", kind=tarfile.DIRTYPE, mode=0o1777)
        add("app/data", kind=tarfile.DIRTYPE, mode=0o755, uid=1000)
        add("bin/busybox", data=busybox.read_bytes(), mode=0o755)
        for applet in sorted(set(listing.split()) - {"busybox"}):
            add(f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox", mode=0o777)
        add("etc/passwd", data=_ETC_USERS.encode())
        add("etc/group", data=_GROUP.encode())
    return buf.getvalue()


def _import_busybox(client: docker.DockerClient, busybox: Path) -> None:
    data = _busybox_tar(busybox)
    repository, _, version = BUSYBOX_IMAGE.partition(":")
    try:
        client.api.import_image_from_data(
            data, repository=repository, tag=version, changes=_BUSYBOX_CHANGES
        )
    except docker.errors.DockerException as e:
        raise BaseImageError(f"docker import of {busybox} as {BUSYBOX_IMAGE} failed: {e}") from e
    if not _has_image(client, BUSYBOX_IMAGE):
        raise BaseImageError(f"docker import reported no error but {BUSYBOX_IMAGE} is missing")


async def _ensure_busybox(client: docker.DockerClient, progress: Progress | None) -> None:
    if await asyncio.to_thread(_has_image, client, BUSYBOX_IMAGE):
        return
    if not await asyncio.to_thread(_BUSYBOX.is_file):
        raise BaseImageError(f"{_BUSYBOX} is missing: apt-get install busybox-static")
    await _say(progress, f"importing {_BUSYBOX} as {BUSYBOX_IMAGE}")
    await asyncio.wait_for(asyncio.to_thread(_import_busybox, client, _BUSYBOX), _IMPORT_S)


async def ensure_busybox_image(docker_base_url: str, progress: Progress | None = None) -> str:
    """Make `homeport/busybox:local` from the host's /bin/busybox if missing; return its tag."""
    client = _client(docker_base_url)
    try:
        await _ensure_busybox(client, progress)
    finally:
        client.close()
    return BUSYBOX_IMAGE
