"""Fixtures of the edge tests: a test CA, an echoing upstream and a running nginx."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.nginx import (
    HOSTS,
    Edge,
    Pki,
    Upstream,
    make_pki,
    running_edge,
    traversable_dir,
    upstream_app,
)


@pytest.fixture(scope="session")
def pki(tmp_root: Path) -> Pki:
    return make_pki(tmp_root / f"edge-pki-{uuid.uuid4().hex[:8]}", HOSTS)


@pytest.fixture
def edge_root(tmp_root: Path) -> Iterator[Path]:
    """A directory nginx's workers (www-data) can traverse: tmp_root is 0755, tmp_path is not."""
    yield from traversable_dir(tmp_root)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with upstream_app() as up:
        yield up


@pytest.fixture
async def edge(edge_root: Path, pki: Pki, upstream: Upstream) -> AsyncIterator[Edge]:
    """nginx serving the dashboard at my.example.test and an app at blog.example.test."""
    async with running_edge(edge_root, pki, upstream) as e:
        yield e
