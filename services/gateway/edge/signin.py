"""The platform's sign-in at the edge, for apps without one of their own (manifest `signIn`
"edge") whose access list is not everyone.

nginx asks `GET /.homeport/check` (an internal subrequest, services/gateway/edge/render.py) about
every request to such an app; the answer is 204 with `X-Homeport-User`/`-Email` (nginx hands
them to the app), 401 with `X-Homeport-Location` (nginx sends the browser there: the sign-in at
`my.<domain>`) or 403 (signed in, not on the app's list).

Signing in, for app host H of domain D:
1. `https://my.D/.homeport/signin?next=<https://H/...>`: with a live dashboard session, a
   one-time code (60 s, single use, bound to H) and a redirect to
   `https://H/.homeport/callback?code=...&next=/...`; without one, the dashboard's sign-in page,
   which comes back here once signed in.
2. The callback (on H, through nginx) exchanges the code for the cookie `__Host-hp_edge`
   (Secure, HttpOnly, SameSite=Lax, Path=/, host-only) and redirects to the page asked for.
3. `https://H/.homeport/signout` clears it.

The cookie is the user's dashboard session, encrypted and authenticated (AES-256-GCM) with a
key this process makes at start, bound to H and to an expiry. Every check asks identity's
`whoami` about that session through the gateway's principal cache (at most 1 s old, dropped on
identity's announcements): a user who signs out of the dashboard, is disabled or deleted loses
every app within a second, with no second kind of session to revoke. The key is never stored:
a restarted gateway costs each browser one silent bounce through `my.D`. nginx cuts the cookie
out of what the app is sent; nothing here logs it.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

from aiohttp import web
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from yarl import URL

from libs.events.bus import BusClient
from libs.events.context import Context
from libs.events.envelope import uuid7
from libs.events.nats_access import GATEWAY
from services.gateway.api.auth import (
    SESSION_COOKIE,
    Authenticator,
    Credentials,
    Principal,
    Via,
)
from services.gateway.edge.render import EDGE_COOKIE, EDGE_PREFIX

__all__ = [
    "CODE_SECONDS",
    "COOKIE_SECONDS",
    "CookieBox",
    "EdgeAccess",
    "EdgeSignIn",
    "OneTimeCodes",
    "Rule",
    "add_edge_signin",
]

log = logging.getLogger("homeport.gateway.edge")

CODE_SECONDS = 60.0
COOKIE_SECONDS = 12 * 3600  # a dashboard session's absolute limit: whoami decides before then
GROUPS_SECONDS = 1.0  # how long identity's group memberships are reused
_MAX_CODES = 10_000
_SECRET = re.compile(r"[\x21-\x7e]{1,512}")
_CODE = re.compile(r"[A-Za-z0-9_-]{20,100}")
_URI = re.compile(r"/[\x21-\x7e]{0,8000}")
_AAD = b"homeport-edge-cookie-v1\0"


@dataclass(frozen=True, slots=True)
class Rule:
    """Who may open an app host signed in at the edge: these users and these groups' members."""

    user_ids: frozenset[str]
    groups: frozenset[str]


class EdgeAccess:
    """The rules of the app hosts signed in at the edge, as the edge's last round read them."""

    def __init__(self) -> None:
        self._rules: dict[str, Rule] = {}

    def replace(self, rules: Mapping[str, Rule]) -> None:
        self._rules = dict(rules)

    def rule(self, host: str) -> Rule | None:
        return self._rules.get(host)


class CookieBox:
    """Seals a session secret for one host until an expiry; opens only what it sealed."""

    def __init__(self, key: bytes | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self._aead = AESGCM(key if key is not None else AESGCM.generate_key(bit_length=256))
        self._clock = clock

    def seal(self, session: str, host: str, seconds: float = COOKIE_SECONDS) -> str:
        nonce = os.urandom(12)
        plain = json.dumps({"s": session, "e": int(self._clock() + seconds)}).encode()
        sealed = self._aead.encrypt(nonce, plain, _AAD + host.encode())
        return base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def open(self, value: str, host: str) -> str | None:
        """The session sealed for `host` in `value`, if it is ours, for this host and not
        expired; None otherwise."""
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            plain = self._aead.decrypt(raw[:12], raw[12:], _AAD + host.encode())
            body = json.loads(plain)
        except (ValueError, binascii.Error, InvalidTag):
            return None
        session, expires = body.get("s"), body.get("e")
        if not isinstance(session, str) or not isinstance(expires, int):
            return None
        return session if expires > self._clock() else None


@dataclass(frozen=True, slots=True)
class _Code:
    session: str
    host: str
    expires: float


class OneTimeCodes:
    """Codes that stand for a session on one host: short-lived, each usable once."""

    def __init__(
        self, seconds: float = CODE_SECONDS, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.seconds = seconds
        self._clock = clock
        self._codes: OrderedDict[str, _Code] = OrderedDict()

    def issue(self, session: str, host: str) -> str:
        now = self._clock()
        while self._codes:  # oldest first: drop the expired ones
            first = next(iter(self._codes.values()))
            if first.expires > now and len(self._codes) < _MAX_CODES:
                break
            self._codes.popitem(last=False)
        code = secrets.token_urlsafe(32)
        self._codes[code] = _Code(session, host, now + self.seconds)
        return code

    def take(self, code: str, host: str) -> str | None:
        """The session of `code` if it was issued for `host` and has not expired; the code
        is used up either way."""
        entry = self._codes.pop(code, None)
        if entry is None or entry.host != host or entry.expires <= self._clock():
            return None
        return entry.session


def _redirect(location: str, **headers: str) -> web.Response:
    """A 302 to `location` as given (aiohttp's HTTPFound would re-encode it)."""
    return web.Response(
        status=302, headers={"Location": location, "Cache-Control": "no-store", **headers}
    )


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", headers={"Cache-Control": "no-store"})


class EdgeSignIn:
    """The gateway's answers to nginx's checks and the sign-in pages around them."""

    def __init__(
        self,
        access: EdgeAccess,
        authenticator: Authenticator,
        bus: Callable[[], BusClient],
        https_port: int,
        *,
        box: CookieBox | None = None,
        codes: OneTimeCodes | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.access = access
        self.authenticator = authenticator
        self._bus = bus
        self.https_port = https_port
        self.box = box or CookieBox()
        self.codes = codes or OneTimeCodes()
        self._clock = clock
        self._groups: tuple[float, dict[str, set[str]]] | None = None  # (asked at, user -> ids)

    # -- helpers ---------------------------------------------------------------------------

    def _origin(self, host: str) -> str:
        return f"https://{host}" + ("" if self.https_port == 443 else f":{self.https_port}")

    @staticmethod
    def _host(request: web.Request) -> str:
        return (request.url.host or "").lower()

    @staticmethod
    def _context(request: web.Request) -> Context:
        ip = request.headers.get("X-Real-IP") or request.remote
        return Context("anonymous", str(uuid7()), None, ip)

    async def _principal_of(self, session: str, request: web.Request) -> Principal | None:
        if not _SECRET.fullmatch(session):
            return None
        creds = Credentials(Via.session, session)
        return await self.authenticator.authenticate(creds, self._context(request))

    async def _group_ids(self, user_id: str) -> set[str]:
        now = self._clock()
        if self._groups is None or now - self._groups[0] > GROUPS_SECONDS:
            ctx = Context(GATEWAY, str(uuid7()), None, None)
            answer = await self._bus().query("identity", "groups", {}, ctx=ctx)
            members: dict[str, set[str]] = {}
            for g in answer.get("items", []):
                for member in g.get("members", []):
                    members.setdefault(str(member), set()).add(str(g["group_id"]))
            self._groups = (now, members)
        return self._groups[1].get(user_id, set())

    async def _allowed(self, rule: Rule, user_id: str) -> bool:
        if user_id in rule.user_ids:
            return True
        return bool(rule.groups) and bool(rule.groups & await self._group_ids(user_id))

    def _signin_url(self, host: str, uri: str) -> str:
        domain = host.split(".", 1)[1]
        back = self._origin(host) + uri
        return f"{self._origin('my.' + domain)}{EDGE_PREFIX}signin?next={quote(back, safe='')}"

    # -- handlers --------------------------------------------------------------------------

    async def check(self, request: web.Request) -> web.StreamResponse:
        """nginx's subrequest: 204 (with the user), 401 (with where to sign in) or 403."""
        host = self._host(request)
        rule = self.access.rule(host)
        if rule is None:  # not (or no longer) an app signed in here: fail closed
            return web.Response(status=403)
        uri = request.headers.get("X-Homeport-Uri", "/")
        if not _URI.fullmatch(uri) or uri.startswith(EDGE_PREFIX):
            uri = "/"
        sign_in = web.Response(
            status=401, headers={"X-Homeport-Location": self._signin_url(host, uri)}
        )
        sealed = request.cookies.get(EDGE_COOKIE)
        session = self.box.open(sealed, host) if sealed else None
        if session is None:
            return sign_in
        principal = await self._principal_of(session, request)
        if principal is None:
            return sign_in
        if not await self._allowed(rule, principal.user_id):
            return web.Response(status=403)
        headers = {"X-Homeport-User": principal.username}
        email = (principal.profile or {}).get("email")
        if isinstance(email, str) and _SECRET.fullmatch(email):
            headers["X-Homeport-Email"] = email
        return web.Response(status=204, headers=headers)

    async def signin(self, request: web.Request) -> web.StreamResponse:
        """On my.<domain>: a code for the app the browser came from, or the sign-in page."""
        here = self._host(request)
        try:
            target = URL(request.query.get("next", ""))
        except ValueError:
            target = URL()
        host = (target.host or "").lower()
        ok = (
            target.scheme == "https"
            and target.port == self.https_port
            and not target.user
            and self.access.rule(host) is not None
            and here == "my." + host.split(".", 1)[-1]
        )
        if not ok:
            return _text(
                400,
                "This sign-in link is not for an app of this server: open the app at its own "
                "address and sign in from there.",
            )
        session = request.cookies.get(SESSION_COOKIE)
        principal = await self._principal_of(session, request) if session else None
        if principal is None or session is None:
            back = quote(request.raw_path, safe="")  # as sent: path and query
            return _redirect(f"/#/login?next={back}")
        code = self.codes.issue(session, host)
        path = target.raw_path_qs if target.raw_path.startswith("/") else "/"
        query = f"code={code}&next={quote(path, safe='')}"
        callback = f"{self._origin(host)}{EDGE_PREFIX}callback?{query}"
        return _redirect(callback, **{"Referrer-Policy": "no-referrer"})

    async def callback(self, request: web.Request) -> web.StreamResponse:
        """On the app's host: the code for the cookie, then the page asked for."""
        host = self._host(request)
        code = request.query.get("code", "")
        session = self.codes.take(code, host) if _CODE.fullmatch(code) else None
        if session is None:
            return _text(
                400,
                "This sign-in link has expired or was already used: open the app again to sign in.",
            )
        nxt = request.query.get("next", "/")
        if not _URI.fullmatch(nxt) or nxt.startswith(("//", "/\\", EDGE_PREFIX)):
            nxt = "/"
        response = _redirect(nxt, **{"Referrer-Policy": "no-referrer"})
        response.set_cookie(
            EDGE_COOKIE,
            self.box.seal(session, host),
            max_age=COOKIE_SECONDS,
            path="/",
            secure=True,
            httponly=True,
            samesite="Lax",
        )
        return response

    async def signout(self, request: web.Request) -> web.StreamResponse:
        """On the app's host: forget the cookie."""
        host = self._host(request)
        dashboard = self._origin("my." + host.split(".", 1)[-1])
        response = _text(
            200,
            f"You are signed out of {host}. Sign out of Homeport at {dashboard}/ to end your "
            "session everywhere.",
        )
        response.set_cookie(
            EDGE_COOKIE, "", max_age=0, path="/", secure=True, httponly=True, samesite="Lax"
        )
        return response


def add_edge_signin(app: web.Application, signin: EdgeSignIn) -> None:
    """Serve the edge's sign-in from the gateway's root app (under /.homeport/)."""
    app.router.add_get(f"{EDGE_PREFIX}check", signin.check)
    app.router.add_get(f"{EDGE_PREFIX}signin", signin.signin)
    app.router.add_get(f"{EDGE_PREFIX}callback", signin.callback)
    app.router.add_get(f"{EDGE_PREFIX}signout", signin.signout)
    app.router.add_post(f"{EDGE_PREFIX}signout", signin.signout)
