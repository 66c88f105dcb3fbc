"""Who is calling: credentials from the request, resolved into a Principal by an Authenticator.

Credentials are the session cookie `__Host-hp_session` or `Authorization: Bearer <token>`
(the header wins when both are sent). The production Authenticator asks identity over the bus:

    hp.qry.identity.whoami  {"session": "<cookie value>"} or {"token": "<bearer token>"}
      -> {"user_id": str, "username": str, "is_admin": bool, "scope": "full" | "read",
          "totp_enrolment_required"?: true,  (an admin who must enrol a second factor first)
          "profile"?: {user_id, username, email, display_name, is_admin, disabled}}
         (`profile` is the `profile` query's answer for the user, so GET /profile needs no
         second call; without it, as from an older identity, the gateway asks `profile`)
      -> error `unauthorized` when the session or token is unknown, expired or revoked

The running gateway caches whoami's answers for at most a second, and drops them when identity
announces a change on `hp.identity.changed` (principals.py): a revoked token or ended session
is refused on the next request, a disabled user's within a second whatever happens.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from aiohttp import web

from libs.events.bus import BusClient, Internal, Unauthorized
from libs.events.context import Context

__all__ = [
    "SESSION_COOKIE",
    "Authenticator",
    "BusAuthenticator",
    "Credentials",
    "Principal",
    "Scope",
    "Via",
    "credentials_of",
]

SESSION_COOKIE = "__Host-hp_session"
WHOAMI_TIMEOUT = 3.0  # seconds; an authentication that takes longer fails as deadline_exceeded
# Printable ASCII without spaces (RFC 6750 b64token is narrower; identity decides validity).
_SECRET = re.compile(r"[\x21-\x7e]{1,512}")
# name=value pairs joined by "; ", both of RFC 6265 cookie-octets (no space, quote, comma,
# semicolon or backslash), the value possibly empty
_OCTETS = r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]"
_NAME = r"[\x21\x23-\x2b\x2d-\x3a\x3c\x3e-\x5b\x5d-\x7e]+"  # the octets but "="
_PLAIN_COOKIES = re.compile(rf"(?:{_NAME}={_OCTETS}*(?:; |$))+")
_BEARER = re.compile(r"(?i)bearer +(\S+) *")
# A header of our session cookie alone, a value `_SECRET` takes (most requests of a browser)
_SESSION_ALONE = re.compile(rf"{re.escape(SESSION_COOKIE)}=({_OCTETS}{{1,512}})")


class Scope(StrEnum):
    """What a principal may do: everything its role allows, or only read (GET/HEAD)."""

    full = "full"
    read = "read"


class Via(StrEnum):
    """How the caller authenticated."""

    session = "session"
    token = "token"  # noqa: S105 - a kind of credential, not one


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    user_id: str
    username: str
    is_admin: bool
    scope: Scope
    via: Via
    totp_enrolment_required: bool = False  # only enrolment routes until TOTP is on (app.py)
    # identity's profile of the user, when whoami sent it (GET /profile answers it)
    profile: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class Credentials:
    """A secret the caller presented, and what kind it is; never logged. Not frozen: a frozen
    dataclass's fields are set through object.__setattr__, and one is made per request."""

    via: Via
    secret: str = ""
    malformed: bool = False  # presented but unusable (wrong scheme, bad characters)

    def __repr__(self) -> str:
        return f"Credentials(via={self.via.value}, malformed={self.malformed})"


class Authenticator(Protocol):
    """Resolves credentials into a Principal.

    Returns None when the credentials are not (or no longer) valid; raises a BusError
    (Unavailable, DeadlineExceeded, Internal) when it cannot decide.
    """

    async def authenticate(self, credentials: Credentials, ctx: Context) -> Principal | None: ...


def _session_cookie(request: web.Request, header: str) -> str | None:
    """Our session cookie's value in a `Cookie` header, as `request.cookies` has it (the last
    one of the name wins), without making a Morsel of every cookie: a header of plain RFC 6265
    pairs is split here, anything else (quotes, spaces, a name alone) goes the long way."""
    if not _PLAIN_COOKIES.fullmatch(header):
        return request.cookies.get(SESSION_COOKIE)
    value = None
    for pair in header.split("; "):
        name, _, rest = pair.partition("=")
        if name == SESSION_COOKIE:
            value = rest
    return value


def credentials_of(request: web.Request) -> Credentials | None:
    """The credentials a request carries, if any."""
    headers = request.headers
    header = headers.get("Authorization")
    if header is not None:
        m = _BEARER.fullmatch(header)
        if m is None or not _SECRET.fullmatch(m.group(1)):
            return Credentials(Via.token, malformed=True)
        return Credentials(Via.token, m.group(1))
    header = headers.get("Cookie")
    if header is None:
        return None
    alone = _SESSION_ALONE.fullmatch(header)  # most requests: a value _SECRET takes
    if alone is not None:
        return Credentials(Via.session, alone.group(1))
    cookie = _session_cookie(request, header)
    if cookie is not None:
        if not _SECRET.fullmatch(cookie):
            return Credentials(Via.session, malformed=True)
        return Credentials(Via.session, cookie)
    return None


class BusAuthenticator:
    """The production Authenticator: `hp.qry.identity.whoami` over the bus."""

    def __init__(self, bus: Callable[[], BusClient], *, timeout: float = WHOAMI_TIMEOUT) -> None:
        self._bus = bus
        self._timeout = timeout

    async def authenticate(self, credentials: Credentials, ctx: Context) -> Principal | None:
        if credentials.malformed:
            return None
        key = "session" if credentials.via is Via.session else "token"
        try:
            reply = await self._bus().query(
                "identity", "whoami", {key: credentials.secret}, ctx=ctx, timeout=self._timeout
            )
        except Unauthorized:
            return None
        return _principal(reply, credentials.via)


def _principal(reply: Any, via: Via) -> Principal:
    if isinstance(reply, dict):
        user_id, username = reply.get("user_id"), reply.get("username")
        is_admin, scope = reply.get("is_admin"), reply.get("scope")
        if (
            isinstance(user_id, str)
            and user_id
            and isinstance(username, str)
            and isinstance(is_admin, bool)
            and scope in (Scope.full.value, Scope.read.value)
        ):
            enrol = reply.get("totp_enrolment_required") is True
            profile = reply.get("profile")
            if not isinstance(profile, dict) or profile.get("user_id") != user_id:
                profile = None
            return Principal(user_id, username, is_admin, Scope(scope), via, enrol, profile)
    raise Internal(
        "identity answered whoami with an unexpected reply: "
        "want {user_id, username, is_admin, scope}"
    )
