"""Sign-ins of mail clients: the endpoint Dovecot's auth asks about every password.

Dovecot (and Postfix's SASL, through Dovecot) runs the Lua script render.py writes; it POSTs
`{user, password, ip, service}` here, on loopback, with the token only it and this service know
(`x-homeport-auth`). The answer is 200 `user=<mailbox address>` (Dovecot signs the client in as
that address), 403 (wrong) or 503 (identity cannot say; Dovecot answers a temporary failure).

An app's sending account (`app-<app id>`, its `sendmail` addon) signs in with the password mail
gave it, from the app's own network only. The platform itself (`PLATFORM_LOGIN`, its own mail:
outbound.py) signs in with the password made for this run, over SMTP from loopback only.
A person's login is the platform username, or an own address of the account on any mail domain.
An app password (kept here as its SHA-256) is checked first; anything else goes to identity's
`mail_login`, which checks the platform password (refused for accounts with TOTP: they use app
passwords), applies the per-address and per-account limits and records each refusal as a
`LoginFailed` with the client's address, so the firewall bans guessers as it does on the
dashboard. An unknown login goes to identity too: it answers and costs the same.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web

from libs.events.bus import BusClient, BusError
from services.mail.commands import app_password_hash
from services.mail.outbound import PLATFORM_LOGIN, PlatformLogin
from services.mail.people import SYSTEM, People, Person

__all__ = ["APP_PREFIX", "AUTH_HEADER", "AuthEndpoint", "Directory"]

log = logging.getLogger(__name__)

AUTH_HEADER = "x-homeport-auth"
APP_PREFIX = "app-"  # the login of an app's sending account: app-<app id>
_MAX_BODY = 8192
_PROTOCOLS = {"imap": "imap", "smtp": "smtp", "sieve": "managesieve", "managesieve": "managesieve"}


@dataclass(frozen=True, slots=True)
class Directory:
    """What a sign-in needs to know, as the sync last read it."""

    people: People
    domains: frozenset[str]  # mail domains that are on
    primary: str | None  # where mailboxes live


class AuthEndpoint:
    """The HTTP endpoint (aiohttp) Dovecot's Lua passdb calls."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        bus: BusClient,
        directory: Callable[[], Directory],
        token: str,
        timeout: float = 10.0,
        platform: PlatformLogin | None = None,
    ) -> None:
        self.platform = platform  # None: the platform never signs in here
        self.pool = pool
        self.bus = bus
        self.directory = directory
        self.token = token.encode()
        self.timeout = timeout
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_post("/auth", self._auth)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or ()
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _auth(self, request: web.Request) -> web.Response:
        given = request.headers.get(AUTH_HEADER, "").encode()
        if not hmac.compare_digest(given, self.token):
            return web.Response(status=401)
        try:
            body = json.loads(await request.read())
            login, password = str(body["user"]), str(body["password"])
            ip = _address(str(body.get("ip") or ""))
            protocol = _PROTOCOLS.get(str(body.get("service") or ""), "imap")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return web.Response(status=400)
        try:
            address = await self.check(login, password, ip, protocol)
        except BusError as e:
            log.warning("a mail sign-in could not be checked: identity answered %s", e.code)
            return web.Response(status=503)
        if address is None:
            return web.Response(status=403)
        return web.Response(text=f"user={address}")

    async def check(self, login: str, password: str, ip: str | None, protocol: str) -> str | None:
        """The mailbox address `login` signs in to with `password`; None when refused."""
        if login == PLATFORM_LOGIN:
            ok = self.platform is not None and self.platform.check(password, ip, protocol)
            return login if ok else None
        if login.startswith(APP_PREFIX):
            return await self._app(login, password, ip)
        d = self.directory()
        person = _person(d, login)
        if person is not None and d.primary is not None and not person.disabled:
            if await self._app_password(person, password):
                return f"{person.username}@{d.primary}"
        username = person.username if person is not None else login[:256]
        payload: dict[str, Any] = {
            "username": username,
            "password": password[:1024],
            "ip": ip,
            "protocol": protocol,
        }
        try:
            reply = await self.bus.command(
                "identity", "mail_login", payload, ctx=SYSTEM, timeout=self.timeout
            )
        except BusError as e:
            if e.code in ("unauthorized", "forbidden", "invalid", "not_found"):
                return None
            raise
        user_id = str(reply["user_id"])
        found = d.people.by_id().get(user_id)
        if found is None or d.primary is None:
            return None  # an account the mail service does not know yet (next round)
        return f"{found.username}@{d.primary}"

    async def _app(self, login: str, password: str, ip: str | None) -> str | None:
        """An app's sending account: its password, from its own network only."""
        row = await self.pool.fetchrow(
            "SELECT hash, network FROM mail.apps WHERE app_id = $1 AND NOT removed",
            login[len(APP_PREFIX) :],
        )
        given = app_password_hash(password)
        if row is None or row["hash"] is None:
            hmac.compare_digest(given, given)  # the same work as a wrong password
            return None
        if not hmac.compare_digest(given, row["hash"]):
            return None
        if ip is None or ipaddress.ip_address(ip) not in ipaddress.ip_network(row["network"]):
            log.warning("an app's mail password was used from outside its network")
            return None
        return login

    async def _app_password(self, person: Person, password: str) -> bool:
        password_id = await self.pool.fetchval(
            "UPDATE mail.app_passwords SET last_used_at = now()"
            " WHERE hash = $1 AND user_id = $2 AND revoked_at IS NULL RETURNING password_id",
            app_password_hash(password),
            person.user_id,
        )
        return password_id is not None


def _person(d: Directory, login: str) -> Person | None:
    login = login.strip().lower()
    local, at, domain = login.partition("@")
    if at and domain not in d.domains:
        return None
    return d.people.by_login(local)


def _address(value: str) -> str | None:
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None
