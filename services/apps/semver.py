"""Semantic versions (https://semver.org/spec/v2.0.0.html): parsing and precedence."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import total_ordering

from services.apps.errors import AppsError

__all__ = ["Version", "VersionError"]

# The regular expression suggested by the SemVer 2.0.0 specification itself.
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$",
    re.ASCII,
)
_MAX_LEN = 128

# One pre-release identifier as a sort key: numeric ones sort before alphanumeric ones.
_IdKey = tuple[int, int, str]


class VersionError(AppsError, ValueError):
    """A string that is not a SemVer 2.0.0 version."""


@total_ordering
@dataclass(frozen=True, eq=False)
class Version:
    """A SemVer 2.0.0 version; equality and order follow precedence (build metadata ignored)."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: tuple[str, ...] = ()
    _key: tuple[int, int, int, tuple[int, tuple[_IdKey, ...]]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        pre: tuple[int, tuple[_IdKey, ...]]
        if self.prerelease:
            ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
            pre = (0, ids)  # a pre-release sorts before the release itself
        else:
            pre = (1, ())
        object.__setattr__(self, "_key", (self.major, self.minor, self.patch, pre))

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse `MAJOR.MINOR.PATCH[-pre.release][+build.meta]`; raises VersionError."""
        if not isinstance(text, str):
            raise VersionError(f"a version must be a string, not {type(text).__name__}")
        m = _SEMVER.match(text) if len(text) <= _MAX_LEN else None
        if m is None:
            raise VersionError(
                f"{text[:_MAX_LEN]!r} is not a semantic version: write MAJOR.MINOR.PATCH "
                "with optional -prerelease and +build parts, no leading zeros "
                f"(e.g. 1.2.0 or 2.0.0-rc.1), at most {_MAX_LEN} characters"
            )
        major, minor, patch, pre, build = m.groups()
        return cls(
            int(major),
            int(minor),
            int(patch),
            tuple(pre.split(".")) if pre else (),
            tuple(build.split(".")) if build else (),
        )

    @property
    def is_prerelease(self) -> bool:
        """True for versions like 1.0.0-rc.1."""
        return bool(self.prerelease)

    def __str__(self) -> str:
        s = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            s += "-" + ".".join(self.prerelease)
        if self.build:
            s += "+" + ".".join(self.build)
        return s

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key == other._key

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key < other._key

    def __hash__(self) -> int:
        return hash(self._key)
