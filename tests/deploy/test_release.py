"""Signed platform releases: `homeport release build`, then fetch over real HTTP with the
pinned key; every kind of bad release is refused, naming why, and leaves nothing behind."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cli.main import main
from deploy.release import (
    ReleaseError,
    build_release,
    fetch_release,
    generate_key,
    load_public_key,
    publish,
    tracked_files,
)
from tests.support.releases import git_checkout, serve_directory

REPO = Path(__file__).resolve().parents[2]
SMALL = {
    "README.md": "a small project\n",
    "pkg/__init__.py": "",
    "pkg/run.sh": "#!/bin/sh\necho hi\n",
    "pkg/migrations/0001_first.sql": "CREATE TABLE t (x int);\n",
}


@pytest.fixture
def key(tmp_path: Path) -> Ed25519PrivateKey:
    return generate_key(tmp_path / "release.key")


@pytest.fixture
def www(tmp_path: Path) -> Path:
    (tmp_path / "www").mkdir()
    return tmp_path / "www"


@pytest.fixture
def url(www: Path) -> Iterator[str]:
    with serve_directory(www) as base:
        yield base


@pytest.fixture
def small_repo(tmp_path: Path) -> Path:
    return git_checkout(tmp_path / "repo", SMALL, executable=("pkg/run.sh",))


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_release_of_the_repository_is_fetched_verified_and_unpacked(
    tmp_path: Path, key: Ed25519PrivateKey, www: Path, url: str
) -> None:
    started = time.time()
    manifest = build_release(REPO, "1.1.0", key, www, changelog="faster\n")
    opt = tmp_path / "opt"

    release = fetch_release(url, key.public_key(), "1.0.0", opt)

    assert release.path == opt / "1.1.0"
    assert release.manifest.version == "1.1.0"
    assert release.manifest.changelog == "faster\n"
    assert "libs/events/migrations/0001_events.sql" in release.manifest.migrations
    doc = json.loads(manifest.read_bytes())
    assert doc["archive"]["size"] == (www / "homeport-1.1.0.tar.gz").stat().st_size
    files = tracked_files(REPO)
    got = _tree(release.path)
    assert sorted(got) == files
    assert not any(n.startswith((".venv/", ".homeport/")) or "node_modules/" in n for n in got)
    # Same bytes as the work tree (files another engineer touched meanwhile aside).
    same = [n for n in files if (REPO / n).stat().st_mtime < started]
    assert len(same) > len(files) // 2
    assert all(got[n] == (REPO / n).read_bytes() for n in same)
    assert os.access(release.path / "deploy/install-system-deps.sh", os.X_OK)
    assert [p.name for p in opt.iterdir()] == ["1.1.0"]


def test_the_build_is_deterministic_and_made_by_the_cli(
    tmp_path: Path, small_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["release", "keygen", "--out", str(tmp_path / "k")]) == 0
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert "BEGIN PUBLIC KEY" in capsys.readouterr().out
    assert main(["release", "keygen", "--out", str(tmp_path / "k")]) == 1
    assert "never overwritten" in capsys.readouterr().err

    def build(out: str) -> str:
        argv = ["release", "build", "--version", "2.0.0", "--key", str(tmp_path / "k")]
        assert main([*argv, "--out", str(tmp_path / out), "--repo", str(small_repo)]) == 0
        return hashlib.sha256((tmp_path / out / "homeport-2.0.0.tar.gz").read_bytes()).hexdigest()

    first = build("a")
    for f in small_repo.rglob("*"):
        os.utime(f, (1e9, 1e9))  # a later checkout: other mtimes, same content
    assert build("b") == first
    latest = json.loads((tmp_path / "b" / "latest.json").read_text())
    assert latest == {"version": "2.0.0", "manifest": "homeport-2.0.0.json"}
    with tarfile.open(tmp_path / "b" / "homeport-2.0.0.tar.gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(SMALL)
    assert {(m.uid, m.gid, m.mtime) for m in members} == {(0, 0, 315532800)}
    assert {m.name: m.mode for m in members}["pkg/run.sh"] == 0o755


def _build_small(repo: Path, key: Ed25519PrivateKey, www: Path, version: str = "1.2.0") -> Path:
    return build_release(repo, version, key, www)


def _refused(url: str, key: Ed25519PrivateKey, opt: Path, current: str = "1.0.0") -> str:
    with pytest.raises(ReleaseError) as e:
        fetch_release(url, key.public_key(), current, opt)
    assert not opt.exists() or list(opt.iterdir()) == []
    return str(e.value)


def test_an_unsigned_release_is_refused(
    tmp_path: Path, small_repo: Path, key: Ed25519PrivateKey, www: Path, url: str
) -> None:
    manifest = _build_small(small_repo, key, www)
    manifest.with_name(manifest.name + ".sig").unlink()
    assert "unsigned" in _refused(url, key, tmp_path / "opt")


def test_a_release_signed_by_another_key_is_refused(
    tmp_path: Path, small_repo: Path, key: Ed25519PrivateKey, www: Path, url: str
) -> None:
    manifest = _build_small(small_repo, key, www)
    other = Ed25519PrivateKey.generate()
    manifest.with_name(manifest.name + ".sig").write_bytes(
        base64.b64encode(other.sign(manifest.read_bytes()))
    )
    assert "signature does not match the pinned key" in _refused(url, key, tmp_path / "opt")


def test_an_altered_manifest_is_refused(
    tmp_path: Path, small_repo: Path, key: Ed25519PrivateKey, www: Path, url: str
) -> None:
    manifest = _build_small(small_repo, key, www)
    manifest.write_bytes(manifest.read_bytes().replace(b'"1.2.0"', b'"9.2.0"'))
    assert "signature does not match the pinned key" in _refused(url, key, tmp_path / "opt")


def test_an_altered_archive_of_the_same_size_is_refused(
    tmp_path: Path, small_repo: Path, key: Ed25519PrivateKey, www: Path, url: str
) -> None:
    _build_small(small_repo, key, www)
    archive = www / "homeport-1.2.0.tar.gz"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    assert "archive sha256 differs" in _refused(url, key, tmp_path / "opt")


@pytest.mark.parametrize("current", ["1.2.0", "1.3.0", "1.2.0+build.7"])
def test_a_release_not_newer_than_the_running_one_is_refused(
    tmp_path: Path, small_repo: Path, key: Ed25519PrivateKey, www: Path, url: str, current: str
) -> None:
    _build_small(small_repo, key, www)
    assert f"version 1.2.0 is not newer than {current}" in _refused(
        url, key, tmp_path / "opt", current
    )


def test_an_archive_larger_than_announced_is_refused(
    tmp_path: Path, small_repo: Path, key: Ed25519PrivateKey, www: Path, url: str
) -> None:
    _build_small(small_repo, key, www)
    with (www / "homeport-1.2.0.tar.gz").open("ab") as f:
        f.write(b"\0" * 100_000)
    assert "larger than" in _refused(url, key, tmp_path / "opt")


def _member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (_member("../escaped"), "points outside the release"),
        (_member("/etc/escaped"), "points outside the release"),
        (_member("a/../../escaped"), "points outside the release"),
        (_member("link", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
        (_member("hard", tarfile.LNKTYPE, "../../escaped"), "is a link"),
        (_member("dev", tarfile.CHRTYPE), "is a device or special file"),
        (_member("fifo", tarfile.FIFOTYPE), "is a device or special file"),
    ],
    ids=["dotdot", "absolute", "nested-dotdot", "symlink", "hardlink", "device", "fifo"],
)
def test_a_hostile_archive_member_is_refused(
    tmp_path: Path, key: Ed25519PrivateKey, www: Path, url: str, member: tarfile.TarInfo, why: str
) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_member("fine.txt"), io.BytesIO(b""))
        tar.addfile(member, io.BytesIO(b""))
    (www / "homeport-1.2.0.tar.gz").write_bytes(gzip.compress(raw.getvalue()))
    publish(www, "1.2.0", www / "homeport-1.2.0.tar.gz", key)  # signed by the right key
    opt = tmp_path / "deep" / "opt"

    message = _refused(url, key, opt)

    assert f"archive member {member.name!r} {why}" in message
    assert not (tmp_path / "deep" / "escaped").exists()


def test_only_http_and_file_urls_are_used(
    tmp_path: Path, small_repo: Path, key: Ed25519PrivateKey, www: Path
) -> None:
    _build_small(small_repo, key, www)
    assert "only http, https and file" in _refused("ftp://127.0.0.1/r", key, tmp_path / "opt")
    release = fetch_release(www.as_uri(), key.public_key(), "1.0.0", tmp_path / "opt")
    assert _tree(release.path) == {n: c.encode() for n, c in SMALL.items()}


def test_the_pinned_key_is_read_from_its_file(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    pem = tmp_path / "release.pub"
    pem.write_text("not a key")
    with pytest.raises(ReleaseError, match=r"release\.pub is not a PEM public key"):
        load_public_key(pem)
