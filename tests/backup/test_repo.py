"""The backup repository format on a real LocalTarget in a temporary directory: round trip,
deduplication, what the server cannot read, damage and tampering, interruption, hostile
snapshots."""

from __future__ import annotations

import os
import random
import stat
import threading
import time
from pathlib import Path

import pytest
from fastcdc import fastcdc

from services.backup.repo import (
    ChunkParams,
    Entry,
    IntegrityError,
    KeyInvalid,
    RepoParams,
    Repository,
    RepositoryError,
    RestoreRefused,
    WrongIdentity,
    new_identity,
)
from services.backup.repo.chunker import iter_chunks
from services.backup.repo.filescache import RACY_NS
from services.backup.repo.packs import FinishedPack, decode_index, encode_index
from services.backup.repo.tree import encode_entry
from services.backup.targets.local import LocalTarget

# Small chunks and packs so that a few MiB exercise many chunks and several packs.
SMALL = RepoParams(ChunkParams(16 * 1024, 64 * 1024, 256 * 1024), pack_size=1024 * 1024)
MARKER = b"PLAINTEXT-MARKER-7f3a9c"


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


def make_tree(root: Path, rng: random.Random) -> None:
    root.mkdir()
    small = root / "many"
    small.mkdir()
    for i in range(150):
        (small / f"f{i:03}.txt").write_bytes(MARKER + rng.randbytes(rng.randrange(10, 3000)))
    (root / "large.bin").write_bytes(rng.randbytes(3 * 1024 * 1024))
    (root / "compressible.log").write_bytes(MARKER * 40000)
    (root / "empty").write_bytes(b"")
    (root / "empty-dir").mkdir()
    (root / "ünïcødé ☃.txt").write_text("snow", encoding="utf-8")
    (root / "script.sh").write_bytes(b"#!/bin/sh\n")
    (root / "script.sh").chmod(0o750)
    (root / "suid").write_bytes(b"x")
    (root / "suid").chmod(0o4755)
    (root / "secret").write_bytes(b"s")
    (root / "secret").chmod(0o600)
    os.symlink("large.bin", root / "link-in")
    os.symlink("many/f001.txt", root / "link-deep")
    os.symlink("/etc/passwd", root / "link-out")
    os.utime(root / "large.bin", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))


def snapshot_of(root: Path) -> dict[str, tuple[object, ...]]:
    """What a user sees of a tree: type, permission bits, mtime, content or link target."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, p.read_bytes())
    return out


def test_streaming_chunker_cuts_like_whole_buffer(tmp_path: Path) -> None:
    params = ChunkParams(1024, 4096, 16384)
    data = random.Random(1).randbytes(1_000_003)
    f = tmp_path / "f"
    f.write_bytes(data)
    fd = os.open(f, os.O_RDONLY)
    try:
        got = list(iter_chunks(fd, params))
    finally:
        os.close(fd)
    whole = [data[c.offset : c.offset + c.length] for c in fastcdc(data, 1024, 4096, 16384)]
    assert got == whole and b"".join(got) == data
    assert max(len(c) for c in got) <= 16384


def test_bad_chunk_sizes_are_refused() -> None:
    with pytest.raises(RepositoryError, match="bad chunk sizes"):
        ChunkParams(1024 * 1024, 1024, 4096)


async def test_round_trip_of_a_tree(
    repo: Repository, tmp_path: Path, keys: tuple[str, str]
) -> None:
    src = tmp_path / "src"
    make_tree(src, random.Random(2))
    seen: list[int] = []
    info = await repo.backup(
        src,
        {"app": "wiki", "version": "1.2"},
        labels={"app": "wiki", "kind": "app"},
        progress=lambda p: seen.append(p.files),
    )
    assert info.stats.files == 157 and info.stats.dirs == 2 and info.stats.symlinks == 3
    assert seen[-1] == 157
    listed = await Repository.open(LocalTarget(repo.target.root))  # type: ignore[attr-defined]
    (only,) = await listed.snapshots()
    assert only.id == info.id and only.labels == {"app": "wiki", "kind": "app"}
    assert await listed.meta(info.id, keys[0]) == {"app": "wiki", "version": "1.2"}

    out = tmp_path / "out"
    result = await listed.restore(info.id, out, keys[0])
    assert result.skipped == ("link-out: link pointing outside the backup",)
    want = snapshot_of(src)
    del want["link-out"]
    want["suid"] = ("file", 0o755, *want["suid"][2:])  # setuid dropped
    assert snapshot_of(out) == want
    assert (await listed.verify(info.id, keys[0])).ok
    assert (await listed.verify(info.id, read_data=True)).ok


async def test_dedup_second_backup_and_one_percent_change(repo: Repository, tmp_path: Path) -> None:
    rng = random.Random(3)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"blob{i}").write_bytes(rng.randbytes(5 * 1024 * 1024))
    total = 20 * 1024 * 1024
    first = await repo.backup(src, {})
    assert first.stats.new_bytes >= total

    again = await repo.backup(src, {})
    assert again.stats.new_chunks == 0 and again.stats.new_bytes == 0
    assert again.stats.stored_bytes == 0

    # Change 1 % of the tree: 205 KiB overwritten in place, in two of the files.
    with open(src / "blob1", "r+b") as f:
        f.seek(1_000_000)
        f.write(rng.randbytes(105 * 1024))
    with open(src / "blob3", "r+b") as f:
        f.seek(3_000_000)
        f.write(rng.randbytes(100 * 1024))
    changed = await repo.backup(src, {})
    # The changed bytes plus at most one neighbouring chunk at each end of each change.
    assert 205 * 1024 <= changed.stats.new_bytes <= 205 * 1024 + 4 * 256 * 1024
    assert changed.stats.new_bytes / total < 0.06


async def test_the_server_cannot_decrypt(
    repo: Repository, tmp_path: Path, target_dir: Path, keys: tuple[str, str]
) -> None:
    src = tmp_path / "src"
    make_tree(src, random.Random(4))
    info = await repo.backup(src, {"env": {"PASSWORD": "hunter2-secret-value"}})
    # Everything the server holds: config (recipients, id key) and objects.
    blobs = [p.read_bytes() for p in target_dir.rglob("*") if p.is_file()]
    assert len(blobs) > 5
    for data in blobs:
        for needle in (MARKER, b"hunter2-secret-value", "ünïcødé".encode(), b"f001.txt"):
            assert needle not in data
        assert b"AGE-SECRET-KEY" not in data
    config = (target_dir / "config").read_text()
    assert keys[1] in config
    # With only the public key, nothing can be read back.
    other_secret, _ = new_identity()
    with pytest.raises(WrongIdentity, match=r"not one the backup .* was encrypted to"):
        await repo.restore(info.id, tmp_path / "out", other_secret)
    assert not (tmp_path / "out").exists()
    with pytest.raises(KeyInvalid, match="not an age secret key"):
        await repo.restore(info.id, tmp_path / "out", keys[1])


async def test_a_flipped_pack_byte_is_found_and_names_the_file(
    repo: Repository, tmp_path: Path, target_dir: Path, keys: tuple[str, str]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_bytes(random.Random(5).randbytes(100_000))
    info = await repo.backup(src, {})
    (pack,) = (target_dir / "data").rglob("*/*")
    data = bytearray(pack.read_bytes())
    data[50] ^= 1
    pack.write_bytes(bytes(data))

    assert (await repo.verify(info.id)).ok  # without the key: only sizes are checked
    unkeyed = await repo.verify(info.id, read_data=True)
    assert not unkeyed.ok and "content hash differs" in unkeyed.problems[0]
    report = await repo.verify(info.id, keys[0])
    assert not report.ok and report.files == ("notes.txt",)
    with pytest.raises(IntegrityError, match=r"notes\.txt: chunk .* damaged or was tampered"):
        await repo.restore(info.id, tmp_path / "out", keys[0])

    pack.write_bytes(bytes(data[:-10]))  # truncated: seen without the key too
    short = await repo.verify(info.id)
    assert not short.ok and "expected" in short.problems[0]


async def test_swapped_blobs_do_not_decrypt(
    repo: Repository, tmp_path: Path, target_dir: Path, keys: tuple[str, str]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"A" * 5000)
    (src / "b").write_bytes(b"B" * 5000)
    info = await repo.backup(src, {})
    (index,) = list((target_dir / "index").iterdir())
    pack, size, blobs = decode_index(index.name, index.read_bytes())
    # Point the chunk of `a` at the blob of `b` and back (the server rewriting its index).
    (_, la), (_, lb) = blobs[0], blobs[1]
    la.offset, lb.offset, la.length, lb.length = lb.offset, la.offset, lb.length, la.length
    index.write_bytes(encode_index(FinishedPack(pack, "", size, la.session, blobs)))
    reopened = await Repository.open(LocalTarget(target_dir))
    with pytest.raises(IntegrityError, match="damaged or was tampered"):
        await reopened.restore(info.id, tmp_path / "out", keys[0])


async def test_interrupted_backup_is_not_listed_and_its_chunks_are_reused(
    repo: Repository, tmp_path: Path, target_dir: Path
) -> None:
    rng = random.Random(6)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"f{i:02}").write_bytes(rng.randbytes(64 * 1024))

    class Killed(Exception):
        pass

    def kill_at_30(p: object) -> None:
        if p.files == 30:
            raise Killed

    with pytest.raises(Killed):
        await repo.backup(src, {}, progress=kill_at_30)
    assert await repo.snapshots() == []

    fresh = await Repository.open(LocalTarget(target_dir))  # as after kill -9 and a restart
    uploaded = fresh.chunk_count
    assert uploaded >= 15  # at least the packs closed before file 30 (1 MiB each)
    done = await fresh.backup(src, {})
    assert done.stats.reused_chunks == uploaded
    total = (await Repository.open(LocalTarget(target_dir))).chunk_count
    assert done.stats.new_chunks == total - uploaded
    assert done.stats.new_bytes < done.stats.bytes * 0.7
    assert [s.id for s in await fresh.snapshots()] == [done.id]


async def craft(repo: Repository, entries: list[Entry], tmp: Path) -> str:
    """A snapshot holding exactly `entries`, written with the library's own writer but past
    its path checks, as a hostile or buggy writer would; `file` entries get content `size`
    bytes of "x" (their chunks are stored for real)."""
    async with repo.writer() as w:
        for e in entries:
            if e.kind == "file":
                payload = tmp / "payload"
                payload.write_bytes(b"x" * e.size)
                fd = os.open(payload, os.O_RDONLY)
                try:
                    ids, _ = await w.store(fd)
                finally:
                    os.close(fd)
                e = Entry(e.path, "file", e.mode, e.mtime_ns, e.size, ids)
            w.tree.write(encode_entry(e))
        return (await w.commit({})).id


@pytest.mark.parametrize(
    "entries",
    [
        [Entry("../evil", "file", 0o100644, 0, 3)],
        [Entry("/tmp/evil", "file", 0o100644, 0, 3)],
        [Entry("ok", "dir", 0o40755, 0), Entry("ok/../../evil", "file", 0o100644, 0, 3)],
        [Entry("ok/./x", "file", 0o100644, 0, 3)],
        # A link into the parent, then a file "through" it: the link is never followed.
        [
            Entry("up", "symlink", 0o120777, 0, target=".."),
            Entry("up/evil", "file", 0o100644, 0, 3),
        ],
        [Entry("in", "symlink", 0o120777, 0, target="."), Entry("in/evil", "file", 0o100644, 0, 3)],
        [Entry("twice", "file", 0o100644, 0, 3), Entry("twice", "file", 0o100644, 0, 3)],
    ],
    ids=["dotdot", "absolute", "inner-dotdot", "dot", "link-up", "link-in", "duplicate"],
)
async def test_restore_refuses_a_hostile_snapshot(
    repo: Repository, tmp_path: Path, keys: tuple[str, str], entries: list[Entry]
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    snap = await craft(repo, entries, work)
    dest = tmp_path / "restore" / "dest"
    with pytest.raises(RestoreRefused, match=r"would leave the destination|is a link or not|twice"):
        await repo.restore(snap, dest, keys[0])
    assert not (tmp_path / "restore" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not Path("/tmp/evil").exists()
    assert [p.name for p in (tmp_path / "restore").rglob("evil")] == []


async def test_restore_makes_no_devices_and_drops_setuid(
    repo: Repository, tmp_path: Path, keys: tuple[str, str]
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    snap = await craft(
        repo,
        [
            Entry("sgid-dir", "dir", 0o42775, 0),
            Entry("sgid-dir/run", "file", 0o106755, 0, 4),
            Entry("shadow", "symlink", 0o120777, 0, target="../../../etc/shadow"),
        ],
        work,
    )
    out = tmp_path / "out"
    result = await repo.restore(snap, out, keys[0])
    assert result.skipped == ("shadow: link pointing outside the backup",)
    assert stat.S_IMODE((out / "sgid-dir").stat().st_mode) == 0o775
    assert stat.S_IMODE((out / "sgid-dir" / "run").stat().st_mode) == 0o755
    assert not (out / "shadow").exists() and not (out / "shadow").is_symlink()


async def test_restore_refuses_a_destination_that_is_not_empty(
    repo: Repository, tmp_path: Path, keys: tuple[str, str]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    info = await repo.backup(src, {})
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").symlink_to("/etc/passwd")
    with pytest.raises(RestoreRefused, match="not empty"):
        await repo.restore(info.id, out, keys[0])


async def test_backup_never_follows_a_link_swapped_in_while_it_runs(
    repo: Repository, tmp_path: Path, keys: tuple[str, str]
) -> None:
    host = tmp_path / "host"
    host.mkdir()
    (host / "shadow").write_bytes(b"HOST-SECRET " * 100)
    vol = tmp_path / "vol"
    vol.mkdir()
    for i in range(30):
        d = vol / f"d{i:02}"
        d.mkdir()
        (d / "shadow").write_bytes(b"app data " * 100)
    (vol / "link").symlink_to(host)
    stop = threading.Event()

    def swap() -> None:  # what a hostile container does to its own volume
        while not stop.is_set():
            for i in range(30):
                d = vol / f"d{i:02}"
                os.rename(d, vol / "tmp")
                os.symlink(host, d)
                os.unlink(d)
                os.rename(vol / "tmp", d)

    t = threading.Thread(target=swap)
    t.start()
    try:
        infos = [await repo.backup(vol, {}) for _ in range(3)]
    finally:
        stop.set()
        t.join()
    for n, info in enumerate(infos):
        out = tmp_path / f"out{n}"
        result = await repo.restore(info.id, out, keys[0])
        assert result.files >= 1  # what the swaps hid at the moment it was read is left out
        for p in out.rglob("*"):
            assert not p.is_symlink()
            if p.is_file():
                assert p.read_bytes() == b"app data " * 100
        assert "link: link pointing outside the backup" in result.skipped
        assert all(s.endswith(": link pointing outside the backup") for s in result.skipped)


async def test_init_open_and_keys_errors(tmp_path: Path, target_dir: Path) -> None:
    _, public = new_identity()
    with pytest.raises(RepositoryError, match="holds no backup repository"):
        await Repository.open(LocalTarget(target_dir))
    with pytest.raises(KeyInvalid, match="not an age public key"):
        await Repository.init(LocalTarget(target_dir), ["age1nope"])
    with pytest.raises(RepositoryError, match="at least one recipient"):
        await Repository.init(LocalTarget(target_dir), [])
    await Repository.init(LocalTarget(target_dir), [public])
    with pytest.raises(RepositoryError, match="already holds a backup repository"):
        await Repository.init(LocalTarget(target_dir), [public])
    _, other = new_identity()
    with pytest.raises(RepositoryError, match="recipients differ"):
        await Repository.open(LocalTarget(target_dir), recipients=[other])
    assert (await Repository.open(LocalTarget(target_dir), recipients=[public])).recipients == [
        public
    ]


async def test_two_recipients_each_can_restore(tmp_path: Path, target_dir: Path) -> None:
    (s1, p1), (s2, p2) = new_identity(), new_identity()
    repo = await Repository.init(LocalTarget(target_dir), [p1, p2], params=SMALL)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("hello")
    info = await repo.backup(src, {})
    for n, secret in enumerate((s1, s2)):
        await repo.restore(info.id, tmp_path / f"out{n}", secret)
        assert (tmp_path / f"out{n}" / "a").read_text() == "hello"


def age_tree(root: Path) -> None:
    """Let the files' ctimes fall out of the files cache's "changed too recently" window."""
    time.sleep(RACY_NS / 1e9 + 0.05)


async def test_files_cache_reads_only_changed_files(
    repo: Repository, tmp_path: Path, keys: tuple[str, str]
) -> None:
    src = tmp_path / "src"
    make_tree(src, random.Random(7))
    cache = tmp_path / "cache"
    age_tree(src)
    first = await repo.backup(src, {}, cache_dir=cache)
    assert first.stats.cached_files == 0 and first.stats.files == 157
    assert not any(p.is_file() for p in repo.target.root.rglob("files-*"))  # type: ignore[attr-defined]
    assert [p.parent.name for p in cache.rglob("files-*")] == [repo.id]

    (src / "many" / "f010.txt").write_bytes(b"changed")
    (src / "added").write_bytes(b"new file")
    (src / "many" / "f020.txt").unlink()
    second = await repo.backup(src, {}, cache_dir=cache)
    # 157 files - 1 removed + 1 added; only the changed and the added one were read.
    assert second.stats.files == 157 and second.stats.cached_files == 155
    assert second.stats.bytes == sum(
        p.lstat().st_size for p in src.rglob("*") if stat.S_ISREG(p.lstat().st_mode)
    )
    # What is new: the two files' bytes and the tree (the list of files, a few dozen KB).
    assert second.stats.new_bytes < 64 * 1024 < first.stats.new_bytes

    out = tmp_path / "out"
    await repo.restore(second.id, out, keys[0])
    want = snapshot_of(src)
    del want["link-out"]
    want["suid"] = ("file", 0o755, *want["suid"][2:])
    assert snapshot_of(out) == want
    assert (await repo.verify(second.id, keys[0])).ok

    # Without the cache everything is read, as before.
    plain = await repo.backup(src, {})
    assert plain.stats.cached_files == 0 and plain.stats.files == 157


async def test_files_cache_rereads_a_file_whose_ctime_changed(
    repo: Repository, tmp_path: Path, keys: tuple[str, str]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    f = src / "db"
    f.write_bytes(b"A" * 10_000)
    os.utime(f, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    age_tree(src)
    cache = tmp_path / "cache"
    await repo.backup(src, {}, cache_dir=cache)
    assert (await repo.backup(src, {}, cache_dir=cache)).stats.cached_files == 1
    # Same size, same mtime (put back), same inode: only the ctime tells.
    with f.open("r+b") as fh:
        fh.write(b"B" * 10_000)
    os.utime(f, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    again = await repo.backup(src, {}, cache_dir=cache)
    assert again.stats.cached_files == 0 and again.stats.new_bytes >= 10_000
    await repo.restore(again.id, tmp_path / "out", keys[0])
    assert (tmp_path / "out" / "db").read_bytes() == b"B" * 10_000


async def test_files_cache_naming_a_lost_chunk_is_not_trusted(
    repo: Repository, tmp_path: Path, target_dir: Path, keys: tuple[str, str]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(random.Random(8).randbytes(50_000))
    (src / "b").write_bytes(random.Random(9).randbytes(50_000))
    age_tree(src)
    cache = tmp_path / "cache"
    await repo.backup(src, {}, cache_dir=cache)
    # The repository loses what was stored (as after a prune): its index no longer has them.
    for d in ("index", "data"):
        for p in sorted((target_dir / d).rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
    fresh = await Repository.open(LocalTarget(target_dir))
    assert fresh.chunk_count == 0
    info = await fresh.backup(src, {}, cache_dir=cache)
    assert info.stats.cached_files == 0 and info.stats.new_bytes >= 100_000
    assert (await fresh.verify(info.id, keys[0])).ok
    await fresh.restore(info.id, tmp_path / "out", keys[0])
    assert (tmp_path / "out" / "a").read_bytes() == (src / "a").read_bytes()
    # A damaged cache file is ignored, not an error.
    for p in cache.rglob("files-*"):
        p.write_bytes(b"garbage")
    assert (await fresh.backup(src, {}, cache_dir=cache)).stats.cached_files == 0
    assert (await fresh.backup(src, {}, cache_dir=cache)).stats.cached_files == 2


async def test_restore_of_many_files_in_parallel_and_a_missing_pack(
    repo: Repository, tmp_path: Path, target_dir: Path, keys: tuple[str, str]
) -> None:
    rng = random.Random(10)
    src = tmp_path / "src"
    src.mkdir()
    for d in range(3):
        (src / f"d{d}").mkdir()
        for i in range(300):  # more files than one restore job takes, some empty
            size = 0 if i % 50 == 0 else rng.randrange(1, 5000)
            data = rng.randbytes(size) if i % 2 else MARKER * (size // len(MARKER))
            (src / f"d{d}" / f"f{i:03}").write_bytes(data)  # random, or compressed in the pack
    for i in range(3):  # several chunks and packs each
        (src / f"big{i}").write_bytes(rng.randbytes(2 * 1024 * 1024 + i))
        (src / f"log{i}").write_bytes(b"".join(b"line %d\n" % n for n in range(300_000)))
    info = await repo.backup(src, {})
    out = tmp_path / "out"
    result = await repo.restore(info.id, out, keys[0])
    assert result.files == 906 and result.bytes == info.stats.bytes
    assert snapshot_of(out) == snapshot_of(src)

    biggest = max((target_dir / "data").rglob("*/*"), key=lambda p: p.stat().st_size)
    biggest.unlink()
    with pytest.raises(IntegrityError, match=r"big\d: pack data/.* is missing"):
        await repo.restore(info.id, tmp_path / "out2", keys[0])
