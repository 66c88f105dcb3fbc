"""Benchmark of mail delivery: the Homeport mail chain against a hand-configured Postfix and
Dovecot, same binaries, same run.

`mail_delivery_vs_postfix`: messages/s from submission (port 587, STARTTLS, AUTH PLAIN) to the
mailbox's Maildir `new/`, ours over the baseline's; target >= 0.5.

- Ours: `MailServers` (services/mail/servers.py) with a one-domain, one-mailbox model: Postfix
  with rspamd's milter (scan and DKIM signing), Dovecot LMTP with the quota and sieve plugins (a
  10 GiB quota on the mailbox; Postfix asks quota-status at RCPT only for mailboxes near their
  quota, as the sync decides from Dovecot's usage, and this one is not), and every login checked by
  Dovecot's Lua passdb over HTTP against an auth endpoint answering as the mail service does
  (200 `user=<address>`, the protocol of tests/mail/serverskit.py's AuthStandIn). rspamd's DNS
  is a responder that answers NXDOMAIN at once on 127.0.0.1 (nothing leaves loopback, and no
  message waits on a DNS timeout). Both stand-ins run in one child process (`_stand_ins`):
  the bench's own loop is busy with the clients.
- Baseline: the same Postfix and Dovecot binaries with a minimal hand-written configuration in
  their own directories and ports: Postfix virtual mailbox to Dovecot LMTP, SASL through
  Dovecot, a passwd-file with a static password; no milter, no rspamd, no quota, no sieve.

Load: HP_BENCH_MAIL_CLIENTS (8) clients at once, each sending its share of
HP_BENCH_MAIL_MESSAGES (300) messages of about 2 KB per round, _PER_CONNECTION messages per
connection (connect, EHLO, STARTTLS, EHLO, AUTH PLAIN, then MAIL/RCPT/DATA each). A message is
delivered when a file with its id in the Subject is in `new/` (polled every _POLL s).
Messages/s = messages / (first connect -> last file seen); delivery latency = the 250 answer to
its DATA -> its file seen; submit time = MAIL FROM sent -> that 250 (what the client waits).
Between rounds the delivered files are moved to `cur/`, as a mail client marking them read
would. One warm-up round per side is not counted (and checks that ours signs with DKIM); then
the rounds alternate which side goes first, and the medians are compared. Also printed: the
CPU per message of each server's process tree, and ours' password checks and DNS queries.

Needs root (the masters start as root and drop to their users) and the Debian packages of
deploy/install-system-deps.sh --server. rspamd's first start compiles its hyperscan cache
(10-20 s), once per run.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import grp
import json
import math
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any, cast

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.common import Bench, BenchError, Benchmark, Result, _env_int, say, tree_cpu
from deploy.embedded import free_ports
from libs.tls import self_signed_pem_apart
from services.mail.decide import near_quota
from services.mail.errors import MailServersError
from services.mail.model import DkimKey, Mailbox, MailDomain, MailModel, ServersSettings
from services.mail.servers import MailServers

__all__ = ["BENCHMARKS"]

_NAME = "mail_delivery_vs_postfix"
_TARGET = 0.5
_DOMAIN = "example.test"
_HOSTNAME = f"mail.{_DOMAIN}"
_LOGIN = "bench"
_ADDRESS = f"bench@{_DOMAIN}"
_PASSWORD = "bench-mail-password"  # a throwaway account on loopback servers
_SELECTOR = "hp1"
_QUOTA = 10 << 30
_PER_CONNECTION = 10
_WARMUP = 40
_POLL = 0.002
_PROJECT = Path(__file__).resolve().parents[1]
_ROUND_DEADLINE = 120.0
_START_DEADLINE = 30.0
_STOP_DEADLINE = 15.0
_PROGRAMS = ("postfix", "dovecot", "doveconf", "rspamd", "rspamadm")
_SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"
_ENV = {"PATH": _SBIN, "LANG": "C.UTF-8"}
_SUBJECT = re.compile(rb"\nSubject: bench ([0-9a-f]{32})\r?\n")


def _check_can_run() -> None:
    if os.geteuid() != 0:
        raise BenchError(
            f"{_NAME} needs root: the Postfix and Dovecot masters start as root and drop to "
            "their users (run the bench as root, e.g. `sudo make bench`)"
        )
    for prog in _PROGRAMS:
        if shutil.which(prog, path=_SBIN) is None:
            raise BenchError(
                f"{prog} not found: install the mail servers "
                "(deploy/install-system-deps.sh --server)"
            )


def _body() -> str:
    """About 1.8 KB of plain text in 72-column lines (seeded: the same for every message)."""
    rng = random.Random(7)
    words = "the of and to in is was for on that with as by at from mail server message".split()
    words += "delivery queue mailbox folder account weekly report notes meeting agenda".split()
    lines, size = [], 0
    while size < 1800:
        line = " ".join(rng.choices(words, k=12))[:72].capitalize()
        lines.append(line)
        size += len(line) + 2
    return "\r\n".join(lines) + "\r\n"


_BODY = _body()


def _message(uid: str) -> bytes:
    return (
        f"From: Bench <{_ADDRESS}>\r\nTo: <{_ADDRESS}>\r\nSubject: bench {uid}\r\n"
        f"Date: {formatdate()}\r\nMessage-ID: <{uid}@client.test>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{_BODY}"
    ).encode()


def _percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of a non-empty list."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def _dkim_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(no output)"
    except OSError:
        return "(no log)"


# -- the stand-ins: rspamd's DNS and the mail service's auth endpoint ----------------------


def _qname(query: bytes) -> str:
    """The first question's name, with the digits of ids and addresses as `N` (for grouping)."""
    labels, i = [], 12
    while i < len(query) and query[i]:
        labels.append(query[i + 1 : i + 1 + query[i]].decode(errors="replace"))
        i += query[i] + 1
    return re.sub(r"[0-9]+", "N", ".".join(labels)) or "."


class _Nxdomain(asyncio.DatagramProtocol):
    """Answers every DNS query NXDOMAIN (question echoed), so no lookup waits on a timeout."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.queries = 0
        self.names: collections.Counter[str] = collections.Counter()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a DatagramTransport in all but its bases (CPython's selector transport)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if len(data) < 12 or data[2] & 0x80 or self.transport is None:
            return  # not a query
        end, qdcount = 12, int.from_bytes(data[4:6], "big")
        if qdcount:
            while end < len(data) and data[end]:
                end += data[end] + 1
            end += 5  # the root label, QTYPE, QCLASS
            if end > len(data):
                return
        self.queries += 1
        self.names[_qname(data)] += 1
        flags = 0x8000 | (data[2] & 0x79) << 8 | 0x80 | 3  # QR, opcode and RD echoed, RA, NXDOMAIN
        head = data[:2] + flags.to_bytes(2, "big") + (b"\0\1" if qdcount else b"\0\0") + bytes(6)
        self.transport.sendto(head + data[12:end], addr)


async def _stand_ins() -> None:
    """The child process (`_STAND_INS`): rspamd's DNS on a UDP port of 127.0.0.1 and the auth
    endpoint Dovecot's Lua passdb asks, answering as the mail service does (200
    `user=<address>`, the protocol of tests/mail/serverskit.py's AuthStandIn); settings on
    stdin (one JSON line), `ready <dns port>` on stdout, ends when stdin closes. GET /counts:
    checks and queries answered so far."""
    cfg = json.loads(sys.stdin.readline())
    loop = asyncio.get_running_loop()
    transport, dns = await loop.create_datagram_endpoint(
        _Nxdomain, local_addr=("127.0.0.1", 0), family=socket.AF_INET
    )
    calls = 0

    async def check(request: web.Request) -> web.Response:
        nonlocal calls
        if request.headers.get("x-homeport-auth") != cfg["token"]:
            return web.Response(status=401)
        body = await request.json()
        calls += 1
        if body.get("user") != cfg["login"] or body.get("password") != cfg["password"]:
            return web.Response(status=403)
        return web.Response(text=f"user={cfg['address']}")

    async def counts(request: web.Request) -> web.Response:
        names = dns.names.most_common(4)
        return web.json_response({"auth": calls, "dns": dns.queries, "names": names})

    app = web.Application()
    app.router.add_post("/auth", check)
    app.router.add_get("/counts", counts)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", cfg["port"]).start()
        print(f"ready {transport.get_extra_info('sockname')[1]}", flush=True)
        await loop.run_in_executor(None, sys.stdin.read)
    finally:
        await runner.cleanup()
        transport.close()


_STAND_INS = "import asyncio\nfrom bench.mail import _stand_ins\nasyncio.run(_stand_ins())\n"


@dataclass(frozen=True, slots=True)
class _StandIns:
    """The running stand-ins: what `ServersSettings` needs of them, and their counts."""

    auth_url: str
    token: str
    dns_port: int
    pid: int
    counts_url: str

    async def counts(self) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as s, s.get(self.counts_url) as r:
            found: dict[str, Any] = await r.json()
            return found


@contextlib.asynccontextmanager
async def _run_stand_ins(port: int) -> AsyncIterator[_StandIns]:
    """The stand-ins in a child process: the bench's own loop is busy with the clients, and a
    DNS answer or password check waiting on it would count against ours."""
    token = secrets.token_urlsafe(32)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _STAND_INS, cwd=_PROJECT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        start_new_session=True,  # Ctrl-C stops the bench; the bench then closes its stdin
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        settings = {
            "port": port,
            "token": token,
            "login": _LOGIN,
            "password": _PASSWORD,
            "address": _ADDRESS,
        }
        proc.stdin.write(json.dumps(settings).encode() + b"\n")
        await proc.stdin.drain()
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), _START_DEADLINE)
        except TimeoutError:
            line = b""
        word, _, dns_port = line.decode().partition(" ")
        if word != "ready":
            raise BenchError(f"the stand-ins' process did not start (exit {proc.returncode})")
        base = f"http://127.0.0.1:{port}"
        yield _StandIns(f"{base}/auth", token, int(dns_port), proc.pid, f"{base}/counts")
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), _STOP_DEADLINE)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# -- the two sides --------------------------------------------------------------------------


@dataclass(slots=True)
class _Side:
    """One chain under load: where to submit, where mail lands, how to read its log."""

    label: str
    port: int
    login: str
    maildir: Path
    log_tail: Callable[[], str]
    pids: Callable[[], dict[str, int]]  # part -> the process whose tree it is
    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    submit: list[float] = field(default_factory=list)
    cpu_ms: list[dict[str, float]] = field(default_factory=list)
    known: set[str] = field(default_factory=set)  # file names in new/ already read

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


def _model() -> MailModel:
    box = Mailbox(_ADDRESS, _LOGIN, "u-bench", quota_bytes=_QUOTA)
    return MailModel(
        hostname=_HOSTNAME,
        domains=(MailDomain(_DOMAIN, dkim=DkimKey(_SELECTOR, _dkim_pem())),),
        mailboxes=(box,),
        senders={_ADDRESS: (_LOGIN,)},
        # as the sync decides it from Dovecot's usage: the mailbox is far from its quota, so
        # Postfix does not ask quota-status at RCPT (LMTP still enforces the quota)
        quota_checked=near_quota([box], {_ADDRESS: 0}),
    )


@contextlib.asynccontextmanager
async def _ours(root: Path, ports: list[int], stand_ins: _StandIns) -> AsyncIterator[_Side]:
    """The Homeport chain: `MailServers` with the bench's model, started by `apply`."""
    settings = ServersSettings(
        root=root,
        listen=("127.0.0.1",),
        smtp_port=ports[0],
        submission_port=ports[1],
        submissions_port=ports[2],
        imaps_port=ports[3],
        managesieve_port=ports[4],
        milter_port=ports[5],
        auth_url=stand_ins.auth_url,
        auth_token=stand_ins.token,
        nameservers=(f"127.0.0.1:{stand_ins.dns_port}",),
    )
    model = await asyncio.to_thread(_model)
    async with contextlib.AsyncExitStack() as stack:
        try:
            servers = await stack.enter_async_context(MailServers(settings))
            await servers.apply(model)
        except MailServersError as e:
            raise BenchError(f"the Homeport mail servers did not start: {e}") from e

        def pids() -> dict[str, int]:
            found = {s: servers.master_pid(s) for s in ("postfix", "dovecot", "rspamd")}
            return {k: v for k, v in found.items() if v is not None} | {"stand-ins": stand_ins.pid}

        yield _Side(
            "ours",
            settings.submission_port,
            _LOGIN,
            root / "store" / "u-bench" / "Maildir",
            lambda: servers.log_tail("postfix", 15),
            pids,
        )


_BASE_MASTER = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:{port} inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

_BASE_MAIN = """\
compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
myhostname = {hostname}
mydestination =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
maillog_file = /dev/stdout
virtual_mailbox_domains = {domain}
virtual_mailbox_maps = texthash:{d}/postfix/mailboxes
virtual_transport = lmtp:unix:{d}/run/dovecot/lmtp
smtpd_tls_chain_files = {d}/tls/key.pem, {d}/tls/cert.pem
smtpd_sasl_type = dovecot
smtpd_sasl_path = {d}/run/dovecot/auth-postfix
"""

_BASE_DOVECOT = """\
base_dir = {d}/run/dovecot
state_dir = {d}/state/dovecot
instance_name = {instance}
protocols = lmtp
listen = 127.0.0.1
log_path = /dev/stderr
ssl = no
mail_uid = mail
mail_gid = mail
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:~/Maildir
service lmtp {{
  unix_listener lmtp {{
    mode = 0600
    user = postfix
  }}
}}
service auth {{
  unix_listener auth-postfix {{
    mode = 0600
    user = postfix
  }}
}}
passdb {{
  driver = passwd-file
  args = {d}/dovecot/users
}}
userdb {{
  driver = passwd-file
  args = {d}/dovecot/users
  default_fields = uid=mail gid=mail
}}
"""


def _write_baseline(d: Path, port: int, cert: str, key: str) -> None:
    """The hand-written configuration of the baseline under `d` (see the module docstring)."""
    try:
        postfix, vmail = pwd.getpwnam("postfix").pw_uid, pwd.getpwnam("mail")
        dovecot_gid = grp.getgrnam("dovecot").gr_gid
    except KeyError as e:
        raise BenchError(
            f"system user or group {e} is missing: install the mail servers "
            "(deploy/install-system-deps.sh --server)"
        ) from None
    for sub in ("postfix", "dovecot", "queue", "run", "state", "tls"):
        (d / sub).mkdir(mode=0o755, parents=True)
    (d / "data").mkdir(mode=0o700)
    os.chown(d / "data", postfix, -1)
    (d / "store").mkdir(mode=0o700)
    os.chown(d / "store", vmail.pw_uid, vmail.pw_gid)
    (d / "tls" / "cert.pem").write_text(cert)
    (d / "tls" / "key.pem").touch(mode=0o600)
    (d / "tls" / "key.pem").write_text(key)
    main = _BASE_MAIN.format(d=d, hostname=_HOSTNAME, domain=_DOMAIN)
    (d / "postfix" / "main.cf").write_text(main)
    (d / "postfix" / "master.cf").write_text(_BASE_MASTER.format(port=port))
    (d / "postfix" / "mailboxes").write_text(f"{_ADDRESS} OK\n")
    instance = f"hp-bench-{uuid.uuid4().hex[:8]}"
    (d / "dovecot" / "dovecot.conf").write_text(_BASE_DOVECOT.format(d=d, instance=instance))
    users = d / "dovecot" / "users"
    users.write_text(f"{_ADDRESS}:{{PLAIN}}{_PASSWORD}::::{d}/store/bench::\n")
    os.chown(users, 0, dovecot_gid)
    users.chmod(0o640)


async def _run(argv: list[str], what: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=_ENV,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), _START_DEADLINE)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BenchError(f"{what} took over {_START_DEADLINE:.0f} s") from None
    if proc.returncode != 0 or b"fatal:" in out:
        raise BenchError(f"{what} failed: {out.decode(errors='replace').strip()[-800:]}")


async def _smtp_banner(port: int) -> bool:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        line = await asyncio.wait_for(reader.readline(), 2.0)
        writer.write(b"QUIT\r\n")
        return line.startswith(b"220")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


async def _until(check: Callable[[], Coroutine[Any, Any, bool]], what: str, log: Path) -> None:
    end = time.monotonic() + _START_DEADLINE
    while time.monotonic() < end:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise BenchError(f"{what} did not come up within {_START_DEADLINE:.0f} s:\n{_tail(log)}")


def _read_pid(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().strip())
    return None


async def _stop_child(proc: asyncio.subprocess.Process, master: int | None) -> None:
    """Wait for `proc` to exit; past the deadline kill it and the group of `master`."""
    try:
        await asyncio.wait_for(proc.wait(), _STOP_DEADLINE)
    except TimeoutError:
        say(f"  baseline process {proc.pid} did not stop in time: killed")
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    if master is not None and master > 1:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(master, signal.SIGKILL)  # workers left behind, if any


@contextlib.asynccontextmanager
async def _baseline(d: Path, port: int) -> AsyncIterator[_Side]:
    """Postfix and Dovecot from the same binaries, configured by hand (see _write_baseline)."""
    cert, key = await self_signed_pem_apart([_HOSTNAME], 2)
    await asyncio.to_thread(_write_baseline, d, port, cert, key)
    postfix, dovecot = shutil.which("postfix", path=_SBIN), shutil.which("dovecot", path=_SBIN)
    assert postfix is not None and dovecot is not None
    dovecot_log, postfix_log = d / "dovecot.log", d / "postfix.log"
    conf = str(d / "postfix")
    async with contextlib.AsyncExitStack() as stack:
        with dovecot_log.open("ab") as out:
            dproc = await asyncio.create_subprocess_exec(
                dovecot, "-F", "-c", str(d / "dovecot" / "dovecot.conf"),
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, env=_ENV,
                start_new_session=True,
            )  # fmt: skip

        async def stop_dovecot() -> None:
            with contextlib.suppress(ProcessLookupError):
                dproc.send_signal(signal.SIGTERM)
            await _stop_child(dproc, dproc.pid)

        stack.push_async_callback(stop_dovecot)
        sockets = [d / "run" / "dovecot" / name for name in ("lmtp", "auth-postfix")]

        async def dovecot_up() -> bool:
            if dproc.returncode is not None:
                raise BenchError(f"the baseline Dovecot exited:\n{_tail(dovecot_log)}")
            return all(p.exists() for p in sockets)

        await _until(dovecot_up, "the baseline Dovecot", dovecot_log)
        await _run([postfix, "-c", conf, "check"], "postfix check (baseline)")
        with postfix_log.open("ab") as out:
            pproc = await asyncio.create_subprocess_exec(
                postfix, "-c", conf, "start-fg",
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, env=_ENV,
                start_new_session=True,
            )  # fmt: skip
        pid_file = d / "queue" / "pid" / "master.pid"

        async def stop_postfix() -> None:
            master = _read_pid(pid_file)
            with contextlib.suppress(BenchError):
                await _run([postfix, "-c", conf, "stop"], "postfix stop (baseline)")
            await _stop_child(pproc, master)

        stack.push_async_callback(stop_postfix)

        async def postfix_up() -> bool:
            if pproc.returncode is not None:
                raise BenchError(f"the baseline Postfix exited:\n{_tail(postfix_log)}")
            return await _smtp_banner(port)

        await _until(postfix_up, "the baseline Postfix", postfix_log)

        def pids() -> dict[str, int]:
            found = {"postfix": _read_pid(pid_file), "dovecot": dproc.pid}
            return {k: v for k, v in found.items() if v is not None}

        yield _Side(
            "baseline", port, _ADDRESS, d / "store" / "bench" / "Maildir",
            lambda: _tail(postfix_log), pids,
        )  # fmt: skip


# -- the load -------------------------------------------------------------------------------


class _Smtp:
    """A submission client over asyncio streams: just what the bench sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def reply(self, code: int, what: str) -> None:
        lines = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise BenchError(f"the server closed the connection after {what}")
            lines.append(line)
            if line[3:4] != b"-":
                break
        if int(line[:3]) != code:
            text = b"".join(lines).decode(errors="replace").strip()
            raise BenchError(f"{what}: wanted {code}, the server answered {text!r}")

    async def command(self, line: bytes, code: int) -> None:
        self.writer.write(line + b"\r\n")
        await self.reply(code, line.split(b" ", 1)[0].decode())


@dataclass(slots=True)
class _Times:
    """Of one round, per message id: when its DATA was answered 250 (queued), when its file
    was seen; and each message's submit time (MAIL FROM sent -> 250 after DATA)."""

    done: dict[str, float] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)
    submit: list[float] = field(default_factory=list)


async def _connection(side: _Side, uids: list[str], times: _Times, tls: ssl.SSLContext) -> None:
    """One connection: STARTTLS, AUTH PLAIN, then each message."""
    reader, writer = await asyncio.open_connection("127.0.0.1", side.port)
    try:
        smtp = _Smtp(reader, writer)
        await smtp.reply(220, "connect")
        await smtp.command(b"EHLO client.test", 250)
        await smtp.command(b"STARTTLS", 220)
        await writer.start_tls(tls)
        await smtp.command(b"EHLO client.test", 250)
        plain = base64.b64encode(f"\0{side.login}\0{_PASSWORD}".encode())
        await smtp.command(b"AUTH PLAIN " + plain, 235)
        for uid in uids:
            start = time.perf_counter()
            await smtp.command(f"MAIL FROM:<{_ADDRESS}>".encode(), 250)
            await smtp.command(f"RCPT TO:<{_ADDRESS}>".encode(), 250)
            await smtp.command(b"DATA", 354)
            writer.write(_message(uid) + b".\r\n")
            await smtp.reply(250, "end of DATA")
            times.done[uid] = now = time.perf_counter()
            times.submit.append(now - start)
        await smtp.command(b"QUIT", 221)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def _client(side: _Side, uids: list[str], times: _Times, tls: ssl.SSLContext) -> None:
    for i in range(0, len(uids), _PER_CONNECTION):
        await _connection(side, uids[i : i + _PER_CONNECTION], times, tls)


async def _watch(side: _Side, want: set[str], seen: dict[str, float]) -> None:
    """Poll `new/` until every wanted id has a file; `seen[uid]` when its file was first listed."""
    new = side.maildir / "new"
    while len(seen) < len(want):
        try:
            names = os.listdir(new)
        except FileNotFoundError:
            names = []
        now = time.perf_counter()
        for name in names:
            if name in side.known:
                continue
            side.known.add(name)
            with contextlib.suppress(FileNotFoundError):
                m = _SUBJECT.search((new / name).read_bytes())
                if m and m.group(1).decode() in want:
                    seen.setdefault(m.group(1).decode(), now)
        await asyncio.sleep(_POLL)


async def _first_failure(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run all; the first to fail cancels the others and its error is raised."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in finished:
            if t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class _Round:
    messages: int
    seconds: float
    latencies: list[float]
    submit: list[float]
    cpu_ms: dict[str, float]  # CPU per message of each server (and of ours' stand-ins)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


async def _round(side: _Side, messages: int, clients: int, tls: ssl.SSLContext) -> _Round:
    uids = [uuid.uuid4().hex for _ in range(messages)]
    times = _Times()
    seen = times.seen
    cpu0 = {k: tree_cpu(p) for k, p in side.pids().items()}
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(_ROUND_DEADLINE):
            await _first_failure(
                [_watch(side, set(uids), seen)]
                + [_client(side, uids[i::clients], times, tls) for i in range(clients)]
            )
    except TimeoutError:
        raise BenchError(
            f"{side.label}: {len(seen)} of {messages} messages delivered within "
            f"{_ROUND_DEADLINE:.0f} s; Postfix says:\n{side.log_tail()}"
        ) from None
    except (OSError, ssl.SSLError, BenchError) as e:
        raise BenchError(f"{side.label}: {e}; Postfix says:\n{side.log_tail()}") from e
    cpu = {k: (tree_cpu(p) - cpu0.get(k, 0.0)) * 1e3 / messages for k, p in side.pids().items()}
    seconds = max(seen.values()) - t0
    await asyncio.to_thread(_mark_read, side)
    latencies = [max(0.0, seen[u] - times.done[u]) for u in uids]
    return _Round(messages, seconds, latencies, times.submit, cpu)


def _mark_read(side: _Side) -> None:
    """Move the delivered files to cur/ (as a client marking them read): new/ stays short."""
    new, cur = side.maildir / "new", side.maildir / "cur"
    for name in side.known:
        with contextlib.suppress(FileNotFoundError):
            os.rename(new / name, cur / f"{name}:2,S")
    side.known.clear()


def _client_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the servers' certificates are self-signed
    return ctx


def _ms(xs: list[float], q: float) -> str:
    return f"{_percentile(xs, q) * 1e3:.1f}"


def _line(side: _Side, rnd: _Round, r: int | str) -> str:
    return (
        f"  round {r}  {side.label:<8} {rnd.rate:>6,.1f} msg/s  delivery p50 "
        f"{_ms(rnd.latencies, 0.5)} ms, p99 {_ms(rnd.latencies, 0.99)} ms; submit p50 "
        f"{_ms(rnd.submit, 0.5)} ms  ({rnd.messages} in {rnd.seconds:.2f} s; servers' cpu "
        f"{sum(rnd.cpu_ms.values()):.1f} ms/msg)"
    )


async def _warm_up(side: _Side, clients: int, tls: ssl.SSLContext) -> None:
    rnd = await _round(side, _WARMUP, clients, tls)
    say(_line(side, rnd, "0") + "  warm-up, not counted")


def _dkim_signed(side: _Side) -> bool:
    cur = side.maildir / "cur"
    some = next(iter(sorted(cur.iterdir())), None)
    return some is not None and b"\nDKIM-Signature:" in b"\n" + some.read_bytes()


async def mail_delivery_vs_postfix(b: Bench) -> Result:
    _check_can_run()
    env = os.environ
    messages = _env_int(env, "HP_BENCH_MAIL_MESSAGES", 300, 10)
    clients = _env_int(env, "HP_BENCH_MAIL_CLIENTS", 8, 1)
    work = (b.servers.root / f"mail-{uuid.uuid4().hex[:6]}").resolve()
    work.mkdir(mode=0o755)
    tls = _client_tls()
    ports = free_ports(8)
    try:
        async with contextlib.AsyncExitStack() as stack:
            stand_ins = await stack.enter_async_context(_run_stand_ins(ports[6]))
            t0 = time.perf_counter()
            ours = await stack.enter_async_context(_ours(work / "ours", ports, stand_ins))
            up = time.perf_counter() - t0
            say(f"  ours up in {up:.1f} s (rspamd compiled its hyperscan cache)")
            base = await stack.enter_async_context(_baseline(work / "baseline", ports[7]))
            say(
                f"  {clients} clients x {messages} messages of {len(_message('0' * 32))} B per "
                f"round, {_PER_CONNECTION} per connection (STARTTLS, AUTH PLAIN); ours: Postfix "
                "+ rspamd milter (DKIM) + Dovecot LMTP (quota, sieve), auth over HTTP; "
                "baseline: Postfix + Dovecot LMTP, passwd-file"
            )
            await _warm_up(ours, clients, tls)
            if not await asyncio.to_thread(_dkim_signed, ours):
                raise BenchError(
                    "ours delivered a message with no DKIM-Signature: rspamd did not sign"
                )
            await _warm_up(base, clients, tls)
            before = await stand_ins.counts()
            for r in range(b.cfg.rounds):
                for side in (ours, base) if r % 2 == 0 else (base, ours):
                    rnd = await _round(side, messages, clients, tls)
                    side.rates.append(rnd.rate)
                    side.latencies += rnd.latencies
                    side.submit += rnd.submit
                    side.cpu_ms.append(rnd.cpu_ms)
                    say(_line(side, rnd, r + 1))
            total = b.cfg.rounds * messages
            after = await stand_ins.counts()
            asked = ", ".join(f"{n} x{c}" for n, c in after["names"])
            say(
                f"  ours: {after['auth'] - before['auth']} password checks by the auth endpoint, "
                f"{(after['dns'] - before['dns']) / total:.2f} DNS queries per message (answered"
                f" NXDOMAIN at once; most asked over the run: {asked or 'none'})"
            )
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
    for side in (ours, base):
        cpu = {k: statistics.median(c.get(k, 0.0) for c in side.cpu_ms) for k in side.cpu_ms[0]}
        say(
            f"  median   {side.label:<8} {side.rate:>6,.1f} msg/s; over its "
            f"{len(side.latencies)} messages: delivery p50 {_ms(side.latencies, 0.5)} ms, p99 "
            f"{_ms(side.latencies, 0.99)} ms; submit p50 {_ms(side.submit, 0.5)} ms, p99 "
            f"{_ms(side.submit, 0.99)} ms; cpu/msg: "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in cpu.items())
        )
    ratio = ours.rate / base.rate
    say(f"  ratio    ours/baseline = {ratio:.3f}")
    return Result(_NAME, ratio, _TARGET)


BENCHMARKS: dict[str, Benchmark] = {
    _NAME: Benchmark(_NAME, mail_delivery_vs_postfix, _TARGET),
}
