"""The public REST API of Homeport under /api/v1: a route table, one dispatcher, problems."""

from __future__ import annotations

from services.gateway.api.app import API_APP, API_PREFIX, API_STATE, ApiState, build_api, mount_api
from services.gateway.api.auth import (
    SESSION_COOKIE,
    Authenticator,
    BusAuthenticator,
    Credentials,
    Principal,
    Scope,
    Via,
)
from services.gateway.api.backend import Backend, ConnectionsBackend
from services.gateway.api.config import ApiConfig
from services.gateway.api.routes import Access, Call, Reply, Route, Routes, RouteTable
from services.gateway.api.table import default_table

__all__ = [
    "API_APP",
    "API_PREFIX",
    "API_STATE",
    "SESSION_COOKIE",
    "Access",
    "ApiConfig",
    "ApiState",
    "Authenticator",
    "Backend",
    "BusAuthenticator",
    "Call",
    "ConnectionsBackend",
    "Credentials",
    "Principal",
    "Reply",
    "Route",
    "RouteTable",
    "Routes",
    "Scope",
    "Via",
    "build_api",
    "default_table",
    "mount_api",
]
