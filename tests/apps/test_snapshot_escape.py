"""Snapshots never carry host files out, and a restore only puts back what stays in the volume.

SECURITY.md "Isolation of apps": root never follows a link inside an app's volume. The app here
is a real container that exchanges a folder of its volume with a symlink to a host folder
holding a canary, as fast as it can, while snapshots are taken; no snapshot may hold the canary.
A hostile tar put back as a snapshot lands without its setuid file's bits, device node, FIFO,
hard link or symlinks out; a tar naming `../x` is refused before the volume is touched.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest

from services.apps.container import ContainerSpec, RuntimeFailure
from services.apps.names import Names
from services.apps.runtime import DockerRuntime
from services.apps.snapshots import Snapshots
from tests.apps.dockerkit import DockerNames, wait_for
from tests.support.servers import need_server

APP = "0190c0de-0000-7000-8000-00000000a9e1"
SNAPSHOTS = 10


def _snapshots(tmp_path: Path, runtime: DockerRuntime, dnames: DockerNames) -> Snapshots:
    return Snapshots(tmp_path / "snapshots", runtime, None, dnames.prefix)


def _tar_bytes(path: Path) -> bytes:
    """Every name and every file body in the tar, as one blob to search."""
    out = io.BytesIO()
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            out.write(m.name.encode() + b"\n" + m.linkname.encode() + b"\n")
            if m.isfile():
                body = tar.extractfile(m)
                assert body is not None
                out.write(body.read())
    return out.getvalue()


# The app: `d` is a folder and `d.link` a symlink to a host folder; it exchanges the two names
# atomically (renameat2 RENAME_EXCHANGE) as fast as it can. Both folders hold `keyring.json`, so a
# walk that lists `d` as one and opens its file as the other never finds a name missing.
_SWAP_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <linux/fs.h>
int main(void) {
    const char *target = getenv("TARGET");
    if (!target || chdir("/app/data") != 0) return 2;
    mkdir("d", 0755);
    FILE *f = fopen("d/keyring.json", "w");
    if (!f) return 3;
    fputs("app data\n", f);
    fclose(f);
    unlink("d.link");
    if (symlink(target, "d.link") != 0) return 4;
    puts("swapping");
    fflush(stdout);
    for (;;) renameat2(AT_FDCWD, "d", AT_FDCWD, "d.link", RENAME_EXCHANGE);
}
"""
_SWAP_IMAGE = "hp-test-swap:latest"


async def _swap_image(runtime: DockerRuntime, tmp_path: Path) -> str:
    context = tmp_path / "swap-image"
    context.mkdir()
    (context / "swap.c").write_text(_SWAP_C)
    gcc = shutil.which("gcc")
    if gcc is None:
        need_server("gcc -static (for the swapping app)", OSError("gcc not found"))
    out = subprocess.run(
        [gcc, "-static", "-O2", "-o", str(context / "swap"), str(context / "swap.c")],
        capture_output=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    (context / "swap.c").unlink()
    (context / "Dockerfile").write_text('FROM scratch\nCOPY swap /swap\nENTRYPOINT ["/swap"]\n')
    await runtime.build_image(_SWAP_IMAGE, context)
    return _SWAP_IMAGE


async def test_a_folder_swapped_for_a_host_link_never_brings_host_files_into_a_snapshot(
    runtime: DockerRuntime, dnames: DockerNames, tmp_path: Path
) -> None:
    host = tmp_path / "host-secrets"
    host.mkdir()
    canary = f"CANARY-{uuid.uuid4().hex}"
    (host / "keyring.json").write_text(canary)
    volume = Names(dnames.prefix, APP).volume
    await runtime.ensure_volume(volume, dnames.labels)
    net = await runtime.ensure_network(dnames("net"), dnames.labels)
    image = await _swap_image(runtime, tmp_path)
    name = dnames("app")
    spec = ContainerSpec(
        name=name, image=image, network=net.name, env={"TARGET": str(host)}, memory_bytes=32 << 20,
        data_volume=volume, labels=dnames.labels,
    )  # fmt: skip
    await runtime.create_container(spec)
    await runtime.start(name)
    await wait_for("the app swapping", lambda: _says(runtime, name, "swapping"))
    snapshots = _snapshots(tmp_path, runtime, dnames)
    taken = 0
    for n in range(SNAPSHOTS):
        sid = f"s{n}"
        try:
            await snapshots.take(
                APP,
                sid,
                addons=["localstorage"],
                manifest_id="t",
                version="1",
                reason="manual",
                app={},
            )
        except RuntimeFailure:
            continue  # a snapshot may fail on a tree that changes under it; it may not leak
        taken += 1
        blob = _tar_bytes(snapshots.folder(APP, sid) / "data.tar")
        assert canary.encode() not in blob, f"snapshot {n} holds the host file"
    state = await runtime.state(name)
    assert state is not None and state.running, "the swapping app kept running"
    assert taken >= SNAPSHOTS // 2, f"only {taken} of {SNAPSHOTS} snapshots succeeded"


async def _says(runtime: DockerRuntime, name: str, line: str) -> bool:
    return line in await runtime.logs(name)


def _hostile_tar(path: Path) -> None:
    def add(name: str, kind: bytes = tarfile.REGTYPE, *, mode: int = 0o644, **kw: object) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.uid, info.gid = kind, mode, 1000, 1000
        data = b"payload\n" if kind == tarfile.REGTYPE else b""
        info.size = len(data)
        for k, v in kw.items():
            setattr(info, k, v)
        tar.addfile(info, io.BytesIO(data) if data else None)

    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        add(".", tarfile.DIRTYPE, mode=0o755)
        add("./plain.txt")
        add("./suid", mode=0o4755, uid=0, gid=0)
        add("./sgid", mode=0o2755)
        add("./null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3)
        add("./disk", tarfile.BLKTYPE, mode=0o660, devmajor=8, devminor=0)
        add("./pipe", tarfile.FIFOTYPE)
        add("./etc", tarfile.SYMTYPE, linkname="/etc")
        add("./up", tarfile.SYMTYPE, linkname="../../../../..")
        add("./self", tarfile.SYMTYPE, linkname=".")
        add("./self-up", tarfile.SYMTYPE, linkname="self/..")  # escapes through `self`
        add("./passwd", tarfile.LNKTYPE, linkname="/etc/passwd")
        add("./inside", tarfile.SYMTYPE, linkname="plain.txt")
        add("./plain-again", tarfile.LNKTYPE, linkname="./plain.txt")
        add("./sub", tarfile.DIRTYPE, mode=0o2750)


async def test_a_hostile_tar_puts_back_only_what_stays_in_the_volume(
    runtime: DockerRuntime, dnames: DockerNames, tmp_path: Path
) -> None:
    snapshots = _snapshots(tmp_path, runtime, dnames)
    volume = Names(dnames.prefix, APP).volume
    await runtime.ensure_volume(volume, dnames.labels)
    folder = snapshots.folder(APP, "hostile")
    folder.mkdir(parents=True)
    _hostile_tar(folder / "data.tar")

    await snapshots.put_back(APP, "hostile")

    path = await runtime.volume_path(volume)
    found = {p.name: p.lstat() for p in path.iterdir()}
    kept = ["inside", "plain-again", "plain.txt", "self", "sgid", "sub", "suid"]
    assert sorted(found) == kept, "no device, FIFO, hard link or symlink out"
    assert (path / "plain.txt").read_text() == "payload\n"
    assert os.readlink(path / "inside") == "plain.txt"
    assert os.readlink(path / "self") == ".", "a link to the volume itself stays in it"
    assert (path / "plain-again").read_text() == "payload\n", "a hard link inside: a copy"
    assert found["plain-again"].st_ino != found["plain.txt"].st_ino
    for name in ("suid", "sgid"):
        mode = found[name].st_mode
        assert stat.S_ISREG(mode) and not mode & (stat.S_ISUID | stat.S_ISGID), name
        assert stat.S_IMODE(mode) == 0o755, name
    assert (found["suid"].st_uid, found["suid"].st_gid) == (0, 0)
    assert stat.S_IMODE(found["sub"].st_mode) == 0o2750, "a setgid folder keeps its bit"
    assert (found["plain.txt"].st_uid, found["plain.txt"].st_gid) == (1000, 1000)


async def test_a_restore_gives_every_file_to_the_apps_user(
    runtime: DockerRuntime, dnames: DockerNames, tmp_path: Path
) -> None:
    """An app that does not run as root gets its volume back owned by its own user, whatever
    owners a crafted tar names (root, another host user)."""
    snapshots = _snapshots(tmp_path, runtime, dnames)
    volume = Names(dnames.prefix, APP).volume
    await runtime.ensure_volume(volume, dnames.labels)
    folder = snapshots.folder(APP, "owners")
    folder.mkdir(parents=True)
    _hostile_tar(folder / "data.tar")  # ./suid is root's, the others 1000's
    with tarfile.open(folder / "data.tar", "a", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("./someone-elses")
        info.uid, info.gid, info.size = 4242, 4243, 3
        tar.addfile(info, io.BytesIO(b"hi\n"))

    await snapshots.put_back(APP, "owners", owner=(1000, 1000))

    path = await runtime.volume_path(volume)
    owners = {p.name: (p.lstat().st_uid, p.lstat().st_gid) for p in path.iterdir()}
    assert {"suid", "someone-elses", "inside", "sub"} <= set(owners)
    assert set(owners.values()) == {(1000, 1000)}, owners
    assert (path.stat().st_uid, path.stat().st_gid) == (1000, 1000), "the volume's root too"


async def test_a_tar_naming_a_path_out_of_the_volume_is_refused_before_any_change(
    runtime: DockerRuntime, dnames: DockerNames, tmp_path: Path
) -> None:
    snapshots = _snapshots(tmp_path, runtime, dnames)
    volume = Names(dnames.prefix, APP).volume
    await runtime.ensure_volume(volume, dnames.labels)
    path = await runtime.volume_path(volume)
    (path / "kept.txt").write_text("still here\n")
    for sid, name in (("dotdot", "../x"), ("deep", "./a/../../x"), ("absolute", "/x")):
        folder = snapshots.folder(APP, sid)
        folder.mkdir(parents=True)
        with tarfile.open(folder / "data.tar", "w", format=tarfile.GNU_FORMAT) as tar:
            info = tarfile.TarInfo("./first.txt")
            tar.addfile(info, io.BytesIO(b""))
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"out\n"))
        with pytest.raises(RuntimeFailure, match=rf"{volume}.*{name.lstrip('./')}"):
            await snapshots.put_back(APP, sid)
        assert sorted(p.name for p in path.iterdir()) == ["kept.txt"], sid
        assert not (path.parent / "x").exists(), sid
