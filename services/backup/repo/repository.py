"""The backup repository: init/open on a Target, backup, list, restore, verify (FORMAT.md)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import datetime as dt
import errno
import hashlib
import hmac
import json
import os
import secrets
import stat
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import zstandard
from cryptography.exceptions import InvalidTag

from services.backup.repo.chunker import ChunkParams, iter_chunks
from services.backup.repo.crypto import (
    SessionKeys,
    chunk_id,
    parse_identity,
    parse_recipient,
    unwrap_data_key,
    wrap_data_key,
)
from services.backup.repo.errors import (
    BackupError,
    IntegrityError,
    RepositoryError,
    RestoreRefused,
    SnapshotNotFound,
)
from services.backup.repo.filescache import FilesCache
from services.backup.repo.locks import HeldLock, hold
from services.backup.repo.packs import (
    SESSION,
    FinishedPack,
    Location,
    PackWriter,
    decode_index,
    decompress_bounded,
    encode_index,
)
from services.backup.repo.tree import (
    Entry,
    SafeWriter,
    check_path,
    decode_entry,
    encode_entry,
    link_escapes,
)
from services.backup.targets.base import Target, TargetError, TargetMissing

__all__ = [
    "BackupStats",
    "Progress",
    "PruneStats",
    "RepoParams",
    "Repository",
    "RestoreResult",
    "SnapshotInfo",
    "SnapshotWriter",
    "VerifyReport",
]

FORMAT = "homeport-backup"
VERSION = 1
CONFIG = "config"
_FLAG_RAW = b"\x00"
_FLAG_ZSTD = b"\x01"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_SEAL_THREADS = 2  # threads compressing and sealing new chunks (zstd, the cipher drop the GIL)
_IN_FLIGHT = 6  # new chunks read but not yet in a pack, at most (each <= max chunk size)
_BATCH_FILE_BYTES = 1024 * 1024  # files below this size are backed up several per thread call
_BATCH_FILES_AT_ONCE = 64
_RUN_BYTES = 8 * 1024 * 1024  # most bytes of a pack read at once by restore
_BATCH_BYTES = 8 * 1024 * 1024  # files restored by one job: up to this many bytes ...
_BATCH_FILES = 256  # ... or this many files
_RESTORE_JOBS = 6  # jobs restoring files at the same time
_MAX_REFS = 1 << 26  # chunks one snapshot may list (64 Ti of 1 MiB chunks)


@dataclass(frozen=True, slots=True)
class RepoParams:
    """Fixed when a repository is made: chunk sizes, zstd level, pack size."""

    chunks: ChunkParams = field(default_factory=ChunkParams)
    zstd_level: int = 3
    pack_size: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        if not 1 <= self.zstd_level <= 19:
            raise RepositoryError(f"zstd level {self.zstd_level} is not in 1..19")
        if not 1024 * 1024 <= self.pack_size <= 1024 * 1024 * 1024:
            raise RepositoryError(f"pack size {self.pack_size} is not in 1 MiB..1 GiB")


@dataclass(slots=True)
class BackupStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    skipped: int = 0  # devices, sockets, fifos, and entries swapped for links while read
    bytes: int = 0  # plaintext bytes of the files read
    new_bytes: int = 0  # plaintext bytes of chunks not stored before
    new_chunks: int = 0
    stored_bytes: int = 0  # bytes of packs uploaded (sealed, compressed)
    reused_chunks: int = 0
    cached_files: int = 0  # files not read: the local files cache showed them unchanged


@dataclass(frozen=True, slots=True)
class Progress:
    files: int
    bytes: int
    path: str


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    id: str
    time: dt.datetime
    labels: dict[str, str]
    stats: BackupStats


@dataclass(frozen=True, slots=True)
class RestoreResult:
    files: int
    bytes: int
    skipped: tuple[str, ...]  # "path: reason" for entries deliberately not restored


@dataclass(frozen=True, slots=True)
class VerifyReport:
    snapshot: str
    checked_chunks: int
    checked_packs: int
    problems: tuple[str, ...]  # one line per damaged/missing pack or chunk
    files: tuple[str, ...]  # files hurt (only known with the identity: the tree is sealed)
    labels: dict[str, str] = field(default_factory=dict)  # the snapshot's (which app)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class PruneStats:
    packs_deleted: int
    bytes_freed: int  # bytes of the packs and index objects deleted
    packs_kept: int
    packs_rewritten: int = 0  # packs are never repacked (version 1)


def _malloc_trim() -> Callable[[], object]:
    """glibc's malloc_trim(0), else a no-op: gives the freed parts of every thread's malloc
    arena back to the system. Called after each pack, it keeps the backup's peak RSS near
    what it actually holds (buffers of 1-16 MiB freed by other threads otherwise pile up)."""
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    fn.argtypes = [ctypes.c_size_t]
    return lambda: fn(0)


_trim = _malloc_trim()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class Repository:
    """A backup repository kept on a Target. Writing needs only the recipients (public keys);
    reading back needs one of the identities (secret keys)."""

    def __init__(
        self, target: Target, config: dict[str, Any], *, tmp_dir: str | None = None
    ) -> None:
        self.target = target
        self.id: str = config["id"]
        self.recipients: list[str] = list(config["recipients"])
        c = config["chunker"]
        self.params = RepoParams(
            ChunkParams(int(c["min_size"]), int(c["avg_size"]), int(c["max_size"])),
            int(config["compression"]["level"]),
            int(config["pack_size"]),
        )
        self._id_key = bytes.fromhex(config["id_key"])
        self._tmp_dir = tmp_dir
        self._index: dict[bytes, Location] = {}
        self._pack_sizes: dict[str, int] = {}
        self._indexes: dict[str, tuple[str, int, list[tuple[bytes, Location]]]] = {}
        self._lock = asyncio.Lock()
        self.lock_stale = 300.0  # seconds after its last refresh a lock object is stale
        self.lock_wait = 900.0  # seconds a backup or prune waits for a conflicting one

    # -- making and opening

    @classmethod
    async def init(
        cls,
        target: Target,
        recipients: list[str],
        *,
        params: RepoParams | None = None,
        tmp_dir: str | None = None,
    ) -> Repository:
        """Make a new repository on an empty target, encrypting to `recipients` (age1…)."""
        if not recipients:
            raise RepositoryError("a repository needs at least one recipient (age public key)")
        for r in recipients:
            parse_recipient(r)
        if await target.stat(CONFIG) is not None:
            raise RepositoryError(f"{target!r} already holds a backup repository")
        params = params or RepoParams()
        config = {
            "format": FORMAT,
            "version": VERSION,
            "id": secrets.token_hex(16),
            "id_key": secrets.token_hex(32),
            "chunk_id": "blake2b-256-keyed",
            "chunker": {
                "algorithm": "fastcdc-2016",
                "min_size": params.chunks.min_size,
                "avg_size": params.chunks.avg_size,
                "max_size": params.chunks.max_size,
            },
            "compression": {"algorithm": "zstd", "level": params.zstd_level},
            "cipher": "chacha20-poly1305",
            "pack_size": params.pack_size,
            "recipients": [r.strip() for r in recipients],
        }
        await target.put(CONFIG, json.dumps(config, indent=1, sort_keys=True).encode() + b"\n")
        return cls(target, config, tmp_dir=tmp_dir)

    @classmethod
    async def open(
        cls,
        target: Target,
        *,
        recipients: list[str] | None = None,
        tmp_dir: str | None = None,
    ) -> Repository:
        """Open an existing repository and load its index. Pass the `recipients` the platform
        keeps itself to refuse a target whose config was altered to add an attacker's key."""
        try:
            raw = await target.get(CONFIG)
        except TargetMissing:
            raise RepositoryError(f"{target!r} holds no backup repository (no config)") from None
        try:
            config = json.loads(raw)
            if config.get("format") != FORMAT or config.get("version") != VERSION:
                raise RepositoryError(
                    f"{target!r}: not a {FORMAT} v{VERSION} repository"
                    f" (format {config.get('format')!r}, version {config.get('version')!r})"
                )
            repo = cls(target, config, tmp_dir=tmp_dir)
            if len(repo._id_key) != 32:
                raise ValueError("id_key is not 32 bytes")
        except RepositoryError:
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise RepositoryError(f"{target!r}: the repository config is unreadable: {e}") from e
        if recipients is not None and sorted(r.strip() for r in recipients) != sorted(
            repo.recipients
        ):
            raise RepositoryError(
                f"{target!r}: the repository's recipients differ from the configured keys"
            )
        await repo.reload_index()
        return repo

    async def reload_index(self) -> None:
        """Read the index objects: which chunks exist and where (only those not read before
        are fetched; those gone, deleted by a prune, are dropped)."""
        known = self._indexes
        current: dict[str, tuple[str, int, list[tuple[bytes, Location]]]] = {}
        async for info in self.target.list("index/"):
            if info.name in known:
                current[info.name] = known[info.name]
                continue
            try:
                data = await self.target.get(info.name)
            except TargetMissing:
                continue  # deleted by a prune since listed
            current[info.name] = await asyncio.to_thread(decode_index, info.name, data)
        index: dict[bytes, Location] = {}
        sizes: dict[str, int] = {}
        for _name, (pack, size, blobs) in sorted(current.items()):
            sizes[pack] = size
            for cid, loc in blobs:
                index.setdefault(cid, loc)
        self._indexes, self._index, self._pack_sizes = current, index, sizes

    async def set_recipients(self, recipients: list[str]) -> None:
        """Encrypt new backups to `recipients` (age1…) from now on: `config` is rewritten in
        one atomic put. Old backups keep the keys they were wrapped to."""
        if not recipients:
            raise RepositoryError("a repository needs at least one recipient (age public key)")
        for r in recipients:
            parse_recipient(r)
        try:
            config = json.loads(await self.target.get(CONFIG))
        except (TargetMissing, ValueError) as e:
            raise RepositoryError(f"{self.target!r}: the repository config is unreadable") from e
        if config.get("id") != self.id:
            raise RepositoryError(f"{self.target!r} now holds another repository")
        config["recipients"] = [r.strip() for r in recipients]
        await self.target.put(CONFIG, json.dumps(config, indent=1, sort_keys=True).encode() + b"\n")
        self.recipients = list(config["recipients"])

    def _hold(self, kind: str) -> contextlib.AbstractAsyncContextManager[HeldLock]:
        return hold(self.target, kind, stale=self.lock_stale, wait=self.lock_wait)

    @property
    def chunk_count(self) -> int:
        return len(self._index)

    # -- backup

    async def backup(
        self,
        source_dir: Path,
        meta: dict[str, Any],
        *,
        labels: dict[str, str] | None = None,
        progress: Callable[[Progress], None] | None = None,
        cache_dir: Path | None = None,
    ) -> SnapshotInfo:
        """Back up `source_dir` (never following a link below it). `meta` is sealed with the
        data; `labels` (short public strings: app id, kind) can be read without the key.
        With `cache_dir` (a local directory of the machine backing up, never the target), a
        file whose size, mtime, inode and ctime are those of the previous backup of the same
        source into this repository is not read again (FORMAT.md, "Local files cache")."""
        labels = _checked_labels(labels)
        cache = None
        if cache_dir is not None:
            source = await asyncio.to_thread(os.path.abspath, source_dir)
            cache = FilesCache(Path(cache_dir), self.id, source)
            try:
                await asyncio.to_thread(cache.path.parent.mkdir, 0o700, True, True)
            except OSError as e:
                raise BackupError(f"cannot use the files cache {cache_dir}: {e.strerror}") from e
            await asyncio.to_thread(cache.load)
        async with self.writer(labels=labels, progress=progress) as w:
            w.cache = cache
            await w.add_tree(Path(source_dir))
            info = await w.commit(meta)
        if cache is not None:
            with contextlib.suppress(OSError):  # the backup is complete; next one reads all
                await asyncio.to_thread(cache.save)
        return info

    @contextlib.asynccontextmanager
    async def writer(
        self,
        *,
        labels: dict[str, str] | None = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> AsyncIterator[SnapshotWriter]:
        """A snapshot being written (one at a time per repository): add trees, files from
        open descriptors (database dumps) or entries, then `commit()`. Leaving without
        committing lists nothing; what was uploaded is reused by the next backup."""
        labels = _checked_labels(labels)
        async with self._lock, self._hold("backup") as held:
            await self.reload_index()  # a prune may have deleted chunks since the last look
            w = SnapshotWriter(self, labels, progress, held)
            try:
                await w.start()
                yield w
            finally:
                await asyncio.to_thread(w.cleanup)

    # -- forgetting and pruning (an exclusive lock on the target: no backup meanwhile)

    async def forget(self, snapshot_ids: list[str] | tuple[str, ...]) -> None:
        """Remove these completed backups (`snapshots/<id>`, `refs/<id>`, and `keys/<id>` if
        no pack sealed with it remains). Their chunks stay until `prune()`. A string that is
        no snapshot id is refused (SnapshotNotFound) before anything is removed; an id already
        gone is skipped (a forget retried after a failure completes)."""
        ids = list(dict.fromkeys(snapshot_ids))
        for sid in ids:
            if not isinstance(sid, str) or not SESSION.fullmatch(sid):
                raise SnapshotNotFound(f"no completed backup {str(sid)[:80]!r}")
        async with self._hold("prune") as held:
            await self.reload_index()
            sealed = {loc.session for _p, _s, blobs in self._indexes.values() for _c, loc in blobs}
            for sid in ids:
                held.check()
                await self.target.delete(f"snapshots/{sid}")  # first: no longer listed
                await self.target.delete(f"refs/{sid}")
                if sid not in sealed:
                    await self.target.delete(f"keys/{sid}")

    async def prune(self) -> PruneStats:
        """Delete the packs (and their index objects) no completed backup uses, the `refs/`
        of unfinished backups and the `keys/` no snapshot or pack needs. Runs under an
        exclusive lock on the target: a backup waits meanwhile, and reloads the index after."""
        async with self._hold("prune") as held:
            await self.reload_index()
            used: set[bytes] = set()
            snapshots: set[str] = set()
            async for info in self.target.list("snapshots/"):
                sid = info.name.removeprefix("snapshots/")
                try:
                    doc = await self._snapshot_doc(sid)
                    refs = await self._refs(doc)
                except (SnapshotNotFound, TargetMissing):
                    continue  # forgotten meanwhile (by a process not honouring locks)
                except BackupError as e:
                    raise RepositoryError(f"prune stopped, nothing deleted: {e}") from e
                snapshots.add(str(doc["session"]))
                used.update(refs)
            keep_packs = {loc.pack for cid in used if (loc := self._index.get(cid)) is not None}
            doomed = [
                (name, pack, size)
                for name, (pack, size, _b) in sorted(self._indexes.items())
                if pack not in keep_packs
            ]
            indexed = {pack for pack, _s, _b in self._indexes.values()}
            orphans = [i async for i in self.target.list("data/") if i.name not in indexed]
            freed = 0
            for name, pack, size in doomed:
                held.check()
                await self.target.delete(name)  # the index first: a pack without is garbage
                await self.target.delete(pack)
                freed += size
                del self._indexes[name]
            for info in orphans:
                held.check()
                await self.target.delete(info.name)
                freed += info.size
            sessions = snapshots | {
                loc.session for _p, _s, blobs in self._indexes.values() for _c, loc in blobs
            }
            async for info in self.target.list("refs/"):
                if info.name.removeprefix("refs/") not in snapshots:
                    held.check()
                    await self.target.delete(info.name)
            async for info in self.target.list("keys/"):
                if info.name.removeprefix("keys/") not in sessions:
                    held.check()
                    await self.target.delete(info.name)
            await self.reload_index()
            return PruneStats(len(doomed) + len(orphans), freed, len(self._indexes))

    # -- listing

    async def snapshots(self) -> list[SnapshotInfo]:
        """Completed backups, oldest first (a backup is complete once its snapshot exists)."""
        out = []
        async for info in self.target.list("snapshots/"):
            try:
                doc = await self._snapshot_doc(info.name.removeprefix("snapshots/"))
            except SnapshotNotFound:
                continue  # forgotten since listed
            out.append(_info(doc))
        out.sort(key=lambda s: (s.time, s.id))
        return out

    async def _snapshot_doc(self, snapshot_id: str) -> dict[str, Any]:
        try:
            raw = await self.target.get(f"snapshots/{snapshot_id}")
        except (TargetMissing, TargetError):
            raise SnapshotNotFound(f"no completed backup {snapshot_id[:80]!r}") from None
        try:
            doc: dict[str, Any] = json.loads(raw)
            if doc.get("version") != VERSION or doc.get("id") != snapshot_id:
                raise ValueError("wrong version or id")
            return doc
        except (ValueError, TypeError) as e:
            raise RepositoryError(f"snapshot {snapshot_id} is unreadable: {e}") from e

    # -- reading back (needs an identity)

    async def _reader(self, snapshot_id: str, identity: str) -> _Reader:
        parse_identity(identity)
        doc = await self._snapshot_doc(snapshot_id)
        reader = _Reader(self, identity)
        keys = await reader.keys(doc.get("session"))  # the name's grammar is checked first
        body = {k: v for k, v in doc.items() if k != "mac"}
        mac = doc.get("mac")
        if not isinstance(mac, str) or not hmac.compare_digest(keys.mac(_dumps(body)), mac):
            raise IntegrityError(f"snapshot {snapshot_id} was altered (its MAC does not match)")
        reader.doc = doc
        return reader

    async def meta(self, snapshot_id: str, identity: str) -> dict[str, Any]:
        """The sealed metadata given to backup()."""
        reader = await self._reader(snapshot_id, identity)
        raw = b"".join([c async for c in reader.stream(reader.chunk_list("meta"), "metadata")])
        result: dict[str, Any] = json.loads(raw)
        return result

    async def restore(self, snapshot_id: str, dest_dir: Path, identity: str) -> RestoreResult:
        """Write the snapshot's tree into `dest_dir` (empty or new). Refuses paths leaving it;
        never follows a link; makes no devices; drops setuid/setgid; skips links pointing out."""
        reader = await self._reader(snapshot_id, identity)
        async for _ in reader.entries():  # first pass: refuse a hostile tree before writing
            pass
        writer = await asyncio.to_thread(SafeWriter, str(dest_dir))
        totals = [0, 0]
        skipped: list[str] = []
        jobs = _Jobs(_RESTORE_JOBS)

        async def job(batch: list[Entry]) -> None:
            files, nbytes = await _restore_files(reader, writer, batch)
            totals[0] += files
            totals[1] += nbytes

        try:
            batch: list[Entry] = []
            size = 0
            async for e in reader.entries():
                jobs.check()
                if e.kind == "file":
                    batch.append(e)
                    size += e.size
                    if size >= _BATCH_BYTES or len(batch) >= _BATCH_FILES:
                        await jobs.start(job, batch)
                        batch, size = [], 0
                elif e.kind == "dir":
                    await asyncio.to_thread(writer.mkdir, e)
                elif link_escapes(e.path, e.target):
                    skipped.append(f"{e.path}: link pointing outside the backup")
                else:
                    await asyncio.to_thread(writer.symlink, e)
            if batch:
                await jobs.start(job, batch)
            await jobs.wait()
            await asyncio.to_thread(writer.finish)
        finally:
            await jobs.stop()
            await asyncio.to_thread(writer.close)
        files, nbytes = totals
        return RestoreResult(files, nbytes, tuple(skipped))

    async def verify(
        self, snapshot_id: str, identity: str | None = None, *, read_data: bool = False
    ) -> VerifyReport:
        """Without `identity`: every chunk the snapshot references is indexed and its pack is
        there with the expected size (and, with `read_data`, SHA-256, the pack's name). With
        it: every pack is read and hashed, every blob decrypted and checked against its id;
        the files a damaged pack hurts are named."""
        doc = await self._snapshot_doc(snapshot_id)
        try:
            labels = _checked_labels(doc.get("labels"))
        except (BackupError, TypeError, ValueError):
            labels = {}
        reader = await self._reader(snapshot_id, identity) if identity is not None else None
        try:
            refs = await self._refs(doc)
        except IntegrityError as e:
            return VerifyReport(snapshot_id, 0, 0, (str(e),), (), labels)
        problems: list[str] = []
        bad: set[bytes] = set()
        by_pack: dict[str, list[tuple[bytes, Location]]] = {}
        listed = set(refs)
        try:
            own = [bytes.fromhex(c) for c in [*doc["tree"], *doc["meta"]]]
        except (KeyError, TypeError, ValueError):
            own = []
            problems.append(f"snapshot {snapshot_id}: its tree or meta list is malformed")
        if not listed.issuperset(own):
            problems.append(f"refs/{snapshot_id} lacks chunks of the snapshot's tree or meta")
        for cid in refs:
            loc = self._index.get(cid)
            if loc is None or loc.pack is None:
                problems.append(f"chunk {cid.hex()[:16]}… is in no index")
                if loc is None:
                    bad.add(cid)
                continue
            by_pack.setdefault(loc.pack, []).append((cid, loc))
        for pack, blobs in sorted(by_pack.items()):
            trouble = await self._check_pack(pack, blobs, reader, read_data)
            if trouble is not None:
                problems.append(f"{pack}: {trouble[0]}")
                bad.update(trouble[1])
        files: list[str] = []
        if reader is not None:
            if bad & set(reader.chunk_list("tree")):
                files.append("(the list of files itself)")
            else:
                unlisted = 0
                async for ent in reader.entries():
                    if ent.kind == "file" and not bad.isdisjoint(ent.chunks):
                        files.append(ent.path)
                    elif ent.kind == "file" and not listed.issuperset(ent.chunks):
                        files.append(ent.path)
                        unlisted += 1
                if unlisted:
                    problems.append(f"refs/{snapshot_id} lacks chunks of {unlisted} file(s)")
        return VerifyReport(
            snapshot_id, len(refs), len(by_pack), tuple(problems), tuple(files), labels
        )

    async def _check_pack(
        self,
        pack: str,
        blobs: list[tuple[bytes, Location]],
        reader: _Reader | None,
        read_data: bool,
    ) -> tuple[str, set[bytes]] | None:
        ids = {cid for cid, _ in blobs}
        expected = self._pack_sizes.get(pack)
        info = await self.target.stat(pack)
        if info is None:
            return "missing", ids
        if info.size != expected:
            return f"size {info.size}, expected {expected}", ids
        beyond = {cid for cid, loc in blobs if loc.offset + loc.length > info.size}
        if beyond:
            return f"{len(beyond)} chunk(s) indexed beyond its end", beyond
        if reader is None and not read_data:
            return None
        data = await self.target.get(pack)
        digest = await asyncio.to_thread(_sha256, data)
        if reader is None:
            if digest != pack.rsplit("/", 1)[1]:
                return "content hash differs from its name", ids
            return None
        for session in {loc.session for _, loc in blobs}:
            await reader.keys(session)
        damaged = await asyncio.to_thread(reader.check_blobs, data, blobs)
        if digest != pack.rsplit("/", 1)[1] or damaged:
            why = f"{len(damaged)} damaged chunk(s)" if damaged else "content hash differs"
            return why, damaged or ids
        return None

    async def _refs(self, doc: dict[str, Any]) -> list[bytes]:
        """The snapshot's chunk ids from `refs/` (IntegrityError unless exactly `refs_count`
        ids, decompressed no further than that)."""
        name, count = doc.get("refs"), doc.get("refs_count")
        if name != f"refs/{doc['id']}":
            raise IntegrityError(f"snapshot {doc['id']} names {str(name)[:80]!r} as its refs")
        if not isinstance(count, int) or not 0 <= count <= _MAX_REFS:
            raise IntegrityError(f"snapshot {doc['id']} has a bad refs_count {str(count)[:20]}")
        try:
            raw = await self.target.get(name)
            data = await asyncio.to_thread(decompress_bounded, raw, count * 32)
        except TargetMissing:
            raise IntegrityError(f"{name} (list of chunks of {doc['id']}) is missing") from None
        except (zstandard.ZstdError, ValueError) as e:
            raise IntegrityError(f"{name} is damaged or does not match refs_count: {e}") from e
        if len(data) != count * 32:
            raise IntegrityError(
                f"{name} lists {len(data) / 32:g} chunks, the snapshot says {count}"
            )
        return [data[i : i + 32] for i in range(0, len(data), 32)]


def _checked_labels(labels: dict[str, str] | None) -> dict[str, str]:
    """A copy of `labels`, refused (BackupError) unless keys and values are short strings."""
    out = dict(labels or {})
    for k, v in out.items():
        if not (isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 200):
            raise BackupError(f"label {str(k)[:64]!r}: keys and values are short strings")
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _info(doc: dict[str, Any]) -> SnapshotInfo:
    stats = BackupStats(**{k: int(v) for k, v in doc["stats"].items() if hasattr(BackupStats, k)})
    return SnapshotInfo(
        doc["id"], dt.datetime.fromisoformat(doc["time"]), dict(doc["labels"]), stats
    )


class _Reader:
    """Decrypts one snapshot's blobs (unwrapping each session's key once)."""

    def __init__(self, repo: Repository, identity: str) -> None:
        self.repo = repo
        self.identity = identity
        self.doc: dict[str, Any] = {}
        self._keys: dict[str, SessionKeys] = {}
        self._dctx = zstandard.ZstdDecompressor()

    async def keys(self, session: Any) -> SessionKeys:
        if session not in self._keys:
            if not isinstance(session, str) or not SESSION.fullmatch(session):
                raise IntegrityError(
                    f"a record names {str(session)[:40]!r}, which is not a backup session name"
                )
            try:
                wrapped = await self.repo.target.get(f"keys/{session}")
            except TargetMissing:
                raise IntegrityError(
                    f"the key object of backup session {session} is missing"
                ) from None
            data_key = await asyncio.to_thread(unwrap_data_key, wrapped, self.identity, session)
            self._keys[session] = SessionKeys.from_data_key(data_key)
        return self._keys[session]

    def chunk_list(self, field_name: str) -> list[bytes]:
        return [bytes.fromhex(c) for c in self.doc[field_name]]

    def _plain(
        self,
        keys: SessionKeys,
        cid: bytes,
        blob: bytes,
        loc: Location,
        dctx: zstandard.ZstdDecompressor | None = None,
    ) -> bytes:
        """The chunk's plaintext, checked against its id (InvalidTag/ValueError if damaged).
        A thread other than the reader's own passes its own `dctx` (they are not shared)."""
        inner = keys.open(cid, blob)
        flag, body = inner[:1], inner[1:]
        if flag == _FLAG_ZSTD:
            plain = (dctx or self._dctx).decompress(body, max_output_size=loc.plain_length)
        elif flag == _FLAG_RAW:
            plain = body
        else:
            raise ValueError("unknown blob flag")
        if len(plain) != loc.plain_length or chunk_id(self.repo._id_key, plain) != cid:
            raise ValueError("plaintext does not match the chunk id")
        return plain

    async def chunk(self, cid: bytes, what: str) -> bytes:
        loc = self.repo._index.get(cid)
        if loc is None or loc.pack is None:
            raise IntegrityError(f"{what}: chunk {cid.hex()[:16]}… is in no index", (what,))
        keys = await self.keys(loc.session)
        try:
            blob = await self.repo.target.get_range(loc.pack, loc.offset, loc.length)
        except TargetMissing:
            raise IntegrityError(f"{what}: pack {loc.pack} is missing", (what,)) from None
        return await asyncio.to_thread(self.checked_plain, keys, cid, blob, loc, what)

    def checked_plain(
        self,
        keys: SessionKeys,
        cid: bytes,
        blob: bytes,
        loc: Location,
        what: str,
        dctx: zstandard.ZstdDecompressor | None = None,
    ) -> bytes:
        """`_plain`, but a short, damaged or tampered blob is an IntegrityError naming `what`."""
        try:
            if len(blob) != loc.length:
                raise ValueError("pack too short")
            return self._plain(keys, cid, blob, loc, dctx)
        except (InvalidTag, ValueError, zstandard.ZstdError) as e:
            raise IntegrityError(
                f"{what}: chunk {cid.hex()[:16]}… in pack {loc.pack} is damaged or was tampered"
                " with",
                (what,),
            ) from e

    async def stream(self, chunks: Any, what: str) -> AsyncIterator[bytes]:
        for cid in chunks:
            yield await self.chunk(cid, what)

    async def entries(self) -> AsyncIterator[Entry]:
        """The tree, entry by entry (RestoreRefused on a malformed or hostile path)."""
        rest = b""
        async for data in self.stream(self.chunk_list("tree"), "(the list of files)"):
            lines = (rest + data).split(b"\n")
            rest = lines.pop()
            for line in lines:
                e = decode_entry(line)
                check_path(e.path)
                yield e
        if rest:
            raise RestoreRefused("the snapshot's tree ends in the middle of an entry")

    def check_blobs(self, data: bytes, blobs: list[tuple[bytes, Location]]) -> set[bytes]:
        """Ids of the blobs of a pack (read whole) that fail to decrypt or to match their id."""
        bad: set[bytes] = set()
        for cid, loc in blobs:
            try:
                self._plain(
                    self._keys[loc.session], cid, data[loc.offset : loc.offset + loc.length], loc
                )
            except (InvalidTag, ValueError, zstandard.ZstdError):
                bad.add(cid)
        return bad


class _Jobs:
    """At most `limit` coroutines at a time; the first error stops the rest."""

    def __init__(self, limit: int) -> None:
        self._sem = asyncio.Semaphore(limit)
        self._tasks: set[asyncio.Task[None]] = set()
        self.error: BaseException | None = None

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    async def start(self, fn: Callable[..., Any], *args: Any) -> None:
        await self._sem.acquire()
        if self.error is not None:
            self._sem.release()
            raise self.error
        task = asyncio.create_task(self._run(fn, *args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            await fn(*args)
        except BaseException as e:
            if self.error is None:
                self.error = e
        finally:
            self._sem.release()

    async def wait(self) -> None:
        while self._tasks:
            await asyncio.wait(list(self._tasks))
        self.check()

    async def stop(self) -> None:
        """Cancel what still runs and wait until it (and its worker threads) ended."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """`asyncio.to_thread`, but if cancelled, still waits for the thread to finish (so that
    nothing it uses, such as a file descriptor, is closed under it)."""
    fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await fut
        raise


_Piece = tuple[int, bytes, Location]  # file's place in its batch, chunk id, where it is


class _FilesOut:
    """The files of one restore batch being written, in order (blocking; one thread at a
    time)."""

    def __init__(self, reader: _Reader, writer: SafeWriter, files: list[Entry]) -> None:
        self.reader = reader
        self.writer = writer
        self.files = files
        self.cur = -1
        self.fd: int | None = None
        self.written = 0
        self.done_files = 0
        self.done_bytes = 0
        self.dctx = zstandard.ZstdDecompressor()  # one per batch: they are not thread-safe

    def advance(self, i: int) -> None:
        """Finish the files before the `i`th and create it (and any empty one on the way)."""
        while self.cur < i:
            if self.fd is not None:
                e = self.files[self.cur]
                fd, self.fd = self.fd, None
                self.writer.finish_file(fd, e)
                if self.written != e.size:
                    raise IntegrityError(
                        f"{e.path}: restored {self.written} bytes, the snapshot says {e.size}",
                        (e.path,),
                    )
                self.done_files += 1
                self.done_bytes += self.written
            self.cur += 1
            if self.cur < len(self.files):
                self.fd = self.writer.create(self.files[self.cur])
                self.written = 0

    def write_run(self, run: list[_Piece], data: bytes, keys: dict[str, SessionKeys]) -> None:
        base = run[0][2].offset
        for i, cid, loc in run:
            self.advance(i)
            blob = data[loc.offset - base : loc.offset - base + loc.length]
            plain = self.reader.checked_plain(
                keys[loc.session], cid, blob, loc, self.files[i].path, self.dctx
            )
            assert self.fd is not None
            SafeWriter.write(self.fd, plain)
            self.written += len(plain)

    def abort(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _runs(reader: _Reader, files: list[Entry]) -> list[list[_Piece]]:
    """The chunks of `files` in order, grouped in runs that are back to back in one pack (one
    read each, at most `_RUN_BYTES` unless a single blob is larger)."""
    index = reader.repo._index
    runs: list[list[_Piece]] = []
    run: list[_Piece] = []
    end = size = 0
    for i, e in enumerate(files):
        for cid in e.chunks:
            loc = index.get(cid)
            if loc is None or loc.pack is None:
                raise IntegrityError(f"{e.path}: chunk {cid.hex()[:16]}… is in no index", (e.path,))
            if run and (
                loc.pack != run[0][2].pack or loc.offset != end or size + loc.length > _RUN_BYTES
            ):
                runs.append(run)
                run, size = [], 0
            run.append((i, cid, loc))
            end = loc.offset + loc.length
            size += loc.length
    if run:
        runs.append(run)
    return runs


async def _restore_files(
    reader: _Reader, writer: SafeWriter, files: list[Entry]
) -> tuple[int, int]:
    """Write `files` (in tree order), reading each run of back-to-back blobs once and the
    next run while the current one is decrypted and written. (files, bytes) written."""
    runs = _runs(reader, files)
    keys = {s: await reader.keys(s) for s in {loc.session for run in runs for _, _, loc in run}}
    target = reader.repo.target

    async def read(run: list[_Piece]) -> bytes:
        first, last = run[0][2], run[-1][2]
        assert first.pack is not None
        try:
            return await target.get_range(
                first.pack, first.offset, last.offset + last.length - first.offset
            )
        except TargetMissing:
            path = files[run[0][0]].path
            raise IntegrityError(f"{path}: pack {first.pack} is missing", (path,)) from None

    out = _FilesOut(reader, writer, files)
    ahead: asyncio.Task[bytes] | None = None
    try:
        if runs:
            ahead = asyncio.ensure_future(read(runs[0]))
        for k, run in enumerate(runs):
            assert ahead is not None
            data = await ahead
            ahead = asyncio.ensure_future(read(runs[k + 1])) if k + 1 < len(runs) else None
            await _in_thread(out.write_run, run, data, keys)
        await _in_thread(out.advance, len(files))
    finally:
        if ahead is not None:
            ahead.cancel()
            with contextlib.suppress(BaseException):
                await ahead
        out.abort()
    return out.done_files, out.done_bytes


class SnapshotWriter:
    """One backup: a session key, the packs it writes, the tree it records, its statistics
    (made by `Repository.writer()`)."""

    def __init__(
        self,
        repo: Repository,
        labels: dict[str, str],
        progress: Callable[[Progress], None] | None,
        held: HeldLock | None = None,
    ) -> None:
        self.repo = repo
        self.labels = labels
        self.progress = progress
        self.held = held
        self.stats = BackupStats()
        self.started = _now()
        self.session = f"{self.started:%Y%m%d%H%M%S}-{secrets.token_hex(8)}"
        self.data_key = secrets.token_bytes(32)
        self.keys = SessionKeys.from_data_key(self.data_key)
        self.tmp = tempfile.TemporaryDirectory(prefix="hp-backup-", dir=repo._tmp_dir)
        self.packs = PackWriter(self.tmp.name, self.session, repo.params.pack_size)
        self.refs: set[bytes] = set()
        # stored this run (None while being sealed), dropped once their pack is indexed
        self.new: dict[bytes, Location | None] = {}
        self.tree_path = os.path.join(self.tmp.name, "tree")
        self.tree = open(self.tree_path, "wb")
        self.cache: FilesCache | None = None
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.callback_error: BaseException | None = None
        self.sealer = _Sealer(self)
        self.read_buf: bytearray | None = bytearray(repo.params.chunks.window)

    def cleanup(self) -> None:
        self.sealer.close()
        self.tree.close()
        self.packs.discard()
        self.tmp.cleanup()

    async def start(self) -> None:
        wrapped = await asyncio.to_thread(wrap_data_key, self.data_key, self.repo.recipients)
        await self.repo.target.put(f"keys/{self.session}", wrapped)

    def _progress(self, path: str) -> None:
        """Tell `progress` (always called on the event loop; an error it raises stops the
        backup at the next file)."""
        if self.progress is None:
            return
        p = Progress(self.stats.files, self.stats.bytes, path)
        if threading.get_ident() == self.loop_thread:
            self.progress(p)
        else:
            self.check_callback()
            self.loop.call_soon_threadsafe(self._call_progress, p)

    def _call_progress(self, p: Progress) -> None:
        assert self.progress is not None
        try:
            self.progress(p)
        except BaseException as e:
            if self.callback_error is None:
                self.callback_error = e

    def check_callback(self) -> None:
        if self.callback_error is not None:
            raise self.callback_error

    async def add_tree(self, source: Path, prefix: str = "") -> None:
        """Everything below the directory `source` (itself may be a link; nothing below it is
        followed), as paths under `prefix` (empty, or components ending in `/`)."""
        try:
            root = await asyncio.to_thread(
                os.open, source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
            )
        except OSError as e:
            raise BackupError(f"cannot read {source}: {e.strerror}") from e
        await self._walk(root, prefix)

    def add(self, entry: Entry) -> None:
        """Record one entry of the tree as is (a file's chunks must be stored already)."""
        check_path(entry.path)
        self.tree.write(encode_entry(entry))

    async def add_file(self, path: str, fd: int, *, mode: int = 0o600, mtime_ns: int = 0) -> int:
        """Store what `fd` reads to its end as the file `path`; its size."""
        check_path(path)
        ids, size = await self.store(fd)
        self._add_stored(path, mode, mtime_ns, size, ids)
        return size

    def _add_stored(
        self, path: str, mode: int, mtime_ns: int, size: int, ids: tuple[bytes, ...]
    ) -> None:
        self.add(Entry(path, "file", stat.S_IFREG | mode, mtime_ns, size, ids))
        self.stats.files += 1
        self.stats.bytes += size
        self._progress(path)

    async def store(self, fd: int) -> tuple[tuple[bytes, ...], int]:
        """Chunk and store what `fd` reads to its end: (chunk ids, size)."""
        ids: tuple[bytes, ...]
        ids, size = await _in_thread(self._store_fd, fd)
        return ids, size

    def _store_fd(self, fd: int) -> tuple[tuple[bytes, ...], int]:
        """Chunk what `fd` reads and hash each chunk here; new chunks are compressed, sealed
        and packed by the sealer's threads meanwhile (blocking)."""
        ids: list[bytes] = []
        size = 0
        buf, self.read_buf = self.read_buf, None  # one reused buffer, unless called twice
        try:
            for data in iter_chunks(fd, self.repo.params.chunks, buf):
                ids.append(self._store_chunk(data))
                size += len(data)
        finally:
            self.read_buf = buf
        return tuple(ids), size

    async def commit(self, meta: dict[str, Any]) -> SnapshotInfo:
        """Store the tree and `meta`, then the snapshot object: the backup is complete."""
        self.check_callback()
        meta_raw = _dumps(meta)
        self.tree.close()
        tree_ids = await self._store_stream(self.tree_path)
        meta_path = os.path.join(self.tmp.name, "meta")
        await asyncio.to_thread(Path(meta_path).write_bytes, meta_raw)
        meta_ids = await self._store_stream(meta_path)
        await _in_thread(self.sealer.drain)
        refs_name = f"refs/{self.session}"
        cctx = zstandard.ZstdCompressor(level=self.repo.params.zstd_level)
        refs = await asyncio.to_thread(lambda: cctx.compress(b"".join(sorted(self.refs))))
        await self.repo.target.put(refs_name, refs)
        doc: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "id": self.session,
            "session": self.session,
            "time": self.started.isoformat(),
            "finished": _now().isoformat(),
            "labels": self.labels,
            "stats": asdict(self.stats),
            "tree": [c.hex() for c in tree_ids],
            "meta": [c.hex() for c in meta_ids],
            "refs": refs_name,
            "refs_count": len(self.refs),
        }
        doc["mac"] = self.keys.mac(_dumps(doc))
        if self.held is not None:
            self.held.check()  # a prune that deemed our lock stale may have run
        # Written last: only now is the backup listed as complete.
        await self.repo.target.put(f"snapshots/{self.session}", _dumps(doc))
        return _info(doc)

    # -- walking the source without following links

    async def _walk(self, dir_fd: int, prefix: str) -> None:
        try:
            listing = await asyncio.to_thread(_list_dir, dir_fd)
            files: list[str] = []
            size = 0
            for i, (name, st) in enumerate(listing):
                path = prefix + name
                if stat.S_ISREG(st.st_mode):
                    files.append(name)
                    size += st.st_size
                    nxt = listing[i + 1][1] if i + 1 < len(listing) else None
                    if (
                        nxt is None
                        or not stat.S_ISREG(nxt.st_mode)
                        or size + nxt.st_size > _BATCH_FILE_BYTES
                        or len(files) >= _BATCH_FILES_AT_ONCE
                    ):
                        await _in_thread(self._files, dir_fd, prefix, files)
                        self.check_callback()
                        files, size = [], 0
                elif stat.S_ISDIR(st.st_mode):
                    await self._dir(dir_fd, name, path)
                elif stat.S_ISLNK(st.st_mode):
                    await asyncio.to_thread(self._symlink, dir_fd, name, path, st)
                else:
                    self.stats.skipped += 1
        finally:
            os.close(dir_fd)

    async def _dir(self, parent: int, name: str, path: str) -> None:
        try:
            fd = await asyncio.to_thread(os.open, name, _DIR_FLAGS, dir_fd=parent)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                self.stats.skipped += 1  # swapped for a link (or removed) since listed
                return
            raise BackupError(f"cannot read directory {path}: {e.strerror}") from e
        st = os.fstat(fd)
        self.tree.write(encode_entry(Entry(path, "dir", st.st_mode, st.st_mtime_ns)))
        self.stats.dirs += 1
        await self._walk(fd, path + "/")

    def _symlink(self, parent: int, name: str, path: str, st: os.stat_result) -> None:
        try:
            target = os.readlink(name, dir_fd=parent)
        except OSError:
            self.stats.skipped += 1
            return
        self.tree.write(
            encode_entry(Entry(path, "symlink", st.st_mode, st.st_mtime_ns, target=target))
        )
        self.stats.symlinks += 1

    def _files(self, parent: int, prefix: str, names: list[str]) -> None:
        for name in names:
            self.check_callback()
            self._file(parent, name, prefix + name)

    def _file(self, parent: int, name: str, path: str) -> None:
        """Back up one regular file (blocking, in a worker thread)."""
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=parent)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOENT, errno.ENXIO):
                self.stats.skipped += 1  # swapped for a link, fifo or socket, or removed
                return
            raise BackupError(f"cannot read {path}: {e.strerror}") from e
        try:
            seen_ns = time.time_ns()
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self.stats.skipped += 1
                return
            mode = stat.S_IMODE(st.st_mode)
            if self.cache is None:
                check_path(path)
                ids, size = self._store_fd(fd)
                self._add_stored(path, mode, st.st_mtime_ns, size, ids)
                return
            cached = self.cache.lookup(path, st)
            if cached is not None and all(c in self.repo._index for c in cached):
                ids = cached
                self.refs.update(ids)
                self.stats.reused_chunks += len(ids)
                self.stats.cached_files += 1
                self._add_stored(path, mode, st.st_mtime_ns, st.st_size, ids)
            else:
                check_path(path)
                ids, size = self._store_fd(fd)
                self._add_stored(path, mode, st.st_mtime_ns, size, ids)
                if size != st.st_size:
                    return  # changed while read: read again next time
            self.cache.record(path, st, ids, seen_ns)
        except OSError as e:
            raise BackupError(f"cannot read {path}: {e.strerror}") from e
        finally:
            os.close(fd)

    async def _store_stream(self, path: str) -> list[bytes]:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            ids, _size = await _in_thread(self._store_fd, fd)
            return list(ids)
        finally:
            os.close(fd)

    def _store_chunk(self, data: bytes) -> bytes:
        """The chunk's id; a chunk not stored before goes to the sealer (blocking)."""
        cid = chunk_id(self.repo._id_key, data)
        self.refs.add(cid)
        if cid in self.repo._index or cid in self.new:
            self.stats.reused_chunks += 1
            return cid
        self.new[cid] = None
        self.stats.new_chunks += 1
        self.stats.new_bytes += len(data)
        self.sealer.submit(cid, data)
        return cid

    async def _upload(self, pack: FinishedPack) -> None:
        """Put a finished pack and then its index (on the event loop)."""
        await self.repo.target.put_file(pack.name, pack.path, consume=True)
        index_name = f"index/{pack.name.rsplit('/', 1)[1]}"
        await self.repo.target.put(index_name, encode_index(pack))
        self.repo._pack_sizes[pack.name] = pack.size
        self.repo._indexes[index_name] = (pack.name, pack.size, pack.blobs)
        for cid, loc in pack.blobs:
            self.repo._index.setdefault(cid, loc)  # before leaving `new`: never in neither
            self.new.pop(cid, None)
        self.stats.stored_bytes += pack.size
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pack.path)
        _trim()


class _Sealer:
    """Compresses and seals a backup's new chunks on `_SEAL_THREADS` threads while the walk
    reads, chunks and hashes; appends them to the pack being written; a thread that fills a
    pack uploads it through the event loop (the others go on). At most `_IN_FLIGHT` chunks
    wait, which bounds memory."""

    def __init__(self, w: SnapshotWriter) -> None:
        self.w = w
        self.pool = concurrent.futures.ThreadPoolExecutor(
            _SEAL_THREADS, thread_name_prefix="hp-backup-seal"
        )
        self.slots = threading.Semaphore(_IN_FLIGHT)
        self.pack_lock = threading.Lock()
        self.idle = threading.Condition()
        self.pending = 0
        self.error: BaseException | None = None
        self.closed = False
        self.local = threading.local()
        self.level = w.repo.params.zstd_level

    def _check(self) -> None:
        if self.error is not None:
            raise self.error
        if self.closed:
            raise BackupError("the backup was stopped")

    def submit(self, cid: bytes, data: bytes) -> None:
        """Queue a chunk (blocks while `_IN_FLIGHT` are queued; raises a sealer's error)."""
        self._check()
        while not self.slots.acquire(timeout=0.5):
            self._check()
        with self.idle:
            self.pending += 1
        try:
            self.pool.submit(self._seal, cid, data)
        except BaseException:
            self._done()
            raise

    def _done(self) -> None:
        self.slots.release()
        with self.idle:
            self.pending -= 1
            self.idle.notify_all()

    def _seal(self, cid: bytes, data: bytes) -> None:
        try:
            if self.error is not None or self.closed:
                return
            cctx = getattr(self.local, "cctx", None)
            if cctx is None:  # one per thread: they are not thread-safe
                cctx = self.local.cctx = zstandard.ZstdCompressor(level=self.level)
            packed = cctx.compress(data)
            if len(packed) < len(data) - len(data) // 32:
                inner = _FLAG_ZSTD + packed
            else:
                inner = _FLAG_RAW + data
            del packed
            blob = self.w.keys.seal(cid, inner)
            del inner
            with self.pack_lock:
                self.w.new[cid] = self.w.packs.add(cid, blob, len(data))
                ready, self.w.packs.ready = self.w.packs.ready, []
            del blob
            for pack in ready:
                self._upload(pack)
        except BaseException as e:
            if self.error is None:
                self.error = e
        finally:
            self._done()

    def _upload(self, pack: FinishedPack) -> None:
        if self.closed:
            raise BackupError("the backup was stopped")
        asyncio.run_coroutine_threadsafe(self.w._upload(pack), self.w.loop).result()

    def drain(self) -> None:
        """Wait for every queued chunk, close the last pack and upload it (blocking)."""
        with self.idle:
            while self.pending:
                self.idle.wait(0.5)
        self._check()
        with self.pack_lock:
            self.w.packs.finish()
            ready, self.w.packs.ready = self.w.packs.ready, []
        for pack in ready:
            self._upload(pack)

    def close(self) -> None:
        """Stop: chunks still queued are dropped, a pack upload under way is finished (the
        next backup reuses it); waits for the threads (blocking)."""
        self.closed = True
        self.pool.shutdown(wait=True, cancel_futures=True)


def _list_dir(fd: int) -> list[tuple[str, os.stat_result]]:
    """The entries of a directory fd with their lstat, in name order."""
    out = []
    with os.scandir(fd) as it:
        for entry in it:
            try:
                out.append((entry.name, entry.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue
    out.sort(key=lambda x: x[0])
    return out
