"""A stand-in for a provider's outbound relay (smart host): SMTP with TLS at once on a loopback
port, AUTH PLAIN taken for one login only (or none asked when none is given), and every
message it was given kept, so a test sees what left through the relay; recipients it is told
to refuse get 550 at RCPT."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from libs.tls import self_signed_pem_apart

__all__ = ["Relayed", "SmartHost", "smart_host"]


@dataclass
class Relayed:
    sender: str
    recipients: list[str]
    data: bytes
    login: str | None = None  # who had signed in when it was sent


@dataclass
class SmartHost:
    port: int
    got: list[Relayed] = field(default_factory=list)


@asynccontextmanager
async def smart_host(
    folder: Path,
    login: tuple[str, str] | None = None,
    host: str = "127.0.0.1",
    refuse: Collection[str] = (),
) -> AsyncIterator[SmartHost]:
    """The stand-in on a free port of `host`; with `login`, AUTH PLAIN is offered and only that
    (user, password) is taken; the recipients in `refuse` are refused (550)."""
    cert, key = await self_signed_pem_apart(["relay.test"], 1)
    (folder / "relay.crt").write_text(cert)
    (folder / "relay.key").write_text(key)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(folder / "relay.crt", folder / "relay.key")
    want = None if login is None else base64.b64encode(f"\0{login[0]}\0{login[1]}".encode())
    relay = SmartHost(0)

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sender, recipients = "", list[str]()
        signed_in: str | None = None
        try:
            writer.write(b"220 relay.test ESMTP\r\n")
            while line := await asyncio.wait_for(reader.readline(), 30):
                words = line.decode().split()
                verb = words[0].upper() if words else ""
                arg = line.decode().partition(":")[2].strip().partition(" ")[0].strip("<>")
                if verb in ("EHLO", "HELO"):
                    writer.write(
                        b"250-relay.test\r\n250 AUTH PLAIN\r\n" if want else b"250 relay.test\r\n"
                    )
                elif verb == "AUTH":
                    right = want is not None and words[1:] == ["PLAIN", want.decode()]
                    if right and login is not None:
                        signed_in = login[0]
                    writer.write(b"235 2.7.0 accepted\r\n" if right else b"535 5.7.8 refused\r\n")
                elif verb == "MAIL":
                    sender, recipients = arg, []
                    writer.write(b"250 2.1.0 ok\r\n")
                elif verb == "RCPT" and arg in refuse:
                    writer.write(b"550 5.7.1 relaying to this address is not allowed\r\n")
                elif verb == "RCPT":
                    recipients.append(arg)
                    writer.write(b"250 2.1.5 ok\r\n")
                elif verb == "DATA":
                    writer.write(b"354 go on\r\n")
                    await writer.drain()
                    data = b""
                    while (chunk := await asyncio.wait_for(reader.readline(), 30)) != b".\r\n":
                        if not chunk:
                            return  # the connection ended in DATA: nothing kept
                        data += chunk
                    relay.got.append(Relayed(sender, recipients, data, signed_in))
                    writer.write(b"250 2.0.0 queued\r\n")
                elif verb in ("RSET", "NOOP"):
                    writer.write(b"250 2.0.0 ok\r\n")
                elif verb == "QUIT":
                    writer.write(b"221 2.0.0 bye\r\n")
                    break
                else:
                    writer.write(b"502 5.5.1 not here\r\n")
                await writer.drain()
            await writer.drain()
        except (OSError, ssl.SSLError, TimeoutError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(session, host, 0, ssl=tls)
    relay.port = server.sockets[0].getsockname()[1]
    try:
        yield relay
    finally:
        server.close()
        await server.wait_closed()
