"""The version of Homeport, from the installed package's metadata."""

from __future__ import annotations

from libs.service.version import package_version

__all__ = ["VERSION"]

VERSION = package_version()
