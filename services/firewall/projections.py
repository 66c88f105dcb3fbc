"""The firewall's projections, for `homeport replay`."""

from services.firewall.bans import BanProjection

__all__ = ["BanProjection"]
