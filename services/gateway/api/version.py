"""The version of Homeport, from the installed package's metadata."""

from __future__ import annotations

from importlib import metadata

__all__ = ["VERSION"]


def _version() -> str:
    try:
        return metadata.version("homeport")
    except metadata.PackageNotFoundError:
        return "0+unknown"  # running from a tree that was never installed


VERSION = _version()
