"""Gateway configuration, read once from HP_* environment variables."""

from __future__ import annotations

from dataclasses import dataclass

from libs.events.relay import DEFAULT_PREFIX, DEFAULT_STREAM
from libs.service.config import ServiceConfig

__all__ = ["GatewayConfig"]


@dataclass(frozen=True)
class GatewayConfig(ServiceConfig):
    """What the gateway reads beyond every service's settings."""

    events_stream: str = DEFAULT_STREAM
    events_prefix: str = DEFAULT_PREFIX
