"""A target from its settings (as the API will receive them), every field validated first.

    {"kind": "local", "path": "/mnt/backups/homeport"}
    {"kind": "s3", "bucket": "my-backups", "prefix": "homeport/", "region": "eu-central-1",
     "endpoint_url": "https://s3.eu-central-1.wasabisys.com",   # omitted or null: AWS
     "access_key": "AKIA...", "secret_key": "..."}

A bad setting raises TargetSettingsError whose `field` names it; its message never holds the
secret key. `allow_loopback` (tests, development) lets endpoint_url lead to this machine.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from libs.contracts.errors import Invalid
from services.backup.targets.base import Target, TargetError
from services.backup.targets.local import LocalTarget

__all__ = ["TargetSettingsError", "target_from_settings"]

_FIELDS = {
    "local": ({"kind", "path"}, set()),
    "s3": (
        {"kind", "bucket", "region", "access_key", "secret_key"},
        {"prefix", "endpoint_url"},
    ),
}
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,48}$")
_PREFIX = re.compile(r"^(?:[A-Za-z0-9._-]+/)*$")
_KEY = re.compile(r"^[\x21-\x7e]{1,256}$")


class TargetSettingsError(TargetError, Invalid):
    """A target setting is missing or wrong; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, field=field)


def target_from_settings(
    settings: Mapping[str, Any],
    *,
    allow_loopback: bool = False,
    clock: Callable[[], float] = time.time,
    data_dirs: Sequence[Path] = (),
) -> Target:
    """The LocalTarget or S3Target `settings` describe (not yet checked: call `check()`);
    `clock` tells `cleanup()` the time. A local path in (or being) one of `data_dirs`, the
    platform's own folders, is refused: such a backup would be lost with what it protects."""
    kind = settings.get("kind")
    if kind not in _FIELDS:
        raise TargetSettingsError("kind", f"kind must be 'local' or 's3', not {kind!r:.40}")
    required, optional = _FIELDS[kind]
    unknown = sorted(str(name)[:40] for name in set(settings) - required - optional)
    if unknown:
        raise TargetSettingsError(unknown[0], f"unknown setting {unknown[0]!r} for {kind}")
    missing = sorted(required - set(settings))
    if missing:
        raise TargetSettingsError(missing[0], f"{missing[0]} is required for a {kind} target")
    if kind == "local":
        return LocalTarget(_path(settings["path"], data_dirs), clock=clock)
    bucket = _text(settings, "bucket", _BUCKET.fullmatch, "3 to 63 of a-z 0-9 . -")
    region = _text(settings, "region", _REGION.fullmatch, "like eu-central-1")
    access_key = _text(settings, "access_key", _KEY.fullmatch, "printable, no spaces")
    secret = settings["secret_key"]
    if not isinstance(secret, str) or not _KEY.fullmatch(secret):
        raise TargetSettingsError(
            "secret_key", "secret_key must be 1 to 256 printable characters without spaces"
        )
    prefix = settings.get("prefix") or ""
    if not isinstance(prefix, str) or len(prefix) > 100:
        raise TargetSettingsError("prefix", "prefix must be text of at most 100 characters")
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    if not _PREFIX.fullmatch(prefix) or any(p in (".", "..") for p in prefix.split("/")):
        raise TargetSettingsError(
            "prefix", f"prefix {prefix[:40]!r} may hold A-Z a-z 0-9 . _ - separated by /"
        )
    endpoint = settings.get("endpoint_url")
    if endpoint is not None:
        endpoint = _endpoint(endpoint)
    # imported here: aioboto3 costs ~14 MiB in a service that has no S3 target
    from services.backup.targets.s3 import S3Target

    try:
        return S3Target(
            bucket,
            prefix,
            endpoint,
            region,
            access_key,
            secret,
            allow_loopback=allow_loopback,
            clock=clock,
        )
    except TargetError as e:  # the endpoint leads to this machine
        raise TargetSettingsError("endpoint_url", str(e)) from None


def _text(settings: Mapping[str, Any], name: str, ok: Callable[[str], Any], form: str) -> str:
    value = settings[name]
    if not isinstance(value, str) or not ok(value):
        shown = repr(value)[:40] if name != "access_key" else "this value"
        raise TargetSettingsError(name, f"{name} {shown} is not valid ({form})")
    return value


# Folders of the system itself: a backup there would mix with (or be read as) its files.
_SYSTEM_DIRS = tuple(
    PurePosixPath(p)
    for p in (
        "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
        "/run", "/sbin", "/sys", "/usr", "/var/lib/docker", "/var/lib/postgresql", "/var/log",
        "/opt/homeport", "/var/lib/homeport",
    )
)  # fmt: skip


def _path(value: Any, data_dirs: Sequence[Path] = ()) -> Path:
    if not isinstance(value, str) or not value or "\x00" in value or len(value) > 1024:
        raise TargetSettingsError("path", "path must be an absolute directory path")
    path = PurePosixPath(value)
    if not path.is_absolute() or ".." in path.parts or path == PurePosixPath("/"):
        raise TargetSettingsError(
            "path", f"path {value[:60]!r} must be absolute, not / and without '..'"
        )
    system = next((d for d in _SYSTEM_DIRS if path == d or d in path.parents), None)
    if system is not None:
        raise TargetSettingsError(
            "path",
            f"path {value[:60]!r} is in the system folder {system}: choose a folder on"
            " the backup disk (for example /mnt/backup/homeport)",
        )
    for d in data_dirs:
        here = PurePosixPath(os.path.abspath(d))
        if path == here or here in path.parents:
            raise TargetSettingsError(
                "path",
                f"path {value[:60]!r} is inside the platform's data folder {here}: the backups"
                " would be lost with it; choose a folder on another disk (for example"
                " /mnt/backup/homeport)",
            )
    return Path(path)


def _endpoint(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 512 or not value.isascii():
        raise TargetSettingsError("endpoint_url", "endpoint_url must be an http(s) URL")
    try:
        url = urlsplit(value)
        url.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise TargetSettingsError("endpoint_url", "endpoint_url is not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise TargetSettingsError("endpoint_url", "endpoint_url must be an http:// or https:// URL")
    if url.username or url.password or url.query or url.fragment or url.path not in ("", "/"):
        raise TargetSettingsError(
            "endpoint_url",
            "endpoint_url must be just scheme://host[:port] (keys go in access_key/secret_key)",
        )
    return f"{url.scheme}://{url.netloc}"
