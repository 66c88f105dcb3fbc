"""Backup targets: one contract run against a directory and against S3 (moto in server mode),
then what only one of them has (links planted in the directory, S3 credentials, settings)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.backup.targets.base import ObjectInfo, Target, TargetError, TargetMissing
from services.backup.targets.factory import TargetSettingsError, target_from_settings
from services.backup.targets.local import LocalTarget
from services.backup.targets.s3 import S3Target
from tests.support.moto import MotoServer, run_moto

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    yield from run_moto()


@dataclass
class Backend:
    kind: str
    target: Target
    settings: dict[str, Any]
    leftovers: Callable[[], list[str]]  # what an interrupted upload left behind
    started: Callable[[], float]  # when the target says the oldest of them was made
    now: list[float]  # the targets' clock
    etag: Callable[[str], str] | None = None  # S3's ETag of an object


@pytest.fixture(params=["local", "s3"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, moto: MotoServer
) -> AsyncIterator[Backend]:
    now = [time.time()]
    if request.param == "local":
        root = tmp_path / "backups"
        target: Any = LocalTarget(root, clock=lambda: now[0])

        def temp_files() -> list[str]:
            return sorted(str(p.relative_to(root)) for p in root.rglob("*~*.tmp"))

        def temp_time() -> float:
            return min(p.stat().st_mtime for p in root.rglob("*~*.tmp"))

        settings = {"kind": "local", "path": str(root)}
        b = Backend("local", target, settings, temp_files, temp_time, now)
    else:
        server = moto
        bucket = f"hp-{uuid.uuid4().hex[:12]}"
        s3 = server.client("s3")
        s3.create_bucket(Bucket=bucket)
        settings = {
            "kind": "s3",
            "bucket": bucket,
            "prefix": "homeport/",
            "endpoint_url": server.url,
            "region": "us-east-1",
            "access_key": server.access_key_id,
            "secret_key": server.secret_access_key,
        }
        target = target_from_settings(settings, allow_loopback=True, clock=lambda: now[0])

        def uploads() -> list[str]:
            found = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
            return sorted(u["Key"] for u in found)

        def etag(name: str) -> str:
            return str(s3.head_object(Bucket=bucket, Key="homeport/" + name)["ETag"])

        def initiated() -> float:
            found = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
            return float(min(u["Initiated"].timestamp() for u in found))

        b = Backend("s3", target, settings, uploads, initiated, now, etag)
    yield b
    await b.target.close()


async def names(target: Target, prefix: str = "") -> list[str]:
    return [info.name async for info in target.list(prefix)]


# -- the contract


async def test_put_get_range_stat_overwrite_delete(backend: Backend) -> None:
    t = backend.target
    await t.put("data/ab/ab12", b"0123456789")
    assert await t.get("data/ab/ab12") == b"0123456789"
    assert await t.get_range("data/ab/ab12", 2, 3) == b"234"
    assert await t.get_range("data/ab/ab12", 8, 10) == b"89"  # short at the end
    assert await t.get_range("data/ab/ab12", 10, 5) == b""
    assert await t.get_range("data/ab/ab12", 3, 0) == b""
    assert await t.stat("data/ab/ab12") == ObjectInfo("data/ab/ab12", 10)

    await t.put("data/ab/ab12", b"new")  # replaces
    assert await t.get("data/ab/ab12") == b"new"
    assert await t.stat("data/ab/ab12") == ObjectInfo("data/ab/ab12", 3)
    await t.put("empty", b"")
    assert await t.get("empty") == b""

    await t.delete("data/ab/ab12")
    assert await t.stat("data/ab/ab12") is None
    await t.delete("data/ab/ab12")  # gone already: no error
    with pytest.raises(TargetMissing):
        await t.get("data/ab/ab12")
    assert backend.leftovers() == []


async def test_missing_object(backend: Backend) -> None:
    t = backend.target
    await t.put("index/one", b"x")
    for missing in ("index/two", "nothing/here", "index/one/deeper"):
        with pytest.raises(TargetMissing):
            await t.get(missing)
        with pytest.raises(TargetMissing):
            await t.get_range(missing, 0, 10)
        assert await t.stat(missing) is None


async def test_list_in_name_order_and_by_prefix(backend: Backend) -> None:
    t = backend.target
    written = ["data/ab/abce", "data.x", "a", "data/ab-x", "data/ab/abcd", "index/1", "data/b"]
    for i, name in enumerate(written):
        await t.put(name, b"y" * i)
    assert await names(t) == sorted(written)
    assert [i async for i in t.list("data/ab")] == [
        ObjectInfo("data/ab-x", 3),
        ObjectInfo("data/ab/abcd", 4),
        ObjectInfo("data/ab/abce", 0),
    ]
    assert await names(t, "data/") == ["data/ab-x", "data/ab/abcd", "data/ab/abce", "data/b"]
    assert await names(t, "zzz") == []


async def test_list_many_objects(backend: Backend) -> None:
    """More than a page of S3's listing (1000) and of the directory walk's batch."""
    t = backend.target
    want = [f"data/{i % 7}/{i:05d}" for i in range(1100)]
    await asyncio.gather(*(t.put(n, b"") for n in want))
    assert await names(t, "data/") == sorted(want)


@pytest.mark.parametrize(
    "bad",
    ["", "/abs", "../up", "a/../b", "Upper", "a//b", "a/./b", "a/", "a/.hidden", "a b", "x" * 201],
)
async def test_bad_names_refused(backend: Backend, bad: str) -> None:
    t = backend.target
    with pytest.raises(TargetError, match="not a valid object name"):
        await t.put(bad, b"x")
    with pytest.raises(TargetError, match="not a valid object name"):
        await t.get(bad)
    with pytest.raises(TargetError, match="not a valid object name"):
        await t.delete(bad)
    with pytest.raises(TargetError, match="not a valid object name"):
        await t.stat(bad)
    await t.put("ok", b"")
    assert await names(t) == ["ok"]


async def test_large_put_file_goes_in_parts_and_reads_back(
    backend: Backend, tmp_path: Path
) -> None:
    src = tmp_path / "pack"
    data = os.urandom(20 * MiB + 123)
    src.write_bytes(data)
    await backend.target.put_file("packs/big", str(src))
    back = await backend.target.get("packs/big")
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
    assert await backend.target.get_range("packs/big", 9 * MiB, 5) == data[9 * MiB : 9 * MiB + 5]
    if backend.etag is not None:  # a multipart ETag is "<md5 of the part md5s>-<parts>"
        assert backend.etag("packs/big").strip('"').endswith("-3")
    small = tmp_path / "small"
    small.write_bytes(b"small")
    await backend.target.put_file("packs/small", str(small))
    assert await backend.target.get("packs/small") == b"small"
    assert backend.leftovers() == []


class _Feeder:
    """Writes into a FIFO the target reads from, so an upload can be stopped half-way."""

    def __init__(self, path: Path, total: int) -> None:
        os.mkfifo(path)
        self.path, self.total = path, total
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with open(self.path, "wb") as f:
            try:
                for _ in range(self.total // MiB):
                    f.write(os.urandom(MiB))
                    f.flush()
                self.release.wait(30)
            except BrokenPipeError:
                pass

    def finish(self) -> None:
        self.release.set()
        self.thread.join(30)


async def wait_for(what: str, check: Callable[[], Any], deadline_s: float = 20.0) -> Any:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError(f"waited {deadline_s} s for {what}")


async def test_cancelled_put_file_leaves_no_object(backend: Backend, tmp_path: Path) -> None:
    feeder = _Feeder(tmp_path / "fifo", 20 * MiB)
    task = asyncio.create_task(backend.target.put_file("packs/cut", str(feeder.path)))
    try:
        await wait_for("an upload under way", backend.leftovers)
        task.cancel()
        await asyncio.sleep(0.1)
    finally:
        feeder.finish()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for("the leftovers dropped", lambda: backend.leftovers() == [])
    assert await backend.target.stat("packs/cut") is None
    assert await names(backend.target) == []


_CHILD = """
import asyncio, json, sys
from services.backup.targets.factory import target_from_settings
settings, name, path = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
async def main():
    await target_from_settings(settings, allow_loopback=True).put_file(name, path)
asyncio.run(main())
"""


async def test_killed_put_file_leftovers_go_with_cleanup(backend: Backend, tmp_path: Path) -> None:
    """kill -9 in the middle of an upload: no object; cleanup() removes what is left once it is
    an hour old (and leaves a younger one, which may be an upload still running)."""
    fifo = tmp_path / "fifo"
    argv = [sys.executable, "-c", _CHILD, json.dumps(backend.settings), "packs/killed", str(fifo)]
    feeder = _Feeder(fifo, 24 * MiB)
    child = subprocess.Popen(argv, cwd=REPO, stderr=subprocess.PIPE)
    try:
        left = await wait_for("an upload under way", backend.leftovers)
        if backend.kind == "s3":  # and at least one part of it stored
            await asyncio.sleep(0.5)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert child.stderr is not None
        child.stderr.close()
        feeder.finish()
    assert child.returncode == -signal.SIGKILL
    assert await backend.target.stat("packs/killed") is None
    assert backend.leftovers() == left
    # (moto dates every upload 2010-11-10: the clock is set from what the target reports)
    backend.now[0] = backend.started() + 50 * 60
    await backend.target.cleanup()
    assert backend.leftovers() == left  # under an hour old: perhaps an upload still running
    backend.now[0] += 20 * 60
    await backend.target.cleanup()
    assert backend.leftovers() == []
    assert await names(backend.target) == []
    await backend.target.put("packs/killed", b"again")  # the name is free to use
    assert await backend.target.get("packs/killed") == b"again"


async def test_check_passes_and_leaves_nothing(backend: Backend) -> None:
    await backend.target.check()
    assert await names(backend.target) == []


# -- a directory


async def test_local_refuses_planted_links(tmp_path: Path) -> None:
    root = tmp_path / "backups"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"host file")
    t = LocalTarget(root)
    await t.put("data/aa/one", b"1")
    os.symlink(outside, root / "data" / "bb")  # a directory swapped for a link
    os.symlink(outside / "secret", root / "data" / "aa" / "two")  # a file swapped for a link

    for name in ("data/bb/secret", "data/aa/two"):
        with pytest.raises(TargetError, match="symbolic link") as e:
            await t.get(name)
        assert not isinstance(e.value, TargetMissing)
        with pytest.raises(TargetError, match="symbolic link"):
            await t.get_range(name, 0, 4)
        with pytest.raises(TargetError, match="symbolic link"):
            await t.stat(name)
    with pytest.raises(TargetError, match="symbolic link"):
        await t.put("data/bb/new", b"x")
    assert sorted(os.listdir(outside)) == ["secret"]
    assert await names(t) == ["data/aa/one"]  # links are not listed, nor walked into

    await t.put("data/aa/two", b"2")  # replaces the link itself
    assert await t.get("data/aa/two") == b"2"
    assert (outside / "secret").read_bytes() == b"host file"
    os.symlink(outside / "secret", root / "data" / "aa" / "three")
    await t.delete("data/aa/three")  # removes the link, not what it points at
    assert (outside / "secret").read_bytes() == b"host file"


async def test_local_modes_and_atomic_rename(tmp_path: Path) -> None:
    root = tmp_path / "backups"
    t = LocalTarget(root)
    await t.put("data/ab/x", b"1")
    assert (root / "data").stat().st_mode & 0o777 == 0o700
    assert (root / "data" / "ab" / "x").stat().st_mode & 0o777 == 0o600
    assert sorted(os.listdir(root / "data" / "ab")) == ["x"]  # no temporary file left


async def test_local_put_file_consume_moves_on_one_filesystem_else_copies(
    tmp_path: Path,
) -> None:
    root = tmp_path / "backups"
    t = LocalTarget(root)
    src = tmp_path / "pack"
    src.write_bytes(b"p" * 5000)
    src.chmod(0o600)
    inode = src.stat().st_ino
    await t.put_file("data/ab/one", str(src), consume=True)
    assert not src.exists()  # moved, not copied
    obj = root / "data" / "ab" / "one"
    assert obj.read_bytes() == b"p" * 5000 and obj.stat().st_ino == inode
    assert obj.stat().st_mode & 0o777 == 0o600
    # a link planted where the object goes is replaced, never followed
    outside = tmp_path / "outside"
    outside.write_bytes(b"host file")
    os.symlink(outside, root / "data" / "ab" / "two")
    src.write_bytes(b"q" * 10)
    await t.put_file("data/ab/two", str(src), consume=True)
    assert outside.read_bytes() == b"host file" and await t.get("data/ab/two") == b"q" * 10
    shm = Path("/dev/shm")
    if shm.is_dir() and os.stat(shm).st_dev != os.stat(tmp_path).st_dev:
        other = shm / f"hp-test-{uuid.uuid4().hex}"
        other.write_bytes(b"r" * 100)
        try:
            await t.put_file("data/ab/three", str(other), consume=True)
            assert await t.get("data/ab/three") == b"r" * 100
            assert other.exists()  # another filesystem: copied, left to the caller
        finally:
            other.unlink()
    assert not [n for n in os.listdir(root / "data" / "ab") if n.endswith(".tmp")]


async def test_local_check_failures(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match=r"no/such.*writing a probe object failed"):
        await LocalTarget(tmp_path / "no" / "such").check()
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(TargetError, match=r"probe object failed.*Not a directory"):
        await LocalTarget(tmp_path / "file").check()
    with pytest.raises(TargetError, match="does not exist: is the disk mounted"):
        await LocalTarget(tmp_path / "gone").get("x")
    top = Path(f"/hp-test-{uuid.uuid4().hex[:12]}")  # a folder right under / is never made
    with pytest.raises(TargetError, match="does not exist: is the disk mounted"):
        await LocalTarget(top).check()
    assert not top.exists()
    await LocalTarget(tmp_path / "made").check()  # one level under an existing folder is
    assert (tmp_path / "made").is_dir()


# -- S3


@pytest.fixture
def bucket(moto: MotoServer) -> str:
    name = f"hp-{uuid.uuid4().hex[:12]}"
    moto.client("s3").create_bucket(Bucket=name)
    return name


def s3_target(moto: MotoServer, bucket: str, **changes: Any) -> S3Target:
    args: dict[str, Any] = {
        "bucket": bucket,
        "prefix": "",
        "endpoint_url": moto.url,
        "region": "us-east-1",
        "access_key": moto.access_key_id,
        "secret_key": moto.secret_access_key,
        "allow_loopback": True,
        "retry_delays": (0.01, 0.02),
        **changes,
    }
    return S3Target(**args)


async def check_error(target: S3Target) -> str:
    try:
        with pytest.raises(TargetError) as e:
            await target.check()
    finally:
        await target.close()
    return str(e.value)


async def test_s3_check_wrong_secret(moto: MotoServer, bucket: str) -> None:
    secret = "wrongSecretKeyThatMustNotShow0123456789"
    msg = await check_error(s3_target(moto, bucket, secret_key=secret))
    assert "writing a probe object" in msg
    assert "check secret_key" in msg
    assert secret not in msg


async def test_s3_check_unknown_access_key(moto: MotoServer, bucket: str) -> None:
    secret = "someSecret0123456789abcdef"
    msg = await check_error(s3_target(moto, bucket, access_key="AKIANOSUCHKEY", secret_key=secret))
    assert "does not know the access key AKIANOSUCHKEY" in msg
    assert "check access_key" in msg
    assert secret not in msg


async def test_s3_check_missing_bucket(moto: MotoServer) -> None:
    msg = await check_error(s3_target(moto, "no-such-bucket-here"))
    assert "bucket no-such-bucket-here" in msg
    assert "does not exist" in msg
    assert moto.secret_access_key not in msg


async def test_s3_check_unreachable_endpoint_retries_then_fails(
    bucket: str, moto: MotoServer
) -> None:

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    msg = await check_error(s3_target(moto, bucket, endpoint_url=f"http://127.0.0.1:{port}"))
    assert f"cannot reach http://127.0.0.1:{port}" in msg
    assert "check endpoint_url" in msg
    assert time.monotonic() - started < 10


class _FlakyProxy:
    """A TCP proxy to moto on loopback that hangs up on its first `drop` connections."""

    def __init__(self, port: int, drop: int) -> None:
        self.port, self.drop, self.dropped = port, drop, 0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.dropped < self.drop:
            self.dropped += 1
            writer.transport.abort()
            return
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.port)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except ConnectionError:
                pass
            finally:
                w.close()

        for t in (pipe(reader, up_w), pipe(up_r, writer)):
            task = asyncio.create_task(t)
            self.tasks.add(task)


async def test_s3_retries_dropped_connections_then_gives_up(moto: MotoServer, bucket: str) -> None:
    flaky = _FlakyProxy(moto.port, drop=2)
    async with flaky as url:
        t = s3_target(moto, bucket, endpoint_url=url, retry_delays=(0.05, 0.05, 0.05))
        try:
            await t.put("after/retries", b"made it")
            assert await t.get("after/retries") == b"made it"
            assert flaky.dropped == 2
        finally:
            await t.close()
    async with _FlakyProxy(moto.port, drop=100) as url:
        t = s3_target(moto, bucket, endpoint_url=url, retry_delays=(0.05, 0.05))
        try:
            with pytest.raises(TargetError, match=r"cannot reach .* for storing given/up"):
                await t.put("given/up", b"x")
        finally:
            await t.close()
    s3 = moto.client("s3")
    assert s3.get_object(Bucket=bucket, Key="after/retries")["Body"].read() == b"made it"


async def test_s3_cancelled_multipart_is_aborted_at_once(
    moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    s3 = moto.client("s3")

    def uploads() -> Any:
        return s3.list_multipart_uploads(Bucket=bucket).get("Uploads")

    t = s3_target(moto, bucket)
    feeder = _Feeder(tmp_path / "fifo", 20 * MiB)
    task = asyncio.create_task(t.put_file("packs/cut", str(feeder.path)))
    try:
        await wait_for("an upload under way", uploads)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not uploads()
    finally:
        feeder.finish()
        await t.close()


# -- settings


def test_settings_build_targets(tmp_path: Path) -> None:
    local = target_from_settings({"kind": "local", "path": str(tmp_path)})
    assert isinstance(local, LocalTarget)
    s3 = target_from_settings(
        {
            "kind": "s3",
            "bucket": "my-backups",
            "prefix": "/homeport",
            "region": "eu-central-1",
            "endpoint_url": "https://s3.example.net/",
            "access_key": "AKIAEXAMPLE",
            "secret_key": "verySecret/+=",
        }
    )
    assert isinstance(s3, S3Target)
    assert (s3.prefix, s3.endpoint_url) == ("homeport/", "https://s3.example.net")
    assert "verySecret" not in repr(s3)


_GOOD_S3 = {
    "kind": "s3",
    "bucket": "my-backups",
    "region": "eu-central-1",
    "access_key": "AKIAEXAMPLE",
    "secret_key": "verySecretValue",
}


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"kind": "ftp"}, "kind"),
        ({}, "kind"),
        ({"kind": "local"}, "path"),
        ({"kind": "local", "path": "relative/dir"}, "path"),
        ({"kind": "local", "path": "/srv/../etc"}, "path"),
        ({"kind": "local", "path": "/etc"}, "path"),
        ({"kind": "local", "path": "/etc/cron.d"}, "path"),
        ({"kind": "local", "path": "/usr/lib/homeport"}, "path"),
        ({"kind": "local", "path": "/proc/self"}, "path"),
        ({"kind": "local", "path": "/var/lib/docker/volumes"}, "path"),
        ({"kind": "local", "path": "/srv/b", "bucket": "x"}, "bucket"),
        ({**_GOOD_S3, "bucket": "No_Such"}, "bucket"),
        ({k: v for k, v in _GOOD_S3.items() if k != "region"}, "region"),
        ({**_GOOD_S3, "access_key": ""}, "access_key"),
        ({**_GOOD_S3, "secret_key": 12}, "secret_key"),
        ({**_GOOD_S3, "prefix": "a/../b"}, "prefix"),
        ({**_GOOD_S3, "endpoint_url": "ftp://host"}, "endpoint_url"),
        ({**_GOOD_S3, "endpoint_url": "https://k:verySecretValue@host"}, "endpoint_url"),
        ({**_GOOD_S3, "endpoint_url": "http://127.0.0.1:9000"}, "endpoint_url"),
        ({**_GOOD_S3, "endpoint_url": "http://localhost:9000"}, "endpoint_url"),
        ({**_GOOD_S3, "endpoint_url": "http://169.254.169.254"}, "endpoint_url"),
    ],
)
def test_bad_settings_name_the_field(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(TargetSettingsError) as e:
        target_from_settings(settings)
    assert e.value.field == field
    assert field in str(e.value)
    assert "verySecretValue" not in str(e.value)


def test_loopback_endpoint_allowed_only_when_asked() -> None:
    t = target_from_settings(
        {**_GOOD_S3, "endpoint_url": "http://127.0.0.1:9000"}, allow_loopback=True
    )
    assert isinstance(t, S3Target)
