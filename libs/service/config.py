"""Service configuration: one frozen dataclass per service, built once from `HP_*` variables."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from libs.service.logs import redact

__all__ = [
    "ENV_PREFIX",
    "LOG_LEVELS",
    "ConfigError",
    "ServiceConfig",
    "check",
    "env_name",
    "load_config",
]

ENV_PREFIX = "HP_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

T = TypeVar("T")

_CHECK = "homeport.check"
_EXPECT = "homeport.expect"
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
# Values of variables named like these are never echoed in an error message.
_SECRET_WORDS = ("password", "secret", "token", "key", "authorization")


class ConfigError(Exception):
    """One or more configuration variables are missing or invalid; `problems` lists each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        n = len(self.problems)
        head = f"{n} configuration problem{'s' if n != 1 else ''}"
        super().__init__(head + ":\n  " + "\n  ".join(self.problems))


def check(predicate: Callable[[Any], bool], expect: str) -> dict[str, object]:
    """Field metadata: the parsed value must satisfy `predicate`, described as `expect`."""
    return {_CHECK: predicate, _EXPECT: expect}


def env_name(field_name: str) -> str:
    """The environment variable read for a config field: `http_port` -> `HP_HTTP_PORT`."""
    return ENV_PREFIX + field_name.upper()


def load_config(cls: type[T], env: Mapping[str, str] | None = None) -> T:
    """Build the frozen dataclass `cls` from `env` (default `os.environ`); raise ConfigError.

    A variable set to the empty string counts as unset. Every bad or missing variable is
    reported in the one ConfigError.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass")
    source: Mapping[str, str] = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        var = env_name(f.name)
        kind = _kind(hints[f.name], cls, f.name)
        expect = str(f.metadata.get(_EXPECT) or _EXPECTS[kind])
        raw = source.get(var, "")
        if raw == "":
            no_default = (
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            )
            if no_default:
                problems.append(f"{var}: required, not set (expected {expect})")
            continue
        try:
            value = _PARSERS[kind](raw)
        except ValueError:
            problems.append(f"{var}: expected {expect}, got {_shown(var, raw)}")
            continue
        predicate = f.metadata.get(_CHECK)
        if predicate is not None and not predicate(value):
            problems.append(f"{var}: expected {expect}, got {_shown(var, raw)}")
            continue
        values[f.name] = value
    if problems:
        raise ConfigError(problems)
    return cls(**values)


def _shown(var: str, raw: str) -> str:
    low = var.lower()
    if any(w in low for w in _SECRET_WORDS):
        return "[redacted]"
    return repr(redact(raw))  # a URL may carry a password whatever its variable is named


def _kind(hint: Any, cls: type, name: str) -> Any:
    """The parser key for a field type (`X | None` reads as X); reject types we cannot parse."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            hint = args[0]
    if hint == tuple[str, ...]:
        return _StrTuple
    if hint in _PARSERS:
        return hint
    raise TypeError(f"{cls.__name__}.{name}: unsupported config type {hint!r}")


class _StrTuple:
    """Marker for `tuple[str, ...]`, read as a comma separated list."""


def _parse_int(raw: str) -> int:
    return int(raw.strip())


def _parse_float(raw: str) -> float:
    v = float(raw.strip())
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(raw)
    return v


def _parse_bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(raw)


def _parse_tuple(raw: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in raw.split(",") if p.strip())


_PARSERS: dict[Any, Callable[[str], Any]] = {
    str: str,
    int: _parse_int,
    float: _parse_float,
    bool: _parse_bool,
    Path: Path,
    _StrTuple: _parse_tuple,
}

_EXPECTS: dict[Any, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true/false, 1/0 or yes/no",
    Path: "a path",
    _StrTuple: "a comma separated list",
}


def _port_ok(p: int) -> bool:
    return 0 <= p <= 65535


def _level_ok(level: str) -> bool:
    return level.upper() in LOG_LEVELS


def _non_negative(s: float) -> bool:
    return s >= 0


def ip_keys_file(data_dir: Path, ip_keys: Path | None) -> Path:
    """HP_IP_KEYS, else `<data dir>/ip-keys.json` (a local stack's data dir is every service's)."""
    return ip_keys if ip_keys is not None else data_dir / "ip-keys.json"


@dataclass(frozen=True)
class AddressKeyFile:
    """Only where identity's address keys are: what a replay (no whole service config) needs."""

    data_dir: Path = Path(".homeport")
    ip_keys: Path | None = None

    @property
    def ip_keys_path(self) -> Path:
        return ip_keys_file(self.data_dir, self.ip_keys)


@dataclass(frozen=True)
class ServiceConfig:
    """What every service reads; subclass it (frozen too) to add a service's own fields."""

    # Not in repr: either URL may carry a password.
    database_url: str = field(repr=False)
    nats_url: str = field(repr=False)
    http_host: str = "127.0.0.1"
    http_port: int = field(default=0, metadata=check(_port_ok, "an integer 0-65535"))
    log_level: str = field(
        default="INFO", metadata=check(_level_ok, "one of " + ", ".join(LOG_LEVELS))
    )
    drain_seconds: float = field(
        default=10.0, metadata=check(_non_negative, "a number of seconds >= 0")
    )
    keyring: Path = Path(".homeport/keyring.json")
    data_dir: Path = Path(".homeport")
    # `user:password` of this service's NATS user (libs/events/nats_access.py); unset: the
    # credentials in nats_url, if any (tests), else none
    nats_credentials: Path | None = None
    # identity's file of the weeks' client-address keys (libs/events/periods.py); every service
    # seals with its public companion, identity and the firewall read with it
    ip_keys: Path | None = None

    @property
    def ip_keys_path(self) -> Path:
        return ip_keys_file(self.data_dir, self.ip_keys)
