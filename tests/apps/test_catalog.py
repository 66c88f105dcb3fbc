"""The signed catalog: publish a source tree, load it only if trusted, refuse altered entries."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from libs.events.bus import BusError
from services.apps import catalog as catalog_module
from services.apps.catalog import (
    BUNDLED_PUBLIC_KEY,
    Catalog,
    CatalogError,
    NotInCatalog,
    ensure_local_catalog,
    generate_key,
    key_fingerprint,
    load_catalog,
    load_private_key,
    load_public_key,
    public_key_text,
    publish,
    tree_sha256,
)
from services.apps.config import BUNDLED_CATALOG, AppsConfig
from services.apps.manifest import ManifestError
from services.apps.semver import Version
from tests.apps.appskit import STATIC, Apps, AppsProcess, apps_env, connected

HOMEPORT = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "homeport"


def manifest(app_id: str, version: str, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "manifestVersion": 1,
        "id": app_id,
        "version": version,
        "title": app_id.rsplit(".", 1)[1].title(),
        "tagline": f"The {app_id} app",
        "httpPort": 8080,
    }
    return out | extra


def add_version(source: Path, m: dict[str, Any], files: dict[str, str] | None = None) -> Path:
    d: Path = source / m["id"] / m["version"]
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps(m, indent=2))
    for rel, text in (files or {}).items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    return d


def make_source(root: Path) -> Path:
    """Three apps: one with releases and a pre-release, one image-based, one pre-release only."""
    src = root / "source"
    notes = {"build": ".", "icon": "icon.svg", "tags": ["notes", "markdown"]}
    for v, desc in (("1.0.0", "Plain notes"), ("1.1.0", "Notes with Markdown and backlinks")):
        d = add_version(
            src,
            manifest("org.example.notes", v, description=desc, **notes),
            {"Dockerfile": "FROM homeport/debian-base\n", "icon.svg": "<svg/>", "etc/app.conf": v},
        )
        (d / "run.sh").write_text("#!/bin/sh\nexec notes\n")
        (d / "run.sh").chmod(0o755)
        (d / "current.conf").symlink_to("etc/app.conf")
        (d / "empty").mkdir()
    add_version(
        src,
        manifest("org.example.notes", "2.0.0-rc.1", description="Next notes", **notes),
        {"Dockerfile": "FROM homeport/debian-base\n", "icon.svg": "<svg/>"},
    )
    add_version(
        src,
        manifest(
            "org.dokuwiki",
            "0.9.0",
            title="DokuWiki",
            tagline="Wiki without a database",
            image="example.org/dokuwiki:0.9",
            icon="logo.png",
            tags=["wiki", "docs"],
        ),
        {"logo.png": "PNG"},
    )
    add_version(
        src,
        manifest("net.demo.chat", "3.0.0-beta.1", title="Chat", build="ctx", tags=["chat"]),
        {"ctx/Dockerfile": "FROM scratch\n", "README": "not in the context"},
    )
    (src / "README.md").write_text("plain files at the top are ignored\n")
    return src


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def published(tmp_path: Path, key: Ed25519PrivateKey) -> tuple[Path, Path]:
    src = make_source(tmp_path)
    out = tmp_path / "out"
    publish(src, out, key)
    return src, out


def load(out: Path, key: Ed25519PrivateKey) -> Catalog:
    return Catalog.load(out, [key.public_key()])


# -- publish and read ---------------------------------------------------------------------


def test_publish_writes_canonical_signed_index(
    published: tuple[Path, Path], key: Ed25519PrivateKey
) -> None:
    src, out = published
    data = (out / "index.json").read_bytes()
    index = json.loads(data)
    assert data == json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
    key.public_key().verify(base64.b64decode((out / "index.json.sig").read_bytes()), data)
    assert index["generatedAt"].endswith("Z")
    ids = [(e["id"], e["version"]) for e in index["entries"]]
    assert ids == [
        ("net.demo.chat", "3.0.0-beta.1"),
        ("org.dokuwiki", "0.9.0"),
        ("org.example.notes", "1.0.0"),
        ("org.example.notes", "1.1.0"),
        ("org.example.notes", "2.0.0-rc.1"),
    ]
    notes = index["entries"][3]
    assert notes["path"] == str((src / "org.example.notes" / "1.1.0").resolve())
    assert notes["manifest"]["description"] == "Notes with Markdown and backlinks"
    assert notes["manifest"]["memoryLimit"] == 256 * 1024 * 1024  # the parsed form
    assert len(notes["manifestSha256"]) == 64 and len(notes["contextSha256"]) == 64


def test_loaded_catalog_entries_versions_and_paths(
    published: tuple[Path, Path], key: Ed25519PrivateKey
) -> None:
    src, out = published
    cat = load(out, key)
    notes = cat.entry("org.example.notes")
    assert str(notes.version) == "1.1.0"  # the latest release, not the release candidate
    assert str(cat.entry("org.example.notes", include_prereleases=True).version) == "2.0.0-rc.1"
    assert str(cat.entry("org.example.notes", "1.0.0").version) == "1.0.0"
    assert cat.entry("org.example.notes", Version.parse("2.0.0-rc.1")).manifest.description == (
        "Next notes"
    )
    assert str(cat.entry("net.demo.chat").version) == "3.0.0-beta.1"  # nothing else to offer
    assert cat.versions("org.example.notes") == [
        Version.parse("1.0.0"),
        Version.parse("1.1.0"),
        Version.parse("2.0.0-rc.1"),
    ]
    d = (src / "org.example.notes" / "1.1.0").resolve()
    assert notes.directory == d and notes.context == d and notes.icon == d / "icon.svg"
    chat = cat.entry("net.demo.chat")
    assert chat.context == (src / "net.demo.chat" / "3.0.0-beta.1" / "ctx").resolve()
    wiki = cat.entry("org.dokuwiki")
    assert wiki.context is None and wiki.manifest.image == "example.org/dokuwiki:0.9"
    for e in cat.entries:
        e.verify()


def test_unknown_app_and_version_are_not_in_catalog(
    published: tuple[Path, Path], key: Ed25519PrivateKey
) -> None:
    cat = load(published[1], key)
    with pytest.raises(NotInCatalog, match=r"no app 'org\.nope'"):
        cat.entry("org.nope")
    with pytest.raises(NotInCatalog, match=r"no version 9\.0\.0 .* it has 1\.0\.0, 1\.1\.0"):
        cat.entry("org.example.notes", "9.0.0")
    with pytest.raises(NotInCatalog, match="not a semantic version"):
        cat.entry("org.example.notes", "latest")
    with pytest.raises(CatalogError):
        cat.versions("org.nope")


def test_search_by_text_and_tag(published: tuple[Path, Path], key: Ed25519PrivateKey) -> None:
    cat = load(published[1], key)

    def titles(**kw: Any) -> list[str]:
        return [m.title for m in cat.search(**kw)]

    assert titles() == ["Chat", "DokuWiki", "Notes"]  # sorted by title, one per app
    assert [str(m.version) for m in cat.search(text="notes")] == ["1.1.0"]
    assert titles(text="MARKDOWN backlinks") == ["Notes"]  # all words, any case
    assert titles(text="markdown wiki") == []  # every word must match
    assert titles(text="database") == ["DokuWiki"]  # tagline
    assert titles(text="org.dokuwiki") == ["DokuWiki"]  # id
    assert titles(text="docs") == ["DokuWiki"]  # tags
    assert titles(tag="wiki") == ["DokuWiki"]
    assert titles(tag="wik") == []  # tags match exactly
    assert titles(text="notes", tag="wiki") == []
    assert cat.tags() == ["chat", "docs", "markdown", "notes", "wiki"]


def test_context_hash_is_deterministic_and_covers_metadata(tmp_path: Path) -> None:
    def tree(root: Path) -> Path:
        (root / "sub").mkdir(parents=True)
        (root / "a").write_text("x")
        (root / "sub" / "b").write_text("y")
        (root / "link").symlink_to("a")
        return root

    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert tree_sha256(a) == tree_sha256(b)
    changes: list[Callable[[], object]] = [
        lambda: (b / "sub" / "b").write_text("z"),
        lambda: (b / "sub" / "b").chmod(0o755),
        lambda: retarget(b / "link", "sub/b"),
        lambda: (b / "new-empty-dir").mkdir(),
        lambda: (b / ".hidden").write_text(""),
        lambda: (b / "a").rename(b / "c"),
    ]
    seen = {tree_sha256(b)}
    for change in changes:
        change()
        h = tree_sha256(b)
        assert h not in seen
        seen.add(h)


# -- altered entries ----------------------------------------------------------------------


def notes_dir(src: Path) -> Path:
    return src / "org.example.notes" / "1.1.0"


def retarget(link: Path, target: str) -> None:
    link.unlink()
    link.symlink_to(target)


ALTERATIONS: dict[str, tuple[Callable[[Path], object], str]] = {
    "manifest edited": (
        lambda d: (d / "manifest.json").write_text((d / "manifest.json").read_text() + " "),
        "manifest.json differs",
    ),
    "context file edited": (
        lambda d: (d / "Dockerfile").write_text("FROM evil\n"),
        "build context",
    ),
    "file added": (lambda d: (d / "etc" / "extra").write_text(""), "build context"),
    "file removed": (lambda d: (d / "etc" / "app.conf").unlink(), "build context"),
    "made executable": (lambda d: (d / "Dockerfile").chmod(0o755), "made executable"),
    "exec bit dropped": (lambda d: (d / "run.sh").chmod(0o644), "build context"),
    "symlink retargeted": (
        lambda d: retarget(d / "current.conf", "/etc/passwd"),
        "build context",
    ),
    "icon replaced": (lambda d: (d / "icon.svg").write_text("<svg>x</svg>"), "the icon icon.svg"),
    "context deleted": (lambda d: (d / "Dockerfile").rename(d.parent / "moved"), "build context"),
}


@pytest.mark.parametrize("how", list(ALTERATIONS))
def test_altered_entry_is_refused_naming_it(
    published: tuple[Path, Path], key: Ed25519PrivateKey, how: str
) -> None:
    src, out = published
    alter, reason = ALTERATIONS[how]
    alter(notes_dir(src))
    cat = load(out, key)  # the index itself is still intact
    entry = cat.entry("org.example.notes")
    with pytest.raises(CatalogError) as info:
        entry.verify()
    msg = str(info.value)
    assert "catalog entry org.example.notes 1.1.0" in msg
    assert reason in msg
    cat.entry("org.example.notes", "1.0.0").verify()  # the other version is untouched


def test_image_app_directory_is_pinned(
    published: tuple[Path, Path], key: Ed25519PrivateKey
) -> None:
    src, out = published
    (src / "org.dokuwiki" / "0.9.0" / "extra.txt").write_text("")
    with pytest.raises(CatalogError, match=r"org\.dokuwiki 0\.9\.0 .* directory"):
        load(out, key).entry("org.dokuwiki").verify()


def test_file_outside_the_build_context_is_not_part_of_it(
    published: tuple[Path, Path], key: Ed25519PrivateKey
) -> None:
    src, out = published
    (src / "net.demo.chat" / "3.0.0-beta.1" / "README").write_text("changed")
    load(out, key).entry("net.demo.chat").verify()
    (src / "net.demo.chat" / "3.0.0-beta.1" / "ctx" / "Dockerfile").write_text("changed")
    with pytest.raises(CatalogError, match=r"net\.demo\.chat 3\.0\.0-beta\.1"):
        load(out, key).entry("net.demo.chat").verify()


# -- refused indexes ----------------------------------------------------------------------


def test_altered_index_byte_is_refused(
    published: tuple[Path, Path], key: Ed25519PrivateKey
) -> None:
    out = published[1]
    data = bytearray((out / "index.json").read_bytes())
    data[data.index(b"Wiki without")] ^= 0x20  # "wiki without": still valid JSON
    (out / "index.json").write_bytes(bytes(data))
    with pytest.raises(CatalogError, match="does not verify with any trusted key"):
        load(out, key)


def test_signature_by_another_key_is_refused(
    published: tuple[Path, Path], key: Ed25519PrivateKey
) -> None:
    src, out = published
    other = Ed25519PrivateKey.generate()
    publish(src, out, other)
    with pytest.raises(CatalogError, match="signed by a key this machine does not trust"):
        load(out, key)
    assert len(Catalog.load(out, [key.public_key(), other.public_key()]).entries) == 5


def test_missing_signature_is_refused(published: tuple[Path, Path], key: Ed25519PrivateKey) -> None:
    out = published[1]
    (out / "index.json.sig").unlink()
    with pytest.raises(CatalogError, match=r"is not signed \(.*index\.json\.sig is missing\)"):
        load(out, key)


@pytest.mark.parametrize(
    ("sig", "reason"),
    [(b"not base64 !!\n", "is not base64"), (base64.b64encode(b"short"), "is 5 bytes")],
)
def test_malformed_signature_is_refused(
    published: tuple[Path, Path], key: Ed25519PrivateKey, sig: bytes, reason: str
) -> None:
    out = published[1]
    (out / "index.json.sig").write_bytes(sig)
    with pytest.raises(CatalogError, match=reason):
        load(out, key)


def test_missing_index_and_no_trusted_keys_are_refused(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    with pytest.raises(CatalogError, match="no catalog index at"):
        load(tmp_path, key)
    with pytest.raises(CatalogError, match="no trusted keys"):
        Catalog.load(tmp_path, [])


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "not a formatVersion 1 index"),
        (b'{"formatVersion":1,"entries":{}}', "entries is not a list"),
        (
            b'{"formatVersion":1,"entries":[{"id":"org.a.b","version":"1.0.0","path":"/x",'
            b'"manifestSha256":"0","contextSha256":"0","manifest":{"id":"org.a.b"}}]}',
            "entries[0].manifest: ",
        ),
    ],
)
def test_signed_but_unparsable_index_is_refused(
    tmp_path: Path, key: Ed25519PrivateKey, body: bytes, reason: str
) -> None:
    (tmp_path / "index.json").write_bytes(body)
    (tmp_path / "index.json.sig").write_bytes(base64.b64encode(key.sign(body)))
    with pytest.raises(CatalogError) as info:
        load(tmp_path, key)
    assert "malformed" in str(info.value) and reason in str(info.value)


# -- publish refusals ---------------------------------------------------------------------


def test_publish_refuses_invalid_manifest_naming_file_and_field(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    src = make_source(tmp_path)
    d = add_version(src, manifest("org.example.bad", "1.0.0", image="x/y:1", httpPort=70000))
    with pytest.raises(ManifestError) as info:
        publish(src, tmp_path / "out", key)
    assert info.value.path == d / "manifest.json" and info.value.field == "httpPort"
    assert str(d / "manifest.json") in str(info.value)
    assert not (tmp_path / "out" / "index.json").exists()


@pytest.mark.parametrize(
    ("dir_id", "dir_version", "field"),
    [("org.other", "1.0.0", "id"), ("org.example.x", "1.0", "version")],
)
def test_publish_refuses_directory_not_matching_manifest(
    tmp_path: Path, key: Ed25519PrivateKey, dir_id: str, dir_version: str, field: str
) -> None:
    src = tmp_path / "src"
    d = src / dir_id / dir_version
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps(manifest("org.example.x", "1.0.0", image="a/b")))
    with pytest.raises(ManifestError) as info:
        publish(src, tmp_path / "out", key)
    assert info.value.field == field and "make them equal" in info.value.message


def test_publish_refuses_version_dir_without_manifest(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    (tmp_path / "src" / "org.a.b" / "1.0.0").mkdir(parents=True)
    with pytest.raises(CatalogError, match=r"1\.0\.0 has no manifest\.json"):
        publish(tmp_path / "src", tmp_path / "out", key)
    with pytest.raises(CatalogError, match="is not a directory"):
        publish(tmp_path / "missing", tmp_path / "out", key)


# -- keys ---------------------------------------------------------------------------------


def test_generate_key_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "signing.key"
    key = generate_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    with pytest.raises(CatalogError, match="already exists: not overwriting"):
        generate_key(path)
    assert path.read_bytes() == before
    loaded = load_private_key(path)
    assert public_key_text(loaded) == public_key_text(key)
    pub = tmp_path / "signing.pub"
    pub.write_text(public_key_text(key))
    assert public_key_text(key).startswith("-----BEGIN PUBLIC KEY-----")
    assert public_key_text(load_public_key(pub)) == public_key_text(key)


def test_loading_a_non_key_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("hello\n")
    with pytest.raises(CatalogError, match=f"{bad} is not a PEM public key"):
        load_public_key(bad)
    with pytest.raises(CatalogError, match=f"{bad} is not an unencrypted PEM private key"):
        load_private_key(bad)
    with pytest.raises(CatalogError, match="cannot read"):
        load_public_key(tmp_path / "missing.pub")


# -- the local catalog --------------------------------------------------------------------


def _stamp(path: Path) -> tuple[int, int, bytes]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, path.read_bytes()


def test_ensure_local_catalog_signs_once_and_resigns_on_change(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    data = tmp_path / "data"
    index_dir, public = ensure_local_catalog(src, data)
    key_file = data / "catalog-signing.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert (data / "catalog-signing.pub").read_text() == public_key_text(public)
    assert index_dir == data / "catalog"
    cat = Catalog.load(index_dir, [public])
    assert len(cat.entries) == 5
    first = (_stamp(index_dir / "index.json"), _stamp(index_dir / "index.json.sig"))

    again_dir, again_public = ensure_local_catalog(src, data)
    assert again_dir == index_dir and public_key_text(again_public) == public_key_text(public)
    assert (_stamp(index_dir / "index.json"), _stamp(index_dir / "index.json.sig")) == first

    (notes_dir(src) / "Dockerfile").write_text("FROM homeport/debian-base:v2\n")
    with pytest.raises(CatalogError, match="build context"):
        Catalog.load(index_dir, [public]).entry("org.example.notes").verify()
    ensure_local_catalog(src, data)
    assert _stamp(index_dir / "index.json") != first[0]
    Catalog.load(index_dir, [public]).entry("org.example.notes").verify()

    add_version(src, manifest("org.example.new", "0.1.0", image="a/b:1"))
    ensure_local_catalog(src, data)
    assert Catalog.load(index_dir, [public]).app_ids() == [
        "net.demo.chat",
        "org.dokuwiki",
        "org.example.new",
        "org.example.notes",
    ]


def test_ensure_local_catalog_replaces_a_tampered_index(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    data = tmp_path / "data"
    index_dir, public = ensure_local_catalog(src, data)
    (index_dir / "index.json").write_bytes(b"{}")
    ensure_local_catalog(src, data)
    assert len(Catalog.load(index_dir, [public]).entries) == 5


def test_ensure_local_catalog_fails_on_an_invalid_source(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    add_version(src, manifest("org.example.bad", "1.0.0", image="a/b", tags=["Bad"]))
    with pytest.raises(ManifestError) as info:
        ensure_local_catalog(src, tmp_path / "data")
    assert info.value.field == "tags[0]"


# -- the command line ---------------------------------------------------------------------


def homeport(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HOMEPORT), "catalog", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


def test_cli_keygen_publish_verify_search(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    key, pub, out = tmp_path / "k.pem", tmp_path / "k.pub", tmp_path / "out"

    r = homeport("keygen", "--key", key)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    assert "PRIVATE" not in r.stdout + r.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    pub.write_text(r.stdout)
    r = homeport("keygen", "--key", key)
    assert r.returncode == 1 and "already exists" in r.stderr

    r = homeport("publish", "--source", src, "--out", out, "--key", key)
    assert r.returncode == 0, r.stderr
    assert "published 5 entries" in r.stdout

    r = homeport("verify", "--index", out, "--trust", pub, "--all")
    assert r.returncode == 0, r.stderr
    assert "signature OK" in r.stdout and "ok org.example.notes 2.0.0-rc.1" in r.stdout

    r = homeport("search", "--index", out, "--trust", pub, "--text", "wiki")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["ID", "VERSION", "TITLE", "TAGS", "TAGLINE"]
    assert lines[1].split()[:3] == ["org.dokuwiki", "0.9.0", "DokuWiki"]
    assert len(lines) == 2
    r = homeport("search", "--index", out, "--trust", pub, "--tag", "nope")
    assert r.returncode == 0 and r.stdout.strip() == "no apps match"

    (notes_dir(src) / "run.sh").chmod(0o644)
    r = homeport("verify", "--index", out, "--trust", pub)
    assert r.returncode == 0  # without --all only the signature is checked
    r = homeport("verify", "--index", out, "--trust", pub, "--all")
    assert r.returncode == 1
    assert "catalog entry org.example.notes 1.1.0" in r.stderr
    assert "1 of 5 entries differ" in r.stderr
    assert "ok org.example.notes 1.0.0" in r.stdout


def test_cli_refuses_untrusted_index_and_bad_source(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    key, other, out = tmp_path / "k.pem", tmp_path / "other.pem", tmp_path / "out"
    generate_key(key)
    other_pub = tmp_path / "other.pub"
    other_pub.write_text(public_key_text(generate_key(other)))
    assert homeport("publish", "--source", src, "--out", out, "--key", key).returncode == 0
    r = homeport("verify", "--index", out, "--trust", other_pub)
    assert r.returncode == 1 and "does not trust" in r.stderr
    r = homeport("search", "--index", out, "--trust", other_pub)
    assert r.returncode == 1 and "does not trust" in r.stderr

    add_version(src, manifest("org.example.bad", "1.0.0", build="../escape"))
    r = homeport("publish", "--source", src, "--out", tmp_path / "out2", "--key", key)
    assert r.returncode == 1
    assert "org.example.bad/1.0.0/manifest.json: build: " in r.stderr
    assert "leaves the manifest's directory" in r.stderr


# -- the bundled catalog: signed with a key that ships with the code --------------------------

DOKUWIKI = "org.dokuwiki"
RESIGN = "run `python -m deploy.sign_catalog KEY` after changing a bundled app"


def bundled_copy(tmp_path: Path) -> Path:
    dest = tmp_path / "bundled"
    shutil.copytree(BUNDLED_CATALOG, dest)
    return dest


def apps_config(source: Path, tmp_path: Path) -> AppsConfig:
    return AppsConfig(
        database_url="postgresql://unused",
        nats_url="nats://unused",
        catalog_source=source,
        apps_dir=tmp_path / "apps",
    )


def alter_a_manifest_byte(source: Path) -> None:
    path = next((source / DOKUWIKI).iterdir()) / "manifest.json"
    text = path.read_text()
    path.write_text(text.replace("A simple wiki", "A simple Wiki", 1))
    assert path.read_text() != text


def test_the_bundled_catalog_is_verified_with_the_key_shipped_with_the_code(
    tmp_path: Path,
) -> None:
    cfg = apps_config(BUNDLED_CATALOG, tmp_path)
    cat = load_catalog(cfg)
    dirs = {(p.parent.name, p.name) for p in BUNDLED_CATALOG.glob("*/*") if p.is_dir()}
    assert {(e.app_id, str(e.version)) for e in cat.entries} == dirs, RESIGN
    assert key_fingerprint(cat.signed_by) == key_fingerprint(load_public_key(BUNDLED_PUBLIC_KEY))
    assert not (cfg.apps_dir / "catalog-signing.key").exists(), "nothing is signed on this machine"
    assert all(e.directory.is_relative_to(BUNDLED_CATALOG.resolve()) for e in cat.entries)


def test_an_altered_bundled_entry_is_refused_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = bundled_copy(tmp_path)
    assert DOKUWIKI in load_catalog(apps_config(source, tmp_path)).app_ids()
    alter_a_manifest_byte(source)
    with caplog.at_level(logging.ERROR, logger="services.apps.catalog"):
        cat = load_catalog(apps_config(source, tmp_path))
    assert DOKUWIKI not in cat.app_ids()
    assert STATIC in cat.app_ids(), "the other entries stay"
    refused = [r.getMessage() for r in caplog.records if "is refused" in r.getMessage()]
    assert len(refused) == 1 and refused[0].startswith(f"catalog entry {DOKUWIKI} 2022.7.31 ")
    assert "manifest.json differs from the signed index" in refused[0]


def test_a_bundled_index_signed_by_another_key_or_missing_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = bundled_copy(tmp_path)
    publish(source, source, Ed25519PrivateKey.generate(), relative=True)
    with pytest.raises(CatalogError, match="does not verify with any trusted key"):
        load_catalog(apps_config(source, tmp_path))
    # the bundled folder itself is never signed on this machine, even with no index at all
    monkeypatch.setattr(catalog_module, "BUNDLED_CATALOG", source)
    (source / "index.json").unlink()
    (source / "index.json.sig").unlink()
    with pytest.raises(CatalogError, match="no catalog index"):
        load_catalog(apps_config(source, tmp_path))


def test_a_relative_entry_path_may_not_leave_the_index_folder(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    source = bundled_copy(tmp_path)
    index = json.loads((source / "index.json").read_bytes())
    index["entries"][0]["path"] = "../elsewhere"
    data = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
    (source / "index.json").write_bytes(data)
    (source / "index.json.sig").write_bytes(base64.b64encode(key.sign(data)))
    with pytest.raises(CatalogError, match="leads out of the index's folder"):
        Catalog.load(source, [key.public_key()])


async def _catalog_ids(apps: Apps, proc: AppsProcess) -> set[str]:
    end = time.monotonic() + 60
    while time.monotonic() < end:
        assert proc.proc is not None and proc.proc.poll() is None, proc.tail()
        try:
            found = await apps.bus.query("apps", "catalog", {}, timeout=1)
        except BusError:
            await asyncio.sleep(0.2)
            continue
        return {m["id"] for m in found["items"]}
    raise AssertionError(f"the apps service did not answer within 60 s:\n{proc.tail()}")


async def test_an_altered_bundled_entry_is_refused_after_a_restart(
    dsn: str, nats_url: str, tmp_path: Path, docker_host: str, uniq: str
) -> None:
    source = bundled_copy(tmp_path)
    env = apps_env(
        dsn=dsn,
        nats_url=nats_url,
        tmp_path=tmp_path,
        docker_host=docker_host,
        prefix=f"c{uniq[:8]}",
        catalog=source,
    )
    proc = AppsProcess(env, tmp_path / "apps.log")
    async with connected(env) as apps:
        try:
            proc.start()
            assert {DOKUWIKI, STATIC} <= await _catalog_ids(apps, proc)
            proc.stop()
            alter_a_manifest_byte(source)
            proc.start()
            ids = await _catalog_ids(apps, proc)
            assert DOKUWIKI not in ids and STATIC in ids
        finally:
            proc.stop()
    log = (tmp_path / "apps.log").read_text()
    assert f"catalog entry {DOKUWIKI} 2022.7.31 is refused" in log
