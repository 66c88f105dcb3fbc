"""The firewall's errors: one tree rooted at `FirewallError`, each with a user-facing message."""

from __future__ import annotations

__all__ = ["FirewallError", "NftError"]


class FirewallError(Exception):
    """Something the firewall service could not do; the message says what and what to do."""


class NftError(FirewallError):
    """nft could not be run, or refused a command; the message is nft's own."""
