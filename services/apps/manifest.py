"""The app manifest format (DESIGN.md): `parse_manifest(obj) -> Manifest`; errors name the field.

Required fields: manifestVersion (1), id, version, title, tagline, httpPort and exactly one of
image / build. Everything else has a default (see `Manifest`). Unknown fields are refused so
that a typo is an error instead of a silently ignored setting.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn, TypeVar

from services.apps.errors import AppsError
from services.apps.semver import Version, VersionError

__all__ = [
    "ADDONS",
    "CAPABILITIES",
    "DEFAULT_MEMORY_LIMIT",
    "MANIFEST_FILE",
    "MAX_MEMORY_LIMIT",
    "MIN_MEMORY_LIMIT",
    "SIGN_IN",
    "Manifest",
    "ManifestError",
    "PortSpec",
    "load_manifest",
    "parse_manifest",
]

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
ADDONS = ("ldap", "localstorage", "mailclient", "postgresql", "sendmail")
# How an app signs users in: its own login against the platform's LDAP (the default with the
# ldap addon), the platform's sign-in at the edge (the default otherwise), or nobody at all
# (public by nature: an access list other than everyone is refused).
SIGN_IN = ("ldap", "edge", "none")
CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID", "NET_BIND_SERVICE", "KILL")
MIB = 1024 * 1024
MIN_MEMORY_LIMIT = 32 * MIB
MAX_MEMORY_LIMIT = 64 * 1024 * MIB
DEFAULT_MEMORY_LIMIT = 256 * MIB
MAX_MANIFEST_BYTES = 1024 * 1024

_ID = re.compile(r"^[a-z0-9]+(\.[a-z0-9-]+)+$", re.ASCII)
_TAG = re.compile(r"^[a-z0-9-]{1,32}$", re.ASCII)
_PORT_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,31}$", re.ASCII)
_NAME_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(
    rf"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?{_NAME_PART}(?:/{_NAME_PART})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$",
    re.ASCII,
)
_NO_SPACE = re.compile(r"^[^\s\x00-\x1f\x7f]*$")
_ICON_SUFFIXES = (".png", ".svg")
_MAX_ID = 100
_MAX_TAGS = 10
_MAX_PORTS = 32
_MAX_PATH = 255
_LIMITS = {
    "title": 60,
    "tagline": 120,
    "description": 20000,
    "changelog": 20000,
    "postInstallMessage": 5000,
}

_T = TypeVar("_T")


class ManifestError(AppsError, ValueError):
    """A manifest that breaks the format; `field` is the dotted JSON path ('' for the document)."""

    def __init__(self, field: str, message: str, path: Path | None = None) -> None:
        where = "".join(f"{w}: " for w in (path, field) if w)
        super().__init__(f"{where}{message}")
        self.field: str = field
        self.message = message
        self.path = path

    def at(self, path: Path) -> ManifestError:
        """The same error, naming the manifest file it came from."""
        return ManifestError(self.field, self.message, path)


@dataclass(frozen=True)
class PortSpec:
    """One entry of tcpPorts / udpPorts; `name` is the env-style key."""

    name: str
    container_port: int
    title: str = ""
    default_host_port: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The camelCase JSON object (without the name, which is its key)."""
        out: dict[str, Any] = {"containerPort": self.container_port, "title": self.title}
        if self.default_host_port is not None:
            out["defaultHostPort"] = self.default_host_port
        return out


@dataclass(frozen=True)
class Manifest:
    """A parsed, valid manifest; attributes are the snake_case of the JSON fields."""

    id: str
    version: Version
    title: str
    tagline: str
    http_port: int
    image: str | None = None
    build: str | None = None
    manifest_version: int = MANIFEST_VERSION
    description: str = ""
    tags: tuple[str, ...] = ()
    icon: str | None = None
    changelog: str = ""
    health_check_path: str = "/"
    tcp_ports: tuple[PortSpec, ...] = ()
    udp_ports: tuple[PortSpec, ...] = ()
    memory_limit: int = DEFAULT_MEMORY_LIMIT
    addons: frozenset[str] = frozenset()
    capabilities: tuple[str, ...] = ()
    run_as_root: bool = False
    single_user: bool = False
    min_platform_version: Version | None = None
    post_install_message: str = ""
    update_needs_approval: bool = False
    sign_in: str = "edge"  # one of SIGN_IN

    def ports_of(self, protocol: str) -> dict[str, PortSpec]:
        """tcpPorts (protocol "tcp") or udpPorts ("udp") by name."""
        return {p.name: p for p in (self.tcp_ports if protocol == "tcp" else self.udp_ports)}

    def to_json(self) -> dict[str, Any]:
        """The manifest as JSON (defaults filled in); `parse_manifest` of it gives it back."""
        out: dict[str, Any] = {
            "manifestVersion": self.manifest_version,
            "id": self.id,
            "version": str(self.version),
            "title": self.title,
            "tagline": self.tagline,
            "description": self.description,
            "tags": list(self.tags),
            "changelog": self.changelog,
            "httpPort": self.http_port,
            "healthCheckPath": self.health_check_path,
            "tcpPorts": {p.name: p.to_json() for p in self.tcp_ports},
            "udpPorts": {p.name: p.to_json() for p in self.udp_ports},
            "memoryLimit": self.memory_limit,
            "addons": {name: {} for name in sorted(self.addons)},
            "capabilities": list(self.capabilities),
            "runAsRoot": self.run_as_root,
            "singleUser": self.single_user,
            "postInstallMessage": self.post_install_message,
            "updateNeedsApproval": self.update_needs_approval,
            "signIn": self.sign_in,
        }
        optional = {
            "icon": self.icon,
            "image": self.image,
            "build": self.build,
            "minPlatformVersion": (
                None if self.min_platform_version is None else str(self.min_platform_version)
            ),
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        return out


# -- parsing ------------------------------------------------------------------------------

_FIELDS = (
    "manifestVersion",
    "id",
    "version",
    "title",
    "tagline",
    "description",
    "tags",
    "icon",
    "changelog",
    "image",
    "build",
    "httpPort",
    "healthCheckPath",
    "tcpPorts",
    "udpPorts",
    "memoryLimit",
    "addons",
    "capabilities",
    "runAsRoot",
    "singleUser",
    "minPlatformVersion",
    "postInstallMessage",
    "updateNeedsApproval",
    "signIn",
)
_REQUIRED = ("manifestVersion", "id", "version", "title", "tagline", "httpPort")
_PORT_FIELDS = ("containerPort", "title", "defaultHostPort")


def _fail(field: str, message: str) -> NoReturn:
    raise ManifestError(field, message)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _object(value: object, field: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(field, f"must be an object, not {_type_name(value)}")
    for key in value:
        if not isinstance(key, str):
            _fail(field, f"has a key that is not a string: {key!r}")
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            where = f"{field}.{key}" if field else key
            _fail(where, f"unknown field{hint}; known fields: {', '.join(allowed)}")
    return value


def _str(value: object, field: str, *, max_len: int, empty: bool = True) -> str:
    if not isinstance(value, str):
        _fail(field, f"must be a string, not {_type_name(value)}")
    if len(value) > max_len:
        _fail(field, f"is {len(value)} characters long; at most {max_len} are allowed")
    if not empty and not value.strip():
        _fail(field, "must not be empty")
    return value


def _int(value: object, field: str, lo: int, hi: int, what: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(field, f"must be a whole number, not {_type_name(value)}")
    if not lo <= value <= hi:
        _fail(field, f"{value} is out of range: {what or f'must be between {lo} and {hi}'}")
    return value


def _bool(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        _fail(field, f"must be true or false, not {_type_name(value)}")
    return value


def _port(value: object, field: str) -> int:
    return _int(value, field, 1, 65535, "a port is between 1 and 65535")


def _version(value: object, field: str) -> Version:
    if not isinstance(value, str):
        _fail(field, f"must be a string, not {_type_name(value)}")
    try:
        return Version.parse(value)
    except VersionError as e:
        _fail(field, str(e))


def _relative_path(value: object, field: str) -> str:
    text = _str(value, field, max_len=_MAX_PATH, empty=False)
    if "\x00" in text or "\\" in text:
        _fail(field, "must be a plain relative path (no backslashes or NUL characters)")
    p = PurePosixPath(text)
    if p.is_absolute():
        _fail(field, f"{text!r} is absolute; give a path relative to the manifest's directory")
    if ".." in p.parts:
        _fail(field, f"{text!r} leaves the manifest's directory ('..'); keep files next to it")
    return text


def _list(value: object, field: str, item: Callable[[object, str], _T]) -> tuple[_T, ...]:
    if not isinstance(value, list):
        _fail(field, f"must be a list, not {_type_name(value)}")
    return tuple(item(v, f"{field}[{i}]") for i, v in enumerate(value))


def _tag(value: object, field: str) -> str:
    text = _str(value, field, max_len=32)
    if not _TAG.match(text):
        _fail(field, f"{text!r} is not a tag: use 1-32 lowercase letters, digits and '-'")
    return text


def _capability(value: object, field: str) -> str:
    text = _str(value, field, max_len=64)
    if text not in CAPABILITIES:
        _fail(
            field,
            f"{text!r} is not an allowed capability; the allowlist is {', '.join(CAPABILITIES)}",
        )
    return text


def _no_duplicates(items: tuple[str, ...], field: str) -> None:
    for i, x in enumerate(items):
        if x in items[:i]:
            _fail(f"{field}[{i}]", f"{x!r} is listed twice; list it once")


def _ports(value: object, field: str) -> tuple[PortSpec, ...]:
    if not isinstance(value, dict):
        _fail(field, f"must be an object of NAME: {{containerPort, ...}}, not {_type_name(value)}")
    if len(value) > _MAX_PORTS:
        _fail(field, f"has {len(value)} ports; at most {_MAX_PORTS} are allowed")
    out: list[PortSpec] = []
    seen: dict[int, str] = {}
    for name, spec in value.items():
        where = f"{field}.{name}"
        if not isinstance(name, str) or not _PORT_NAME.match(name):
            _fail(
                where,
                f"{name!r} is not a valid port name: it becomes an environment variable, so use "
                "an uppercase letter then up to 31 of A-Z, 0-9 and '_' (e.g. SSH_PORT)",
            )
        obj = _object(spec, where, _PORT_FIELDS)
        if "containerPort" not in obj:
            _fail(f"{where}.containerPort", "is required: the port the app listens on")
        port = _port(obj["containerPort"], f"{where}.containerPort")
        if port in seen:
            _fail(f"{where}.containerPort", f"{port} is already used by {field}.{seen[port]}")
        seen[port] = name
        title = _str(obj.get("title", ""), f"{where}.title", max_len=60)
        host = obj.get("defaultHostPort")
        out.append(
            PortSpec(
                name=name,
                container_port=port,
                title=title,
                default_host_port=None if host is None else _port(host, f"{where}.defaultHostPort"),
            )
        )
    return tuple(sorted(out, key=lambda p: p.name))


def _addons(value: object, field: str) -> frozenset[str]:
    if not isinstance(value, dict):
        _fail(field, f'must be an object like {{"postgresql": {{}}}}, not {_type_name(value)}')
    for name, options in value.items():
        if name not in ADDONS:
            _fail(f"{field}.{name}", f"unknown addon; the addons are {', '.join(ADDONS)}")
        _object(options, f"{field}.{name}", ())
    return frozenset(value)


def parse_manifest(obj: object) -> Manifest:
    """Validate a decoded manifest.json; raises ManifestError naming the offending field."""
    m = _object(obj, "", _FIELDS)
    for name in _REQUIRED:
        if name not in m:
            _fail(name, "is required")
    if type(m["manifestVersion"]) is not int or m["manifestVersion"] != MANIFEST_VERSION:
        _fail("manifestVersion", f"must be {MANIFEST_VERSION}, the only format this platform reads")

    app_id = _str(m["id"], "id", max_len=_MAX_ID)
    if not _ID.match(app_id):
        _fail(
            "id",
            f"{app_id!r} is not an app id: use reverse-DNS like org.dokuwiki "
            "(lowercase letters, digits, dots and '-')",
        )

    image = build = None
    if ("image" in m) == ("build" in m):
        _fail("image", "give exactly one of image (a registry image) or build (a context dir)")
    if "image" in m:
        image = _str(m["image"], "image", max_len=_MAX_PATH, empty=False)
        if not _IMAGE.match(image):
            _fail("image", f"{image!r} is not an image reference like example.org/app:1.0")
    else:
        build = _relative_path(m["build"], "build")

    icon = None
    if "icon" in m:
        icon = _relative_path(m["icon"], "icon")
        if not icon.lower().endswith(_ICON_SUFFIXES):
            _fail("icon", f"{icon!r} must be a .png or .svg file")

    http_port = _port(m["httpPort"], "httpPort")
    tcp = _ports(m.get("tcpPorts", {}), "tcpPorts")
    udp = _ports(m.get("udpPorts", {}), "udpPorts")
    for p in tcp:
        if p.container_port == http_port:
            _fail(
                f"tcpPorts.{p.name}.containerPort",
                f"{http_port} is also the httpPort; a tcpPorts port must be a different port",
            )

    tags = _list(m.get("tags", []), "tags", _tag)
    if len(tags) > _MAX_TAGS:
        _fail("tags", f"has {len(tags)} tags; at most {_MAX_TAGS} are allowed")
    _no_duplicates(tags, "tags")
    caps = _list(m.get("capabilities", []), "capabilities", _capability)
    _no_duplicates(caps, "capabilities")

    health = _str(m.get("healthCheckPath", "/"), "healthCheckPath", max_len=_MAX_PATH)
    if not health.startswith("/") or not _NO_SPACE.match(health):
        _fail("healthCheckPath", f"{health!r} must be a URL path starting with '/' (no spaces)")

    texts = {
        name: _str(m.get(name, ""), name, max_len=limit, empty=name not in ("title", "tagline"))
        for name, limit in _LIMITS.items()
    }
    min_platform = m.get("minPlatformVersion")
    addons = _addons(m.get("addons", {}), "addons")
    sign_in = m.get("signIn", "ldap" if "ldap" in addons else "edge")
    if sign_in not in SIGN_IN:
        _fail("signIn", f"{sign_in!r} must be one of {', '.join(SIGN_IN)}")
    if sign_in == "none" and m.get("singleUser") is True:
        _fail("signIn", '"none" signs nobody in, but a single-user app is for one user only')
    if sign_in == "ldap" and "ldap" not in addons:
        _fail("signIn", '"ldap" needs the ldap addon: add "ldap": {} to addons, or use "edge"')
    return Manifest(
        manifest_version=MANIFEST_VERSION,
        id=app_id,
        version=_version(m["version"], "version"),
        title=texts["title"],
        tagline=texts["tagline"],
        description=texts["description"],
        tags=tags,
        icon=icon,
        changelog=texts["changelog"],
        image=image,
        build=build,
        http_port=http_port,
        health_check_path=health,
        tcp_ports=tcp,
        udp_ports=udp,
        memory_limit=_int(
            m.get("memoryLimit", DEFAULT_MEMORY_LIMIT),
            "memoryLimit",
            MIN_MEMORY_LIMIT,
            MAX_MEMORY_LIMIT,
            "give bytes between 33554432 (32 MiB) and 68719476736 (64 GiB)",
        ),
        addons=addons,
        capabilities=caps,
        run_as_root=_bool(m.get("runAsRoot", False), "runAsRoot"),
        single_user=_bool(m.get("singleUser", False), "singleUser"),
        min_platform_version=(
            None if min_platform is None else _version(min_platform, "minPlatformVersion")
        ),
        post_install_message=texts["postInstallMessage"],
        update_needs_approval=_bool(m.get("updateNeedsApproval", False), "updateNeedsApproval"),
        sign_in=sign_in,
    )


# -- files --------------------------------------------------------------------------------


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ManifestError("", f"the key {key!r} appears twice in one object; keep one")
        out[key] = value
    return out


def _no_constant(name: str) -> NoReturn:
    raise ManifestError("", f"{name} is not valid JSON; write a number")


def _decode(data: bytes) -> object:
    """Decode manifest.json bytes strictly (UTF-8, no duplicate keys, no NaN)."""
    if len(data) > MAX_MANIFEST_BYTES:
        _fail("", f"is {len(data)} bytes; a manifest is at most {MAX_MANIFEST_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        _fail("", f"is not UTF-8 (byte {e.start}); save it as UTF-8")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        _fail("", f"is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}")


def load_manifest(path: Path) -> Manifest:
    """Read and validate a manifest file; files it names (icon, build) must exist beside it."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ManifestError("", f"cannot be read: {e.strerror or e}", path) from e
    try:
        manifest = parse_manifest(_decode(data))
        _check_files(manifest, path.parent)
    except ManifestError as e:
        raise e.at(path) from None
    return manifest


def _check_files(manifest: Manifest, directory: Path) -> None:
    """Check the icon is a file and the build context a directory, both inside `directory`."""
    root = directory.resolve()
    refs: Mapping[str, tuple[str | None, Callable[[Path], bool], str]] = {
        "icon": (manifest.icon, Path.is_file, "a file"),
        "build": (manifest.build, Path.is_dir, "a directory"),
    }
    for field, (rel, kind, what) in refs.items():
        if rel is None:
            continue
        target = (directory / rel).resolve()
        if not target.is_relative_to(root):
            _fail(field, f"{rel!r} resolves outside the manifest's directory (through a symlink)")
        if not kind(target):
            _fail(field, f"{rel!r} is not {what} next to the manifest; add it or fix the path")
