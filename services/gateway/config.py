"""Gateway configuration, read once from HP_* environment variables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from libs.events.relay import DEFAULT_PREFIX, DEFAULT_STREAM
from libs.service.config import ServiceConfig, check

__all__ = ["DASHBOARD_DIR", "GatewayConfig"]

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboard" / "dist"  # `make dashboard` output


def _positive(v: float) -> bool:
    return v > 0


@dataclass(frozen=True)
class GatewayConfig(ServiceConfig):
    """What the gateway reads beyond every service's settings."""

    events_stream: str = DEFAULT_STREAM
    events_prefix: str = DEFAULT_PREFIX
    # The edge (nginx): off unless the stack or a unit turns it on. Ports 80/443 in production,
    # high ports in the local stack; bind () = every address.
    edge: bool = False
    edge_dir: Path = Path(".homeport/edge")
    edge_http_port: int = 80
    edge_https_port: int = 443
    edge_bind: tuple[str, ...] = ()
    # Seconds between two reconciliations when no event comes (the edge follows the events;
    # this poll is only a safety net).
    edge_interval: float = field(default=30.0, metadata=check(_positive, "seconds > 0"))
    acme_dir: Path = Path(".homeport/acme")  # HTTP-01 tokens, written by the certs service
    local_domain: str = "localhost"
    # The built dashboard (`make dashboard` writes it): index.html and assets/.
    dashboard_dir: Path = DASHBOARD_DIR
    # The metrics history the dashboard graphs (metrics_history.py): a sample every interval,
    # kept this many days.
    metrics_interval: float = field(default=60.0, metadata=check(_positive, "seconds > 0"))
    metrics_retention_days: int = field(default=7, metadata=check(_positive, "days >= 1"))
