"""What every service process shares: config, JSON logs, metrics and the lifecycle runner."""

from __future__ import annotations

from libs.service.config import ConfigError, ServiceConfig, check, load_config
from libs.service.logs import bind_correlation, configure_logging, redact
from libs.service.metrics import REGISTRY, render_metrics
from libs.service.runner import Service, ServiceStopping, main

__all__ = [
    "REGISTRY",
    "ConfigError",
    "Service",
    "ServiceConfig",
    "ServiceStopping",
    "bind_correlation",
    "check",
    "configure_logging",
    "load_config",
    "main",
    "redact",
    "render_metrics",
]
