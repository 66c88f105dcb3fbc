"""Forget, prune and the lock objects on the target (a backup and a prune never overlap, even
from two Repository objects = two processes), recipients changed, and what a writer to the
target cannot slip past verify and restore. Real LocalTargets in temporary directories."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from services.backup.repo import (
    IntegrityError,
    RepoParams,
    Repository,
    RepositoryError,
    SnapshotNotFound,
    WrongIdentity,
    new_identity,
)
from services.backup.repo.chunker import ChunkParams
from services.backup.repo.locks import RepositoryLocked
from services.backup.targets.base import TargetError
from services.backup.targets.factory import target_from_settings
from services.backup.targets.local import LocalTarget
from tests.support.moto import MotoServer, run_moto

SMALL = RepoParams(ChunkParams(16 * 1024, 64 * 1024, 256 * 1024), pack_size=1024 * 1024)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def keys() -> tuple[str, str]:
    return new_identity()


@pytest.fixture
def target_dir(tmp_path: Path) -> Path:
    d = tmp_path / "target"
    d.mkdir()
    return d


@pytest.fixture
async def repo(target_dir: Path, keys: tuple[str, str]) -> Repository:
    return await Repository.init(LocalTarget(target_dir), [keys[1]], params=SMALL)


def tree(root: Path, seed: int, *, size: int, shared: bytes = b"") -> Path:
    rng = random.Random(seed)
    root.mkdir()
    (root / "big.bin").write_bytes(rng.randbytes(size))
    (root / "shared.bin").write_bytes(shared)
    sub = root / "sub"
    sub.mkdir()
    for i in range(20):
        (sub / f"f{i}").write_bytes(rng.randbytes(rng.randrange(10, 5000)))
    return root


def contents(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def stored(target_dir: Path, prefix: str) -> int:
    return sum(p.stat().st_size for p in (target_dir / prefix).rglob("*") if p.is_file())


async def assert_restores(repo: Repository, sid: str, src: Path, out: Path, ident: str) -> None:
    await repo.restore(sid, out, ident)
    assert contents(out) == contents(src)


async def test_forget_then_prune_frees_the_bytes(
    repo: Repository, tmp_path: Path, target_dir: Path, keys: tuple[str, str]
) -> None:
    shared = random.Random(9).randbytes(1024 * 1024)
    a = tree(tmp_path / "a", 1, size=512 * 1024, shared=shared)
    b = tree(tmp_path / "b", 2, size=3 * 1024 * 1024, shared=shared)
    info_a = await repo.backup(a, {})
    info_b = await repo.backup(b, {})
    before = stored(target_dir, "data")

    await repo.forget([info_b.id])
    assert [s.id for s in await repo.snapshots()] == [info_a.id]
    assert not (target_dir / "snapshots" / info_b.id).exists()
    assert not (target_dir / "refs" / info_b.id).exists()
    assert stored(target_dir, "data") == before  # chunks stay until prune

    stats = await repo.prune()
    after = stored(target_dir, "data")
    assert stats.packs_deleted >= 3 and stats.packs_rewritten == 0 and stats.packs_kept >= 1
    # B's own 3 MiB (random, incompressible) are gone; A's data and the shared MiB are kept
    assert before - after >= 3 * 1024 * 1024 - 600 * 1024
    assert stats.bytes_freed >= before - after
    assert not (target_dir / "keys" / info_b.id).exists()  # no pack sealed with it is left
    assert (target_dir / "keys" / info_a.id).exists()
    print(f"\nforget+prune: data {before} -> {after} bytes, {stats}")

    again = await repo.prune()
    assert again.packs_deleted == 0 and again.bytes_freed == 0
    reopened = await Repository.open(LocalTarget(target_dir))
    await assert_restores(reopened, info_a.id, a, tmp_path / "out-a", keys[0])
    assert (await reopened.verify(info_a.id, keys[0], read_data=True)).ok


async def test_forget_refuses_what_is_no_id_and_skips_ids_already_gone(
    repo: Repository, tmp_path: Path
) -> None:
    info = await repo.backup(tree(tmp_path / "a", 1, size=1000), {})
    other = await repo.backup(tree(tmp_path / "b", 2, size=1000), {})
    for bad in ["../config", "snapshots/x", "", "20261205063312-0123456789ABCDEF"]:
        with pytest.raises(SnapshotNotFound):
            await repo.forget([info.id, bad])
    assert [s.id for s in await repo.snapshots()] == [info.id, other.id]
    await repo.forget([info.id, "20261205063312-0123456789abcdef"])  # gone already: skipped
    await repo.forget([info.id])  # a retried forget completes
    assert [s.id for s in await repo.snapshots()] == [other.id]


async def test_prune_deletes_what_an_interrupted_backup_left(
    repo: Repository, tmp_path: Path, target_dir: Path
) -> None:
    src = tree(tmp_path / "a", 3, size=2 * 1024 * 1024)
    with pytest.raises(RuntimeError):
        async with repo.writer() as w:
            await w.add_tree(src)
            raise RuntimeError("killed")
    assert stored(target_dir, "data") > 1024 * 1024 and not await repo.snapshots()
    stats = await repo.prune()
    assert stored(target_dir, "data") == 0 and stats.packs_kept == 0
    assert not list((target_dir / "keys").iterdir())
    assert not list((target_dir / "locks").iterdir())


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.15])
async def test_prune_racing_a_backup_loses_nothing(
    tmp_path: Path, target_dir: Path, keys: tuple[str, str], delay: float
) -> None:
    """Two Repository objects on one target (as two processes): one prunes what a forgotten
    backup held while the other backs up a tree that deduplicates against exactly those
    chunks. Whoever goes first, both the kept and the new snapshot restore byte-exact."""
    one = await Repository.init(LocalTarget(target_dir), [keys[1]], params=SMALL)
    two = await Repository.open(LocalTarget(target_dir))
    shared = random.Random(5).randbytes(2 * 1024 * 1024)
    kept = tree(tmp_path / "kept", 1, size=300 * 1024)
    gone = tree(tmp_path / "gone", 2, size=100 * 1024, shared=shared)
    new = tree(tmp_path / "new", 3, size=1024 * 1024, shared=shared)
    info_kept = await one.backup(kept, {})
    info_gone = await one.backup(gone, {})
    await two.reload_index()  # `two` knows the chunks of `gone`, as a long-running process
    await one.forget([info_gone.id])

    async def prune_later() -> None:
        await asyncio.sleep(delay)
        await one.prune()

    results = await asyncio.gather(two.backup(new, {}), prune_later())
    info_new = results[0]
    assert [s.id for s in await one.snapshots()] == [info_kept.id, info_new.id]
    await one.prune()  # and once more after the backup: still nothing it needs goes
    fresh = await Repository.open(LocalTarget(target_dir))
    await assert_restores(fresh, info_kept.id, kept, tmp_path / "out-kept", keys[0])
    await assert_restores(fresh, info_new.id, new, tmp_path / "out-new", keys[0])
    assert (await fresh.verify(info_new.id, keys[0])).ok
    assert not list((target_dir / "locks").iterdir())


async def test_a_live_backup_lock_makes_prune_wait_then_give_up(
    repo: Repository, target_dir: Path, tmp_path: Path
) -> None:
    other = await Repository.open(LocalTarget(target_dir))
    other.lock_wait = 0.4
    async with repo.writer() as w:
        await w.add_tree(tree(tmp_path / "a", 1, size=1000))
        t0 = time.monotonic()
        with pytest.raises(RepositoryLocked, match="a backup holds the backup repository"):
            await other.prune()
        assert time.monotonic() - t0 >= 0.3
        await w.commit({})
    assert (await other.prune()).packs_kept >= 1  # released: prune proceeds


_HOLDER = """
import asyncio, sys
from pathlib import Path
from services.backup.repo import Repository
from services.backup.targets.base import TargetError
from services.backup.targets.local import LocalTarget

async def main():
    repo = await Repository.open(LocalTarget(Path(sys.argv[1])))
    repo.lock_stale = float(sys.argv[2])
    async with repo.writer():
        print("locked", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_killed_process_lock_goes_stale_and_does_not_block_forever(
    repo: Repository, target_dir: Path
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(target_dir), "1.2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line.strip() == "locked"
        repo.lock_stale, repo.lock_wait = 1.2, 0.3
        with pytest.raises(RepositoryLocked):  # alive and refreshing: it holds
            await repo.prune()
        await asyncio.sleep(0.8)  # longer than its first refresh (stale / 4)
        with pytest.raises(RepositoryLocked):
            await repo.prune()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    (lock,) = list((target_dir / "locks").iterdir())  # left behind by the killed process
    repo.lock_wait = 10.0
    t0 = time.monotonic()
    await repo.prune()
    assert time.monotonic() - t0 < 3.0
    assert not lock.exists()


async def test_set_recipients_new_backups_use_the_new_key_old_keep_theirs(
    repo: Repository, tmp_path: Path, target_dir: Path, keys: tuple[str, str]
) -> None:
    old = await repo.backup(tree(tmp_path / "a", 1, size=1000), {"n": 1})
    secret2, public2 = new_identity()
    with pytest.raises(RepositoryError, match="at least one recipient"):
        await repo.set_recipients([])
    await repo.set_recipients([public2])
    new = await repo.backup(tree(tmp_path / "b", 2, size=1000), {"n": 2})
    assert json.loads((target_dir / "config").read_text())["recipients"] == [public2]
    reopened = await Repository.open(LocalTarget(target_dir), recipients=[public2])
    assert await reopened.meta(new.id, secret2) == {"n": 2}
    assert await reopened.meta(old.id, keys[0]) == {"n": 1}
    with pytest.raises(WrongIdentity):
        await reopened.meta(new.id, keys[0])
    with pytest.raises(RepositoryError, match="recipients differ"):
        await Repository.open(LocalTarget(target_dir), recipients=[keys[1]])


# -- what a writer to the target (without the key) cannot slip past


def rewrite(path: Path, **fields: object) -> None:
    doc = json.loads(path.read_bytes())
    doc.update(fields)
    path.write_bytes(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())


async def test_keyless_verify_checks_refs_against_the_count(
    repo: Repository, tmp_path: Path, target_dir: Path, keys: tuple[str, str]
) -> None:
    small = await repo.backup(tree(tmp_path / "a", 1, size=1000), {}, labels={"app_id": "wiki"})
    big = await repo.backup(tree(tmp_path / "b", 2, size=2 * 1024 * 1024), {})
    report = await repo.verify(big.id)
    assert report.ok and report.labels == {}
    assert (await repo.verify(small.id)).labels == {"app_id": "wiki"}
    # point big's refs at small's (every listed chunk exists: only the count gives it away)
    (target_dir / "refs" / big.id).write_bytes((target_dir / "refs" / small.id).read_bytes())
    report = await repo.verify(big.id)
    assert not report.ok and "the snapshot says" in report.problems[0]
    # a refs object that decompresses to far more than its count is cut short
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (64 * 1024 * 1024))
    (target_dir / "refs" / big.id).write_bytes(bomb)
    report = await repo.verify(big.id)
    assert report.problems == (report.problems[0],) and "refs_count" in report.problems[0]


async def test_verify_with_the_key_finds_refs_that_leave_out_a_file(
    repo: Repository, tmp_path: Path, target_dir: Path, keys: tuple[str, str]
) -> None:
    src = tree(tmp_path / "a", 1, size=1024 * 1024)
    info = await repo.backup(src, {}, labels={"app_id": "wiki", "kind": "app"})
    refs_path = target_dir / "refs" / info.id
    raw = zstandard.ZstdDecompressor().decompress(refs_path.read_bytes())
    ids = {raw[i : i + 32] for i in range(0, len(raw), 32)}
    # drop one chunk of the 1 MiB file (not a tree/meta chunk) and fix the count: the MAC'd
    # record says refs_count, so the count must stay; refs then list another chunk twice
    doc = json.loads((target_dir / "snapshots" / info.id).read_bytes())
    own = {bytes.fromhex(c) for c in doc["tree"] + doc["meta"]}
    victim = sorted(ids - own)[0]
    forged = [*sorted(ids - {victim}), sorted(ids - {victim})[0]]
    refs_path.write_bytes(zstandard.ZstdCompressor().compress(b"".join(forged)))
    assert (await repo.verify(info.id)).ok  # keyless verify cannot know (documented)
    report = await repo.verify(info.id, keys[0])
    assert not report.ok and "lacks chunks of 1 file" in report.problems[-1]
    assert report.files and report.labels == {"app_id": "wiki", "kind": "app"}


async def test_a_forged_session_name_is_refused_before_any_key_is_fetched(
    repo: Repository, tmp_path: Path, target_dir: Path, keys: tuple[str, str]
) -> None:
    info = await repo.backup(tree(tmp_path / "a", 1, size=1000), {})
    rewrite(target_dir / "snapshots" / info.id, session="../config")
    with pytest.raises(IntegrityError, match="not a backup session name"):
        await repo.restore(info.id, tmp_path / "out", keys[0])
    assert not (tmp_path / "out").exists()
    rewrite(target_dir / "snapshots" / info.id, session=info.id, mac="00" * 32)
    with pytest.raises(IntegrityError, match="MAC does not match"):
        await repo.meta(info.id, keys[0])


async def test_an_index_bomb_is_refused(repo: Repository, target_dir: Path) -> None:
    (target_dir / "index").mkdir()
    bomb = zstandard.ZstdCompressor().compress(b" " * (80 * 1024 * 1024))
    (target_dir / "index" / ("ab" * 32)).write_bytes(bomb)
    with pytest.raises(RepositoryError, match="more than"):
        await Repository.open(LocalTarget(target_dir))


# -- the backup pipeline (threads compressing, sealing and uploading while the walk reads)


def seal_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name.startswith("hp-backup-seal")]


async def test_a_pack_upload_failing_on_a_seal_thread_fails_the_backup(
    repo: Repository, tmp_path: Path, target_dir: Path
) -> None:
    src = tree(tmp_path / "a", 1, size=3 * 1024 * 1024)
    (target_dir / "data").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for i in range(256):  # every pack directory is a planted link: each upload is refused
        os.symlink(elsewhere, target_dir / "data" / f"{i:02x}")
    with pytest.raises(TargetError, match="symbolic link"):
        await repo.backup(src, {})
    assert not await repo.snapshots() and not list(elsewhere.iterdir())
    assert not seal_threads() and not list((target_dir / "locks").iterdir())


async def test_a_cancelled_backup_stops_its_threads_and_releases_its_lock(
    repo: Repository, tmp_path: Path, target_dir: Path
) -> None:
    src = tree(tmp_path / "a", 1, size=24 * 1024 * 1024)
    work = tmp_path / "work"
    work.mkdir()
    repo = await Repository.open(LocalTarget(target_dir), tmp_dir=str(work))
    task = asyncio.create_task(repo.backup(src, {}))
    while not (target_dir / "data").exists():
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await repo.snapshots()
    assert not seal_threads() and not list((target_dir / "locks").iterdir())
    assert not list(work.iterdir())  # the packs being written are gone
    done = await repo.backup(src, {})  # and the next one completes, reusing what went up
    assert [s.id for s in await repo.snapshots()] == [done.id]


async def test_damaged_or_future_dated_locks_block_only_until_stale(
    repo: Repository, target_dir: Path
) -> None:
    locks = target_dir / "locks"
    locks.mkdir()
    (locks / f"backup-{'a' * 32}").write_bytes(b"\x00garbage")
    future = {"kind": "backup", "time": time.time() + 86400, "host": "x", "pid": 1}
    (locks / f"backup-{'b' * 32}").write_text(json.dumps(future))
    repo.lock_stale, repo.lock_wait = 0.6, 0.2
    with pytest.raises(RepositoryLocked):
        await repo.prune()
    repo.lock_wait = 5.0
    t0 = time.monotonic()
    await repo.prune()
    assert 0.5 <= time.monotonic() - t0 < 3.0
    assert not list(locks.iterdir())  # removed by the prune as stale


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    yield from run_moto()


async def test_on_s3_two_clients_prune_racing_a_backup_lose_nothing(
    moto: MotoServer, tmp_path: Path, keys: tuple[str, str]
) -> None:
    bucket = f"hp-{uuid.uuid4().hex[:12]}"
    moto.client("s3").create_bucket(Bucket=bucket)
    settings = {
        "kind": "s3",
        "bucket": bucket,
        "prefix": "repo/",
        "endpoint_url": moto.url,
        "region": "us-east-1",
        "access_key": moto.access_key_id,
        "secret_key": moto.secret_access_key,
    }
    first = target_from_settings(settings, allow_loopback=True)
    second = target_from_settings(settings, allow_loopback=True)  # as another process
    try:
        one = await Repository.init(first, [keys[1]], params=SMALL)
        shared = random.Random(5).randbytes(1024 * 1024)
        kept = tree(tmp_path / "kept", 1, size=100 * 1024)
        gone = tree(tmp_path / "gone", 2, size=50 * 1024, shared=shared)
        new = tree(tmp_path / "new", 3, size=200 * 1024, shared=shared)
        info_kept = await one.backup(kept, {})
        info_gone = await one.backup(gone, {})
        two = await Repository.open(second)
        await one.forget([info_gone.id])

        info_new, _ = await asyncio.gather(two.backup(new, {}), one.prune())
        await one.prune()
        fresh = await Repository.open(first)
        await assert_restores(fresh, info_kept.id, kept, tmp_path / "out-kept", keys[0])
        await assert_restores(fresh, info_new.id, new, tmp_path / "out-new", keys[0])
        assert [i.name async for i in first.list("locks/")] == []
    finally:
        await first.close()
        await second.close()
