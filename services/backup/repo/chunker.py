"""Content-defined chunking (FastCDC) over a file descriptor, in a bounded window.

fastcdc finds each cut point looking at most `max_size` bytes past the chunk's start, so
chunking a window and keeping back the chunks that could reach past its end gives exactly the
cuts of chunking the whole file at once, while holding only `window` bytes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

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


def iter_chunks(fd: int, params: ChunkParams, buf: bytearray | None = None) -> Iterator[bytes]:
    """The chunks of what `fd` reads from its current position to its end. One buffer of
    at most `window` bytes (`buf` if given, else one of the file's size for a smaller
    regular file) is read into again and again; each chunk is a copy."""
    from fastcdc import fastcdc  # here: with click, ~1 MiB the idle service does not need

    window = params.window
    if buf is None or len(buf) < window:
        left = _size_left(fd)
        buf = bytearray(window if left < 0 else min(window, left + 1))
    have = 0
    eof = False
    while True:
        while not eof and have < window:
            if have == len(buf):  # a file that grew while read, or no size known
                bigger = bytearray(window)
                bigger[:have] = buf
                buf = bigger
            with memoryview(buf) as view:
                got = os.readv(fd, [view[have:]])
            if not got:
                eof = True
            have += got
        if not have:
            return
        cut = 0
        with memoryview(buf) as view:
            for c in fastcdc(view[:have], params.min_size, params.avg_size, params.max_size):
                if not eof and c.offset + params.max_size > have:
                    break
                end = c.offset + c.length
                yield bytes(view[c.offset : end])
                cut = end
        buf[: have - cut] = buf[cut:have]
        have -= cut
        if eof and not have:
            return


def _size_left(fd: int) -> int:
    """Bytes between the position and the end of a regular file; -1 for anything else."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return -1
        return max(st.st_size - os.lseek(fd, 0, os.SEEK_CUR), 0)
    except OSError:
        return -1
