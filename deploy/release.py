"""Signed platform releases: make one from the repository, and fetch, verify and unpack one.

A release directory (what the release URL serves) holds, for version V:
- `homeport-V.tar.gz`: the repository's tracked files (plus the built dashboard), sorted, every
  mtime fixed and owner 0, so two builds of the same tree give the same bytes;
- `homeport-V.json`: the manifest {name, version, archive: {file, sha256, size}, created,
  changelog, migrations}, and `homeport-V.json.sig`: base64 of the Ed25519 signature over the
  manifest's exact bytes;
- `latest.json`: {version, manifest}; unsigned, it only points at a manifest. Nothing in it is
  trusted: the version that counts is the signed manifest's, so pointing at an old manifest is
  refused as "not newer".

`fetch_release` checks, in order: the signature with the pinned key before anything of the
manifest is read, the version (newer than the running one), the archive's size and sha256, then
every tar member (regular files and directories only, relative, no `..`) while unpacking into
`<V>.partial`, renamed to `<V>` at the end. Any refusal removes what it wrote.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from libs import keyfiles
from services.apps.semver import Version

__all__ = [
    "LATEST",
    "Manifest",
    "Release",
    "ReleaseError",
    "build_release",
    "fetch_manifest",
    "fetch_release",
    "generate_key",
    "is_newer",
    "load_private_key",
    "load_public_key",
    "public_key_text",
    "publish",
    "tracked_files",
]

LATEST = "latest.json"
NAME = "homeport"
DASHBOARD_DIST = "services/gateway/dashboard/dist"
# Every member's mtime in the archive (1980-01-01, what zip and reproducible-builds use).
FIXED_MTIME = 315532800
_SMALL = 1 << 20  # latest.json, the manifest and its signature are read with this cap
_TIMEOUT = 30.0
_SCHEMES = ("http", "https", "file")


class ReleaseError(Exception):
    """A release cannot be built, or is refused; the message says what was wrong."""


class _Missing(ReleaseError):
    """The file is not there (HTTP 404, no such file)."""


@dataclass(frozen=True)
class Manifest:
    """A verified manifest (only ever made from bytes whose signature checked out)."""

    version: str
    archive_file: str
    sha256: str
    size: int
    created: str
    changelog: str
    migrations: tuple[str, ...]


@dataclass(frozen=True)
class Release:
    """A fetched, verified and unpacked release."""

    manifest: Manifest
    path: Path


# -- keys ---------------------------------------------------------------------------------


def generate_key(path: Path) -> Ed25519PrivateKey:
    """Write a new Ed25519 private key (PEM, mode 0600) to `path`; never overwrites one."""
    try:
        return keyfiles.make_private_key(path)
    except keyfiles.KeyFileError as e:
        if e.reason == "exists":
            raise ReleaseError(f"{path} exists: a release key is never overwritten") from None
        raise ReleaseError(f"cannot write the release key {path}: {e.detail}") from e


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file `path`."""
    try:
        return keyfiles.read_private_key(path)
    except keyfiles.KeyFileError as e:
        raise ReleaseError(
            {
                "unreadable": f"cannot read the release key {path}: {e.detail}",
                "not_pem": f"{path} is not an unencrypted PEM private key: {e.detail}",
            }.get(
                e.reason, f"{path} is not an Ed25519 key: make one with `homeport release keygen`"
            )
        ) from e


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The pinned Ed25519 public key in the PEM file `path`."""
    try:
        return keyfiles.read_public_key(path)
    except keyfiles.KeyFileError as e:
        raise ReleaseError(
            {
                "unreadable": f"cannot read the pinned release key {path}: {e.detail}",
                "not_pem": f"{path} is not a PEM public key: {e.detail}",
            }.get(e.reason, f"{path} is not an Ed25519 public key")
        ) from e


public_key_text = keyfiles.public_key_text


# -- build --------------------------------------------------------------------------------


def tracked_files(repo: Path) -> list[str]:
    """The files a release of `repo` holds: `git ls-files` (present ones) plus the built
    dashboard when `make dashboard` made it; sorted, relative POSIX paths."""
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "ls-files", "-z", "--cached"],
            check=True,
            capture_output=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        msg = f"cannot list the tracked files of {repo}: is it a git checkout? {e}"
        raise ReleaseError(msg) from e
    names = {n for n in out.decode().split("\0") if n}
    dist = repo / DASHBOARD_DIST
    if dist.is_dir():
        names.update(p.relative_to(repo).as_posix() for p in dist.rglob("*") if p.is_file())
    # A tracked file deleted in the work tree, or a symlink, is not shipped.
    return sorted(n for n in names if (repo / n).is_file() and not (repo / n).is_symlink())


def _archive(repo: Path, files: Iterable[str], out: Path) -> None:
    """Write a deterministic tar.gz of `files` (sorted, fixed mtime, owner 0, modes 644/755)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            path = repo / name
            info = tarfile.TarInfo(name)
            data = path.read_bytes()
            info.size = len(data)
            info.mtime = FIXED_MTIME
            info.mode = 0o755 if path.stat().st_mode & stat.S_IXUSR else 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    with out.open("wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def publish(
    out: Path,
    version: str,
    archive: Path,
    key: Ed25519PrivateKey,
    *,
    changelog: str = "",
    migrations: Iterable[str] = (),
    created: datetime | None = None,
) -> Path:
    """Write and sign `homeport-<version>.json` for `archive` (already in `out`) and point
    `latest.json` at it; returns the manifest's path."""
    _check_version(version)
    if archive.parent.resolve() != out.resolve():
        raise ReleaseError(f"{archive} must be in the release directory {out}")
    manifest = {
        "name": NAME,
        "version": version,
        "archive": {
            "file": archive.name,
            "sha256": _sha256(archive),
            "size": archive.stat().st_size,
        },
        "created": (created or datetime.now(UTC)).isoformat(timespec="seconds"),
        "changelog": changelog,
        "migrations": sorted(migrations),
    }
    body = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    path = out / f"{NAME}-{version}.json"
    path.write_bytes(body)
    path.with_name(path.name + ".sig").write_bytes(base64.b64encode(key.sign(body)) + b"\n")
    latest = {"version": version, "manifest": path.name}
    (out / LATEST).write_text(json.dumps(latest, indent=2, sort_keys=True) + "\n")
    return path


def build_release(
    repo: Path, version: str, key: Ed25519PrivateKey, out: Path, *, changelog: str = ""
) -> Path:
    """Make the archive of `repo`, its signed manifest and `latest.json` in `out`; returns
    the manifest's path."""
    _check_version(version)
    files = tracked_files(repo)
    if not files:
        raise ReleaseError(f"{repo} has no tracked files to release")
    out.mkdir(parents=True, exist_ok=True)
    archive = out / f"{NAME}-{version}.tar.gz"
    _archive(repo, files, archive)
    migrations = [
        f
        for f in files
        if f.endswith(".sql") and PurePosixPath(f).parent.name.startswith("migrations")
    ]
    return publish(out, version, archive, key, changelog=changelog, migrations=migrations)


def _check_version(version: str) -> Version:
    try:
        return Version.parse(version)
    except ValueError as e:
        raise ReleaseError(f"release version: {e}") from None


# -- fetch and verify ---------------------------------------------------------------------


def _join(base: str, name: str) -> str:
    """`name` (a plain file name) inside the release directory `base`."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or "?" in name:
        raise ReleaseError(f"{name!r} is not a plain file name in the release directory")
    return base.rstrip("/") + "/" + urllib.parse.quote(name)


def _check_url(url: str) -> str:
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in _SCHEMES:
        raise ReleaseError(f"release URL {url!r}: only http, https and file URLs are allowed")
    return url


def _download(url: str, limit: int, what: str, to: Path | None = None) -> bytes:
    """GET `url`, refusing more than `limit` bytes; to a file when `to` is given."""
    _check_url(url)
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT) as resp:  # noqa: S310 - scheme checked
            _check_url(resp.geturl())  # a redirect may not leave http(s)/file
            if to is None:
                data: bytes = resp.read(limit + 1)
                if len(data) > limit:
                    raise ReleaseError(f"{what} at {url} is larger than {limit} bytes")
                return data
            got = 0
            with to.open("wb") as f:
                while chunk := resp.read(1 << 16):
                    got += len(chunk)
                    if got > limit:
                        raise ReleaseError(
                            f"{what} at {url} is larger than the {limit} bytes announced: refused"
                        )
                    f.write(chunk)
            return b""
    except urllib.error.HTTPError as e:
        e.close()  # it holds the response's socket
        error = _Missing if e.code in (404, 410) else ReleaseError
        raise error(f"cannot download {what} from {url}: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        error = _Missing if isinstance(e.reason, FileNotFoundError) else ReleaseError
        raise error(f"cannot download {what} from {url}: {e.reason}") from e
    except (OSError, ValueError) as e:
        raise ReleaseError(f"cannot download {what} from {url}: {e}") from e


def _verified(body: bytes, sig_text: bytes, key: Ed25519PublicKey) -> Manifest:
    """Check the signature over `body` first, then parse it."""
    try:
        sig = base64.b64decode(sig_text.strip(), validate=True)
        key.verify(sig, body)
    except (binascii.Error, ValueError, InvalidSignature):
        raise ReleaseError(
            "the release manifest's signature does not match the pinned key: refused"
        ) from None
    try:
        doc: Any = json.loads(body)
        arch = doc["archive"]
        m = Manifest(
            version=str(doc["version"]),
            archive_file=str(arch["file"]),
            sha256=str(arch["sha256"]).lower(),
            size=int(arch["size"]),
            created=str(doc.get("created", "")),
            changelog=str(doc.get("changelog", "")),
            migrations=tuple(str(x) for x in doc.get("migrations", [])),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise ReleaseError(f"the signed manifest is malformed ({e}): refused") from None
    if doc.get("name") != NAME:
        raise ReleaseError(f"the signed manifest is for {doc.get('name')!r}, not {NAME}: refused")
    if m.size < 0 or len(m.sha256) != 64:
        raise ReleaseError("the signed manifest's archive size or sha256 is malformed: refused")
    _check_version(m.version)
    return m


def fetch_manifest(url: str, key: Ed25519PublicKey) -> Manifest:
    """The newest release announced at the release directory `url`, its signature checked."""
    base = _check_url(url.rstrip("/"))
    latest_raw = _download(_join(base, LATEST), _SMALL, LATEST)
    try:
        latest = json.loads(latest_raw)
        name = str(latest["manifest"])
    except (ValueError, KeyError, TypeError) as e:
        raise ReleaseError(f"{LATEST} at {base} is malformed ({e}): refused") from None
    body = _download(_join(base, name), _SMALL, "the manifest")
    try:
        sig = _download(_join(base, name + ".sig"), _SMALL, "the manifest's signature")
    except _Missing:
        raise ReleaseError(f"the release is unsigned (no {name}.sig at {base}): refused") from None
    return _verified(body, sig, key)


def is_newer(candidate: str, current: str) -> bool:
    """True when `candidate` has a higher semantic-version precedence than `current`."""
    return _check_version(candidate) > _check_version(current)


def fetch_release(url: str, key: Ed25519PublicKey, current_version: str, dest: Path) -> Release:
    """Fetch, verify and unpack the newest release at `url` into `dest/<version>`.

    Refuses (ReleaseError, naming why) an unsigned or wrongly signed manifest, a version not
    newer than `current_version`, an archive of another size or sha256, a hostile tar member;
    nothing is left in `dest` then.
    """
    manifest = fetch_manifest(url, key)
    if not is_newer(manifest.version, current_version):
        raise ReleaseError(
            f"version {manifest.version} is not newer than {current_version}: refused"
        )
    base = url.rstrip("/")
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / manifest.version
    partial = dest / f"{manifest.version}.partial"
    download = dest / f".{manifest.archive_file}.download"
    if final.exists():
        raise ReleaseError(f"{final} exists already: remove it to install {manifest.version} again")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _download(_join(base, manifest.archive_file), manifest.size, "the archive", download)
        if download.stat().st_size != manifest.size:
            raise ReleaseError(
                f"the archive is {download.stat().st_size} bytes, the manifest announces "
                f"{manifest.size}: refused"
            )
        if _sha256(download) != manifest.sha256:
            raise ReleaseError("the archive sha256 differs from the signed manifest's: refused")
        _extract(download, partial)
        partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        download.unlink(missing_ok=True)
    return Release(manifest, final)


def _extract(archive: Path, into: Path) -> None:
    """Unpack regular files and directories only; refuse anything else, naming the member."""
    into.mkdir(mode=0o755)
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:
                _extract_member(tar, member, into)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ReleaseError(f"the archive cannot be unpacked: {e}") from e


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, into: Path) -> None:
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith("/") or not parts or ".." in parts or "\\" in name or "\0" in name:
        raise ReleaseError(f"archive member {name!r} points outside the release: refused")
    target = into.joinpath(*parts)
    if member.isdir():
        target.mkdir(mode=0o755, parents=True, exist_ok=True)
        return
    if not member.isreg():
        kind = "a link" if member.issym() or member.islnk() else "a device or special file"
        raise ReleaseError(f"archive member {name!r} is {kind}: refused")
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    if target.parent.resolve() != into.resolve() and not target.parent.resolve().is_relative_to(
        into.resolve()
    ):
        raise ReleaseError(f"archive member {name!r} points outside the release: refused")
    src = tar.extractfile(member)
    if src is None:
        raise ReleaseError(f"archive member {name!r} has no content: refused")
    mode = 0o755 if member.mode & 0o111 else 0o644
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        shutil.copyfileobj(src, f)
