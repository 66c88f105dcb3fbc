"""The gateway's own errors, rooted at GatewayError: callers catch one type.

An error that crosses the bus also inherits its wire class (`libs/contracts/errors.py`), so the
caller gets its code; the HTTP layer's refusals (`api.problems.Problem`) join the tree too.
"""

from __future__ import annotations

from libs.contracts.errors import Unavailable

__all__ = ["EdgeError", "EdgeOff", "GatewayError"]


class GatewayError(Exception):
    """Something the gateway itself refused or could not do; the message says what to do."""


class EdgeError(GatewayError):
    """nginx refused a configuration, did not start, or did not take a reload."""


class EdgeOff(GatewayError, Unavailable):
    """This gateway runs no edge (HP_EDGE is off): nothing here serves app hosts."""

    def __init__(self) -> None:
        super().__init__(
            "this gateway runs no edge (HP_EDGE=false), so no host is served through it; "
            "turn HP_EDGE on where nginx should serve the apps"
        )
