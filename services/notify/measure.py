"""What the host tells about itself: how full the data's file systems are, and memory.

Read with plain system calls (statvfs, /proc): no extra program, nothing to install. Memory
pressure is the kernel's PSI (`/proc/pressure/memory`, "some avg60": the share of the last
minute some task waited for memory) where the kernel has it, and MemAvailable/MemTotal.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from services.notify.conditions import Disk, Memory

__all__ = ["disks", "memory"]


def disks(paths: Iterable[Path]) -> list[Disk]:
    """Each path's file system as `df` shows it: used ÷ (used + available to users)."""
    out: list[Disk] = []
    seen: set[int] = set()
    for path in paths:
        try:
            st = os.statvfs(path)
            dev = os.stat(path).st_dev
        except OSError:
            continue  # not there (yet): nothing to say about it
        if dev in seen:
            continue
        seen.add(dev)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        avail = st.f_bavail * st.f_frsize
        if used + avail <= 0:
            continue
        out.append(Disk(path, 100.0 * used / (used + avail), avail))
    return out


def memory(proc: Path) -> Memory:
    available = None
    try:
        info: dict[str, int] = {}
        for line in (proc / "meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                info[name] = int(parts[0])
        if info.get("MemTotal") and "MemAvailable" in info:
            available = 100.0 * info["MemAvailable"] / info["MemTotal"]
    except OSError:
        pass
    psi = None
    try:
        for line in (proc / "pressure" / "memory").read_text().splitlines():
            kind, *fields = line.split()
            if kind == "some":
                values = dict(f.split("=", 1) for f in fields if "=" in f)
                psi = float(values["avg60"])
    except (OSError, KeyError, ValueError):
        pass
    return Memory(available, psi)
