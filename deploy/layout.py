"""Where a server install keeps its code, configuration and data: one `Layout`, every path in it.

The shape (issue 15): code in `/opt/homeport/<version>/` (its own venv in `<version>/venv`),
`/opt/homeport/current` a symlink to the running version, `/opt/homeport/previous` to the one
before; configuration in `/etc/homeport/` (`homeport.env`, `release.pub`, `release-url`); data
in `/var/lib/homeport`. Tests pass `prefix=tmp_path` and get the same tree under it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Layout"]


@dataclass(frozen=True)
class Layout:
    """The paths of one install, all under `prefix` (`/` on a server, a temp dir in tests)."""

    prefix: Path = Path("/")

    @property
    def opt(self) -> Path:
        """Where every installed version lives: `/opt/homeport`."""
        return self.prefix / "opt" / "homeport"

    def releases(self, version: str) -> Path:
        """The code of one version: `/opt/homeport/<version>`."""
        if not version or "/" in version or version in (".", "..") or version.startswith("."):
            raise ValueError(f"version {version!r} cannot name a directory")
        return self.opt / version

    def venv(self, version: str) -> Path:
        """The virtualenv of one version: `/opt/homeport/<version>/venv`."""
        return self.releases(version) / "venv"

    @property
    def current(self) -> Path:
        """The symlink to the running version."""
        return self.opt / "current"

    @property
    def previous(self) -> Path:
        """The symlink to the version before the running one (the rollback target)."""
        return self.opt / "previous"

    @property
    def etc(self) -> Path:
        """Configuration: `/etc/homeport`."""
        return self.prefix / "etc" / "homeport"

    @property
    def env_file(self) -> Path:
        """The HP_* settings the units read: `/etc/homeport/homeport.env`."""
        return self.etc / "homeport.env"

    @property
    def admin_env_file(self) -> Path:
        """The superuser's database URL, for root's tools only (updates, restores, audit):
        `/etc/homeport/admin.env` (0600 root). No unit reads it."""
        return self.etc / "admin.env"

    def database_env_file(self, service: str) -> Path:
        """One service's own database URL (its Postgres role, libs/events/roles.py), read by its
        unit only: `/etc/homeport/database/<service>.env` (0600 root)."""
        return self.etc / "database" / f"{service}.env"

    @property
    def release_key(self) -> Path:
        """The pinned Ed25519 public key releases must be signed with (PEM)."""
        return self.etc / "release.pub"

    @property
    def release_url_file(self) -> Path:
        """One line: the URL of the directory that holds `latest.json`."""
        return self.etc / "release-url"

    @property
    def data(self) -> Path:
        """Data: `/var/lib/homeport`."""
        return self.prefix / "var" / "lib" / "homeport"

    def version_of(self, link: Path) -> str | None:
        """The version a symlink (`current`/`previous`) points at, None when it is absent."""
        if not link.is_symlink():
            return None
        return Path(link.readlink()).name
