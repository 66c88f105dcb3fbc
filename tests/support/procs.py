"""Processes as /proc shows them, for tests."""

from __future__ import annotations

from pathlib import Path

__all__ = ["parent_pid"]


def parent_pid(pid: int) -> int:
    """The parent of `pid` (its stat's fourth field)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
