"""A real sshd of the test's own (OpenSSH's /usr/sbin/sshd on 127.0.0.1 and a free port, or in a
network namespace the test made; its host key, config and log file in the test's temp dir, no
PAM) and the OpenSSH client failing to sign in to it with a wrong password (SSH_ASKPASS), as an
attacker would."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import need_server
from tests.support.waits import wait_until

__all__ = ["EXISTING_USER", "Sshd", "running_sshd"]

SSHD = Path("/usr/sbin/sshd")  # absolute: sshd re-executes itself
SSH = Path("/usr/bin/ssh")
EXISTING_USER = "nobody"  # an account of every Debian system, with no password that works
# sshd's privilege separation directory (its preauth child chroots there): Debian's unit makes
# it at each start; an empty root-owned folder on the run-time file system
_PRIVSEP = Path("/run/sshd")

_CONFIG = """\
ListenAddress {address}
Port {port}
HostKey {key}
PidFile none
UsePAM no
PasswordAuthentication yes
KbdInteractiveAuthentication no
PubkeyAuthentication no
PermitRootLogin no
MaxAuthTries 6
LogLevel INFO
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _in(netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns] if netns else []


@dataclass
class Sshd:
    address: str
    port: int
    log: Path
    tmp: Path

    def lines(self) -> list[str]:
        """What sshd has logged so far."""
        return self.log.read_text(errors="replace").splitlines()

    async def fail(
        self, user: str, *, tries: int = 1, netns: str | None = None, source: str | None = None
    ) -> None:
        """Sign in as `user` with a wrong password `tries` times in one connection (from
        `netns`, bound to `source`); the client gives up after that (exit code 255)."""
        askpass = self.tmp / "askpass"
        if not askpass.exists():
            askpass.write_text("#!/bin/sh\necho 'not the password'\n")
            askpass.chmod(0o700)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.tmp),
            "SSH_ASKPASS": str(askpass),
            "SSH_ASKPASS_REQUIRE": "force",
        }
        bind = ["-b", source] if source else []
        argv = [
            *_in(netns), str(SSH), "-F", "/dev/null", "-p", str(self.port), *bind,
            "-o", "PreferredAuthentications=password",
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", f"NumberOfPasswordPrompts={tries}",
            "-o", "ConnectTimeout=5",
            "-o", "LogLevel=ERROR",
            "-l", user, self.address, "true",
        ]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 255 and b"Permission denied" in err, err.decode()

    async def leave(self, user: str) -> None:
        """Ask for `user`'s sign-in and leave without a password (a client with no key
        the server takes, a prober of names)."""
        proc = await asyncio.create_subprocess_exec(
            str(SSH), "-F", "/dev/null", "-p", str(self.port),
            "-o", "PreferredAuthentications=publickey",
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR",
            "-l", user, self.address, "true",
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.tmp)},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 255 and b"Permission denied" in err, err.decode()


@asynccontextmanager
async def running_sshd(
    tmp: Path, *, netns: str | None = None, address: str = "127.0.0.1", port: int | None = None
) -> AsyncIterator[Sshd]:
    """sshd on `address`:`port` (default a free port of 127.0.0.1) in `netns` (default this
    one), logging to `tmp`/sshd.log; stopped after."""
    if not SSHD.exists() or not SSH.exists():
        need_server("sshd", FileNotFoundError("openssh-server/openssh-client are not installed"))
    if not _PRIVSEP.exists():
        _PRIVSEP.mkdir(mode=0o755)
    elif _PRIVSEP.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        need_server("sshd", PermissionError(f"{_PRIVSEP} is writable by others"))
    key = tmp / "ssh_host_ed25519_key"
    keygen = await asyncio.create_subprocess_exec(
        "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(key),
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert await keygen.wait() == 0
    port = port if port is not None else _free_port()
    config = tmp / "sshd_config"
    config.write_text(_CONFIG.format(address=address, port=port, key=key))
    log = tmp / "sshd.log"
    log.touch()
    proc = await asyncio.create_subprocess_exec(
        *_in(netns), str(SSHD), "-D", "-f", str(config), "-E", str(log),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    sshd = Sshd(address, port, log, tmp)
    try:

        async def listening() -> bool:
            assert proc.returncode is None, f"sshd stopped: {sshd.lines()}"
            return any("Server listening" in line for line in sshd.lines())

        await wait_until(listening, 10, "sshd to listen")
        yield sshd
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
