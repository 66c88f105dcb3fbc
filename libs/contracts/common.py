"""Grammars and bounds more than one contract (and the services behind them) share."""

from __future__ import annotations

import re

from libs.contracts.schema import integer, string

__all__ = [
    "APP_ID",
    "ENV_NAME",
    "ENV_NAMES_RESERVED",
    "ENV_PREFIXES_RESERVED",
    "LOCATION",
    "LOCATION_PATTERN",
    "MAX_ENV",
    "MAX_ENV_VALUE",
    "MAX_IDS",
    "MAX_MEMORY",
    "MIN_MEMORY",
    "RESERVED_LOCATIONS",
    "env_name_problem",
    "location",
    "memory",
    "uuid",
]

# An app's location is one DNS label (RFC 1035 letters-digits-hyphen, lower case).
LOCATION_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
LOCATION = re.compile(LOCATION_PATTERN)
RESERVED_LOCATIONS = frozenset({"my", "www", "mail", "autoconfig", "autodiscover"})
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# Names an app's variables may not take: the platform sets HOMEPORT_* (any case); the others
# break the container or its programs (exact case, as the kernel and libc read them): the
# search path, the dynamic loader's LD_* (LD_PRELOAD, LD_LIBRARY_PATH...), the identity and
# place Docker and the shell set, code bash runs first, glibc's converters, Python's home.
ENV_NAMES_RESERVED = frozenset(
    {"PATH", "HOME", "HOSTNAME", "PWD", "IFS", "BASH_ENV", "GCONV_PATH", "PYTHONHOME"}
)
ENV_PREFIXES_RESERVED = ("LD_",)
MAX_ENV = 100
MAX_ENV_VALUE = 4096
MIN_MEMORY = 32 * 1024 * 1024
MAX_MEMORY = 64 * 1024 * 1024 * 1024
MAX_IDS = 1000
APP_ID = "an app id (a UUID)"


def env_name_problem(name: str) -> str | None:
    """Why `name` cannot be one of an app's variables (None: it can)."""
    if not ENV_NAME.match(name):
        return "a variable name is a letter or '_', then letters, digits or '_' (at most 64)"
    if name.upper().startswith("HOMEPORT_"):
        return "HOMEPORT_* variables are set by the platform"
    if name in ENV_NAMES_RESERVED or name.startswith(ENV_PREFIXES_RESERVED):
        return f"{name} would break the app's container; choose another name"
    return None


def location(**kw: object) -> dict[str, object]:
    """The schema of an app location (the reserved names are refused by the apps service)."""
    return string(pattern=LOCATION_PATTERN, minLength=1, maxLength=63, **kw)


def memory(**kw: object) -> dict[str, object]:
    """The schema of a memory limit in bytes."""
    return integer(minimum=MIN_MEMORY, maximum=MAX_MEMORY, **kw)


def uuid(**kw: object) -> dict[str, object]:
    """The schema of an id that is a UUID."""
    return string(format="uuid", **kw)
