"""Settings of the public API, read once from HP_* variables (beside GatewayConfig)."""

from __future__ import annotations

from dataclasses import dataclass, field

from libs.service.config import check
from services.gateway.api.security import normalize_origin

__all__ = ["ApiConfig"]


def _origin_ok(value: str) -> bool:
    return normalize_origin(value) is not None


def _origins_ok(values: tuple[str, ...]) -> bool:
    return all(_origin_ok(v) and v != "*" for v in values)


@dataclass(frozen=True)
class ApiConfig:
    """HP_PUBLIC_ORIGIN: the dashboard's origin (https://my.example.com); HP_CORS_ORIGINS:
    other exact origins allowed to call the API from a browser (none by default)."""

    public_origin: str | None = field(
        default=None, metadata=check(_origin_ok, "an origin such as https://my.example.com")
    )
    cors_origins: tuple[str, ...] = field(
        default=(), metadata=check(_origins_ok, "a comma separated list of exact origins")
    )

    @property
    def origin(self) -> str | None:
        """The public origin, normalized."""
        return normalize_origin(self.public_origin) if self.public_origin else None

    @property
    def cors(self) -> frozenset[str]:
        """The CORS origins, normalized."""
        return frozenset(o for o in map(normalize_origin, self.cors_origins) if o is not None)
