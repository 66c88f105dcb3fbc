"""The signed catalog index: publish a source tree, load it if trusted, verify entries lazily.

Trust model. An index is trusted only when `index.json.sig` is a valid Ed25519 signature over
the exact bytes of `index.json` by one of the configured public keys; nothing in an unsigned or
wrongly signed index is read. The index pins each entry by SHA-256: the manifest file, the
build context tree and the icon. `CatalogEntry.verify()` re-hashes them, so a file changed after
publishing is refused before anything is built from it (callers verify right before use). The
bundled catalog is signed on this machine by a key made on this machine at first start
(`ensure_local_catalog`, key in `<data_dir>/catalog-signing.key`, mode 0600): it protects the
files between publishing and installing, not against whoever can write the data directory. A
remote catalog would ship its publisher's public key, configured here as a trusted key.

The bundled catalog (`services/apps/bundled/`) ships signed: its `index.json` (entry paths
relative to it) and `index.json.sig`, made by `deploy/sign_catalog.py` with a private key that
never enters the repository, and the public half `catalog-signing.pub` beside them. At start
the index is verified with that shipped key and every entry's files are re-hashed; an entry
whose files differ (one changed manifest byte) is refused with a log line naming it. A source
without a signed index (a developer's HP_CATALOG_SOURCE) is still signed on this machine.
Any edit of a bundled entry therefore needs `deploy/sign_catalog.py KEY` run again.

Source layout: `<source>/<app-id>/<version>/manifest.json` plus the build context and icon
the manifest names. Plain files at the first two levels (a README) are ignored.

Index layout (`<out>/index.json`, canonical JSON: sorted keys, no spaces, ASCII):
`{"formatVersion": 1, "generatedAt": "...Z", "entries": [{"id", "version", "path",
"manifestSha256", "contextSha256", "iconSha256", "manifest"}, ...]}`. `path` is the absolute,
resolved directory of the entry's manifest on the publishing machine, or (the bundled catalog)
that directory relative to the index's own. `contextSha256` hashes the
build context tree (the manifest's directory for image-based apps); `iconSha256` is null when
there is no icon; `manifest` is the parsed manifest (`Manifest.to_json()`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from libs import keyfiles
from services.apps.config import BUNDLED_CATALOG, AppsConfig
from services.apps.errors import AppsError
from services.apps.manifest import MANIFEST_FILE, Manifest, ManifestError, load_manifest
from services.apps.manifest import parse_manifest as _parse_manifest
from services.apps.semver import Version, VersionError

__all__ = [
    "BUNDLED_PUBLIC_KEY",
    "INDEX_FILE",
    "SIGNATURE_FILE",
    "SIGNING_KEY_FILE",
    "Catalog",
    "CatalogEntry",
    "CatalogError",
    "NotInCatalog",
    "ensure_local_catalog",
    "generate_key",
    "key_fingerprint",
    "load_catalog",
    "load_private_key",
    "load_public_key",
    "public_key_text",
    "publish",
    "tree_sha256",
]

INDEX_FILE = "index.json"
SIGNATURE_FILE = "index.json.sig"
SIGNING_KEY_FILE = "catalog-signing.key"
SIGNING_PUBLIC_FILE = "catalog-signing.pub"
LOCAL_INDEX_DIR = "catalog"
FORMAT_VERSION = 1
_TREE_MAGIC = b"homeport-tree-v1\x00"
_CHUNK = 1 << 16
# The public half of the key the bundled catalog is signed with (deploy/sign_catalog.py).
BUNDLED_PUBLIC_KEY = BUNDLED_CATALOG / SIGNING_PUBLIC_FILE

log = logging.getLogger("services.apps.catalog")


class CatalogError(AppsError):
    """The catalog cannot be used as asked; the message says which file or entry and why."""


class NotInCatalog(CatalogError):
    """No such app id or version in the catalog."""


# -- hashing ------------------------------------------------------------------------------


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _walk(root: Path, rel: bytes = b"") -> Iterator[tuple[bytes, Path, os.stat_result]]:
    """Every entry under root (not root), depth-first in byte order, symlinks not followed."""
    with os.scandir(root) as it:
        names = sorted(os.fsencode(e.name) for e in it)
    for name in names:
        path = root / os.fsdecode(name)
        relpath = rel + b"/" + name if rel else name
        st = path.lstat()
        yield relpath, path, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(path, relpath)


def tree_sha256(root: Path) -> str:
    """Hash a directory tree: relative paths, entry types, the exec bit, contents, link targets.

    Nothing is ignored (empty directories and dotfiles count). Only the exec bit of a file's
    mode counts, as git keeps no other; symlinks are hashed as their target, never followed.
    Records are NUL-separated and a file's record ends in the fixed-size SHA-256 of its
    contents, so the encoding is unambiguous. Raises CatalogError for sockets, FIFOs and devices.
    """
    h = hashlib.sha256(_TREE_MAGIC)
    try:
        for relpath, path, st in _walk(root):
            if stat.S_ISDIR(st.st_mode):
                h.update(b"d\x00" + relpath + b"\x00")
            elif stat.S_ISLNK(st.st_mode):
                h.update(b"l\x00" + relpath + b"\x00" + os.fsencode(os.readlink(path)) + b"\x00")
            elif stat.S_ISREG(st.st_mode):
                mode = b"x" if st.st_mode & 0o111 else b"-"
                digest = bytes.fromhex(_file_sha256(path))
                h.update(b"f\x00" + relpath + b"\x00" + mode + b"\x00" + digest)
            else:
                raise CatalogError(
                    f"{path} is neither a file, a directory nor a symlink: "
                    "remove it from the build context"
                )
    except OSError as e:
        raise CatalogError(f"cannot read the tree {root}: {e}") from e
    return h.hexdigest()


# -- keys ---------------------------------------------------------------------------------


def generate_key(path: Path) -> Ed25519PrivateKey:
    """Make a new Ed25519 signing key in `path` (PEM, mode 0600); refuses to overwrite a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return keyfiles.make_private_key(path)
    except keyfiles.KeyFileError as e:
        if e.reason == "exists":
            raise CatalogError(
                f"{path} already exists: not overwriting a key; remove it first or pick another"
                " path"
            ) from e
        raise CatalogError(f"cannot create the key file {path}: {e.detail}") from e
    except OSError as e:
        raise CatalogError(f"cannot create the key file {path}: {e}") from e


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an Ed25519 private key (PEM, unencrypted) from `path`."""
    try:
        return keyfiles.read_private_key(path)
    except keyfiles.KeyFileError as e:
        raise CatalogError(
            {
                "unreadable": f"cannot read the signing key {path}: {e.detail}",
                "not_pem": f"{path} is not an unencrypted PEM private key: make one with "
                "`homeport catalog keygen --key PATH`",
            }.get(e.reason, f"{path} holds a {e.detail}, not an Ed25519 key")
        ) from e


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read an Ed25519 public key (PEM) from `path`."""
    try:
        return keyfiles.read_public_key(path)
    except keyfiles.KeyFileError as e:
        raise CatalogError(
            {
                "unreadable": f"cannot read the public key {path}: {e.detail}",
                "not_pem": f"{path} is not a PEM public key: give the file `homeport catalog"
                " keygen` printed (-----BEGIN PUBLIC KEY-----)",
            }.get(e.reason, f"{path} holds a {e.detail}, not an Ed25519 key")
        ) from e


def _public(key: Ed25519PrivateKey | Ed25519PublicKey) -> Ed25519PublicKey:
    return key.public_key() if isinstance(key, Ed25519PrivateKey) else key


public_key_text = keyfiles.public_key_text


def key_fingerprint(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """A short name for a key in messages: SHA256 of the raw public key, base64 like ssh."""
    raw = _public(key).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")


# -- publishing ---------------------------------------------------------------------------


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _entry_json(version_dir: Path, relative_to: Path | None) -> tuple[Manifest, dict[str, Any]]:
    """The index entry for one `<app-id>/<version>` directory of a source tree."""
    manifest_path = version_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CatalogError(
            f"{version_dir} has no {MANIFEST_FILE}: every <app-id>/<version> directory of the "
            "source needs one"
        )
    manifest = load_manifest(manifest_path)
    app_dir = version_dir.parent
    if manifest.id != app_dir.name:
        raise ManifestError(
            "id",
            f"is {manifest.id!r} but the directory is {app_dir.name!r}; make them equal",
            manifest_path,
        )
    if str(manifest.version) != version_dir.name:
        raise ManifestError(
            "version",
            f"is {str(manifest.version)!r} but the directory is {version_dir.name!r}; "
            "make them equal",
            manifest_path,
        )
    directory = version_dir.resolve()
    context = directory / manifest.build if manifest.build is not None else directory
    icon = None if manifest.icon is None else _file_sha256(directory / manifest.icon)
    return manifest, {
        "id": manifest.id,
        "version": str(manifest.version),
        "path": str(directory if relative_to is None else directory.relative_to(relative_to)),
        "manifestSha256": _file_sha256(manifest_path),
        "contextSha256": tree_sha256(context),
        "iconSha256": icon,
        "manifest": manifest.to_json(),
    }


def _source_entries(source: Path, relative_to: Path | None = None) -> list[dict[str, Any]]:
    """Every entry of a source tree, sorted by id then version; raises on any invalid one.

    Entry paths are absolute, or relative to `relative_to` (which must hold the source)."""
    if not source.is_dir():
        raise CatalogError(f"catalog source {source} is not a directory")
    found: list[tuple[str, Version, dict[str, Any]]] = []
    try:
        for app_dir in sorted(p for p in source.iterdir() if p.is_dir()):
            seen: dict[Version, Path] = {}
            for version_dir in sorted(p for p in app_dir.iterdir() if p.is_dir()):
                manifest, entry = _entry_json(version_dir, relative_to)
                if manifest.version in seen:
                    raise CatalogError(
                        f"{version_dir} and {seen[manifest.version]} are the same version of "
                        f"{manifest.id} (build metadata does not count): remove one"
                    )
                seen[manifest.version] = version_dir
                found.append((manifest.id, manifest.version, entry))
    except OSError as e:
        raise CatalogError(f"cannot read the catalog source {source}: {e}") from e
    found.sort(key=lambda t: (t[0], t[1]))
    return [entry for _, _, entry in found]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.chmod(0o644)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _publish_entries(entries: list[dict[str, Any]], out: Path, key: Ed25519PrivateKey) -> Path:
    index = {
        "formatVersion": FORMAT_VERSION,
        "generatedAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "entries": entries,
    }
    data = _canonical(index)
    signature = base64.b64encode(key.sign(data)) + b"\n"
    try:
        out.mkdir(parents=True, exist_ok=True)
        # The index goes first: a reader in between sees a mismatch and refuses, never a mix.
        _write_atomic(out / INDEX_FILE, data)
        _write_atomic(out / SIGNATURE_FILE, signature)
    except OSError as e:
        raise CatalogError(f"cannot write the catalog index to {out}: {e}") from e
    return out / INDEX_FILE


def publish(source: Path, out: Path, key: Ed25519PrivateKey, *, relative: bool = False) -> Path:
    """Write `out/index.json` and its signature `out/index.json.sig` for a source tree.

    With `relative`, entry paths are relative to `out` (which must hold the source: the
    bundled catalog is signed in place, so it verifies wherever the code is installed).
    Returns the index path. Raises ManifestError (naming the file and field) for an invalid
    manifest and CatalogError for a source that is not laid out as `<app-id>/<version>/`.
    """
    base = out.resolve() if relative else None
    if base is not None and not source.resolve().is_relative_to(base):
        raise CatalogError(f"catalog source {source} is not inside {out}: paths cannot be relative")
    return _publish_entries(_source_entries(source, base), out, key)


# -- loading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogEntry:
    """One signed app version; call `verify()` before using its files."""

    manifest: Manifest
    directory: Path
    context: Path | None
    manifest_sha256: str
    context_sha256: str
    icon_sha256: str | None

    @property
    def app_id(self) -> str:
        """The app's id."""
        return self.manifest.id

    @property
    def version(self) -> Version:
        """The app's version."""
        return self.manifest.version

    @property
    def icon(self) -> Path | None:
        """The icon file, when the manifest names one."""
        return None if self.manifest.icon is None else self.directory / self.manifest.icon

    @property
    def manifest_path(self) -> Path:
        """The manifest file the signed hash covers."""
        return self.directory / MANIFEST_FILE

    def __str__(self) -> str:
        return f"{self.manifest.id} {self.manifest.version} ({self.directory})"

    def verify(self) -> None:
        """Re-hash the manifest, build context and icon; raise CatalogError if any changed."""
        hint = "republish the catalog if the change is intended, otherwise restore the files"
        try:
            if _file_sha256(self.manifest_path) != self.manifest_sha256:
                raise CatalogError(
                    f"catalog entry {self}: {MANIFEST_FILE} differs from the signed index; {hint}"
                )
            if self.icon is not None and _file_sha256(self.icon) != self.icon_sha256:
                raise CatalogError(
                    f"catalog entry {self}: the icon {self.manifest.icon} differs from the "
                    f"signed index; {hint}"
                )
        except OSError as e:
            raise CatalogError(f"catalog entry {self}: cannot read its files: {e}") from e
        tree = self.context if self.context is not None else self.directory
        try:
            actual = tree_sha256(tree)
        except CatalogError as e:
            raise CatalogError(f"catalog entry {self}: {e}") from e
        if actual != self.context_sha256:
            what = "build context" if self.context is not None else "directory"
            raise CatalogError(
                f"catalog entry {self}: the {what} {tree} differs from the signed index (a file "
                f"was added, removed, changed or made executable); {hint}"
            )


def _bad_index(index_path: Path, what: str) -> CatalogError:
    return CatalogError(
        f"catalog index {index_path} is signed but malformed ({what}): republish it"
    )


def _entry_from_json(index_path: Path, i: int, raw: object) -> CatalogEntry:
    if not isinstance(raw, dict):
        raise _bad_index(index_path, f"entries[{i}] is not an object")
    strings = ("id", "version", "path", "manifestSha256", "contextSha256")
    for name in strings:
        if not isinstance(raw.get(name), str):
            raise _bad_index(index_path, f"entries[{i}].{name} is not a string")
    icon_sha = raw.get("iconSha256")
    if icon_sha is not None and not isinstance(icon_sha, str):
        raise _bad_index(index_path, f"entries[{i}].iconSha256 is not a string")
    try:
        manifest = _parse_manifest(raw.get("manifest"))
    except ManifestError as e:
        raise _bad_index(index_path, f"entries[{i}].manifest: {e}") from e
    if manifest.id != raw["id"] or str(manifest.version) != raw["version"]:
        raise _bad_index(index_path, f"entries[{i}] id/version differ from its manifest")
    directory = Path(raw["path"])
    if not directory.is_absolute():
        if ".." in directory.parts:
            raise _bad_index(index_path, f"entries[{i}].path leads out of the index's folder")
        directory = index_path.parent.resolve() / directory
    return CatalogEntry(
        manifest=manifest,
        directory=directory,
        context=None if manifest.build is None else directory / manifest.build,
        manifest_sha256=raw["manifestSha256"],
        context_sha256=raw["contextSha256"],
        icon_sha256=icon_sha,
    )


def _verify_signature(
    index_path: Path, data: bytes, trusted_keys: Sequence[Ed25519PublicKey]
) -> Ed25519PublicKey:
    sig_path = index_path.with_name(SIGNATURE_FILE)
    try:
        sig_text = sig_path.read_bytes()
    except FileNotFoundError as e:
        raise CatalogError(
            f"catalog index {index_path} is not signed ({sig_path} is missing): refusing it; "
            "publish it with `homeport catalog publish`"
        ) from e
    except OSError as e:
        raise CatalogError(f"cannot read the signature {sig_path}: {e}") from e
    try:
        signature = base64.b64decode(sig_text.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise CatalogError(
            f"catalog signature {sig_path} is not base64: refusing the index; republish it"
        ) from e
    if len(signature) != 64:
        raise CatalogError(
            f"catalog signature {sig_path} is {len(signature)} bytes, not an Ed25519 signature "
            "(64): refusing the index; republish it"
        )
    for key in trusted_keys:
        try:
            key.verify(signature, data)
        except InvalidSignature:
            continue
        return key
    fingerprints = ", ".join(key_fingerprint(k) for k in trusted_keys)
    raise CatalogError(
        f"catalog index {index_path} is refused: its signature does not verify with any trusted "
        f"key ({fingerprints}); either the index was altered after signing or it was signed "
        "by a key this machine does not trust"
    )


@dataclass(frozen=True)
class Catalog:
    """A loaded, signature-checked index; entries' files are checked by `CatalogEntry.verify`."""

    index_dir: Path
    generated_at: str
    signed_by: Ed25519PublicKey
    entries: tuple[CatalogEntry, ...]
    raw_entries: tuple[dict[str, Any], ...] = field(repr=False, compare=False)

    @classmethod
    def load(cls, out: Path, trusted_keys: Sequence[Ed25519PublicKey]) -> Catalog:
        """Read `out/index.json`, refusing it unless signed by one of `trusted_keys`."""
        if not trusted_keys:
            raise CatalogError(
                f"no trusted keys to check the catalog {out} against: configure its publisher's "
                "public key"
            )
        index_path = out / INDEX_FILE
        try:
            data = index_path.read_bytes()
        except FileNotFoundError as e:
            raise CatalogError(
                f"no catalog index at {index_path}: publish one with `homeport catalog publish`"
            ) from e
        except OSError as e:
            raise CatalogError(f"cannot read the catalog index {index_path}: {e}") from e
        key = _verify_signature(index_path, data, trusted_keys)
        try:
            index = json.loads(data)
        except ValueError as e:
            raise _bad_index(index_path, f"not JSON: {e}") from e
        if not isinstance(index, dict) or index.get("formatVersion") != FORMAT_VERSION:
            raise _bad_index(index_path, f"not a formatVersion {FORMAT_VERSION} index")
        raw_entries = index.get("entries")
        if not isinstance(raw_entries, list):
            raise _bad_index(index_path, "entries is not a list")
        entries = tuple(_entry_from_json(index_path, i, e) for i, e in enumerate(raw_entries))
        seen: set[tuple[str, Version]] = set()
        for entry in entries:
            if (entry.app_id, entry.version) in seen:
                raise _bad_index(index_path, f"{entry} is listed twice")
            seen.add((entry.app_id, entry.version))
        return cls(
            index_dir=out,
            generated_at=str(index.get("generatedAt", "")),
            signed_by=key,
            entries=entries,
            raw_entries=tuple(raw_entries),
        )

    def checked(self) -> Catalog:
        """This catalog without the entries whose files differ from the signed index; each one
        left out is logged as an error naming it."""
        kept = []
        for entry, raw in zip(self.entries, self.raw_entries, strict=True):
            try:
                entry.verify()
            except CatalogError as e:
                log.error(
                    "catalog entry %s %s is refused: %s (a bundled app changed on purpose is "
                    "signed again with `python -m deploy.sign_catalog KEY`)",
                    entry.app_id,
                    entry.version,
                    e,
                )
                continue
            kept.append((entry, raw))
        return Catalog(
            index_dir=self.index_dir,
            generated_at=self.generated_at,
            signed_by=self.signed_by,
            entries=tuple(e for e, _ in kept),
            raw_entries=tuple(r for _, r in kept),
        )

    def app_ids(self) -> list[str]:
        """Every app id in the catalog, sorted."""
        return sorted({e.app_id for e in self.entries})

    def _of(self, app_id: str) -> list[CatalogEntry]:
        found = sorted((e for e in self.entries if e.app_id == app_id), key=lambda e: e.version)
        if not found:
            raise NotInCatalog(
                f"no app {app_id!r} in the catalog {self.index_dir}; "
                "`homeport catalog search` lists the apps"
            )
        return found

    def versions(self, app_id: str) -> list[Version]:
        """The versions of an app, oldest first (pre-releases included)."""
        return [e.version for e in self._of(app_id)]

    def entry(
        self,
        app_id: str,
        version: str | Version | None = None,
        *,
        include_prereleases: bool = False,
    ) -> CatalogEntry:
        """One version of an app; the latest release when `version` is None.

        The latest is the highest stable release; pre-releases are only chosen when asked
        for (or when the app has nothing else).
        """
        found = self._of(app_id)
        if version is None:
            return _latest(found, include_prereleases)
        try:
            wanted = version if isinstance(version, Version) else Version.parse(version)
        except VersionError as err:
            raise NotInCatalog(f"{app_id}: {err}") from err
        for e in found:
            if e.version == wanted:
                return e
        known = ", ".join(str(e.version) for e in found)
        raise NotInCatalog(f"{app_id} has no version {wanted} in the catalog; it has {known}")

    def latest(self, *, include_prereleases: bool = False) -> list[CatalogEntry]:
        """The latest entry of every app, by app id."""
        return [_latest(self._of(app_id), include_prereleases) for app_id in self.app_ids()]

    def search(
        self, text: str | None = None, tag: str | None = None, *, include_prereleases: bool = False
    ) -> list[Manifest]:
        """Latest manifests whose id/title/tagline/description/tags hold every word of `text`
        (case-insensitive) and which carry `tag` exactly; sorted by title."""
        words = (text or "").casefold().split()
        out = []
        for e in self.latest(include_prereleases=include_prereleases):
            m = e.manifest
            if tag is not None and tag not in m.tags:
                continue
            hay = "\n".join((m.id, m.title, m.tagline, m.description, *m.tags)).casefold()
            if all(w in hay for w in words):
                out.append(m)
        return sorted(out, key=lambda m: (m.title.casefold(), m.id))

    def tags(self) -> list[str]:
        """Every tag the latest versions carry, sorted."""
        return sorted({t for e in self.latest() for t in e.manifest.tags})


def _latest(found: list[CatalogEntry], include_prereleases: bool) -> CatalogEntry:
    stable = [e for e in found if include_prereleases or not e.version.is_prerelease]
    return (stable or found)[-1]


# -- the local catalog --------------------------------------------------------------------


def ensure_local_catalog(source: Path, data_dir: Path) -> tuple[Path, Ed25519PublicKey]:
    """Sign the bundled catalog on this machine; returns (index dir, public key to trust).

    Makes `<data_dir>/catalog-signing.key` (0600) on first use and writes its public half to
    `catalog-signing.pub`. Republishes into `<data_dir>/catalog/` only when the source's
    entries (paths and hashes) differ from what the current signed index lists, or there is no
    valid index yet; otherwise leaves the index and its signature untouched.
    """
    key_path = data_dir / SIGNING_KEY_FILE
    key = load_private_key(key_path) if key_path.exists() else generate_key(key_path)
    public = key.public_key()
    pub_path = data_dir / SIGNING_PUBLIC_FILE
    pem = public_key_text(public)
    try:
        if not pub_path.is_file() or pub_path.read_text() != pem:
            _write_atomic(pub_path, pem.encode())
    except OSError as e:
        raise CatalogError(f"cannot write the catalog public key {pub_path}: {e}") from e
    index_dir = data_dir / LOCAL_INDEX_DIR
    wanted = _source_entries(source)
    try:
        current: list[dict[str, Any]] | None = list(Catalog.load(index_dir, [public]).raw_entries)
    except CatalogError:
        current = None  # missing, unsigned, signed by an older key or malformed: rebuild it
    if current != wanted:
        _publish_entries(wanted, index_dir, key)
    return index_dir, public


def _ships_signed(source: Path) -> bool:
    """The bundled catalog, or a source holding a signed index (a copy of the bundled one)."""
    if (source / INDEX_FILE).exists() or (source / SIGNATURE_FILE).exists():
        return True
    try:
        return source.resolve() == BUNDLED_CATALOG.resolve()
    except OSError:
        return False


def load_catalog(cfg: AppsConfig) -> Catalog:
    """The published index HP_CATALOG_INDEX signed by one of the keys (PEM files) in
    HP_CATALOG_TRUST; else the bundled catalog (or a source with a signed index) verified with
    the key shipped with the code, its altered entries left out; else the catalog at
    HP_CATALOG_SOURCE signed by this machine's key."""
    if cfg.catalog_index:
        keys = [load_public_key(Path(p)) for p in cfg.catalog_trust]
        return Catalog.load(Path(cfg.catalog_index), keys)
    source = cfg.catalog_source
    if _ships_signed(source):
        return Catalog.load(source, [load_public_key(BUNDLED_PUBLIC_KEY)]).checked()
    log.warning(
        "the catalog source %s has no signed index: signing it with this machine's key "
        "(for development; the bundled catalog is verified with the key shipped with the code)",
        source,
    )
    out, key = ensure_local_catalog(source, cfg.apps_dir)
    return Catalog.load(out, [key])
