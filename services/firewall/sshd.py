"""The sshd log adapter: failed SSH sign-ins read from sshd's log, each reported once.

`SshdWatcher` follows one source (HP_FIREWALL_SSH_LOG) from "now" on (earlier failures are old):
- "journal": `journalctl --follow --output=json` of sshd's entries, an argv list, never a shell;
  restarted after its last entry (`--after-cursor`) if it dies. Only entries of a root process
  named sshd count (journald's own fields): `logger -t sshd` sets the identifier only, and a
  user's program is not root. A log file has no such fields: it is as trusted as its writers.
- a file path: followed like `tail -F` from its end, through rotation (the old file is read to
  its end, then the new one from its start) and truncation. Syslog lines (`<time> <host>
  sshd[pid]: <message>`) of other programs are skipped; lines of `sshd -E <file>` are the
  bare message.

Which of sshd's messages (OpenSSH 9.2, Debian 12) count, per connection (address and port):
- "Failed password|keyboard-interactive/pam for [invalid user] X from IP port P ssh2": one
  guessed password each (`ssh_password`, or `ssh_invalid_user` for a name with no account).
- "[error: ]maximum authentication attempts exceeded for ... from IP port P ssh2 [preauth]":
  one (`ssh_max_tries`), only if none of the connection's tries counted (keys only).
- "Connection closed by|Connection reset by|Disconnected from authenticating|invalid user X IP
  port P [preauth]": one (`ssh_preauth`), only if nothing of the connection counted: a client
  that asked for an account and left without a password (name probes, refused keys).
- Nothing else: not "Invalid user X from IP port P" (the same attempt's "Failed password for
  invalid user" or its close counts it), not "Failed publickey" (clients try several keys), not
  connections that never named an account (scanners of the banner; the connection limit on port
  22 is the ruleset's).
So one wrong password is one failure, whatever else sshd logs about its connection.

The user name in those lines is the client's text: the address is read from the end of the line
(sshd writes it after the name, and cuts names to 100 characters), the name is never kept or
logged. A line sshd cannot have written is ignored: over `MAX_LINE` characters (sshd's are at
most 1024 bytes), or with a control character (sshd escapes them). An address that is not a
plain IPv4 or IPv6 address (a zone id: link-local) is not reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
import stat
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

from libs.contracts.errors import BusError
from libs.events.bus import BusClient

__all__ = [
    "JOURNAL",
    "MAX_LINE",
    "Failure",
    "Record",
    "SshdLog",
    "SshdWatcher",
    "identity_recorder",
    "message_of",
]

log = logging.getLogger("services.firewall")

JOURNAL: Final = "journal"
MAX_LINE: Final = 2048  # characters of a line; sshd's messages are at most 1024 bytes
# the process names of OpenSSH's server (9.8 and later log from sshd-session)
_SSHD_NAMES: Final = frozenset({"sshd", "sshd-session"})
_MAX_CONNECTIONS: Final = 10_000  # connections remembered between their lines
_READ_CHUNK: Final = 1 << 20  # bytes read from a file per poll at most
_RESTART_MIN, _RESTART_MAX = 1.0, 30.0  # seconds before journalctl is started again

Record = Callable[[str, str], Awaitable[None]]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# `<time> <host> <program>[pid]: `: rsyslog's RFC 3339 time (Debian 12) or the classic one
_SYSLOG = re.compile(
    r"(?:\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)?"
    r"|[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d)"
    r" \S+ (?P<program>[^\s\[:]+)(?:\[\d+\])?: "
)
_END = r" from (?P<ip>\S+) port (?P<port>\d{1,5}) ssh2"
_FAILED = re.compile(
    r"Failed (?:password|keyboard-interactive/pam) for (?P<invalid>invalid user )?.*" + _END
)
_MAX_TRIES = re.compile(
    r"(?:error: )?maximum authentication attempts exceeded for (?P<invalid>invalid user )?.*"
    + _END
    + r" \[preauth\]"
)
_CLOSED = re.compile(
    r"(?:Connection closed by|Connection reset by|Disconnected from)"
    r" (?:authenticating|invalid) user .* (?P<ip>\S+) port (?P<port>\d{1,5}) \[preauth\]"
)


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed SSH sign-in: the client's address and the reason (SSH_FAILURE_REASONS)."""

    ip: str
    reason: str


def _address(raw: str) -> str | None:
    """`raw` as a canonical address (IPv4-mapped as IPv4), None if it is not a plain one."""
    if "%" in raw:  # a zone id (ipaddress takes them): not an address nft or identity take
        return None
    try:
        ip = ipaddress.ip_address(raw)
    except ValueError:
        return None
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped or ip)


def message_of(line: str) -> str | None:
    """sshd's message in a line of a log file: after a syslog prefix naming sshd, or the
    whole line (`sshd -E`); None for another program's syslog line."""
    m = _SYSLOG.match(line)
    if m is None:
        return line
    return line[m.end() :] if m["program"] in _SSHD_NAMES else None


class SshdLog:
    """sshd's messages in, failures out: each attempt once (see the module's docstring)."""

    def __init__(self, max_connections: int = _MAX_CONNECTIONS) -> None:
        self.max_connections = max_connections
        self._counted: OrderedDict[tuple[str, str], None] = OrderedDict()  # (ip, port)

    def feed(self, message: str) -> Failure | None:
        """The failure `message` (one of sshd's, without a syslog prefix) counts, if any."""
        if len(message) > MAX_LINE or _CONTROL.search(message) is not None:
            return None
        if m := _FAILED.fullmatch(message):
            reason = "ssh_invalid_user" if m["invalid"] else "ssh_password"
            return self._count(m, reason, always=True)
        if m := _MAX_TRIES.fullmatch(message):
            return self._count(m, "ssh_max_tries", always=False)
        if m := _CLOSED.fullmatch(message):
            failure = self._count(m, "ssh_preauth", always=False)
            self._counted.pop((m["ip"], m["port"]), None)  # the connection is over
            return failure
        return None

    def _count(self, m: re.Match[str], reason: str, *, always: bool) -> Failure | None:
        ip = _address(m["ip"])
        if ip is None:
            return None
        key = (m["ip"], m["port"])
        seen = key in self._counted
        self._counted[key] = None
        self._counted.move_to_end(key)
        while len(self._counted) > self.max_connections:
            self._counted.popitem(last=False)
        return Failure(ip, reason) if always or not seen else None


def identity_recorder(client: BusClient) -> Record:
    """`record` as the service wires it: identity's `record_failure` (a LoginFailed that the
    ban projection reads back). A failure identity does not take is logged, not retried."""

    async def record(ip: str, reason: str) -> None:
        try:
            await client.command("identity", "record_failure", {"ip": ip, "reason": reason})
        except BusError as e:
            log.warning("a failed SSH sign-in could not be recorded: %s", e)

    return record


class SshdWatcher:
    """Follows sshd's log (`source`: "journal" or a file path) and calls `record(ip, reason)`
    for each failure, until stopped."""

    def __init__(
        self,
        source: str,
        record: Record,
        *,
        journalctl: Sequence[str] = ("journalctl",),
        poll: float = 0.25,
    ) -> None:
        if source != JOURNAL and not source.startswith("/"):
            raise ValueError(f'the sshd log must be "journal" or an absolute path, not {source!r}')
        self.source = source
        self.record = record
        self.journalctl = list(journalctl)
        self.poll = poll
        self.parser = SshdLog()
        self._stop = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None

    async def run(self) -> None:
        """Follow the source until `stop()`."""
        if self.source == JOURNAL:
            await self._follow_journal()
        else:
            await self._follow_file(Path(self.source))

    def stop(self) -> None:
        self._stop.set()
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.terminate()

    async def _message(self, message: str) -> None:
        failure = self.parser.feed(message)
        if failure is not None:
            await self.record(failure.ip, failure.reason)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    # -- the journal ---------------------------------------------------------------------

    def _journal_argv(self, cursor: str | None) -> list[str]:
        start = [f"--after-cursor={cursor}"] if cursor else ["--lines=0"]
        matches = [f"SYSLOG_IDENTIFIER={name}" for name in sorted(_SSHD_NAMES)]  # either one
        return [*self.journalctl, "--follow", "--output=json", "--no-pager", *start, *matches]

    async def _follow_journal(self) -> None:
        cursor: str | None = None
        wait = _RESTART_MIN
        while not self._stop.is_set():
            argv = self._journal_argv(cursor)
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    limit=1 << 20,
                )
            except OSError as e:
                log.error("cannot run %s: %s (is systemd's journalctl installed?)", argv[0], e)
            else:
                try:
                    cursor, read = await self._read_journal(self._proc, cursor)
                finally:
                    err = await self._end(self._proc)
                if read:
                    wait = _RESTART_MIN
                if not self._stop.is_set():
                    log.error(
                        "journalctl stopped (exit code %s: %s); starting it again in %g s",
                        self._proc.returncode,
                        err or "no message",
                        wait,
                    )
            await self._pause(wait)
            wait = min(wait * 2, _RESTART_MAX)

    async def _read_journal(
        self, proc: asyncio.subprocess.Process, cursor: str | None
    ) -> tuple[str | None, bool]:
        """Entries until journalctl ends; the cursor of the last one, and whether any came."""
        assert proc.stdout is not None
        read = False
        while True:
            try:
                line = await proc.stdout.readline()
            except ValueError:  # a line over the limit: not one of sshd's
                continue
            if not line:
                return cursor, read
            read = True
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if not isinstance(entry, dict):
                continue
            if isinstance(entry.get("__CURSOR"), str):
                cursor = entry["__CURSOR"]
            message = _journal_message(entry)
            if message is not None:
                await self._message(message)

    @staticmethod
    async def _end(proc: asyncio.subprocess.Process) -> str:
        """Stop `proc` if it still runs; what it wrote on stderr (its last line)."""
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        err = b""
        if proc.stderr is not None:
            with contextlib.suppress(ValueError):
                err = await asyncio.wait_for(proc.stderr.read(4096), 1)
        lines = err.decode(errors="replace").strip().splitlines()
        return lines[-1][:300] if lines else ""

    # -- a file --------------------------------------------------------------------------

    async def _follow_file(self, path: Path) -> None:
        tail = _Tail(path)
        await asyncio.to_thread(tail.start)
        try:
            while not self._stop.is_set():
                try:
                    lines = await asyncio.to_thread(tail.read)
                except OSError as e:  # from its end again: what was read is not read twice
                    log.warning("reading the sshd log %s failed: %s; opening it again", path, e)
                    tail.close()
                    await asyncio.to_thread(tail.start)
                    lines = []
                for line in lines:
                    message = message_of(line)
                    if message is not None:
                        await self._message(message)
                await self._pause(self.poll)
        finally:
            tail.close()


def _journal_message(entry: dict[str, Any]) -> str | None:
    """The MESSAGE of a journal entry of sshd's root process (bytes that are not UTF-8 come as
    a list of numbers; a field over 4 KiB as null)."""
    comm = entry.get("_COMM")  # absent when the process ended before journald looked
    if comm is not None and comm not in _SSHD_NAMES:
        return None  # another program that calls itself sshd (`logger -t sshd`)
    if entry.get("_UID") != "0":
        return None  # sshd's failures are logged by its root monitor; a user's program is not
    message = entry.get("MESSAGE")
    if isinstance(message, list) and len(message) <= MAX_LINE * 4:
        if all(isinstance(b, int) and 0 <= b < 256 for b in message):
            return bytes(message).decode(errors="replace")
        return None
    return message if isinstance(message, str) else None


class _Tail:
    """`tail -F` of one file, read in polls (blocking: run it in a thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._id: tuple[int, int] | None = None  # (device, inode) of the open file
        self._pending = b""
        self._skipping = False  # in a line longer than MAX_LINE: dropped up to its end
        self._problem = ""

    def start(self) -> None:
        """Open the file at its end: what is in it is old."""
        if self._open():
            assert self._file is not None
            self._file.seek(0, os.SEEK_END)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read(self) -> list[str]:
        """The complete lines written since the last read."""
        lines: list[str] = []
        if self._file is None:
            if not self._open():  # appeared since: all of it is new
                return lines
        assert self._file is not None
        try:
            st = os.stat(self.path)
        except OSError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) != self._id:
            lines += self._lines(self._drain())  # rotated: the old file to its end first
            self._pending, self._skipping = b"", False
            self.close()
            if self._open():
                lines += self._lines(self._drain())
            return lines
        if st is not None and st.st_size < self._file.tell():
            self._file.seek(0)  # truncated (copytruncate)
            self._pending, self._skipping = b"", False
        return lines + self._lines(self._drain())

    def _open(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            self._report(f"cannot read the sshd log {self.path}: {e.strerror}")
            return False
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            self._report(f"the sshd log {self.path} is not a regular file")
            return False
        self._file = os.fdopen(fd, "rb")
        self._id = (st.st_dev, st.st_ino)
        if self._problem:
            log.info("reading the sshd log %s", self.path)
        self._problem = ""
        return True

    def _report(self, problem: str) -> None:
        if problem != self._problem:  # once, not at every poll
            log.warning("%s; the firewall sees no SSH failures until it can", problem)
        self._problem = problem

    def _drain(self) -> bytes:
        assert self._file is not None
        return self._file.read(_READ_CHUNK) or b""

    def _lines(self, data: bytes) -> list[str]:
        out = []
        *complete, rest = (self._pending + data).split(b"\n")
        for raw in complete:
            if self._skipping:
                self._skipping = False
                continue
            if len(raw) <= MAX_LINE * 4:  # bytes: up to 4 of UTF-8 per character
                out.append(raw.decode(errors="replace").rstrip("\r"))
        if len(rest) > MAX_LINE * 4:
            rest, self._skipping = b"", True
        self._pending = rest
        return out
