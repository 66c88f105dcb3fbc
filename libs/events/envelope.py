"""The event envelope: what callers append (NewEvent) and what the store returns."""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["NewEvent", "RecordedEvent", "category_of", "dumps", "uuid7"]

_last_ms = 0
_seq = 0


def uuid7() -> uuid.UUID:
    """A UUIDv7 (RFC 9562): 48-bit Unix ms time, then random bits; monotonic within a process."""
    global _last_ms, _seq
    ms = time.time_ns() // 1_000_000
    if ms <= _last_ms:
        ms = _last_ms
        _seq = (_seq + 1) & 0xFFF
        if _seq == 0:
            ms += 1
    else:
        _seq = int.from_bytes(os.urandom(2), "big") & 0x7FF
    _last_ms = ms
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (_seq << 64) | (0b10 << 62) | rand
    return uuid.UUID(int=value)


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
