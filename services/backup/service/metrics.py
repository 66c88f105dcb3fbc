"""Prometheus gauges of the backup service (on the service registry)."""

from __future__ import annotations

from libs.service.metrics import REGISTRY, Gauge

__all__ = [
    "LAST_DURATION",
    "LAST_FAILURE",
    "LAST_NEW_BYTES",
    "LAST_SIZE",
    "LAST_SUCCESS",
    "SCHEDULED_SINCE",
]

LAST_SUCCESS = Gauge(
    "homeport_backup_last_success_timestamp_seconds",
    "When the last backup run completed without a failure (Unix time).",
    registry=REGISTRY,
)
LAST_FAILURE = Gauge(
    "homeport_backup_last_failure_timestamp_seconds",
    "When a backup last failed (Unix time).",
    registry=REGISTRY,
)
LAST_DURATION = Gauge(
    "homeport_backup_last_duration_seconds",
    "How long the last completed backup run took.",
    registry=REGISTRY,
)
LAST_SIZE = Gauge(
    "homeport_backup_last_size_bytes",
    "Bytes of the data read by the last completed backup run.",
    registry=REGISTRY,
)
LAST_NEW_BYTES = Gauge(
    "homeport_backup_last_new_bytes",
    "Bytes of new data the last completed backup run stored.",
    registry=REGISTRY,
)
SCHEDULED_SINCE = Gauge(
    "homeport_backup_scheduled_since_timestamp_seconds",
    "Since when daily backups are set up (a target, a key, the schedule on; Unix time), else 0.",
    registry=REGISTRY,
)
