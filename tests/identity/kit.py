"""The real identity service (services.identity.__main__.build) running in this process."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import nats
import pytest

from libs.events.bus import BusClient
from libs.events.context import Context
from libs.events.periods import PeriodKeys, readable
from libs.service.runner import Service
from tests.support.bus import ActorBus
from tests.support.serving import serving

ADMIN = {"username": "root", "email": "root@example.test", "password": "correct horse battery"}


class Clock:
    """The time the service under test decides by: the wall clock, moved ahead by `advance`
    (a test moves time instead of sleeping through a window)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)

    def time(self) -> float:
        """The service's time in Unix seconds (what TOTP codes are computed at)."""
        return self().timestamp()


@dataclass
class Identity:
    svc: Service
    bus: BusClient
    keyring_path: Path
    clock: Clock = field(default_factory=Clock)

    async def cmd(self, verb: str, payload: dict[str, Any], **ctx: Any) -> Any:
        return await self.bus.command(
            "identity", verb, payload, ctx=Context(**ctx) if ctx else None
        )

    async def ask(self, name: str, payload: dict[str, Any], **ctx: Any) -> Any:
        return await self.bus.query("identity", name, payload, ctx=Context(**ctx) if ctx else None)

    def address(self, value: object) -> str | None:
        """A client address or browser string of an event as identity reads it back with its
        key file (None once its week's key is destroyed)."""
        path = self.keyring_path.parent / "ip-keys.json"
        return readable(PeriodKeys(path, clock=self.clock, writer=False), value)

    _setup_token: str | None = None

    @property
    def setup_token(self) -> str:
        """The one-time setup token the service wrote to its data directory at start (kept
        once read: setup removes the file)."""
        if self._setup_token is None:
            self._setup_token = (self.keyring_path.parent / "setup-token").read_text().strip()
        return self._setup_token

    def setup_body(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """`body` with the setup token, as POST /setup and the setup command take it."""
        return {**body, "setup_token": self.setup_token}

    async def set_up(self) -> str:
        """Setup with ADMIN; returns the admin's user id."""
        reply = await self.cmd("setup", self.setup_body(ADMIN))
        return str(reply["user_id"])

    async def login(self, username: str, password: str, ip: str = "192.0.2.1") -> dict[str, Any]:
        reply: dict[str, Any] = await self.cmd(
            "login", {"username": username, "password": password}, actor="anonymous", ip=ip
        )
        return reply


@asynccontextmanager
async def running_identity(
    monkeypatch: pytest.MonkeyPatch,
    *,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    env: Mapping[str, str] | None = None,
    clock: Clock | None = None,
) -> AsyncIterator[Identity]:
    from services.identity.__main__ import build

    clock = clock if clock is not None else Clock()

    settings = {
        "HP_DATABASE_URL": dsn,
        "HP_NATS_URL": nats_url,
        "HP_KEYRING": str(tmp_path / "keyring.json"),
        "HP_DATA_DIR": str(tmp_path),
        "HP_DRAIN_SECONDS": "1",
        "HP_HTTP_PORT": "0",
        **(env or {}),
    }
    async with serving(
        monkeypatch, partial(build, clock=clock), settings, "identity", ready_within=30
    ) as svc:
        nc = await nats.connect(nats_url)
        try:
            yield Identity(svc, ActorBus(nc, default_timeout=10), tmp_path / "keyring.json", clock)
        finally:
            await nc.close()


def code_for(secret: str, step: int) -> str:
    """RFC 4226 HOTP (SHA-1, 6 digits) of `step`: the TOTP code of that 30 s step, written here
    as the tests' own oracle, independent of services/identity/totp.py."""
    key = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    mac = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 1_000_000).zfill(6)


def totp_at(secret: str, at: float) -> str:
    """The TOTP code at Unix time `at`."""
    return code_for(secret, int(at // 30))
