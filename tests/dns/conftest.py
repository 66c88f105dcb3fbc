"""Fixtures of the dns tests: moto standing in for Route 53 (PowerDNS is in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.moto import MotoServer, Route53Zone, fresh_hosted_zone, run_moto


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    """One moto server per xdist worker."""
    yield from run_moto()


@pytest.fixture
def route53_zone(moto: MotoServer) -> Iterator[Route53Zone]:
    """A fresh hosted zone for this test, deleted at the end."""
    yield from fresh_hosted_zone(moto)
