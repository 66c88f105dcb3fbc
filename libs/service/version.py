"""The version of Homeport the running code is, from the installed package's metadata."""

from __future__ import annotations

from importlib import metadata

__all__ = ["package_version"]


def package_version() -> str:
    """The `homeport` package's version; "0+unknown" in a tree that was never installed."""
    try:
        return metadata.version("homeport")
    except metadata.PackageNotFoundError:
        return "0+unknown"
