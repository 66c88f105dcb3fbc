"""A volume's tar made safe to put back: only files, folders and links that stay in the volume.

A snapshot's tar holds whatever an app's volume held, and a hostile app (or whoever could write
the snapshot folder) can put anything in it. `clean_tar` copies what is worth restoring into a
new tar and returns what it left out (SECURITY.md "Isolation of apps"):
- a member named by an absolute path or with a `..` component refuses the whole tar, before
  anything is changed (export never writes one);
- device files, FIFOs and any other special file are left out;
- setuid and setgid bits are cleared (a folder keeps setgid: it only passes its group on);
- a symlink is kept only if it points inside the volume: relative, its `..` components all
  leading (never after a name, which may itself be a link) and no more of them than its depth;
- a member below a symlink, or named twice, is left out;
- a hard link becomes a copy of the regular file it names earlier in the tar, or is left out.
Owners are kept as numbers (user and group names are dropped), or all given to `owner`: an
app that does not run as root gets every file as its own user's, whatever the tar says.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from services.apps.container import RuntimeFailure

__all__ = ["UnsafeTar", "clean_tar"]

_SPECIAL_BITS = 0o6000  # setuid, setgid


class UnsafeTar(RuntimeFailure):
    """The tar names a path outside the volume: nothing of it is put back."""


def _parts(name: str) -> tuple[str, ...]:
    """The member's path in the volume ("." is the volume itself: no parts)."""
    if name.startswith("/"):
        raise UnsafeTar(f"the tar names the absolute path {name!r}")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeTar(f"the tar names {name!r}, which leads out of the volume")
    return parts


def _link_stays_inside(parts: tuple[str, ...], target: str) -> bool:
    if not target or target.startswith("/"):
        return False
    steps = [p for p in target.split("/") if p not in ("", ".")]
    ups = 0
    while ups < len(steps) and steps[ups] == "..":
        ups += 1
    if ".." in steps[ups:]:
        return False  # `x/..`: x may be a link, so where it leads is not known from the name
    return ups <= len(parts) - 1  # up from the link's folder, at most to the volume itself


def clean_tar(src: Path, dest: Path, owner: tuple[int, int] | None = None) -> list[str]:
    """Write to `dest` the members of the tar `src` that are safe to put back; what was left out.
    `owner` (uid, gid): every member's owner (None: as in the tar).

    Raises UnsafeTar (naming the member) for a name that leads out of the volume, and
    RuntimeFailure for a file that is not a readable tar.
    """
    dropped: list[str] = []
    seen: set[tuple[str, ...]] = set()
    links: set[tuple[str, ...]] = set()
    files: dict[tuple[str, ...], tarfile.TarInfo] = {}
    try:
        with (
            tarfile.open(src, "r") as tin,
            tarfile.open(dest, "w", format=tarfile.GNU_FORMAT) as tout,
        ):
            for m in tin:
                parts = _parts(m.name)
                name = "./" + "/".join(parts) if parts else "."
                if parts in seen:
                    dropped.append(f"{name} (named twice)")
                    continue
                if any(parts[:i] in links for i in range(1, len(parts))):
                    dropped.append(f"{name} (below a symlink)")
                    continue
                out = tarfile.TarInfo(name)
                out.uid, out.gid = owner if owner is not None else (m.uid, m.gid)
                out.uname, out.gname = "", ""
                out.mtime = m.mtime
                out.mode = m.mode & 0o7777
                if m.isdir():
                    out.type = tarfile.DIRTYPE
                    out.mode &= ~0o4000
                    tout.addfile(out)
                elif m.isreg():
                    out.type, out.size = tarfile.REGTYPE, m.size
                    out.mode &= ~_SPECIAL_BITS
                    tout.addfile(out, tin.extractfile(m))
                    files[parts] = m
                elif m.issym():
                    if not parts or not _link_stays_inside(parts, m.linkname):
                        dropped.append(f"{name} (a symlink to {m.linkname!r}, out of the volume)")
                        continue
                    out.type, out.linkname = tarfile.SYMTYPE, m.linkname
                    out.mode = 0o777
                    tout.addfile(out)
                    links.add(parts)
                elif m.islnk():
                    try:
                        target = files.get(_parts(m.linkname))
                    except UnsafeTar:
                        target = None
                    if target is None:
                        dropped.append(f"{name} (a hard link to {m.linkname!r})")
                        continue
                    out.type, out.size = tarfile.REGTYPE, target.size
                    out.mode = target.mode & 0o7777 & ~_SPECIAL_BITS
                    out.uid, out.gid, out.mtime = target.uid, target.gid, target.mtime
                    if owner is not None:
                        out.uid, out.gid = owner
                    tout.addfile(out, tin.extractfile(target))
                    files[parts] = target
                else:
                    dropped.append(f"{name} (a device file, FIFO or other special file)")
                    continue
                seen.add(parts)
    except tarfile.TarError as e:
        raise RuntimeFailure(
            f"{src} is not a readable tar ({e}): use a tar written by export"
        ) from e
    except OSError as e:
        raise RuntimeFailure(f"cannot copy the tar {src} to {dest}: {e}") from e
    return dropped
