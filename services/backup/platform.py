"""The platform part of a backup: what `homeport restore` needs to rebuild the platform.

`dump_platform` writes into a folder (then stored in the repository, labels kind=platform):

    events.jsonl   a header line, every row of events.events in position order, a trailer line
    keyring/       each service's sealing keyring, `<service>.json` byte for byte (mode 0600);
                   backups from before each service had its own hold one `keyring.json` instead
    certs/         the certificates folder (PEM files, the per-host links inside it)
    audit/         the signed checkpoints of the event chain and their public key, when taken
                   (libs/events/checkpoints.py; a copy off the server, not loaded back)
    platform.json  {format, version, platform_version, time, apps: {app_id: snapshot id},
                   mail: the snapshot id of the run's mail backup, or null (absent: older)}

An event line holds the row as stored: `data` and `meta` are the jsonb values' text (Postgres
renders jsonb the same way every time, and parsing that text gives back the same jsonb, so the
chain hashes recompute), `recorded_at` in ISO 8601 UTC with microseconds, `hash` in hex. The
trailer holds the count and the head (position, hash), so a cut file is refused.

`load_platform` puts that back into an EMPTY event store in one transaction, checking the hash
chain of every row as it goes (a damaged or altered dump loads nothing), then writes the
keyrings and the certificates. Nothing of a refused load is left behind.

Which keyrings: those of every service that seals (libs/events/sealing.py `KEYRING_OWNERS`) in
the folder of the backup service's own; where one has no file yet, the shared keyring of an older
install it would start from stands for it. A restored old backup's `keyring.json` becomes each
service's keyring (as it would have on their first start).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncpg

from libs.events.migrations import migrate
from libs.events.sealing import (
    KEYRING_OWNERS,
    SHARED_OWNERS,
    keyring_file,
    keyring_folder,
    previous_keyring,
    shared_keyring,
)
from libs.events.store import GENESIS_HASH, MIGRATIONS

__all__ = [
    "CERTS",
    "EVENTS",
    "FORMAT",
    "KEYRING",
    "KEYRINGS",
    "PLATFORM",
    "PlatformError",
    "dump_platform",
    "load_platform",
    "read_platform_json",
]

FORMAT = "homeport-platform"
VERSION = 1
EVENTS = "events.jsonl"
KEYRING = "keyring.json"  # the one keyring of backups from before per-service keyrings
KEYRINGS = "keyring"  # each service's keyring, <service>.json
CERTS = "certs"
AUDIT = "audit"  # the signed checkpoints of the event chain and their public key
PLATFORM = "platform.json"
_EVENTS_FORMAT = "homeport-events"
_BATCH = 1000
_MAX_LINE = 64 * 1024 * 1024
_COLUMNS = (
    "position",
    "id",
    "stream",
    "version",
    "type",
    "schema",
    "data",
    "meta",
    "recorded_at",
    "hash",
)


class PlatformError(Exception):
    """A platform backup that cannot be written or loaded; the message says which part."""


# -- dump ---------------------------------------------------------------------------------


async def dump_platform(
    conn: asyncpg.Connection,
    *,
    keyring: Path,
    certs_dir: Path,
    out_dir: Path,
    apps: Mapping[str, str],
    platform_version: str,
    audit_dir: Path | None = None,
    mail: str | None = None,
) -> None:
    """Write the platform backup folder `out_dir` (made 0700; must hold none of its files).
    With `audit_dir`: a copy of its signed checkpoints and their public key (never the key).

    `keyring` is the backup service's own keyring: the keyrings of every service are taken
    from its folder (a `keyring` not named for a service is the shared one, for all).
    `conn` must not be inside a transaction: the events are read in one repeatable-read
    snapshot of their own. `apps` maps app ids to the ids of the app backups of the same run,
    `mail` is the id of its mail backup (none: the run stored none).
    No keyring at all is an error, a missing certificates folder an empty folder."""
    out_dir = Path(out_dir)
    await asyncio.to_thread(_prepare_out, out_dir)
    count, head = await _dump_events(conn, out_dir / EVENTS)
    await asyncio.to_thread(_copy_keyrings, Path(keyring), out_dir / KEYRINGS)
    await asyncio.to_thread(_copy_tree, Path(certs_dir), out_dir / CERTS)
    if audit_dir is not None:
        await asyncio.to_thread(_copy_checkpoints, Path(audit_dir), out_dir / AUDIT)
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "platform_version": platform_version,
        "time": dt.datetime.now(dt.UTC).isoformat(),
        "apps": dict(sorted(apps.items())),
        "mail": mail,
        "events": {"count": count, "head_position": head[0], "head_hash": head[1].hex()},
    }
    await asyncio.to_thread(_write_new, out_dir / PLATFORM, _json_bytes(doc, indent=1), 0o600)


def _prepare_out(out_dir: Path) -> None:
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    out_dir.chmod(0o700)
    for name in (EVENTS, KEYRING, KEYRINGS, CERTS, PLATFORM):
        if os.path.lexists(out_dir / name):
            raise PlatformError(f"{out_dir / name} exists already: dump into an empty folder")


def _json_bytes(doc: Any, indent: int | None = None) -> bytes:
    if indent is None:
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    return json.dumps(doc, indent=indent, sort_keys=True).encode() + b"\n"


async def _dump_events(conn: asyncpg.Connection, path: Path) -> tuple[int, tuple[int, bytes]]:
    fd = await asyncio.to_thread(
        os.open, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600
    )
    count = 0
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            row = await conn.fetchrow("SELECT position, hash FROM events.head")
            head = (int(row["position"]), bytes(row["hash"])) if row else (0, GENESIS_HASH)
            header = {"format": _EVENTS_FORMAT, "version": VERSION, "columns": list(_COLUMNS)}
            await asyncio.to_thread(_write_all, fd, _json_bytes(header))
            last = 0
            while True:
                rows = await conn.fetch(
                    "SELECT position, id::text AS id, stream, version, type, schema,"
                    " data::text AS data, meta::text AS meta, recorded_at, hash"
                    " FROM events.events WHERE position > $1 AND position <= $2"
                    " ORDER BY position LIMIT $3",
                    last,
                    head[0],
                    _BATCH,
                )
                if not rows:
                    break
                lines = b"".join(_json_bytes(_row_doc(r)) for r in rows)
                await asyncio.to_thread(_write_all, fd, lines)
                count += len(rows)
                last = int(rows[-1]["position"])
            trailer = {
                "end": True,
                "count": count,
                "head_position": head[0],
                "head_hash": head[1].hex(),
            }
            await asyncio.to_thread(_write_all, fd, _json_bytes(trailer))
        await asyncio.to_thread(os.fsync, fd)
    finally:
        os.close(fd)
    return count, head


def _row_doc(r: asyncpg.Record) -> dict[str, Any]:
    recorded: dt.datetime = r["recorded_at"]
    return {
        "position": r["position"],
        "id": r["id"],
        "stream": r["stream"],
        "version": r["version"],
        "type": r["type"],
        "schema": r["schema"],
        "data": r["data"],
        "meta": r["meta"],
        "recorded_at": recorded.astimezone(dt.UTC).isoformat(timespec="microseconds"),
        "hash": bytes(r["hash"]).hex(),
    }


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_regular(path: Path, what: str, limit: int = 64 * 1024 * 1024) -> tuple[bytes, int]:
    """A regular file's bytes and mode, opened without following a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise PlatformError(f"cannot read the {what} {path}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PlatformError(f"the {what} {path} is not a regular file")
        if st.st_size > limit:
            raise PlatformError(f"the {what} {path} is larger than {limit} bytes")
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks), stat.S_IMODE(st.st_mode)
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_checkpoints(src: Path, dst: Path) -> None:
    """The checkpoint log and public key, when there (regular files, never through a link)."""
    from libs.events.checkpoints import KEY_FILE, LOG_FILE

    for name in (LOG_FILE, f"{KEY_FILE}.pub"):
        try:
            data, _ = _read_regular(src / name, f"the checkpoint file {name}")
        except PlatformError:
            if not (src / name).exists() and not (src / name).is_symlink():
                continue  # none taken yet
            raise
        dst.mkdir(mode=0o700, exist_ok=True)
        _write_new(dst / name, data, 0o600)


def _keyrings_of(keyring: Path) -> dict[str, Path]:
    """The keyring file of each service that has one, in the keyring folder of the service
    keyring `keyring` (any other file is the shared keyring of an older install, for all)."""
    keyring = Path(keyring).absolute()
    found = keyring_folder(keyring)
    shared = keyring if found is None else shared_keyring(keyring)
    folder = found[0] if found is not None else keyring.parent
    out: dict[str, Path] = {}
    for owner in KEYRING_OWNERS:
        own = keyring_file(folder, owner)
        if os.path.lexists(own):
            out[owner] = own
        elif found is not None and (previous := previous_keyring(own)) is not None:
            out[owner] = previous  # moved into its folder at its first start
        elif owner in SHARED_OWNERS and shared is not None and os.path.lexists(shared):
            out[owner] = shared  # its copy is made at its first start
    if not out:
        raise PlatformError(f"cannot read the keyring {keyring}: there is none in its folder")
    return out


def _copy_keyrings(keyring: Path, dst: Path) -> None:
    dst.mkdir(mode=0o700)
    for owner, src in _keyrings_of(keyring).items():
        data, _ = _read_regular(src, "keyring")
        try:
            json.loads(data)
        except ValueError as e:
            raise PlatformError(f"the keyring {src} is not JSON: {e}") from e
        _write_new(dst / f"{owner}.json", data, 0o600)  # in a backup: keyring/<owner>.json


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy a folder of PEMs: directories, regular files (mode kept, 0600 at most for keys is
    the source's business), and links that stay inside it. No link is followed; anything else
    (devices, sockets, links pointing out) is left out."""
    dst.mkdir(mode=0o700)
    try:
        top = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # no certificates yet: an empty folder
    except OSError as e:
        raise PlatformError(f"cannot read the certificates folder {src}: {e.strerror}") from e
    try:
        _copy_dir(top, dst, "")
    finally:
        os.close(top)


def _copy_dir(dir_fd: int, dst: Path, rel: str) -> None:
    for name in sorted(os.listdir(dir_fd)):
        path = f"{rel}{name}"
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        target = dst / name
        if stat.S_ISDIR(st.st_mode):
            fd = os.open(
                name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
            )
            try:
                target.mkdir(mode=0o700)
                _copy_dir(fd, target, path + "/")
            finally:
                os.close(fd)
        elif stat.S_ISREG(st.st_mode):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                data = b"".join(iter(lambda fd=fd: os.read(fd, 1 << 16), b""))  # type: ignore[misc]
            finally:
                os.close(fd)
            _write_new(target, data, stat.S_IMODE(st.st_mode) & 0o700)
        elif stat.S_ISLNK(st.st_mode):
            link = os.readlink(name, dir_fd=dir_fd)
            if _link_stays_inside(path, link):
                os.symlink(link, target)


def _link_stays_inside(path: str, link: str) -> bool:
    if link.startswith("/") or not link:
        return False
    depth = path.count("/")
    for part in link.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        elif part not in ("", "."):
            depth += 1
    return True


# -- load ---------------------------------------------------------------------------------


def read_platform_json(src_dir: Path) -> dict[str, Any]:
    """The platform.json of a restored platform backup folder, checked."""
    raw, _ = _read_regular(Path(src_dir) / PLATFORM, "platform description", 1024 * 1024)
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise PlatformError(f"{PLATFORM} is not JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise PlatformError(f"{PLATFORM} is not a {FORMAT} description")
    if doc.get("version") != VERSION:
        raise PlatformError(
            f"{PLATFORM} has format version {doc.get('version')!r}; this Homeport reads {VERSION}"
        )
    apps = doc.get("apps")
    if not isinstance(apps, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in apps.items()
    ):
        raise PlatformError(f"{PLATFORM}: apps must map app ids to backup ids")
    if not isinstance(doc.get("mail"), str | None):
        raise PlatformError(f"{PLATFORM}: mail must be a backup id or null")
    return doc


async def load_platform(
    src_dir: Path, conn: asyncpg.Connection, *, keyrings: Path, certs_dir: Path
) -> dict[str, Any]:
    """Load a platform backup folder into the EMPTY event store of `conn` (migrated here if
    needed), then write each service's keyring into the folder `keyrings` (each absent, or
    already holding the same bytes) and `certs_dir` (absent or empty). Returns platform.json
    plus `loaded_events` and `head_position`.
    Refuses (PlatformError, nothing changed) a non-empty store, a broken chain, a cut file."""
    src_dir = Path(src_dir)
    doc = await asyncio.to_thread(read_platform_json, src_dir)
    rings = await asyncio.to_thread(_backed_up_keyrings, src_dir)
    places = {keyring_file(keyrings, owner): ring for owner, ring in rings.items()}
    for path, ring in places.items():
        await asyncio.to_thread(_check_keyring_dest, path, ring)
    await asyncio.to_thread(_check_certs_dest, Path(certs_dir))
    await migrate(conn, "events", MIGRATIONS)
    async with conn.transaction():
        await _refuse_non_empty(conn)
        count, head = await _load_events(conn, src_dir / EVENTS)
    for path, ring in places.items():
        await asyncio.to_thread(_install_keyring, path, ring)
    await asyncio.to_thread(_install_certs, src_dir / CERTS, Path(certs_dir))
    return {**doc, "loaded_events": count, "head_position": head}


def _backed_up_keyrings(src_dir: Path) -> dict[str, bytes]:
    """Each service's keyring in a platform backup: from keyring/<service>.json, or the one
    keyring.json of an older backup for every service. Anything else there is refused."""
    folder, old = src_dir / KEYRINGS, src_dir / KEYRING
    rings: dict[str, bytes] = {}
    if os.path.lexists(old):
        if os.path.lexists(folder):
            raise PlatformError(f"the backup holds both {KEYRING} and {KEYRINGS}/: which is it?")
        ring, _ = _read_regular(old, "backed-up keyring")
        rings = dict.fromkeys(SHARED_OWNERS, ring)  # the services of that time
    else:
        if folder.is_symlink() or not folder.is_dir():
            raise PlatformError(f"the backup holds no keyring ({KEYRINGS}/ or {KEYRING})")
        for entry in sorted(os.listdir(folder)):
            owner = entry.removesuffix(".json")
            if not entry.endswith(".json") or owner not in KEYRING_OWNERS:
                name = f"{KEYRINGS}/{entry[:100]}"
                raise PlatformError(f"the backup's {name} is not the keyring of a service")
            rings[owner], _ = _read_regular(folder / entry, "backed-up keyring")
        if not rings:
            raise PlatformError(f"the backup's {KEYRINGS}/ folder holds no keyring")
    for owner, ring in rings.items():
        try:
            json.loads(ring)
        except ValueError as e:
            raise PlatformError(f"the backed-up keyring of {owner} is not JSON: {e}") from e
    return rings


def _check_keyring_dest(path: Path, ring: bytes) -> None:
    if not os.path.lexists(path):
        return
    try:
        have, _ = _read_regular(path, "keyring")
    except PlatformError as e:
        raise PlatformError(f"{e}; move it away to restore the platform's") from None
    if have != ring:
        raise PlatformError(
            f"a different keyring is already at {path}: restore into an empty data directory"
        )


def _check_certs_dest(path: Path) -> None:
    if os.path.islink(path) or (path.exists() and any(path.iterdir())):
        raise PlatformError(
            f"the certificates folder {path} is not empty: restore into an empty data directory"
        )


async def _refuse_non_empty(conn: asyncpg.Connection) -> None:
    row = await conn.fetchrow(
        "SELECT (SELECT position FROM events.head) AS head,"
        " EXISTS (SELECT 1 FROM events.events) AS rows,"
        " EXISTS (SELECT 1 FROM events.streams) AS streams"
    )
    if row is None or row["head"] != 0 or row["rows"] or row["streams"]:
        db = await conn.fetchval("SELECT current_database()")
        raise PlatformError(
            f"the event store in database {db!r} is not empty (head at position "
            f"{row['head'] if row else '?'}): a platform backup loads only into an empty one"
        )


class _Lines:
    """The lines of events.jsonl, opened without following a link; a cut line is refused."""

    def __init__(self, path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise PlatformError(f"cannot read {EVENTS}: {e.strerror}") from e
        self._f = os.fdopen(fd, "rb")

    def next(self) -> bytes | None:
        line = self._f.readline(_MAX_LINE + 1)
        if not line:
            return None
        if len(line) > _MAX_LINE or not line.endswith(b"\n"):
            raise PlatformError(f"{EVENTS}: a line is cut or longer than {_MAX_LINE} bytes")
        return line

    def close(self) -> None:
        self._f.close()


def _parse_row(line: bytes, n: int) -> tuple[Any, ...]:
    try:
        d = json.loads(line)
        data, meta = d["data"], d["meta"]
        if not (isinstance(data, str) and isinstance(meta, str)):
            raise TypeError("data and meta must be jsonb text")
        return (
            int(d["position"]),
            str(d["id"]),
            str(d["stream"]),
            int(d["version"]),
            str(d["type"]),
            int(d["schema"]),
            data,
            meta,
            dt.datetime.fromisoformat(d["recorded_at"]),
            bytes.fromhex(d["hash"]),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise PlatformError(f"{EVENTS} line {n}: not an event row ({e})") from None


async def _load_events(conn: asyncpg.Connection, path: Path) -> tuple[int, int]:
    lines = await asyncio.to_thread(_Lines, path)
    try:
        return await _load_lines(conn, lines)
    finally:
        lines.close()


async def _load_lines(conn: asyncpg.Connection, lines: _Lines) -> tuple[int, int]:
    first = await asyncio.to_thread(lines.next)
    try:
        header = json.loads(first) if first is not None else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != _EVENTS_FORMAT:
        raise PlatformError(f"{EVENTS} does not start with its header")
    if header.get("version") != VERSION:
        raise PlatformError(f"{EVENTS} has version {header.get('version')!r}; expected {VERSION}")
    prev_hash = GENESIS_HASH
    last = 0
    versions: dict[str, int] = {}
    n = 1
    trailer: dict[str, Any] | None = None
    batch: list[tuple[Any, ...]] = []

    async def flush() -> None:
        nonlocal prev_hash
        if not batch:
            return
        await conn.copy_records_to_table(
            "events", schema_name="events", columns=list(_COLUMNS), records=batch
        )
        bodies = await conn.fetch(
            "SELECT position, hash, events.canonical(position, id, stream, version, type,"
            " schema, data, meta) AS body FROM events.events"
            " WHERE position BETWEEN $1 AND $2 ORDER BY position",
            batch[0][0],
            batch[-1][0],
        )
        for r in bodies:
            h = hashlib.sha256(prev_hash + bytes(r["body"])).digest()
            if h != bytes(r["hash"]):
                raise PlatformError(
                    f"{EVENTS}: the event at position {r['position']} does not match its chain "
                    "hash (altered or damaged backup); nothing was loaded"
                )
            prev_hash = h
        batch.clear()

    while True:
        line = await asyncio.to_thread(lines.next)
        if line is None:
            break
        n += 1
        if trailer is not None:
            raise PlatformError(f"{EVENTS} line {n}: data after the trailer")
        if line.startswith(b'{"end"'):
            try:
                trailer = json.loads(line)
            except ValueError:
                raise PlatformError(f"{EVENTS} line {n}: the trailer is damaged") from None
            if not isinstance(trailer, dict):
                raise PlatformError(f"{EVENTS} line {n}: the trailer is damaged")
            continue
        row = _parse_row(line, n)
        if row[0] != last + 1:
            raise PlatformError(f"{EVENTS} line {n}: position {row[0]} follows {last}")
        if row[3] != versions.get(row[2], 0) + 1:
            raise PlatformError(
                f"{EVENTS} line {n}: stream {row[2][:80]!r} version {row[3]} out of order"
            )
        last = row[0]
        versions[row[2]] = row[3]
        batch.append(row)
        if len(batch) >= _BATCH:
            await flush()
    await flush()
    if (
        trailer is None
        or trailer.get("count") != last
        or trailer.get("head_position") != last
        or trailer.get("head_hash") != prev_hash.hex()
    ):
        raise PlatformError(
            f"{EVENTS} is cut or altered: its trailer does not match the {last} events read"
        )
    await conn.execute("UPDATE events.head SET position = $1, hash = $2", last, prev_hash)
    await conn.executemany(
        "INSERT INTO events.streams (stream, version) VALUES ($1, $2)", list(versions.items())
    )
    return last, last


def _install_keyring(path: Path, ring: bytes) -> None:
    if os.path.lexists(path):
        return  # the same bytes (checked before loading)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    _write_new(tmp, ring, 0o600)
    os.replace(tmp, path)


def _install_certs(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(6)}.tmp")
    try:
        _copy_tree(src, tmp)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists():
            dst.rmdir()  # empty (checked before loading)
        os.replace(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
