"""Content-defined chunking (FastCDC) over a file descriptor, in a bounded window.

fastcdc finds each cut point looking at most `max_size` bytes past the chunk's start, so
chunking a window and keeping back the chunks that could reach past its end gives exactly the
cuts of chunking the whole file at once, while holding only `window` bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from fastcdc import fastcdc

from services.backup.repo.errors import RepositoryError

__all__ = ["ChunkParams", "iter_chunks"]

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True, slots=True)
class ChunkParams:
    """Chunk sizes: 256 KiB / 1 MiB / 4 MiB (see FORMAT.md for why)."""

    min_size: int = 256 * KiB
    avg_size: int = 1 * MiB
    max_size: int = 4 * MiB

    def __post_init__(self) -> None:
        if not (64 <= self.min_size <= self.avg_size <= self.max_size <= 64 * MiB):
            raise RepositoryError(
                f"bad chunk sizes {self.min_size}/{self.avg_size}/{self.max_size}:"
                " need 64 <= min <= avg <= max <= 64 MiB"
            )
        if not (256 <= self.avg_size and 1024 <= self.max_size):
            raise RepositoryError("chunk sizes too small: avg >= 256, max >= 1024 bytes")

    @property
    def window(self) -> int:
        return 4 * self.max_size


def iter_chunks(fd: int, params: ChunkParams) -> Iterator[bytes]:
    """The chunks of what `fd` reads from its current position to its end."""
    window = params.window
    buf = b""
    eof = False
    while True:
        if not eof and len(buf) < window:
            parts = [buf]
            have = len(buf)
            while have < window:
                got = os.read(fd, window - have)
                if not got:
                    eof = True
                    break
                parts.append(got)
                have += len(got)
            buf = b"".join(parts)
        if not buf:
            return
        cut = 0
        for c in fastcdc(buf, params.min_size, params.avg_size, params.max_size):
            if not eof and c.offset + params.max_size > len(buf):
                break
            end = c.offset + c.length
            yield buf[c.offset : end]
            cut = end
        buf = buf[cut:]
        if eof and not buf:
            return
