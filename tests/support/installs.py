"""A server install's layout in a temp dir, for the services that read it (the platform
updates panel): version 1.0.0 in `current`, /etc/homeport with the pinned release key, the
release URL of a release directory and homeport.env naming the test's event store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deploy.layout import Layout
from deploy.release import build_release, generate_key, public_key_text
from deploy.update import switch_link
from tests.support.releases import git_checkout

__all__ = ["Install", "server_install"]


@dataclass
class Install:
    """The layout, its release directory `www` (serve it: tests/support/releases.py) and key."""

    layout: Layout
    www: Path
    key: Ed25519PrivateKey
    src: Path
    reboot: Path  # where Debian's /run/reboot-required would be

    def release(self, version: str) -> None:
        """Publish a signed `version` (changelog "what <version> brings") in `www`."""
        repo = git_checkout(self.src / version, {"VERSION": version})
        build_release(repo, version, self.key, self.www, changelog=f"what {version} brings\n")

    def alter_manifest(self, version: str) -> None:
        """Change the published manifest of `version` after it was signed."""
        manifest = self.www / f"homeport-{version}.json"
        manifest.write_text(manifest.read_text().replace(f"what {version}", "what else"))

    def apps_env(self) -> dict[str, str]:
        """The apps service's settings for this install (checked once, at start)."""
        return {
            "HP_INSTALL_ROOT": str(self.layout.prefix),
            "HP_PLATFORM_CHECK_INTERVAL": "0",
            "HP_REBOOT_REQUIRED_FILE": str(self.reboot),
        }


def server_install(tmp_path: Path, dsn: str) -> Install:
    """1.0.0 installed under `tmp_path/root` and published in `tmp_path/www`; write the URL
    the directory is served at into `layout.release_url_file`."""
    layout = Layout(tmp_path / "root")
    layout.etc.mkdir(parents=True)
    (layout.opt / "1.0.0").mkdir(parents=True)
    switch_link(layout.current, "1.0.0")
    key = generate_key(tmp_path / "release.key")
    layout.release_key.write_text(public_key_text(key))
    layout.env_file.write_text(f"HP_DATABASE_URL={dsn}\n")
    install = Install(
        layout, tmp_path / "www", key, tmp_path / "src", tmp_path / "run" / "reboot-required"
    )
    install.www.mkdir()
    install.reboot.parent.mkdir()
    install.release("1.0.0")
    return install
