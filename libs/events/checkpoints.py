"""Signed checkpoints of the event chain, kept outside Postgres (issue 16, first slice).

The chain hash of every event (libs/events/store.py) is unkeyed: whoever can write the database
can change an old event and recompute every later hash, and `verify_chain` finds nothing. A
checkpoint is the chain head at one moment (position and hash), signed with an Ed25519 key the
database never holds, appended as one JSON line to a file outside Postgres. `verify` then
compares each checkpoint with the row at its position: a rewritten history no longer has the
checkpointed hash there, and the first checkpoint that no longer matches is named.

The backup service takes them (`Checkpointer`: at its start and every `HP_CHECKPOINT_SECONDS`,
default an hour) into its own folder, `<backup dir>/audit/`: the key `checkpoint.key` (0600, made
on first use, never leaves that folder), its public half `checkpoint.key.pub`, the log
`checkpoints.jsonl`; every platform backup carries a copy of the log and the public key (not the
key) to the backup target. `homeport audit checkpoint` takes one by hand, `homeport audit verify`
checks them. A line whose signature does not verify is a problem of its own (a forged or edited
checkpoint), never trusted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from libs.events.store import PostgresEventStore

__all__ = [
    "KEY_FILE",
    "LOG_FILE",
    "Checkpoint",
    "CheckpointLog",
    "CheckpointProblem",
    "Checkpointer",
    "load_or_create_key",
    "public_key_of",
    "take_checkpoint",
    "verify_checkpoints",
]

_DOMAIN = b"homeport-event-checkpoint-v1\n"
KEY_FILE = "checkpoint.key"
LOG_FILE = "checkpoints.jsonl"
log = logging.getLogger("homeport.checkpoints")


@dataclass(frozen=True)
class Checkpoint:
    """The chain head at `at`: the event at `position` has chain hash `hash` (hex)."""

    position: int
    hash: str
    at: str

    def message(self) -> bytes:
        return _DOMAIN + f"{self.position}\n{self.hash}\n{self.at}\n".encode()


@dataclass(frozen=True)
class CheckpointProblem:
    """A checkpoint line that cannot be trusted, or one the event store no longer matches."""

    line: int
    position: int | None
    detail: str


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The signing key in `path` (raw 32 bytes, base64), made (0600, with `<path>.pub`) if
    missing; never through a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        raw = key.private_bytes_raw()
        with contextlib.suppress(FileExistsError):  # two at once: the first one's key wins
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(base64.b64encode(raw).decode() + "\n")
            pub = _public_path(path)  # written anew, never through a link
            pub.unlink(missing_ok=True)
            pub_fd = os.open(pub, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(pub_fd, "w") as f:
                f.write(public_key_of(key) + "\n")
            return key
        return load_or_create_key(path)
    with os.fdopen(fd) as f:
        return Ed25519PrivateKey.from_private_bytes(base64.b64decode(f.read().strip()))


def public_key_of(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes_raw()).decode()


def _public_path(key_path: Path) -> Path:
    return key_path.with_name(key_path.name + ".pub")


class CheckpointLog:
    """The append-only file of signed checkpoints (one JSON line each)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, cp: Checkpoint, key: Ed25519PrivateKey) -> None:
        line = {
            "position": cp.position,
            "hash": cp.hash,
            "at": cp.at,
            "sig": base64.b64encode(key.sign(cp.message())).decode(),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
        fd = os.open(self.path, flags, 0o600)
        try:
            os.write(fd, (json.dumps(line, sort_keys=True) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, public_key: str) -> tuple[list[tuple[int, Checkpoint]], list[CheckpointProblem]]:
        """The checkpoints whose signature verifies with `public_key` (with their line numbers),
        and a problem for every line that does not."""
        pub = _public_key(public_key)
        good: list[tuple[int, Checkpoint]] = []
        problems: list[CheckpointProblem] = []
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return good, problems
        for n, raw in enumerate(text.splitlines(), start=1):
            if raw.strip():
                parsed = _parse(n, raw, pub)
                if isinstance(parsed, Checkpoint):
                    good.append((n, parsed))
                else:
                    problems.append(parsed)
        return good, problems

    def last(self, public_key: str) -> Checkpoint | None:
        """The newest checkpoint that verifies: the file's last line (read from its end, not
        the whole log at every round), else the newest good one of all."""
        try:
            with self.path.open("rb") as f:
                start = max(f.seek(0, os.SEEK_END) - _TAIL_BYTES, 0)
                f.seek(start)
                tail = f.read().decode("utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return None
        lines = [line for line in tail[1 if start else 0 :] if line.strip()]  # first may be cut
        parsed = _parse(0, lines[-1], _public_key(public_key)) if lines else None
        if isinstance(parsed, Checkpoint):
            return parsed
        good, _ = self.read(public_key)
        return good[-1][1] if good else None


_TAIL_BYTES = 4096  # a checkpoint line is about 250 bytes


def _public_key(public_key: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key))
    except ValueError as e:
        raise ValueError(f"not an Ed25519 public key: {e}") from None


def _parse(n: int, raw: str, pub: Ed25519PublicKey) -> Checkpoint | CheckpointProblem:
    """Line `n` of the log: its checkpoint if its signature verifies, else what is wrong."""
    try:
        doc = json.loads(raw)
        cp = Checkpoint(int(doc["position"]), str(doc["hash"]), str(doc["at"]))
        pub.verify(base64.b64decode(doc["sig"]), cp.message())
    except InvalidSignature:
        return CheckpointProblem(n, cp.position, "signature does not verify")
    except (ValueError, KeyError, TypeError) as e:
        return CheckpointProblem(n, None, f"not a checkpoint line ({e})")
    return cp


async def take_checkpoint(
    store: PostgresEventStore, log: CheckpointLog, key: Ed25519PrivateKey, *, now: datetime
) -> Checkpoint | None:
    """Sign and append the chain head, unless it has not moved since the last checkpoint."""
    row = await store.pool.fetchrow("SELECT position, hash FROM events.head")
    if row is None or int(row["position"]) == 0:
        return None
    cp = Checkpoint(int(row["position"]), bytes(row["hash"]).hex(), now.astimezone(UTC).isoformat())
    last = log.last(public_key_of(key))
    if last is not None and (last.position, last.hash) == (cp.position, cp.hash):
        return None
    log.append(cp, key)
    return cp


async def verify_checkpoints(
    store: PostgresEventStore, log: CheckpointLog, public_key: str
) -> tuple[int, list[CheckpointProblem]]:
    """(checkpoints that match, problems): each signed checkpoint against the event store's row
    at its position; the problems in line order, so the first names where trust ends."""
    good, problems = log.read(public_key)
    matched = 0
    for n, cp in good:
        stored = await store.pool.fetchval(
            "SELECT hash FROM events.events WHERE position = $1", cp.position
        )
        if stored is None:
            problems.append(CheckpointProblem(n, cp.position, "the event is gone"))
        elif bytes(stored).hex() != cp.hash:
            problems.append(
                CheckpointProblem(n, cp.position, f"the chain hash differs from the one of {cp.at}")
            )
        else:
            matched += 1
    problems.sort(key=lambda p: p.line)
    return matched, problems


class Checkpointer:
    """Signs the chain head into `<folder>/checkpoints.jsonl` at start and every `interval`
    seconds (when it moved); a failed round is logged and tried again at the next one."""

    def __init__(
        self,
        store: PostgresEventStore,
        folder: Path,
        interval: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.log = CheckpointLog(folder / LOG_FILE)
        self.key_path = folder / KEY_FILE
        self.interval = interval
        self.clock = clock
        self.taken = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        key = await asyncio.to_thread(load_or_create_key, self.key_path)
        while not self._stop.is_set():
            try:
                if await take_checkpoint(self.store, self.log, key, now=self.clock()):
                    self.taken += 1
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                log.warning(
                    "checkpoint not taken; trying again at the next interval",
                    extra={"error": f"{type(e).__name__}: {e}", "interval_s": self.interval},
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)
