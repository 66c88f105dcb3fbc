"""The backup repository: init/open on a Target, backup, list, restore, verify (FORMAT.md)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import hashlib
import json
import os
import secrets
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
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
from services.backup.repo.packs import (
    FinishedPack,
    Location,
    PackWriter,
    decode_index,
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
_STEP_BYTES = 32 * 1024 * 1024  # work done per worker-thread call on a large file


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

    @property
    def ok(self) -> bool:
        return not self.problems


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
        self._lock = asyncio.Lock()

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
        """Read every index object: which chunks exist and where."""
        index: dict[bytes, Location] = {}
        sizes: dict[str, int] = {}
        async for info in self.target.list("index/"):
            data = await self.target.get(info.name)
            pack, size, blobs = await asyncio.to_thread(decode_index, info.name, data)
            sizes[pack] = size
            for cid, loc in blobs:
                index.setdefault(cid, loc)
        self._index, self._pack_sizes = index, sizes

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
    ) -> SnapshotInfo:
        """Back up `source_dir` (never following a link below it). `meta` is sealed with the
        data; `labels` (short public strings: app id, kind) can be read without the key."""
        labels = dict(labels or {})
        for k, v in labels.items():
            if not (isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 200):
                raise BackupError(f"label {str(k)[:64]!r}: keys and values are short strings")
        async with self.writer(labels=labels, progress=progress) as w:
            await w.add_tree(Path(source_dir))
            return await w.commit(meta)

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
        labels = dict(labels or {})
        for k, v in labels.items():
            if not (isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 200):
                raise BackupError(f"label {str(k)[:64]!r}: keys and values are short strings")
        async with self._lock:
            w = SnapshotWriter(self, labels, progress)
            try:
                await w.start()
                yield w
            finally:
                await asyncio.to_thread(w.cleanup)

    # -- listing

    async def snapshots(self) -> list[SnapshotInfo]:
        """Completed backups, oldest first (a backup is complete once its snapshot exists)."""
        out = []
        async for info in self.target.list("snapshots/"):
            doc = await self._snapshot_doc(info.name.removeprefix("snapshots/"))
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
        keys = await reader.keys(doc["session"])
        body = {k: v for k, v in doc.items() if k != "mac"}
        if keys.mac(_dumps(body)) != doc.get("mac"):
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
        files = nbytes = 0
        skipped: list[str] = []
        try:
            async for e in reader.entries():
                if e.kind == "dir":
                    await asyncio.to_thread(writer.mkdir, e)
                elif e.kind == "symlink":
                    if link_escapes(e.path, e.target):
                        skipped.append(f"{e.path}: link pointing outside the backup")
                        continue
                    await asyncio.to_thread(writer.symlink, e)
                else:
                    fd = await asyncio.to_thread(writer.create, e)
                    try:
                        size = 0
                        async for data in reader.stream(e.chunks, e.path):
                            await asyncio.to_thread(writer.write, fd, data)
                            size += len(data)
                    except BaseException:
                        os.close(fd)
                        raise
                    await asyncio.to_thread(writer.finish_file, fd, e)
                    if size != e.size:
                        raise IntegrityError(
                            f"{e.path}: restored {size} bytes, the snapshot says {e.size}",
                            (e.path,),
                        )
                    files += 1
                    nbytes += size
            await asyncio.to_thread(writer.finish)
        finally:
            await asyncio.to_thread(writer.close)
        return RestoreResult(files, nbytes, tuple(skipped))

    async def verify(
        self, snapshot_id: str, identity: str | None = None, *, read_data: bool = False
    ) -> VerifyReport:
        """Without `identity`: every chunk the snapshot references is indexed and its pack is
        there with the expected size (and, with `read_data`, SHA-256, the pack's name). With
        it: every pack is read and hashed, every blob decrypted and checked against its id;
        the files a damaged pack hurts are named."""
        doc = await self._snapshot_doc(snapshot_id)
        refs = await self._refs(doc)
        problems: list[str] = []
        by_pack: dict[str, list[tuple[bytes, Location]]] = {}
        for cid in refs:
            loc = self._index.get(cid)
            if loc is None or loc.pack is None:
                problems.append(f"chunk {cid.hex()[:16]}… is in no index")
                continue
            by_pack.setdefault(loc.pack, []).append((cid, loc))
        bad: set[bytes] = {cid for cid in refs if cid not in self._index}
        reader = await self._reader(snapshot_id, identity) if identity is not None else None
        for pack, blobs in sorted(by_pack.items()):
            trouble = await self._check_pack(pack, blobs, reader, read_data)
            if trouble is not None:
                problems.append(f"{pack}: {trouble[0]}")
                bad.update(trouble[1])
        files: list[str] = []
        if reader is not None and bad:
            if bad & set(reader.chunk_list("tree")):
                files.append("(the list of files itself)")
            else:
                async for e in reader.entries():
                    if e.kind == "file" and not bad.isdisjoint(e.chunks):
                        files.append(e.path)
        return VerifyReport(snapshot_id, len(refs), len(by_pack), tuple(problems), tuple(files))

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
        if reader is None and not read_data:
            return None
        data = await self.target.get(pack)
        if reader is None:
            if await asyncio.to_thread(_sha256, data) != pack.rsplit("/", 1)[1]:
                return "content hash differs from its name", ids
            return None
        for session in {loc.session for _, loc in blobs}:
            await reader.keys(session)
        digest = await asyncio.to_thread(_sha256, data)
        damaged = await asyncio.to_thread(reader.check_blobs, data, blobs)
        if digest != pack.rsplit("/", 1)[1] or damaged:
            why = f"{len(damaged)} damaged chunk(s)" if damaged else "content hash differs"
            return why, damaged or ids
        return None

    async def _refs(self, doc: dict[str, Any]) -> list[bytes]:
        name = doc["refs"]
        try:
            raw = await self.target.get(name)
            data = zstandard.ZstdDecompressor().decompress(raw, max_output_size=1 << 30)
        except TargetMissing:
            raise IntegrityError(f"{name} (list of chunks of {doc['id']}) is missing") from None
        except zstandard.ZstdError as e:
            raise IntegrityError(f"{name} is damaged: {e}") from e
        if len(data) % 32:
            raise IntegrityError(f"{name} is damaged (length not a multiple of 32)")
        return [data[i : i + 32] for i in range(0, len(data), 32)]


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

    async def keys(self, session: str) -> SessionKeys:
        if session not in self._keys:
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

    def _plain(self, keys: SessionKeys, cid: bytes, blob: bytes, loc: Location) -> bytes:
        """The chunk's plaintext, checked against its id (InvalidTag/ValueError if damaged)."""
        inner = keys.open(cid, blob)
        flag, body = inner[:1], inner[1:]
        if flag == _FLAG_ZSTD:
            plain = self._dctx.decompress(body, max_output_size=loc.plain_length)
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
        try:
            return await asyncio.to_thread(self._plain, keys, cid, blob, loc)
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


class SnapshotWriter:
    """One backup: a session key, the packs it writes, the tree it records, its statistics
    (made by `Repository.writer()`)."""

    def __init__(
        self,
        repo: Repository,
        labels: dict[str, str],
        progress: Callable[[Progress], None] | None,
    ) -> None:
        self.repo = repo
        self.labels = labels
        self.progress = progress
        self.stats = BackupStats()
        self.started = _now()
        self.session = f"{self.started:%Y%m%d%H%M%S}-{secrets.token_hex(8)}"
        self.data_key = secrets.token_bytes(32)
        self.keys = SessionKeys.from_data_key(self.data_key)
        self.tmp = tempfile.TemporaryDirectory(prefix="hp-backup-", dir=repo._tmp_dir)
        self.packs = PackWriter(self.tmp.name, self.session, repo.params.pack_size)
        self.refs: set[bytes] = set()
        self.new: dict[bytes, Location] = {}  # stored this run, indexed once their pack is up
        self.tree_path = os.path.join(self.tmp.name, "tree")
        self.tree = open(self.tree_path, "wb")
        self.cctx = zstandard.ZstdCompressor(level=repo.params.zstd_level)

    def cleanup(self) -> None:
        self.tree.close()
        self.packs.discard()
        self.tmp.cleanup()

    async def start(self) -> None:
        wrapped = await asyncio.to_thread(wrap_data_key, self.data_key, self.repo.recipients)
        await self.repo.target.put(f"keys/{self.session}", wrapped)

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
        self.add(Entry(path, "file", stat.S_IFREG | mode, mtime_ns, size, ids))
        self.stats.files += 1
        self.stats.bytes += size
        if self.progress is not None:
            self.progress(Progress(self.stats.files, self.stats.bytes, path))
        return size

    async def store(self, fd: int) -> tuple[tuple[bytes, ...], int]:
        """Chunk and store what `fd` reads to its end: (chunk ids, size)."""
        ids: list[bytes] = []
        chunks = iter_chunks(fd, self.repo.params.chunks)
        size = 0
        while True:
            got, done = await asyncio.to_thread(self._store_some, chunks, ids)
            size += got
            await self._upload_ready()
            if done:
                return tuple(ids), size

    async def commit(self, meta: dict[str, Any]) -> SnapshotInfo:
        """Store the tree and `meta`, then the snapshot object: the backup is complete."""
        meta_raw = _dumps(meta)
        self.tree.close()
        tree_ids = await self._store_stream(self.tree_path)
        meta_path = os.path.join(self.tmp.name, "meta")
        await asyncio.to_thread(Path(meta_path).write_bytes, meta_raw)
        meta_ids = await self._store_stream(meta_path)
        await asyncio.to_thread(self.packs.finish)
        await self._upload_ready()
        refs_name = f"refs/{self.session}"
        refs = await asyncio.to_thread(lambda: self.cctx.compress(b"".join(sorted(self.refs))))
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
        # Written last: only now is the backup listed as complete.
        await self.repo.target.put(f"snapshots/{self.session}", _dumps(doc))
        return _info(doc)

    # -- walking the source without following links

    async def _walk(self, dir_fd: int, prefix: str) -> None:
        try:
            listing = await asyncio.to_thread(_list_dir, dir_fd)
            for name, st in listing:
                path = prefix + name
                if stat.S_ISDIR(st.st_mode):
                    await self._dir(dir_fd, name, path)
                elif stat.S_ISREG(st.st_mode):
                    await self._file(dir_fd, name, path)
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

    async def _file(self, parent: int, name: str, path: str) -> None:
        try:
            fd = await asyncio.to_thread(os.open, name, _FILE_FLAGS, dir_fd=parent)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOENT, errno.ENXIO):
                self.stats.skipped += 1  # swapped for a link, fifo or socket, or removed
                return
            raise BackupError(f"cannot read {path}: {e.strerror}") from e
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self.stats.skipped += 1
                return
            await self.add_file(path, fd, mode=stat.S_IMODE(st.st_mode), mtime_ns=st.st_mtime_ns)
        except OSError as e:
            raise BackupError(f"cannot read {path}: {e.strerror}") from e
        finally:
            os.close(fd)

    async def _store_stream(self, path: str) -> list[bytes]:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            ids: list[bytes] = []
            chunks = iter_chunks(fd, self.repo.params.chunks)
            while not (await asyncio.to_thread(self._store_some, chunks, ids))[1]:
                await self._upload_ready()
            return ids
        finally:
            os.close(fd)

    def _store_some(self, chunks: Iterator[bytes], ids: list[bytes]) -> tuple[int, bool]:
        """Store chunks until `_STEP_BYTES` are read or a pack is ready (in a worker thread)."""
        n = 0
        for data in chunks:
            ids.append(self._store_chunk(data))
            n += len(data)
            if n >= _STEP_BYTES or self.packs.ready:
                return n, False
        return n, True

    def _store_chunk(self, data: bytes) -> bytes:
        cid = chunk_id(self.repo._id_key, data)
        self.refs.add(cid)
        if cid in self.repo._index or cid in self.new:
            self.stats.reused_chunks += 1
            return cid
        packed = self.cctx.compress(data)
        if len(packed) < len(data) - len(data) // 32:
            inner = _FLAG_ZSTD + packed
        else:
            inner = _FLAG_RAW + data
        blob = self.keys.seal(cid, inner)
        self.new[cid] = self.packs.add(cid, blob, len(data))
        self.stats.new_chunks += 1
        self.stats.new_bytes += len(data)
        return cid

    async def _upload_ready(self) -> None:
        while self.packs.ready:
            pack: FinishedPack = self.packs.ready[0]
            await self.repo.target.put_file(pack.name, pack.path)
            await self.repo.target.put(f"index/{pack.name.rsplit('/', 1)[1]}", encode_index(pack))
            self.repo._pack_sizes[pack.name] = pack.size
            for cid, loc in pack.blobs:
                self.repo._index.setdefault(cid, loc)
                del self.new[cid]
            self.stats.stored_bytes += pack.size
            self.packs.ready.pop(0)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pack.path)


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
