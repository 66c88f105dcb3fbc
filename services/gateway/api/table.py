"""The route table of /api/v1: the `routes` of every handlers module, in one place."""

from __future__ import annotations

from services.gateway.api.handlers import (
    activity,
    app_updates,
    apps,
    backups,
    certificates,
    domains,
    firewall,
    groups,
    identity,
    mail,
    metrics,
    notifications,
    platform,
    platform_updates,
    security,
    setup_restore,
    tasks,
)
from services.gateway.api.routes import RouteTable

__all__ = ["default_table"]

# A new area of the API is one more module here; a new route is one declaration in its module.
_MODULES = (
    platform,
    activity,
    identity,
    setup_restore,
    groups,
    security,
    tasks,
    apps,
    app_updates,
    platform_updates,
    backups,
    domains,
    certificates,
    mail,
    firewall,
    notifications,
    metrics,
)


def default_table() -> RouteTable:
    """Every route the gateway serves."""
    return RouteTable(route for module in _MODULES for route in module.routes)
