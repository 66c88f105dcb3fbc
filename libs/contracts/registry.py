"""Every service's contract by service name: what `BusClient` checks a payload against."""

from __future__ import annotations

from collections.abc import Mapping

from libs.contracts import Contract

__all__ = ["CONTRACTS"]

_ALL: tuple[Contract, ...] = ()

CONTRACTS: Mapping[str, Contract] = {c.service: c for c in _ALL}
