"""The manifest format: what it accepts, what it refuses and which field the error names."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from services.apps.manifest import (
    CAPABILITIES,
    DEFAULT_MEMORY_LIMIT,
    Manifest,
    ManifestError,
    PortSpec,
    load_manifest,
    parse_manifest,
)
from services.apps.semver import Version, VersionError

FULL: dict[str, Any] = {
    "manifestVersion": 1,
    "id": "org.gitea",
    "version": "1.21.0-rc.1+build.7",
    "title": "Gitea",
    "tagline": "Git with a cup of tea",
    "description": "A *painless* self-hosted Git service.",
    "tags": ["git", "dev-tools"],
    "icon": "icon.svg",
    "changelog": "* first release",
    "build": ".",
    "httpPort": 3000,
    "healthCheckPath": "/api/healthz",
    "tcpPorts": {
        "SSH_PORT": {"containerPort": 22, "title": "Git over SSH", "defaultHostPort": 2222}
    },
    "udpPorts": {"DISCOVERY": {"containerPort": 3000, "title": "Discovery"}},
    "memoryLimit": 512 * 1024 * 1024,
    "addons": {"localstorage": {}, "postgresql": {}, "ldap": {}, "sendmail": {}},
    "capabilities": ["NET_BIND_SERVICE", "CHOWN"],
    "runAsRoot": False,
    "singleUser": True,
    "minPlatformVersion": "0.1.0",
    "postInstallMessage": "Sign in with your Homeport account.",
    "updateNeedsApproval": True,
    "signIn": "ldap",
}

MINIMAL: dict[str, Any] = {
    "manifestVersion": 1,
    "id": "org.example.hello",
    "version": "1.0.0",
    "title": "Hello",
    "tagline": "Says hello",
    "image": "example.org/hello:1",
    "httpPort": 8080,
}


def with_(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of base with the dotted path set (or deleted when value is DELETE)."""
    out = copy.deepcopy(base)
    *parents, last = path.split(".")
    node: Any = out
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


DELETE = object()


def refused(obj: object) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        parse_manifest(obj)
    return info.value


# -- accepted -----------------------------------------------------------------------------


def test_full_manifest_parses_to_snake_case_attributes() -> None:
    m = parse_manifest(FULL)
    assert m.id == "org.gitea"
    assert m.version == Version.parse("1.21.0-rc.1")
    assert str(m.version) == "1.21.0-rc.1+build.7"
    assert m.http_port == 3000
    assert m.health_check_path == "/api/healthz"
    assert m.tcp_ports == (PortSpec("SSH_PORT", 22, "Git over SSH", 2222),)
    assert m.udp_ports == (PortSpec("DISCOVERY", 3000, "Discovery", None),)
    assert m.addons == frozenset({"localstorage", "postgresql", "ldap", "sendmail"})
    assert m.capabilities == ("NET_BIND_SERVICE", "CHOWN")
    assert m.memory_limit == 512 * 1024 * 1024
    assert m.single_user is True and m.run_as_root is False and m.update_needs_approval
    assert m.min_platform_version == Version.parse("0.1.0")
    assert m.build == "." and m.image is None and m.icon == "icon.svg"


def test_full_manifest_round_trips_through_to_json() -> None:
    m = parse_manifest(FULL)
    assert m.to_json() == FULL | {"addons": {k: {} for k in sorted(FULL["addons"])}}
    assert parse_manifest(json.loads(json.dumps(m.to_json()))) == m


def test_minimal_manifest_gets_defaults_and_round_trips() -> None:
    m = parse_manifest(MINIMAL)
    assert m.memory_limit == DEFAULT_MEMORY_LIMIT == 256 * 1024 * 1024
    assert m.health_check_path == "/"
    assert m.tags == () and m.addons == frozenset() and m.tcp_ports == ()
    assert m.icon is None and m.build is None and m.min_platform_version is None
    out = m.to_json()
    assert "build" not in out and "icon" not in out and "minPlatformVersion" not in out
    assert parse_manifest(out) == m


def test_texts_at_their_limits_are_accepted() -> None:
    m = parse_manifest(
        MINIMAL
        | {
            "title": "t" * 60,
            "tagline": "t" * 120,
            "description": "d" * 20000,
            "changelog": "c" * 20000,
            "postInstallMessage": "p" * 5000,
        }
    )
    assert len(m.description) == 20000


def test_memory_limit_bounds_are_inclusive() -> None:
    assert parse_manifest(MINIMAL | {"memoryLimit": 32 * 2**20}).memory_limit == 32 * 2**20
    assert parse_manifest(MINIMAL | {"memoryLimit": 64 * 2**30}).memory_limit == 64 * 2**30


# -- refused ------------------------------------------------------------------------------

CASES: list[tuple[str, dict[str, Any], str, str]] = [
    # (name, manifest, field named, words in the message)
    ("not an object", [], "", "must be an object"),  # type: ignore[list-item]
    ("unknown field", MINIMAL | {"httpport": 80}, "httpport", "did you mean 'httpPort'"),
    (
        "unknown port field",
        with_(FULL, "tcpPorts.SSH_PORT.hostPort", 1),
        "tcpPorts.SSH_PORT.hostPort",
        "unknown field",
    ),
    ("missing id", with_(MINIMAL, "id", DELETE), "id", "is required"),
    ("missing httpPort", with_(MINIMAL, "httpPort", DELETE), "httpPort", "is required"),
    ("manifestVersion 2", MINIMAL | {"manifestVersion": 2}, "manifestVersion", "must be 1"),
    ("manifestVersion float", MINIMAL | {"manifestVersion": 1.0}, "manifestVersion", "must be 1"),
    ("id not reverse dns", MINIMAL | {"id": "dokuwiki"}, "id", "reverse-DNS"),
    ("id uppercase", MINIMAL | {"id": "org.DokuWiki"}, "id", "reverse-DNS"),
    ("id too long", MINIMAL | {"id": "org." + "a" * 97}, "id", "at most 100"),
    ("id wrong type", MINIMAL | {"id": 7}, "id", "must be a string, not a number"),
    ("version not semver", MINIMAL | {"version": "1.0"}, "version", "not a semantic version"),
    ("version leading zero", MINIMAL | {"version": "1.02.0"}, "version", "leading zeros"),
    ("title too long", MINIMAL | {"title": "t" * 61}, "title", "at most 60"),
    ("title empty", MINIMAL | {"title": "  "}, "title", "must not be empty"),
    ("tagline too long", MINIMAL | {"tagline": "t" * 121}, "tagline", "at most 120"),
    (
        "description too long",
        MINIMAL | {"description": "d" * 20001},
        "description",
        "at most 20000",
    ),
    ("changelog too long", MINIMAL | {"changelog": "c" * 20001}, "changelog", "at most 20000"),
    (
        "postInstall too long",
        MINIMAL | {"postInstallMessage": "p" * 5001},
        "postInstallMessage",
        "at most 5000",
    ),
    ("tag bad", MINIMAL | {"tags": ["wiki", "docs", "Not OK"]}, "tags[2]", "is not a tag"),
    ("tag not string", MINIMAL | {"tags": ["wiki", 3]}, "tags[1]", "must be a string"),
    ("tag twice", MINIMAL | {"tags": ["wiki", "wiki"]}, "tags[1]", "listed twice"),
    ("too many tags", MINIMAL | {"tags": [f"t{i}" for i in range(11)]}, "tags", "at most 10"),
    ("tags not list", MINIMAL | {"tags": "wiki"}, "tags", "must be a list"),
    ("both image and build", MINIMAL | {"build": "."}, "image", "exactly one of image"),
    ("neither image nor build", with_(MINIMAL, "image", DELETE), "image", "exactly one of image"),
    ("image bad", MINIMAL | {"image": "Not An Image"}, "image", "not an image reference"),
    ("build dotdot", with_(FULL, "build", "../other"), "build", "leaves the manifest's directory"),
    ("build inner dotdot", with_(FULL, "build", "a/../../b"), "build", "leaves"),
    ("build absolute", with_(FULL, "build", "/etc"), "build", "is absolute"),
    ("build empty", with_(FULL, "build", ""), "build", "must not be empty"),
    ("icon dotdot", MINIMAL | {"icon": "../icon.png"}, "icon", "leaves"),
    ("icon jpg", MINIMAL | {"icon": "icon.jpg"}, "icon", ".png or .svg"),
    ("httpPort 0", MINIMAL | {"httpPort": 0}, "httpPort", "between 1 and 65535"),
    ("httpPort 65536", MINIMAL | {"httpPort": 65536}, "httpPort", "between 1 and 65535"),
    ("httpPort bool", MINIMAL | {"httpPort": True}, "httpPort", "must be a whole number"),
    ("httpPort string", MINIMAL | {"httpPort": "80"}, "httpPort", "must be a whole number"),
    ("httpPort float", MINIMAL | {"httpPort": 80.0}, "httpPort", "must be a whole number"),
    (
        "tcp port range",
        with_(FULL, "tcpPorts.SSH_PORT.containerPort", 70000),
        "tcpPorts.SSH_PORT.containerPort",
        "between 1 and 65535",
    ),
    (
        "default host port range",
        with_(FULL, "tcpPorts.SSH_PORT.defaultHostPort", 0),
        "tcpPorts.SSH_PORT.defaultHostPort",
        "between 1 and 65535",
    ),
    (
        "tcp port clashes with http",
        with_(FULL, "tcpPorts.SSH_PORT.containerPort", 3000),
        "tcpPorts.SSH_PORT.containerPort",
        "also the httpPort",
    ),
    (
        "tcp port missing containerPort",
        with_(FULL, "tcpPorts.SSH_PORT.containerPort", DELETE),
        "tcpPorts.SSH_PORT.containerPort",
        "is required",
    ),
    (
        "tcp port twice",
        with_(FULL, "tcpPorts.GIT_PORT", {"containerPort": 22}),
        "tcpPorts.GIT_PORT.containerPort",
        "22 is already used by tcpPorts.SSH_PORT",
    ),
    (
        "tcp name lowercase",
        MINIMAL | {"tcpPorts": {"ssh_port": {"containerPort": 22}}},
        "tcpPorts.ssh_port",
        "environment variable",
    ),
    (
        "tcp name digit first",
        MINIMAL | {"tcpPorts": {"2SSH": {"containerPort": 22}}},
        "tcpPorts.2SSH",
        "environment variable",
    ),
    (
        "tcp name too long",
        MINIMAL | {"tcpPorts": {"P" * 33: {"containerPort": 22}}},
        "tcpPorts." + "P" * 33,
        "environment variable",
    ),
    (
        "udp name dash",
        MINIMAL | {"udpPorts": {"DNS-PORT": {"containerPort": 53}}},
        "udpPorts.DNS-PORT",
        "environment variable",
    ),
    ("tcpPorts not object", MINIMAL | {"tcpPorts": [22]}, "tcpPorts", "must be an object"),
    (
        "port spec not object",
        MINIMAL | {"tcpPorts": {"SSH": 22}},
        "tcpPorts.SSH",
        "must be an object",
    ),
    (
        "unknown addon",
        MINIMAL | {"addons": {"postgresql": {}, "mysql": {}}},
        "addons.mysql",
        "unknown addon; the addons are ldap, localstorage, mailclient, postgresql, sendmail",
    ),
    (
        "addon option",
        MINIMAL | {"addons": {"postgresql": {"version": 16}}},
        "addons.postgresql.version",
        "unknown field",
    ),
    (
        "addon not object",
        MINIMAL | {"addons": {"postgresql": True}},
        "addons.postgresql",
        "must be an object",
    ),
    (
        "capability not allowed",
        MINIMAL | {"capabilities": ["CHOWN", "SYS_ADMIN"]},
        "capabilities[1]",
        "the allowlist is " + ", ".join(CAPABILITIES),
    ),
    (
        "capability twice",
        MINIMAL | {"capabilities": ["KILL", "KILL"]},
        "capabilities[1]",
        "listed twice",
    ),
    ("memory too small", MINIMAL | {"memoryLimit": 32 * 2**20 - 1}, "memoryLimit", "32 MiB"),
    ("memory too big", MINIMAL | {"memoryLimit": 64 * 2**30 + 1}, "memoryLimit", "64 GiB"),
    ("runAsRoot string", MINIMAL | {"runAsRoot": "yes"}, "runAsRoot", "true or false"),
    ("singleUser int", MINIMAL | {"singleUser": 1}, "singleUser", "true or false"),
    (
        "health path relative",
        MINIMAL | {"healthCheckPath": "health"},
        "healthCheckPath",
        "starting with '/'",
    ),
    ("health path space", MINIMAL | {"healthCheckPath": "/a b"}, "healthCheckPath", "no spaces"),
    (
        "minPlatformVersion bad",
        MINIMAL | {"minPlatformVersion": "latest"},
        "minPlatformVersion",
        "not a semantic version",
    ),
]


@pytest.mark.parametrize(
    ("obj", "field", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_refused_with_the_field_path(obj: object, field: str, words: str) -> None:
    err = refused(obj)
    assert err.field == field
    assert words in err.message
    assert str(err) == (f"{field}: {err.message}" if field else err.message)


# -- files --------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_load_manifest_reads_a_file_and_checks_named_files(tmp_path: Path) -> None:
    write(tmp_path / "icon.svg", "<svg/>")
    write(tmp_path / "Dockerfile", "FROM scratch\n")
    m = load_manifest(write(tmp_path / "manifest.json", json.dumps(FULL)))
    assert isinstance(m, Manifest) and m.id == "org.gitea"


def test_load_manifest_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "manifest.json", '{\n  "id": "org.x",\n  "title": oops\n}\n')
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert "line 3 column 12" in str(info.value)
    assert str(path) in str(info.value)


def test_load_manifest_refuses_duplicate_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "manifest.json", '{"id": "org.a.b", "id": "org.c.d"}')
    with pytest.raises(ManifestError, match="'id' appears twice"):
        load_manifest(path)


def test_load_manifest_names_file_and_field(tmp_path: Path) -> None:
    path = write(tmp_path / "manifest.json", json.dumps(MINIMAL | {"httpPort": 0}))
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.path == path and info.value.field == "httpPort"
    assert str(info.value).startswith(f"{path}: httpPort: ")


def test_load_manifest_refuses_missing_icon_and_build_dir(tmp_path: Path) -> None:
    path = write(tmp_path / "manifest.json", json.dumps(FULL))
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.field == "icon" and "is not a file" in info.value.message
    write(tmp_path / "icon.svg", "<svg/>")
    write(tmp_path / "manifest.json", json.dumps(FULL | {"build": "ctx"}))
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.field == "build" and "is not a directory" in info.value.message


def test_load_manifest_refuses_build_symlink_out_of_the_directory(tmp_path: Path) -> None:
    app = tmp_path / "app"
    write(app / "icon.svg", "<svg/>")
    (app / "ctx").symlink_to(tmp_path)
    path = write(app / "manifest.json", json.dumps(FULL | {"build": "ctx"}))
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.field == "build" and "outside" in info.value.message


def test_load_manifest_refuses_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_bytes(b'{"title": "\xff"}')
    with pytest.raises(ManifestError, match="not UTF-8"):
        load_manifest(path)


# -- semver -------------------------------------------------------------------------------

# Ascending, from the SemVer 2.0.0 specification (section 11) plus a few more.
ORDER = [
    "0.0.1",
    "0.9.9",
    "1.0.0-0",
    "1.0.0-1",
    "1.0.0-2",
    "1.0.0-10",
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.1",
    "1.1.0",
    "1.10.0",
    "2.0.0-rc.1",
    "2.0.0",
    "10.0.0",
]


def test_semver_precedence_table() -> None:
    versions = [Version.parse(s) for s in ORDER]
    assert sorted(reversed(versions)) == versions
    for a, b in itertools.pairwise(versions):
        assert a < b and b > a and a != b and a <= b


def test_semver_build_metadata_is_ignored_for_order_but_kept_in_text() -> None:
    a, b = Version.parse("1.0.0+build.1"), Version.parse("1.0.0+zzz")
    assert a == b and hash(a) == hash(b) and not a < b
    assert str(a) == "1.0.0+build.1"
    assert Version.parse("1.0.0-rc.1+x") < Version.parse("1.0.0")


@pytest.mark.parametrize(
    "text", ["1.0.0", "1.0.0-alpha.1", "1.0.0-x-y.7+exp.sha.5114f85", "0.0.0+001"]
)
def test_semver_str_round_trips(text: str) -> None:
    assert str(Version.parse(text)) == text


@pytest.mark.parametrize(
    "text",
    ["1", "1.0", "01.0.0", "1.0.0-01", "1.0.0-", "1.0.0+", "1.0.0-a..b", "v1.0.0", " 1.0.0", ""],
)
def test_semver_refuses(text: str) -> None:
    with pytest.raises(VersionError, match="not a semantic version"):
        Version.parse(text)


def test_semver_prerelease_flag() -> None:
    assert Version.parse("1.0.0-rc.1").is_prerelease
    assert not Version.parse("1.0.0+build").is_prerelease
