"""What Sieve sends (an away message, a redirect), from Dovecot through the mail service.

Dovecot runs its `sendmail_path` to send for a Sieve script, as the mail store's user. That
program (`SENDMAIL`, rendered into Dovecot's configuration by services/mail/render.py) hands
the message to this endpoint: a UNIX socket in `<root>/run/sieve/` that only root and the mail
store's group can reach. The mail service submits it to Postfix on its platform listener
(services/mail/outbound.py: signed in, DKIM-signed by rspamd like any mail of ours), so nothing
listens without a sign-in on a port any local process could use.

The exchange, one message per connection: a line of JSON `{"from": sender or "", "to":
[addresses]}`, the message (at most MESSAGE_LIMIT bytes), end of stream; the answer is one line,
`ok`, `tempfail: why` (Dovecot keeps the message and logs it; Postfix was not reachable) or
`refused: why` (bad input, every recipient refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from libs.contracts.mail import RECIPIENT_PATTERN
from services.mail.errors import InvalidRequest, MailServersError
from services.mail.model import MESSAGE_LIMIT

__all__ = ["MAX_RECIPIENTS", "SENDMAIL", "SieveSender", "sendmail_program"]

log = logging.getLogger("homeport.mail.sieve")

MAX_RECIPIENTS = 8  # a vacation answers one sender; Dovecot allows 4 redirects a message
_HEADER_LIMIT = 64 * 1024
_READ_DEADLINE = 60.0
_ADDRESS = re.compile(RECIPIENT_PATTERN)

Submit = Callable[[str, Sequence[str], bytes], list[str]]


class SieveSender:
    """The endpoint (see the module's docstring); `submit` sends one message (blocking: run
    in a thread) and returns the recipients refused."""

    def __init__(self, submit: Submit) -> None:
        self._submit = submit
        self._server: asyncio.AbstractServer | None = None

    async def start(self, path: Path, gid: int) -> None:
        """Listen on `path` (its folder made by the servers' adapter: root and `gid` only)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(path), limit=_HEADER_LIMIT
        )
        os.chown(path, 0, gid)
        os.chmod(path, 0o660)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            answer = await asyncio.wait_for(self._one(reader), _READ_DEADLINE)
        except TimeoutError:
            answer = "tempfail: the message did not arrive in time"
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            answer = f"tempfail: {type(e).__name__}"
        # what was not read (a refusal before the message's end) is read and dropped, so the
        # sender is not cut off mid-write and reads the answer (a bounded amount, in time)
        with contextlib.suppress(TimeoutError, OSError):
            await asyncio.wait_for(_drain(reader), _READ_DEADLINE)
        try:
            writer.write(answer.encode() + b"\n")
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader) -> str:
        try:
            header = await reader.readline()  # at most the stream's limit, _HEADER_LIMIT
        except ValueError:  # no line break within it
            header = b""
        if not header.endswith(b"\n"):
            return "refused: the envelope line is missing or too long"
        try:
            envelope = json.loads(header)
            sender, to = envelope["from"], envelope["to"]
        except (ValueError, KeyError, TypeError):
            return "refused: the envelope line is not {from, to}"
        if not isinstance(sender, str) or (sender and not _ADDRESS.match(sender)):
            return "refused: the sender is not an address"
        if (
            not isinstance(to, list)
            or not 1 <= len(to) <= MAX_RECIPIENTS
            or not all(isinstance(a, str) and _ADDRESS.match(a) for a in to)
        ):
            return f"refused: 1 to {MAX_RECIPIENTS} recipients, each an address"
        buf = bytearray()
        while len(buf) <= MESSAGE_LIMIT:
            more = await reader.read(1 << 18)
            if not more:
                break
            buf += more
        raw = bytes(buf)
        if len(raw) > MESSAGE_LIMIT:
            return f"refused: the message is larger than {MESSAGE_LIMIT} bytes"
        if not raw.strip():
            return "refused: the message is empty"
        try:
            refused = await asyncio.to_thread(self._submit, sender, to, raw)
        except InvalidRequest as e:
            return f"refused: {e.message}"
        except MailServersError as e:
            log.warning("a message Sieve sends is kept by Dovecot for later: %s", e.message)
            return f"tempfail: {e.message}"
        log.info("Sieve sent a message (%d recipients, %d refused)", len(to), len(refused))
        return "ok"


async def _drain(reader: asyncio.StreamReader) -> None:
    left = 2 * MESSAGE_LIMIT
    while left > 0 and (chunk := await reader.read(1 << 18)):
        left -= len(chunk)


# Dovecot's sendmail_path: run as the mail store's user with `-i -f <from> -- <to>...` (the
# sender "<>" or empty for the null sender), the message on stdin. The system's Python, in
# isolated mode; exit 0 (sent), 75 (EX_TEMPFAIL: Dovecot tries again later) or 65 (EX_DATAERR).
SENDMAIL = """\
#!/usr/bin/python3 -I
# Rendered by Homeport (services/mail/sieve_send.py): Dovecot's sendmail for Sieve.
import json, socket, sys

SOCKET = {socket!r}
LIMIT = {limit}


def main(args):
    sender, to, i = "", [], 0
    while i < len(args):
        a = args[i]
        if a == "--":
            to += args[i + 1 :]
            break
        if a == "-f" and i + 1 < len(args):
            sender, i = args[i + 1], i + 2
            continue
        if a.startswith("-f"):
            sender = a[2:]
        elif not a.startswith("-"):
            to.append(a)
        i += 1
    sender = "" if sender in ("<>", "") else sender.strip("<>")
    data = sys.stdin.buffer.read(LIMIT + 1)
    if len(data) > LIMIT:
        print("the message is too large", file=sys.stderr)
        return 65
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(90)
            s.connect(SOCKET)
            s.sendall(json.dumps({{"from": sender, "to": to}}).encode() + b"\\n" + data)
            s.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
    except OSError as e:
        print(f"the mail service did not take the message: {{e}}", file=sys.stderr)
        return 75
    answer = answer.decode(errors="replace").strip()
    if answer == "ok":
        return 0
    print(answer, file=sys.stderr)
    return 65 if answer.startswith("refused") else 75


sys.exit(main(sys.argv[1:]))
"""


def sendmail_program(socket_path: str | Path) -> str:
    """The program's text for an endpoint at `socket_path`."""
    return SENDMAIL.format(socket=str(socket_path), limit=MESSAGE_LIMIT)
