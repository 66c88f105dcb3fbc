"""The mail servers adapter: Postfix, Dovecot and rspamd run as our children, configured like
the edge's nginx: render a generation, check it with each server's own checker, swap one
symlink, reload.

Layout under the root (render.Layout):
    conf -> generations/gNNNNNN   the live configuration (swapped with one rename)
    generations/                  the live generation and the one before it
    postfix/queue, postfix/data   Postfix's queue (root) and data (postfix)
    run/dovecot, state/dovecot    Dovecot's base_dir (sockets) and state
    run/rspamd, rspamd-db         rspamd's run dir and database (hyperscan cache)
    store/<folder>/Maildir        the mailboxes (the vmail user)
    snapshots/, restore-pending/  the store in backups (services/mail/snapshots.py)
    tls/self-signed.*             the certificate used while the model has none

Every server reads its configuration through `conf` (Postfix `-c conf/postfix`, Dovecot
`-c conf/dovecot/dovecot.conf`, rspamd `LOCAL_CONFDIR=conf/rspamd`), so a reload after the swap
reads the new generation; the staged one is checked at its own path before it is swapped in.
A refused generation is deleted and the live one keeps serving.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import grp
import hashlib
import ipaddress
import logging
import os
import pwd
import re
import shutil
import signal
import ssl
import stat
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from libs.tls import self_signed_pem_apart
from services.mail import snapshots
from services.mail.errors import MailConfigRefused, MailServersError
from services.mail.model import MailModel, ServersSettings
from services.mail.render import Layout, RenderedFile, RenderError, render

__all__ = ["Binaries", "MailServers", "Renderer"]

log = logging.getLogger("homeport.mail.servers")

Renderer = Callable[[MailModel, ServersSettings, Path], dict[str, RenderedFile]]

_CHECK_DEADLINE = 60.0
_START_DEADLINE = 120.0  # rspamd's first start compiles its hyperscan cache
_RELOAD_DEADLINE = 30.0
_STOP_DEADLINE = 15.0
_PROBE_DEADLINE = 3.0
_USAGE_DEADLINE = 3.0  # doveadm quota get: well under the gateway's wait for the query
_POLL = 0.1
_STORE_FOLDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")  # render.py's mailbox folders
_BACKOFF_FIRST = 1.0
_BACKOFF_MAX = 60.0
_STEADY = 60.0  # a server that ran this long before dying restarts without waiting
_LOG_LINES = 200
_GENERATION = re.compile(r"g(\d{6})")
_FALLBACK_DAYS = 365
_FALLBACK_RENEW = 300 * 86400.0  # seconds: a fallback certificate is made anew after this
_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}  # none of our secrets
_SERVERS = ("postfix", "dovecot", "rspamd")


class Binaries:
    """Where the servers' programs are (found on PATH plus /usr/sbin when not given)."""

    def __init__(
        self,
        postfix: str = "postfix",
        postconf: str = "postconf",
        dovecot: str = "dovecot",
        doveconf: str = "doveconf",
        rspamd: str = "rspamd",
        rspamadm: str = "rspamadm",
        rspamd_conf: Path = Path("/etc/rspamd/rspamd.conf"),
        doveadm: str = "doveadm",
    ) -> None:
        self.postfix = postfix
        self.postconf = postconf
        self.dovecot = dovecot
        self.doveconf = doveconf
        self.rspamd = rspamd
        self.rspamadm = rspamadm
        self.rspamd_conf = rspamd_conf
        self.doveadm = doveadm

    def find(self, name: str) -> str:
        program: str = getattr(self, name)
        found = shutil.which(program, path=_ENV["PATH"]) or shutil.which(program)
        if found is None:
            raise MailServersError(
                f"{program} not found: install the mail servers "
                "(deploy/install-system-deps.sh --server)"
            )
        return found


# -- small helpers ------------------------------------------------------------------------


def _ids(user: str, group: str | None = None) -> tuple[int, int]:
    try:
        pw = pwd.getpwnam(user)
        gid = grp.getgrnam(group).gr_gid if group is not None else pw.pw_gid
    except KeyError:
        raise MailServersError(
            f"system user or group {group or user!r} is missing: install the mail servers "
            "(deploy/install-system-deps.sh --server)"
        ) from None
    return pw.pw_uid, gid


def _group_id(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise MailServersError(
            f"system group {group!r} is missing: install the mail servers "
            "(deploy/install-system-deps.sh --server)"
        ) from None


def _ensure_dir(path: Path, mode: int, uid: int = 0, gid: int = 0) -> None:
    """`path` a folder of `uid`:`gid` with `mode`; a link put in its place is refused, never
    followed (root would otherwise chmod what it points to)."""
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise MailServersError(f"{path} is not a folder (a link?): move it away and start again")
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(path, uid, gid, follow_symlinks=False)
    if st.st_mode & 0o7777 != mode:
        path.chmod(mode)


def _write_generation(gen: Path, files: dict[str, RenderedFile]) -> None:
    if gen.exists():
        shutil.rmtree(gen)
    gen.mkdir(mode=0o755, parents=True)
    # Written whole before anything reads them, so dated a few seconds back: Postfix reads a
    # main.cf modified within the last second again and again, 0.3 s apart, until it is older
    # (its guard against a file still being edited), which made every check and start of a
    # new generation wait 1-2.5 s.
    settled = time.time() - 5
    for rel, f in sorted(files.items()):
        path = gen / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise MailServersError(f"rendered file name {rel!r} leaves the generation")
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        uid, gid = 0, 0
        if f.owner is not None:
            uid, gid = _ids(f.owner, f.group)
        elif f.group is not None:
            gid = _group_id(f.group)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, f.data)
            os.fchown(fd, uid, gid)
            os.fchmod(fd, f.mode)
            os.utime(fd, (settled, settled))
            os.fsync(fd)
        finally:
            os.close(fd)
    _fsync_dir(gen)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _same_files(gen: Path, files: dict[str, RenderedFile], server: str) -> bool:
    """Whether `server`'s part of generation `gen` on disk holds exactly `files`' part."""
    want = {k: v for k, v in files.items() if k.startswith(server + "/")}
    try:
        have = {str(p.relative_to(gen)) for p in (gen / server).rglob("*") if not p.is_dir()}
        if have != set(want):
            return False
        for rel, f in want.items():
            st = os.lstat(gen / rel)
            if st.st_mode & 0o7777 != f.mode or (gen / rel).read_bytes() != f.data:
                return False
    except OSError:
        return False
    return True


def _digest(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        try:
            h.update(p.read_bytes())
        except OSError:
            h.update(b"-")
    return h.hexdigest()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# Dovecot's process titles carry its instance name: "dovecot-<instance>/imap-login"
_SIGN_IN_SIDE = re.compile(r"\bdovecot(-[^/\s]+)?/(auth|[a-z]+-login)\b")


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _children(parent: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live children of `parent`."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != parent or fields[0] == "Z":
                continue
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        out.append((int(entry.name), title))
    return out


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _killpg(pgid: int, sig: int) -> None:
    if pgid > 1:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


async def _gone(pid: int, deadline: float) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        await asyncio.sleep(_POLL)
    return not _alive(pid)


async def _run(argv: Sequence[str], deadline: float, what: str) -> tuple[int, str, str]:
    """Run `argv` (no shell) to completion within `deadline`: (exit code, stdout, stderr)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_ENV,
        )
    except OSError as e:
        raise MailServersError(f"cannot run {argv[0]} ({what}): {e}") from e
    try:
        out, err = await asyncio.wait_for(proc.communicate(), deadline)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise MailServersError(
            f"{what} took over {deadline:.0f} s ({argv[0]}): is the disk or DNS hung?"
        ) from None
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def _trim(text: str, lines: int = 20) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:]) or "(no output)"


def _probe_host(listen: Sequence[str]) -> str:
    addr = ipaddress.ip_address(listen[0] if listen else "127.0.0.1")
    if addr.is_unspecified:
        return "::1" if addr.version == 6 else "127.0.0.1"
    return str(addr)


async def _closing(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


async def _smtp_banner(host: str, port: int) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
    except (OSError, TimeoutError):
        return False
    try:
        line = await asyncio.wait_for(reader.readline(), 2.0)
        if line.startswith(b"220"):
            writer.write(b"QUIT\r\n")
            await writer.drain()
            return True
        return False
    except (OSError, TimeoutError):
        return False
    finally:
        await _closing(writer)


async def _imaps_greeting(host: str, port: int) -> bool:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # only whether TLS and IMAP answer, not whose cert
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname=None), 3.0
        )
    except (OSError, TimeoutError, ssl.SSLError):
        return False
    try:
        line = await asyncio.wait_for(reader.readline(), 2.0)
        if line.startswith(b"* OK"):
            writer.write(b"a LOGOUT\r\n")
            await writer.drain()
            return True
        return False
    except (OSError, TimeoutError, ssl.SSLError):
        return False
    finally:
        await _closing(writer)


async def _milter_answers(host: str, port: int) -> bool:
    """A milter option negotiation (SMFIC_OPTNEG) answered by one (rspamd's proxy worker)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
    except (OSError, TimeoutError):
        return False
    try:
        body = b"O" + struct.pack(">III", 6, 0x1FF, 0x1FFFFF)
        writer.write(struct.pack(">I", len(body)) + body)
        await writer.drain()
        head = await asyncio.wait_for(reader.readexactly(5), 3.0)
        if head[4:5] != b"O":
            return False
        writer.write(struct.pack(">I", 1) + b"Q")
        await writer.drain()
        return True
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        await _closing(writer)


# -- one server ---------------------------------------------------------------------------


class _Master:
    """One server's master process, our child: start it, reload it, stop it (template
    method: the subclasses say how)."""

    name = ""

    def __init__(self, lay: Layout, settings: ServersSettings, binaries: Binaries) -> None:
        self.lay = lay
        self.settings = settings
        self.binaries = binaries
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: collections.deque[str] = collections.deque(maxlen=_LOG_LINES)
        self.seen = 0  # lines read in all
        self.started_at = 0.0
        self._reader: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def tail(self, lines: int = 15) -> str:
        return "\n".join(list(self.lines)[-lines:]) or "(no output)"

    # -- what each server says --

    def argv(self) -> list[str]:
        raise NotImplementedError

    async def answers(self) -> bool:
        raise NotImplementedError

    async def _reload(self) -> None:
        raise NotImplementedError

    async def _ask_to_stop(self) -> None:
        """Ask the running master to stop (it then exits on its own)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)

    def _group(self) -> int | None:
        """The process group of the master and its workers."""
        return self.proc.pid if self.proc is not None else None

    async def stop_stale(self) -> None:
        """Stop a master an earlier run of ours left behind (it holds the ports)."""

    # -- common --

    async def start(self) -> None:
        argv = self.argv()
        offset = self.seen
        # Our own pipe, not the transport's: asyncio's wait() returns only once its pipes are
        # closed, and workers that outlive a killed master keep them open.
        read_fd, write_fd = os.pipe()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                env=_ENV,
                start_new_session=True,  # its own group: stop() reaches its workers
            )
        except OSError as e:
            os.close(read_fd)
            raise MailServersError(f"cannot run {argv[0]}: {e}") from e
        finally:
            os.close(write_fd)
        self.started_at = time.monotonic()
        stream = asyncio.StreamReader(limit=1 << 16)
        pipe = os.fdopen(read_fd, "rb", buffering=0)
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stream), pipe
        )
        self._reader = asyncio.create_task(self._read(stream, transport), name=f"{self.name}-log")
        end = time.monotonic() + _START_DEADLINE
        try:
            while time.monotonic() < end:
                if self.proc.returncode is not None:
                    await asyncio.sleep(0.2)  # its last words
                    raise MailServersError(
                        f"{self.name} exited with code {self.proc.returncode} at start: "
                        f"{self._since(offset)}"
                    )
                if await self.answers():
                    log.info("mail server started", extra={"server": self.name})
                    return
                await asyncio.sleep(_POLL * 2)
            raise MailServersError(
                f"{self.name} did not answer within {_START_DEADLINE:.0f} s: {self._since(offset)}"
            )
        except BaseException:
            await self.stop()
            raise

    def _since(self, offset: int) -> str:
        fresh = min(self.seen - offset, len(self.lines))
        return "\n".join(list(self.lines)[-fresh:][-15:]) if fresh > 0 else "(no output)"

    async def _read(self, stream: asyncio.StreamReader, transport: asyncio.BaseTransport) -> None:
        """Every line the server prints: kept for error messages, passed on to our log."""
        try:
            while True:
                try:
                    raw = await stream.readline()
                except ValueError:  # a line over the limit: the rest of it is dropped
                    continue
                except OSError:
                    return
                if not raw:
                    return
                line = raw.decode(errors="replace").rstrip()
                self.lines.append(line)
                self.seen += 1
                log.info("%s: %s", self.name, line, extra={"server": self.name})
        finally:
            transport.close()

    async def reload(self) -> None:
        if not self.running:
            return  # its watcher restarts it with the live configuration
        await self._reload()
        if not self.running:
            raise MailServersError(f"{self.name} exited while reloading: {self.tail()}")

    async def wait_line(self, offset: int, needle: str, deadline: float) -> bool:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            fresh = min(self.seen - offset, len(self.lines))
            if fresh > 0 and any(needle in line for line in list(self.lines)[-fresh:]):
                return True
            await asyncio.sleep(_POLL)
        return False

    async def stop(self) -> None:
        """Ask to stop, then terminate, then kill the group; always reaps the child."""
        proc = self.proc
        if proc is None:
            return
        group = self._group()
        if proc.returncode is None:
            with contextlib.suppress(MailServersError):
                await self._ask_to_stop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), _STOP_DEADLINE)
            if proc.returncode is None:
                log.warning("mail server did not stop in time: killed", extra={"server": self.name})
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        if group is not None:
            _killpg(group, signal.SIGKILL)  # workers left behind by a master that died
        if proc.returncode is None:
            await proc.wait()
        await self._end_reader()
        self.proc = None

    def kill_leftovers(self) -> None:
        """After the master died: its workers still hold ports and pipes."""
        group = self._group()
        if group is not None:
            _killpg(group, signal.SIGKILL)

    async def _end_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(reader), 2.0)
        except TimeoutError:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


class _Postfix(_Master):
    name = "postfix"
    _master: int | None = None

    @property
    def conf(self) -> Path:
        return self.lay.conf / "postfix"

    @property
    def pid_file(self) -> Path:
        return self.lay.queue / "pid" / "master.pid"

    def argv(self) -> list[str]:
        return [self.binaries.find("postfix"), "-c", str(self.conf), "start-fg"]

    async def answers(self) -> bool:
        port = self.settings.smtp_port or self.settings.submission_port
        return await _smtp_banner(_probe_host(self.settings.listen), port)

    def _group(self) -> int | None:
        # `postfix start-fg` is a shell waiting on `master -s`, which leads its own session
        master = _read_pid(self.pid_file)
        if master is not None and _comm(master) == "master":
            self._master = master
        return self._master

    async def start(self) -> None:
        self._master = None
        await super().start()
        self._group()  # remembered: after a crash its workers are found by it

    async def _command(self, verb: str) -> tuple[int, str]:
        code, out, err = await _run(
            [self.binaries.find("postfix"), "-c", str(self.conf), verb],
            _RELOAD_DEADLINE,
            f"postfix {verb}",
        )
        return code, _trim(out + err)

    async def _reload(self) -> None:
        code, out = await self._command("reload")
        if code != 0:
            raise MailServersError(f"postfix reload failed: {out}")

    async def _ask_to_stop(self) -> None:
        await self._command("stop")

    async def stop_stale(self) -> None:
        master = _read_pid(self.pid_file)
        if master is None or not _alive(master) or _comm(master) != "master":
            return
        log.warning("stopping a Postfix master left running", extra={"pid": master})
        if self.conf.exists():
            with contextlib.suppress(MailServersError):
                await self._command("stop")
        if not await _gone(master, _STOP_DEADLINE):
            _killpg(master, signal.SIGKILL)
            await _gone(master, _STOP_DEADLINE)


class _Dovecot(_Master):
    name = "dovecot"

    @property
    def conf_file(self) -> Path:
        return self.lay.conf / "dovecot" / "dovecot.conf"

    def argv(self) -> list[str]:
        return [self.binaries.find("dovecot"), "-F", "-c", str(self.conf_file)]

    async def answers(self) -> bool:
        if not self.settings.imaps_port:
            return (self.lay.dovecot_base / "lmtp").exists()
        return await _imaps_greeting(_probe_host(self.settings.listen), self.settings.imaps_port)

    async def _reload(self) -> None:
        assert self.proc is not None
        # Its auth and login processes are replaced, the old ones ended a few seconds later
        # (with any sign-in they were still serving): wait until they are gone, so that once
        # apply returns only processes of the new configuration take sign-ins (a test saw a
        # ManageSieve sign-in cut right after a reload). Signed-in sessions are not waited for.
        old = [pid for pid, title in _children(self.proc.pid) if _SIGN_IN_SIDE.search(title)]
        offset = self.seen
        self.proc.send_signal(signal.SIGHUP)
        if not await self.wait_line(offset, "reloading configuration", _RELOAD_DEADLINE):
            raise MailServersError(
                f"dovecot did not reload within {_RELOAD_DEADLINE:.0f} s: {self._since(offset)}"
            )
        end = time.monotonic() + _RELOAD_DEADLINE
        for pid in old:
            await _gone(pid, max(0.0, end - time.monotonic()))

    async def stop_stale(self) -> None:
        pid = _read_pid(self.lay.dovecot_base / "master.pid")
        if pid is None or not _alive(pid) or _comm(pid) != "dovecot":
            return
        log.warning("stopping a Dovecot master left running", extra={"pid": pid})
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not await _gone(pid, _STOP_DEADLINE):
            _killpg(os.getpgid(pid), signal.SIGKILL)
            await _gone(pid, _STOP_DEADLINE)


class _Rspamd(_Master):
    name = "rspamd"

    @property
    def pid_file(self) -> Path:
        return self.lay.root / "run" / "rspamd.pid"  # ours: rspamd -f writes none

    def variables(self, local_confdir: Path, dbdir: Path, rundir: Path) -> list[str]:
        return [
            f"--var=LOCAL_CONFDIR={local_confdir}",
            f"--var=DBDIR={dbdir}",
            f"--var=RUNDIR={rundir}",
            f"--var=LOGDIR={rundir}",
        ]

    def argv(self) -> list[str]:
        user = self.settings.rspamd_user
        return [
            self.binaries.find("rspamd"),
            "-f",
            "-c",
            str(self.binaries.rspamd_conf),
            "-u",
            user,
            "-g",
            user,
            *self.variables(self.lay.conf / "rspamd", self.lay.rspamd_db, self.lay.rspamd_run),
        ]

    async def start(self) -> None:
        await super().start()
        if self.proc is not None:
            self.pid_file.write_text(f"{self.proc.pid}\n")

    async def stop(self) -> None:
        await super().stop()
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()

    async def answers(self) -> bool:
        return await _milter_answers("127.0.0.1", self.settings.milter_port)

    def _workers(self) -> set[int]:
        """The pids of the main process's proxy (milter) workers."""
        assert self.proc is not None
        return {pid for pid, title in _children(self.proc.pid) if "rspamd_proxy" in title}

    async def _reload(self) -> None:
        """SIGHUP: the main process reads the configuration again and replaces its workers;
        done when a new proxy worker answers and the old ones are gone."""
        assert self.proc is not None
        before = self._workers()
        offset = self.seen
        self.proc.send_signal(signal.SIGHUP)
        end = time.monotonic() + _RELOAD_DEADLINE
        while time.monotonic() < end:
            await asyncio.sleep(_POLL)
            if not self.running:
                break
            now = self._workers()
            if now and not (now & before) and await self.answers():
                return
        raise MailServersError(
            f"rspamd did not reload within {_RELOAD_DEADLINE:.0f} s: {self._since(offset)}"
        )

    async def stop_stale(self) -> None:
        pid = _read_pid(self.pid_file)
        if pid is None or not _alive(pid) or _comm(pid) != "rspamd":
            return
        log.warning("stopping an rspamd left running", extra={"pid": pid})
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not await _gone(pid, _STOP_DEADLINE):
            _killpg(pid, signal.SIGKILL)
            await _gone(pid, _STOP_DEADLINE)


# -- the three together -------------------------------------------------------------------


class MailServers:
    """Postfix, Dovecot and rspamd under `settings.root`: `apply(model)` checks and installs a
    configuration (starting the servers the first time), they are supervised until exit."""

    def __init__(
        self,
        settings: ServersSettings,
        *,
        binaries: Binaries | None = None,
        renderer: Renderer = render,
    ) -> None:
        self.settings = settings
        self.lay = Layout(settings.root.resolve())
        if self.lay.root != settings.root:
            raise MailServersError(
                f"the mail root {settings.root} must be an absolute path without links"
            )
        self.binaries = binaries or Binaries()
        self._render = renderer
        self._postfix = _Postfix(self.lay, settings, self.binaries)
        self._dovecot = _Dovecot(self.lay, settings, self.binaries)
        self._rspamd = _Rspamd(self.lay, settings, self.binaries)
        self._masters: tuple[_Master, ...] = (self._dovecot, self._rspamd, self._postfix)
        self._lock = asyncio.Lock()
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._model: MailModel | None = None
        self._tls_digest: str | None = None
        self._serving: dict[str, Path] = {}  # server -> the generation it last loaded
        self._closing = False
        self._entered = False

    # -- lifecycle --

    async def __aenter__(self) -> MailServers:
        if os.geteuid() != 0:
            raise MailServersError("the mail servers need root: run the mail service as root")
        await asyncio.to_thread(self._prepare)
        for m in self._masters:
            await m.stop_stale()
        self._entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
        self._entered = False

    async def stop(self) -> None:
        """Stop supervising, then stop the servers (Postfix first: it stops taking mail). The
        live generation stays: a later `apply` starts them again."""
        self._closing = True
        await self._end_watchers()
        async with self._lock:
            self._serving.clear()
            await self._end_watchers()  # any an apply started meanwhile
            await self._postfix.stop()
            await asyncio.gather(self._dovecot.stop(), self._rspamd.stop())

    async def _end_watchers(self) -> None:
        watchers = list(self._watchers.values())
        self._watchers.clear()
        for t in watchers:
            t.cancel()
        for t in watchers:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    def _prepare(self) -> None:
        lay = self.lay
        postfix = _ids("postfix")
        rspamd = _ids(self.settings.rspamd_user)
        vmail = _ids(self.settings.vmail_user)
        _ensure_dir(lay.root, 0o755)  # every server's user passes through it
        for d in (lay.generations, lay.root / "postfix", lay.queue, lay.root / "run"):
            _ensure_dir(d, 0o755)
        _ensure_dir(lay.postfix_data, 0o700, *postfix)
        _ensure_dir(lay.dovecot_base.parent, 0o755)
        _ensure_dir(lay.root / "state", 0o755)
        _ensure_dir(lay.dovecot_state, 0o750)
        _ensure_dir(lay.rspamd_db, 0o750, *rspamd)
        _ensure_dir(lay.rspamd_run, 0o750, *rspamd)
        # rspamd makes its milter socket here (0666): only Postfix's group (and rspamd) get to it
        _ensure_dir(lay.milter_socket.parent, 0o750, rspamd[0], _group_id("postfix"))
        _ensure_dir(lay.root / "run" / "rspamd-check", 0o700)
        _ensure_dir(lay.store, 0o700, *vmail)
        # Dovecot's sendmail for Sieve (as the store's user) reaches the mail service here
        _ensure_dir(lay.sieve_socket.parent, 0o750, 0, vmail[1])
        _ensure_dir(lay.tls, 0o700)
        # a restored mail backup's store, before Dovecot delivers to any of its mailboxes;
        # snapshots a backup cut short left
        moved = snapshots.adopt(lay.root, lay.store, *vmail)
        if moved:
            log.info("the restored mail store taken in: %d mailbox(es)", len(moved))
        stale = snapshots.forget_stale(lay.root)
        if stale:
            log.info("removed %d mail snapshot(s) a backup left a day ago or more", len(stale))

    # -- what runs --

    @property
    def model(self) -> MailModel | None:
        """The model the live generation was rendered from."""
        return self._model

    @property
    def live(self) -> Path | None:
        """The live generation's directory."""
        try:
            return self.lay.root / os.readlink(self.lay.conf)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise MailServersError(
                f"{self.lay.conf} is not a symlink made by Homeport: move it away and apply again"
            ) from e

    def pids(self) -> dict[str, int]:
        """Our child process of each running server (Postfix: the `start-fg` shell)."""
        return {m.name: m.proc.pid for m in self._masters if m.running and m.proc is not None}

    def master_pid(self, server: str) -> int | None:
        """The master process of `server` (the one that forks its workers) while it runs."""
        m = {x.name: x for x in self._masters}[server]
        return m._group() if m.running else None

    def log_tail(self, server: str, lines: int = 50) -> str:
        """The last lines `server` printed (for error messages and tests)."""
        return {m.name: m for m in self._masters}[server].tail(lines)

    async def ready(self) -> bool:
        """Whether all three run and answer (SMTP banner, IMAPS greeting, milter)."""
        if not all(m.running for m in self._masters):
            return False
        try:
            answers = await asyncio.wait_for(
                asyncio.gather(*(m.answers() for m in self._masters)), _PROBE_DEADLINE * 2
            )
        except TimeoutError:
            return False
        return all(answers)

    # -- apply --

    async def apply(self, model: MailModel) -> None:
        """Render `model`, check it with each server's checker, swap it in and reload (or start
        the servers the first time); MailConfigRefused when a checker refuses it (the live
        generation stays and keeps serving). `live` is then the generation in use."""
        if not self._entered:
            raise MailServersError("MailServers.apply outside `async with MailServers(...)`")
        async with self._lock:
            self._closing = False
            tls_digest = await self._tls(model)
            tls_changed = self._tls_digest is not None and tls_digest != self._tls_digest
            live = self.live
            staging = self._next_generation()
            files = self._rendered(model, staging)
            changed = set(_SERVERS)
            if live is not None and live.is_dir():
                again = self._rendered(model, live)
                changed = {s for s in _SERVERS if not _same_files(live, again, s)}
                if tls_changed:
                    changed |= {"postfix", "dovecot"}
            if changed or live is None:
                await asyncio.to_thread(_write_generation, staging, files)
                try:
                    await self._check(staging)
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
                self._point_to(staging)
                log.info(
                    "mail configuration swapped in",
                    extra={"generation": staging.name, "changed": sorted(changed)},
                )
            else:
                staging = live
            try:
                fresh = {m.name for m in self._masters if m.proc is None}
                await self._start_or_reload(changed)
                for name in changed | fresh:
                    self._serving[name] = staging
            except MailServersError:
                if live is not None and staging != live:
                    self._point_to(live)  # on disk again what is serving
                    shutil.rmtree(staging, ignore_errors=True)
                    with contextlib.suppress(MailServersError):
                        await self._start_or_reload(changed)
                raise
            self._model = model
            self._tls_digest = tls_digest
            if staging != live:
                # a server not reloaded still reads the generation it was loaded with (Dovecot
                # opens its users file by that path at each look-up): kept until it moves on
                keep = {staging, *self._serving.values()} | (set() if live is None else {live})
                await asyncio.to_thread(self._prune, keep)

    def _rendered(self, model: MailModel, gen: Path) -> dict[str, RenderedFile]:
        try:
            return self._render(model, self.settings, gen)
        except RenderError as e:
            raise MailConfigRefused(e.server, str(e)) from None

    async def tls_changed(self, model: MailModel) -> bool:
        """Whether the TLS files of `model` differ from those the servers loaded (a renewal in
        place, or a stand-in made anew): `apply` then reloads Postfix and Dovecot."""
        if self._tls_digest is None:
            return False
        return await self._tls(model) != self._tls_digest

    async def _tls(self, model: MailModel) -> str:
        """Make the fallback certificate if the model has none; a digest of the TLS files (when
        it changes, Postfix and Dovecot reload to serve the new ones)."""
        if model.tls_cert is None:
            await self._fallback_certificate(model.hostname)
            paths = [self.lay.fallback_cert, self.lay.fallback_key]
        else:
            assert model.tls_key is not None
            paths = [model.tls_cert, model.tls_key]
        return await asyncio.to_thread(_digest, paths)

    async def _fallback_certificate(self, hostname: str) -> None:
        cert, key = self.lay.fallback_cert, self.lay.fallback_key
        names = self.lay.tls / "self-signed.names"
        try:
            fresh = time.time() - cert.stat().st_mtime < _FALLBACK_RENEW and key.exists()
            same = names.read_text().strip() == hostname
        except OSError:
            fresh = same = False
        if fresh and same:
            return
        try:
            cert_pem, key_pem = await self_signed_pem_apart([hostname], _FALLBACK_DAYS)
        except (RuntimeError, OSError) as e:
            raise MailServersError(f"cannot make a self-signed certificate: {e}") from e
        for path, text, mode in ((key, key_pem, 0o600), (cert, cert_pem, 0o644)):
            tmp = path.with_suffix(".new")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            try:
                os.write(fd, text.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        names.write_text(hostname + "\n")
        log.info(
            "made a self-signed certificate for the mail servers", extra={"hostname": hostname}
        )

    def _next_generation(self) -> Path:
        numbers = [0]
        with contextlib.suppress(FileNotFoundError):
            for p in self.lay.generations.iterdir():
                m = _GENERATION.fullmatch(p.name)
                if m:
                    numbers.append(int(m.group(1)))
        return self.lay.generations / f"g{max(numbers) + 1:06d}"

    async def _check(self, gen: Path) -> None:
        """Each server's own checker on the staged generation, all three at once."""
        results = await asyncio.gather(
            self._check_postfix(gen),
            self._check_dovecot(gen),
            self._check_rspamd(gen),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, BaseException):
                raise r

    async def _check_postfix(self, gen: Path) -> None:
        """main.cf and master.cf as Postfix parses them (`postconf -n`, `postconf -M`: a fatal
        error exits non-zero). Not `postfix check`: that runs the same parse, then 1-2 s of
        shell over the queue's and the install's files (post-install create-missing), which
        `postfix start-fg` runs again anyway before the master starts."""
        postconf = self.binaries.find("postconf")
        for flag in ("-n", "-M"):
            argv = [postconf, "-c", str(gen / "postfix"), flag]
            # _out: the configuration, never put into the error
            code, _out, err = await _run(argv, _CHECK_DEADLINE, f"postconf {flag}")
            if code != 0 or "fatal:" in err:
                raise MailConfigRefused("postfix", _trim(err) or f"postconf {flag} exited {code}")

    async def _check_dovecot(self, gen: Path) -> None:
        argv = [self.binaries.find("doveconf"), "-n", "-c", str(gen / "dovecot" / "dovecot.conf")]
        code, _out, err = await _run(argv, _CHECK_DEADLINE, "doveconf")  # _out: the config
        if code != 0:
            raise MailConfigRefused("dovecot", _trim(err))

    async def _check_rspamd(self, gen: Path) -> None:
        scratch = self.lay.root / "run" / "rspamd-check"  # root-owned files stay out of DBDIR
        argv = [
            self.binaries.find("rspamadm"),
            *self._rspamd.variables(gen / "rspamd", scratch, scratch),
            "configtest",
            "-c",
            str(self.binaries.rspamd_conf),
        ]
        code, out, err = await _run(argv, _CHECK_DEADLINE, "rspamadm configtest")
        if code != 0 or "syntax OK" not in out:
            raise MailConfigRefused("rspamd", _trim(out + err))

    def _point_to(self, gen: Path) -> None:
        tmp = self.lay.root / "conf.new"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(gen.relative_to(self.lay.root), tmp)
        os.replace(tmp, self.lay.conf)  # atomic: readers see the old or the new, never neither
        _fsync_dir(self.lay.root)

    def _prune(self, keep: set[Path]) -> None:
        """Remove every generation but the live one and the one before it (and the staging
        directories of refused or crashed applies)."""
        for p in self.lay.generations.iterdir():
            if p not in keep:
                shutil.rmtree(p, ignore_errors=True)

    async def _start_or_reload(self, changed: set[str]) -> None:
        """Start the servers never started; reload those running whose files changed."""
        to_start = [m for m in self._masters if m.proc is None and m.name not in self._watchers]
        to_reload = [m for m in self._masters if m.running and m.name in changed]
        # Postfix last: mail it takes waits (4xx) while rspamd does not answer yet
        first = [m for m in to_start if m is not self._postfix]
        results = await asyncio.gather(
            *(m.start() for m in first),
            *(m.reload() for m in to_reload),
            return_exceptions=True,
        )
        if self._postfix in to_start:
            try:
                await self._postfix.start()
            except MailServersError as e:
                results.append(e)
        for m in to_start:
            if m.running:
                self._watch(m)
        errors = [r for r in results if isinstance(r, BaseException)]
        for r in errors:
            if not isinstance(r, Exception):
                raise r
        if errors:
            raise errors[0]

    # -- supervision --

    def _watch(self, m: _Master) -> None:
        self._watchers[m.name] = asyncio.create_task(self._supervise(m), name=f"{m.name}-watch")

    async def _supervise(self, m: _Master) -> None:
        """Restart `m` whenever it dies, waiting longer after each quick death."""
        delay = _BACKOFF_FIRST
        while not self._closing:
            proc = m.proc
            if proc is None:
                return
            code = await proc.wait()
            if self._closing:
                return
            ran = time.monotonic() - m.started_at
            if ran > _STEADY:
                delay = _BACKOFF_FIRST
            log.warning(
                "mail server exited: restarting it",
                extra={
                    "server": m.name,
                    "code": code,
                    "ran_s": round(ran, 1),
                    "wait_s": delay,
                    "last_lines": m.tail(10),
                },
            )
            while not self._closing:
                m.kill_leftovers()
                async with self._lock:
                    await m.stop()  # reap, end the log reader
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
                async with self._lock:
                    if self._closing:
                        return
                    try:
                        await m.start()
                        live = self.live
                        if live is not None:  # it reads the live generation now: keep that one
                            self._serving[m.name] = live
                        break
                    except MailServersError as e:
                        log.error(
                            "mail server did not restart",
                            extra={"server": m.name, "error": str(e), "wait_s": delay},
                        )

    # -- the mail store --

    def store_folders(self) -> list[str]:
        """The mailbox folders in the mail store (folders only; a link is not one)."""
        try:
            with os.scandir(self.lay.store) as it:
                return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return []

    async def remove_store(self, folder: str) -> None:
        """Delete a mailbox's folder and all its mail (an account that was deleted)."""
        if not _STORE_FOLDER.fullmatch(folder):
            raise MailServersError(f"{folder!r} is not a mailbox folder")
        path = self.lay.store / folder
        # rmtree works through directory descriptors: a link planted inside is not followed
        await asyncio.to_thread(shutil.rmtree, path)

    # -- usage --

    async def usage(self) -> dict[str, tuple[int, int]] | None:
        """Each mailbox's (bytes used, messages) by address, as Dovecot's quota counts them
        (`doveadm quota get -A` with the live configuration; bytes to the KiB it reports);
        None while Dovecot is not running, or when doveadm fails or takes over
        _USAGE_DEADLINE (a hung auth process: the caller answers without usage)."""
        if not self._dovecot.running:
            return None
        conf = str(self._dovecot.conf_file)
        try:
            argv = [self.binaries.find("doveadm"), "-c", conf, "-f", "tab", "quota", "get", "-A"]
            code, out, err = await _run(argv, _USAGE_DEADLINE, "doveadm quota get")
        except MailServersError as e:
            log.warning("mailbox usage unknown: %s", e)
            return None
        found = _quota_table(out)
        if code != 0:  # a user it could not read: the others' rows are still right
            log.warning("mailbox usage partly unknown: doveadm says %s", _trim(err, 3))
        return found if found or code == 0 else None


def _quota_table(text: str) -> dict[str, tuple[int, int]]:
    """`doveadm -f tab quota get -A`'s table (Username, Quota name, Type, Value, Limit, %;
    STORAGE in KiB, MESSAGE a count) as address -> (bytes, messages), the first quota root."""
    lines = text.splitlines()
    if not lines:
        return {}
    head = [h.strip().lower() for h in lines[0].split("\t")]
    try:
        user, kind, value = head.index("username"), head.index("type"), head.index("value")
    except ValueError:
        log.warning("mailbox usage unknown: doveadm printed no table: %s", _trim(text, 3))
        return {}
    found: dict[str, dict[str, int]] = {}
    for line in lines[1:]:
        cells = line.split("\t")
        if len(cells) <= max(user, kind, value) or not cells[value].isdigit():
            continue
        found.setdefault(cells[user].lower(), {}).setdefault(cells[kind], int(cells[value]))
    return {a: (v.get("STORAGE", 0) * 1024, v.get("MESSAGE", 0)) for a, v in found.items()}
