"""Addons apps can ask for in their manifest: servers the platform runs for them."""

from services.apps.addons.postgresql import AddonError, AddonPostgres, PostgresCredentials

__all__ = ["AddonError", "AddonPostgres", "PostgresCredentials"]
