"""Prometheus metrics of a Homeport service, on a registry of their own (not the global one)."""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.exposition import choose_encoder

__all__ = [
    "EVENTS_APPENDED",
    "HANDLER_ERRORS",
    "HANDLER_LATENCY",
    "LATENCY_BUCKETS",
    "REGISTRY",
    "RELAY_LAG_EVENTS",
    "RELAY_LAG_SECONDS",
    "render_metrics",
]

REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

# 0.5 ms to 10 s: a query served from a read model up to a slow command.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

EVENTS_APPENDED = Counter(
    "homeport_events_appended",
    "Events appended to the event store, by event type.",
    ["type"],
    registry=REGISTRY,
)
RELAY_LAG_EVENTS = Gauge(
    "homeport_relay_lag_events",
    "Committed events not yet published to JetStream by the relay.",
    registry=REGISTRY,
)
RELAY_LAG_SECONDS = Gauge(
    "homeport_relay_lag_seconds",
    "Age of the oldest committed event not yet published by the relay.",
    registry=REGISTRY,
)
HANDLER_LATENCY = Histogram(
    "homeport_handler_latency_seconds",
    "Time to handle a command or query, by NATS subject.",
    ["subject"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
HANDLER_ERRORS = Counter(
    "homeport_handler_errors",
    "Command and query handler errors, by NATS subject and error code.",
    ["subject", "code"],
    registry=REGISTRY,
)


def render_metrics(accept: str = "") -> tuple[bytes, str]:
    """The exposition of REGISTRY and its content type (OpenMetrics if `accept` asks for it)."""
    encoder, content_type = choose_encoder(accept)
    return encoder(REGISTRY), content_type
