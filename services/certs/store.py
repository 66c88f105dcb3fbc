"""Files on disk: certificate pairs for nginx and HTTP-01 token files (derived state).

Certificates: `<certs_dir>/<host>/fullchain.pem` and `privkey.pem`. `<host>` is a symlink to
a directory made whole beforehand (mode 0700, key 0600, both fsynced), swapped in with one
rename, so a reader (nginx reloading at any moment) sees the old pair or the new pair, never
a new chain with an old key. A wildcard `*.example.test` lives in `_wildcard.example.test`.
When `<certs_dir>` is readable by a group not the process's own (a server install:
`homeport-tls`, which the gateway, whose nginx reads the pairs, is in; the folder is setgid, so
what certs makes there has that group), the directory is 0750 and the key 0640 instead: the
folder's group reads them, nobody else. (No chown: the units may not call it.)

Tokens: `<acme_dir>/<token>` holding the key authorization, mode 0644 in a 0755 directory
(nginx workers read them), written atomically too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from libs.files import shares_with_group
from services.certs.errors import FilesError

__all__ = ["CertFiles", "FilesError", "Paths", "TokenFiles", "host_dir_name"]

_HOST = re.compile(
    r"(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
)
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
CHAIN = "fullchain.pem"
KEY = "privkey.pem"


@dataclass(frozen=True)
class Paths:
    cert: Path
    key: Path


def host_dir_name(host: str) -> str:
    """The directory name of a host: itself, or `_wildcard.<domain>` for `*.<domain>`."""
    if len(host) > 253 or not _HOST.fullmatch(host):
        raise FilesError(f"{host!r} is not a host name: no files can be named after it")
    return "_wildcard." + host[2:] if host.startswith("*.") else host


def _write_file(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow it
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CertFiles:
    """Certificate pairs for nginx under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()

    def paths(self, host: str) -> Paths:
        d = self.root / host_dir_name(host)
        return Paths(d / CHAIN, d / KEY)

    def exists(self, host: str) -> bool:
        p = self.paths(host)
        return p.cert.is_file() and p.key.is_file()

    def read_chain(self, host: str) -> str | None:
        try:
            return self.paths(host).cert.read_text()
        except OSError:
            return None

    def write(self, host: str, chain_pem: str, key_pem: str) -> Paths:
        """Replace the pair of `host` at once (blocking: call in a thread)."""
        name = host_dir_name(host)
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            shared = shares_with_group(self.root)  # the folder's group reads the pairs
            fresh = self.root / f".{name}.{secrets.token_hex(6)}"
            fresh.mkdir(mode=0o700)  # in a setgid folder it has the folder's group
            _write_file(fresh / KEY, key_pem.encode(), 0o640 if shared else 0o600)
            _write_file(fresh / CHAIN, chain_pem.encode(), 0o644)
            os.chmod(fresh, 0o750 if shared else 0o700)  # after the files took its group
            _fsync_dir(fresh)
            link = self.root / name
            old = os.readlink(link) if link.is_symlink() else None
            if link.exists() and not link.is_symlink():
                shutil.rmtree(link)  # a directory made by hand: replaced by ours
            tmp = self.root / f".{name}.link.{secrets.token_hex(6)}"
            os.symlink(fresh.name, tmp)
            os.replace(tmp, link)
            _fsync_dir(self.root)
        except OSError as e:
            raise FilesError(
                f"cannot write the certificate files of {host} under {self.root}: {e.strerror}; "
                "check that the directory is writable by the certs service"
            ) from e
        if old is not None and old != fresh.name:
            shutil.rmtree(self.root / old, ignore_errors=True)
        return self.paths(host)

    def remove(self, host: str) -> None:
        """Remove the pair of `host` (blocking)."""
        name = host_dir_name(host)
        link = self.root / name
        try:
            if link.is_symlink():
                target = self.root / os.readlink(link)
                link.unlink()
                shutil.rmtree(target, ignore_errors=True)
            elif link.exists():
                shutil.rmtree(link)
        except OSError as e:
            raise FilesError(
                f"cannot remove the certificate files of {host} under {self.root}: {e.strerror}"
            ) from e

    def leftovers(self, keep: set[str]) -> list[str]:
        """Directory names under the root that belong to no host in `keep` (blocking)."""
        wanted = {host_dir_name(h) for h in keep}
        linked = set()
        out = []
        try:
            entries = list(self.root.iterdir())
        except FileNotFoundError:
            return []
        for p in entries:
            if p.is_symlink() and p.name in wanted:
                linked.add(os.readlink(p))
        for p in entries:
            if p.name in wanted or p.name in linked:
                continue
            out.append(p.name)
        return out

    def remove_name(self, name: str) -> None:
        """Remove one entry found by `leftovers` (blocking)."""
        p = self.root / name
        if p.is_symlink() or p.is_file():
            p.unlink(missing_ok=True)
        else:
            shutil.rmtree(p, ignore_errors=True)


class TokenFiles:
    """The HttpResponder of HTTP-01: token files nginx serves from `acme_dir`."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()

    def _path(self, token: str) -> Path:
        if not _TOKEN.fullmatch(token):
            raise FilesError(f"refusing an ACME token that is not base64url: {token[:40]!r}")
        return self.root / token

    async def put(self, token: str, key_authorization: str) -> None:
        await asyncio.to_thread(self._put, self._path(token), key_authorization)

    async def remove(self, token: str) -> None:
        path = self._path(token)
        await asyncio.to_thread(path.unlink, missing_ok=True)

    def _put(self, path: Path, key_authorization: str) -> None:
        try:
            self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.chmod(self.root, 0o755)  # noqa: S103 - nginx workers read the tokens
            tmp = self.root / f".{path.name}.{secrets.token_hex(6)}"
            try:
                _write_file(tmp, key_authorization.encode(), 0o644)
                os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        except OSError as e:
            raise FilesError(
                f"cannot write the HTTP-01 token file in {self.root}: {e.strerror}; check that "
                "the directory is writable by the certs service"
            ) from e
