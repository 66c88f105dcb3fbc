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


def _cache_seconds_ok(value: float) -> bool:
    return 0 <= value <= 1


def _positive(value: int) -> bool:
    return value > 0


@dataclass(frozen=True)
class ApiConfig:
    """HP_PUBLIC_ORIGIN: the dashboard's origin (https://my.example.com); HP_CORS_ORIGINS:
    other exact origins allowed to call the API from a browser (none by default);
    HP_PRINCIPAL_CACHE_SECONDS, HP_PRINCIPAL_CACHE_SIZE: the principal cache (principals.py)."""

    public_origin: str | None = field(
        default=None, metadata=check(_origin_ok, "an origin such as https://my.example.com")
    )
    cors_origins: tuple[str, ...] = field(
        default=(), metadata=check(_origins_ok, "a comma separated list of exact origins")
    )
    # How long the gateway may reuse identity's answer to "who is this credential?" (0: ask
    # every time). At most 1 s: SECURITY.md, a disabled user's sessions end within 1 s.
    principal_cache_seconds: float = field(
        default=1.0, metadata=check(_cache_seconds_ok, "a number of seconds from 0 to 1")
    )
    principal_cache_size: int = field(
        default=10_000, metadata=check(_positive, "a whole number of entries > 0")
    )

    @property
    def origin(self) -> str | None:
        """The public origin, normalized."""
        return normalize_origin(self.public_origin) if self.public_origin else None

    @property
    def cors(self) -> frozenset[str]:
        """The CORS origins, normalized."""
        return frozenset(o for o in map(normalize_origin, self.cors_origins) if o is not None)
