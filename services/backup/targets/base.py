"""Where backups are kept: a flat namespace of immutable objects (names like `data/ab/abcd…`).

A target stores bytes it cannot read (every object is encrypted before it gets here, see
../FORMAT.md) and is trusted only to keep them: the repository checks sizes and authentication
tags itself. Object names are ASCII `[a-z0-9/._-]`, at most 200 characters, never starting
with `/` and never holding `..`, an empty component or one starting with `.`; a target refuses
anything else (TargetError).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

__all__ = ["ObjectInfo", "Target", "TargetError", "TargetMissing", "check_name", "probe"]

# no empty component and none starting with "." ("a//b", "a/./b", "a/"): a directory target
# could not keep such names apart from others
_NAME = re.compile(r"^(?!/)(?!.*\.\.)(?!.*//)(?!.*/\.)(?!.*/$)[a-z0-9][a-z0-9/._-]{0,199}$")


class TargetError(Exception):
    """The target refused or failed an operation (message fit for an admin)."""


class TargetMissing(TargetError):
    """No object of that name."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    name: str
    size: int


async def probe(target: Target, where: str) -> None:
    """What `check()` does on any target: write a probe object, read it back, compare, delete
    it; a failure says which step failed, prefixed by `where` (the target as an admin knows
    it)."""
    name = f"probe-{secrets.token_hex(8)}"
    data = secrets.token_bytes(64)
    step = "writing a probe object"
    try:
        await target.put(name, data)
        step = "reading the probe object back"
        if await target.get(name) != data:
            raise TargetError("the probe object read back differs from what was written")
        step = "deleting the probe object"
        await target.delete(name)
    except TargetError as e:
        raise TargetError(f"{where}: {step} failed: {e}") from e


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise TargetError(f"not a valid object name: {name[:60]!r}")
    return name


class Target(Protocol):
    """What the repository needs from a place to keep objects."""

    async def put(self, name: str, data: bytes) -> None:
        """Store `data` under `name` atomically (readers see all of it or nothing); replaces
        an object of the same name."""
        ...

    async def put_file(self, name: str, path: str, *, consume: bool = False) -> None:
        """Store a (large) local file: in parts where the target has them; an interrupted
        upload leaves no object (and no orphan parts after `cleanup()`). With `consume` the
        target may move the file instead of copying it (the caller no longer needs it)."""
        ...

    async def get(self, name: str) -> bytes:
        """The whole object (TargetMissing if there is none)."""
        ...

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (TargetMissing if there is no object)."""
        ...

    async def stat(self, name: str) -> ObjectInfo | None:
        """The object's size, or None if there is none."""
        ...

    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object whose name starts with `prefix`, in name order."""
        ...

    async def delete(self, name: str) -> None:
        """Remove the object (no error if it is gone already)."""
        ...

    async def check(self) -> None:
        """Prove the target works with these settings before they are kept: write a probe
        object, read it back, delete it (TargetError saying what failed)."""
        ...

    async def cleanup(self) -> None:
        """Remove what interrupted uploads left (temporary files, unfinished multipart
        uploads older than an hour)."""
        ...

    async def close(self) -> None: ...
