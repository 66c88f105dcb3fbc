"""What a test does when a server it needs is missing."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["IN_CI", "need_server"]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need_server(what: str, err: Exception) -> NoReturn:
    """Under CI a missing server fails the run; elsewhere the skip says why."""
    msg = f"{what} unavailable: {err}"
    if IN_CI:
        pytest.fail(msg + " (CI=true: servers are required)", pytrace=False)
    print(f"SKIP: {msg}")
    pytest.skip(msg)
