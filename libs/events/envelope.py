"""The event envelope: what callers append (NewEvent) and what the store returns."""

from __future__ import annotations

import json
import os
import random
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["NewEvent", "RecordedEvent", "category_of", "dumps", "uuid7", "uuid7_str"]

_last_ms = 0
_seq = 0
_fast = random.Random(os.urandom(32))
# A process forked from one that imported this (deploy/forkserver.py) seeds its own: otherwise
# every service forked from it would draw the same correlation ids.
os.register_at_fork(after_in_child=lambda: _fast.seed(os.urandom(32)))


def _uuid7_int(randbits: Callable[[int], int] = secrets.randbits) -> int:
    """A UUIDv7 (RFC 9562) as an int: 48-bit Unix ms time, then random bits; monotonic within a
    process."""
    global _last_ms, _seq
    ms = time.time_ns() // 1_000_000
    if ms <= _last_ms:
        ms = _last_ms
        _seq = (_seq + 1) & 0xFFF
        if _seq == 0:
            ms += 1
    else:
        _seq = randbits(11)
    _last_ms = ms
    rand = randbits(62)
    return (ms << 80) | (0x7 << 76) | (_seq << 64) | (0b10 << 62) | rand


def uuid7() -> uuid.UUID:
    """A UUIDv7 (RFC 9562): 48-bit Unix ms time, then random bits; monotonic within a process."""
    return uuid.UUID(int=_uuid7_int())


def uuid7_str() -> str:
    """A UUIDv7 as text, for a correlation id per request: not a secret, so its random bits come
    from a generator seeded once from the OS rather than a system call each, and no UUID
    object is made."""
    h = _uuid7_int(_fast.getrandbits).to_bytes(16).hex()  # a fifth quicker than f"{:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def dumps(value: Any) -> str:
    """Compact JSON as stored (key order kept; Postgres jsonb normalises it)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def category_of(stream: str) -> str:
    """`app-4f1c…` -> `app`."""
    return stream.split("-", 1)[0]


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append; `id` defaults to a fresh UUIDv7, `meta` is merged with the context's."""

    type: str
    data: dict[str, Any]
    schema: int = 1
    id: uuid.UUID = field(default_factory=uuid7)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as committed: global `position`, `version` within its stream, and the chain hash."""

    position: int
    id: uuid.UUID
    stream: str
    version: int
    type: str
    schema: int
    data: dict[str, Any]
    meta: dict[str, Any]
    recorded_at: datetime
    hash: bytes

    @property
    def category(self) -> str:
        return category_of(self.stream)
