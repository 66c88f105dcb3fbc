"""The names of an app's runtime objects, derived from its id so every step is idempotent."""

from __future__ import annotations

from dataclasses import dataclass

from services.apps.manifest import Manifest

__all__ = ["Names", "image_tag"]


@dataclass(frozen=True)
class Names:
    """Container, network and volume names of one app."""

    prefix: str
    app_id: str

    @property
    def container(self) -> str:
        return f"{self.prefix}-app-{self.app_id}"

    @property
    def network(self) -> str:
        return f"{self.prefix}-net-{self.app_id}"

    @property
    def volume(self) -> str:
        return f"{self.prefix}-data-{self.app_id}"


def image_tag(manifest: Manifest) -> str:
    """The local tag of an app version's image."""
    return f"homeport-app/{manifest.id}:{manifest.version}".replace("+", "_")
