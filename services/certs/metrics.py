"""Prometheus gauges of the certs service, one series per certificate (its primary name).

Set from the read model: each row written (projections.write_row) and every renewal check
(engine.check_once, also at start), so they hold after a restart. The alert rules of
deploy/prometheus/ read them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from datetime import datetime

from libs.service.metrics import REGISTRY, Gauge

__all__ = ["NOT_AFTER", "RENEWAL_FAILURES", "forget", "observe", "observe_all"]

NOT_AFTER = Gauge(
    "homeport_cert_not_after_timestamp_seconds",
    "When the certificate served for a name expires (Unix time); none while a fallback serves",
    ["name"],
    registry=REGISTRY,
)
RENEWAL_FAILURES = Gauge(
    "homeport_cert_renewal_failures",
    "Orders for a name's certificate failed in a row (0 once one succeeds)",
    ["name"],
    registry=REGISTRY,
)


def observe(name: str, not_after: datetime | None, failures: int) -> None:
    """The gauges of one certificate from its row."""
    RENEWAL_FAILURES.labels(name).set(failures)
    if not_after is not None:
        NOT_AFTER.labels(name).set(not_after.timestamp())
    else:
        with contextlib.suppress(KeyError):
            NOT_AFTER.remove(name)


def forget(name: str) -> None:
    """A certificate forgotten: its series go."""
    for gauge in (NOT_AFTER, RENEWAL_FAILURES):
        with contextlib.suppress(KeyError):
            gauge.remove(name)


def observe_all(rows: Iterable[tuple[str, datetime | None, int]]) -> None:
    """Every certificate of the read model (name, not_after, failures); the others go."""
    seen = set()
    for name, not_after, failures in rows:
        observe(name, not_after, failures)
        seen.add(name)
    for gauge in (NOT_AFTER, RENEWAL_FAILURES):
        for metric in gauge.collect():
            for sample in metric.samples:
                if sample.labels["name"] not in seen:
                    with contextlib.suppress(KeyError):
                        gauge.remove(sample.labels["name"])
