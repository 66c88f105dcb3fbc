"""The sshd log adapter (services/firewall/sshd.py): a real sshd's lines (OpenSSH of this
Debian, no PAM) give one failure per attempt with the client's real address; hostile lines give
no wrong address; a log file is followed like `tail -F`; the journal through journalctl,
restarted where it stopped.

journald cannot run here (no systemd as PID 1), so the journal test runs a stand-in for
journalctl that prints entries as `journalctl -o json` does and records how it was called.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from libs.service.config import ConfigError, load_config
from services.firewall.config import FirewallConfig
from services.firewall.sshd import Failure, SshdLog, SshdWatcher, message_of
from tests.support.sshd import EXISTING_USER, running_sshd
from tests.support.waits import wait_until

ME = "127.0.0.1"
FAKE = "198.51.100.66"  # an address only attackers' text holds


def failures(lines: list[str]) -> list[Failure]:
    parser = SshdLog()
    out = []
    for line in lines:
        message = message_of(line)
        failure = parser.feed(message) if message is not None else None
        if failure is not None:
            out.append(failure)
    return out


async def test_a_real_sshd_s_lines_count_each_attempt_once(tmp_path: Path) -> None:
    hostile = [
        "x from 10.0.0.1 port 22",
        f"a from {FAKE} port 1 ssh2",
        "u" * 150 + f" from {FAKE} port 1 ssh2",  # sshd cuts names at 100: the end is its own
        f"b {FAKE} port 1 [preauth]",
    ]
    async with running_sshd(tmp_path) as sshd:
        await sshd.fail("ghost")  # Invalid user, Failed password for invalid user, closed
        await sshd.fail(EXISTING_USER)  # Failed password, Connection closed by authenticating
        await sshd.fail(EXISTING_USER, tries=3)  # three guesses in one connection
        await sshd.fail(EXISTING_USER, tries=6)  # all of MaxAuthTries: "maximum ... exceeded"
        await sshd.leave(EXISTING_USER)  # asked for the account, left without a password
        await sshd.leave("ghost")
        for name in hostile:
            await sshd.fail(name)
        await sshd.leave(hostile[-1])

        async def all_logged() -> bool:
            return sum("Connection closed by" in line for line in sshd.lines()) >= 10

        await wait_until(all_logged, 10, "sshd to log every connection's end")
        lines = sshd.lines()
    # the messages this parser is built on, as this sshd writes them
    for start in (
        "Invalid user ghost from 127.0.0.1 port ",
        "Failed password for invalid user ghost from 127.0.0.1 port ",
        "Connection closed by invalid user ghost 127.0.0.1 port ",
        f"Failed password for {EXISTING_USER} from 127.0.0.1 port ",
        f"Connection closed by authenticating user {EXISTING_USER} 127.0.0.1 port ",
        f"maximum authentication attempts exceeded for {EXISTING_USER} from 127.0.0.1 port ",
        f"Disconnecting authenticating user {EXISTING_USER} 127.0.0.1 port ",
        "Failed password for invalid user x from 10.0.0.1 port 22 from 127.0.0.1 port ",
    ):
        assert any(line.startswith(start) for line in lines), (start, lines)

    got = failures(lines)
    assert [f.reason for f in got] == [
        "ssh_invalid_user",
        *["ssh_password"] * (1 + 3 + 6),  # the connection that used all its tries: 6, not 7
        "ssh_preauth",
        "ssh_preauth",
        *["ssh_invalid_user"] * len(hostile),
        "ssh_preauth",
    ]
    assert {f.ip for f in got} == {ME}  # never an address from a user name


@pytest.mark.parametrize(
    "line",
    [
        f"Failed password for a\x00 from {FAKE} port 22 ssh2",  # a NUL byte: not sshd's
        f"Failed password for a\tb from {FAKE} port 22 ssh2",  # sshd escapes control characters
        "Failed password for " + "a" * 5000 + f" from {FAKE} port 22 ssh2",  # 5,000 characters
        "Failed password for x from 999.1.1.1 port 22 ssh2",
        "Failed password for x from fe80::1%eth0 port 22 ssh2",
        "Failed password for x from 198.51.100.0/24 port 22 ssh2",
        "Failed password for x from 198.51.100.66 port 99999999 ssh2",
        f"Failed password for x from {FAKE} port 22 ssh2 trailing",
        f"Failed publickey for x from {FAKE} port 22 ssh2: ED25519 SHA256:abc",  # keys: normal
        f"Failed none for invalid user x from {FAKE} port 22 ssh2",
        f"Invalid user x from {FAKE} port 22",  # its password or its close counts, not this
        f"Accepted password for x from {FAKE} port 22 ssh2",
        f"Connection closed by {FAKE} port 22 [preauth]",  # no account asked for
        f"Disconnecting authenticating user x {FAKE} port 22: Too many authentication failures",
        # the client's disconnect message is its own text, after sshd's start
        f"Received disconnect from 192.0.2.9 port 4:11: Failed password for x from {FAKE} port 1"
        " ssh2 [preauth]",
        "Received disconnect from 192.0.2.9 port 4:11: error: maximum authentication attempts"
        f" exceeded for x from {FAKE} port 1 ssh2 [preauth]",
        # another program's syslog line, however it reads
        f"2026-05-01T10:00:00.123456+00:00 host logger[77]: Failed password for x from {FAKE}"
        " port 1 ssh2",
        f"May  1 10:00:00 host sudo: Failed password for x from {FAKE} port 1 ssh2",
        "",
        "Failed password for x from  port 22 ssh2",
    ],
)
def test_hostile_lines_give_no_address(line: str) -> None:
    assert failures([line]) == []


def test_each_attempt_counts_once_per_connection() -> None:
    """What counts (the module's docstring), with the syslog and journal forms of the lines."""
    ip, v6 = "192.0.2.7", "2001:db8::7"
    prefix = "2026-05-01T10:00:00.123456+00:00 host sshd[4242]: "
    got = failures(
        [
            # keys only, all tries used: one, the close after it none
            f"{prefix}error: maximum authentication attempts exceeded for root from {ip} port 5"
            " ssh2 [preauth]",
            f"{prefix}Disconnected from authenticating user root {ip} port 5 [preauth]",
            # PAM's keyboard-interactive, an IPv6 client, an IPv4-mapped one
            f"Failed keyboard-interactive/pam for invalid user admin from {v6} port 6 ssh2",
            f"Failed password for root from ::ffff:{ip} port 7 ssh2",
            f"Connection reset by authenticating user root ::ffff:{ip} port 7 [preauth]",
            # a probe of a name: its close counts once
            f"May  1 10:00:00 host sshd[4243]: Invalid user oracle from {ip} port 8",
            f"May  1 10:00:00 host sshd[4243]: Disconnected from invalid user oracle {ip} port 8"
            " [preauth]",
            # sshd-session (OpenSSH 9.8 and later) writes the same lines
            f"{prefix.replace('sshd[', 'sshd-session[')}Failed password for root from {ip} port 9"
            " ssh2",
        ]
    )
    assert got == [
        Failure(ip, "ssh_max_tries"),
        Failure(v6, "ssh_invalid_user"),
        Failure(ip, "ssh_password"),
        Failure(ip, "ssh_preauth"),
        Failure(ip, "ssh_password"),
    ]


def test_the_source_is_validated() -> None:
    base = {"HP_DATABASE_URL": "postgresql://x/y", "HP_NATS_URL": "nats://127.0.0.1:4222"}
    assert load_config(FirewallConfig, base).firewall_ssh_log == ""  # off by default
    for good in ("journal", "/var/log/auth.log"):
        assert load_config(FirewallConfig, {**base, "HP_FIREWALL_SSH_LOG": good}).firewall_ssh_log
    for bad in ("journald", "var/log/auth.log", "/var/log/a\x01b", "/" + "a" * 5000):
        with pytest.raises(ConfigError, match="HP_FIREWALL_SSH_LOG"):
            load_config(FirewallConfig, {**base, "HP_FIREWALL_SSH_LOG": bad})


class Recorded:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, ip: str, reason: str) -> None:
        self.calls.append((ip, reason))


@asynccontextmanager
async def watching(watcher: SshdWatcher) -> AsyncIterator[SshdWatcher]:
    task = asyncio.create_task(watcher.run())
    try:
        yield watcher
    finally:
        watcher.stop()
        await asyncio.wait_for(task, 10)


def _failed(ip: str, port: int) -> str:
    return f"May  1 10:00:00 host sshd[1]: Failed password for root from {ip} port {port} ssh2\n"


async def test_a_log_file_is_followed_like_tail_F(tmp_path: Path) -> None:
    log = tmp_path / "auth.log"
    log.write_text(_failed("192.0.2.1", 1))  # from before the start: old
    record = Recorded()

    async def has(n: int) -> bool:
        return len(record.calls) >= n

    async with watching(SshdWatcher(str(log), record, poll=0.05)):
        await asyncio.sleep(0.2)
        with log.open("a") as f:
            f.write(_failed("192.0.2.2", 2))
            f.write(_failed("192.0.2.3", 3)[:30])  # half a line: not yet
        await wait_until(lambda: has(1), 5, "the new line")
        with log.open("a") as f:
            f.write(_failed("192.0.2.3", 3)[30:])
            f.write("Failed password for " + "x" * 5000 + " from 198.51.100.66 port 1 ssh2\n")
            f.write(f"Failed password for \x00 from 198.51.100.66 port 1 ssh2\n{'y' * 70000}\n")
            f.write(_failed("192.0.2.4", 4))
        await wait_until(lambda: has(3), 5, "the lines after the half one")
        # rotation: the old file is read to its end, then the new one from its start
        with log.open("a") as f:
            f.write(_failed("192.0.2.5", 5))
        log.rename(tmp_path / "auth.log.1")
        log.write_text(_failed("192.0.2.6", 6))
        await wait_until(lambda: has(5), 5, "the lines around the rotation")
        # truncation (copytruncate), then sshd writes on: read again from the start
        log.write_text("")
        await asyncio.sleep(0.2)
        with log.open("a") as f:
            f.write(_failed("192.0.2.7", 7))
        await wait_until(lambda: has(6), 5, "the line after the truncation")
        # gone, then back
        log.unlink()
        await asyncio.sleep(0.2)
        log.write_text(_failed("192.0.2.8", 8))
        await wait_until(lambda: has(7), 5, "the line of the file made again")
    assert record.calls == [(f"192.0.2.{i}", "ssh_password") for i in range(2, 9)]


JOURNALCTL = """
import json, os, sys, time
calls = os.environ["CALLS"]
with open(calls, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
runs = sum(1 for _ in open(calls))

def entry(n, message, comm="sshd", uid="0"):
    e = {"__CURSOR": f"s=abc;i={n}", "__REALTIME_TIMESTAMP": "1777629600000000",
         "_BOOT_ID": "0f", "PRIORITY": "6", "SYSLOG_FACILITY": "4", "SYSLOG_IDENTIFIER": "sshd",
         "SYSLOG_PID": "4242", "_PID": "4242", "_UID": uid, "_GID": "0", "_COMM": comm,
         "_EXE": "/usr/sbin/sshd", "_TRANSPORT": "syslog", "_SYSTEMD_UNIT": "ssh.service",
         "_HOSTNAME": "host", "MESSAGE": message}
    if comm is None:
        del e["_COMM"]
    print(json.dumps(e), flush=True)

if runs == 1:
    entry(1, "Failed password for root from 192.0.2.1 port 1 ssh2")
    entry(2, "Failed password for root from 198.51.100.66 port 1 ssh2", comm="logger")
    entry(2, "Failed password for root from 198.51.100.67 port 1 ssh2", uid="1000")
    entry(3, list(b"Failed password for r\\xffoot from 192.0.2.2 port 2 ssh2"))
    print("not json", flush=True)
    sys.exit(1)  # journalctl dies
entry(4, "Failed password for root from 192.0.2.3 port 3 ssh2", comm=None)
entry(5, None)  # a field over 4 KiB
time.sleep(60)
"""


async def test_the_journal_is_followed_and_journalctl_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "journalctl.py"
    script.write_text(JOURNALCTL)
    calls = tmp_path / "calls"
    monkeypatch.setenv("CALLS", str(calls))
    record = Recorded()
    watcher = SshdWatcher("journal", record, journalctl=(sys.executable, str(script)))
    async with watching(watcher):

        async def three() -> bool:
            return len(record.calls) >= 3

        await wait_until(three, 10, "the entries of both runs")
    assert record.calls == [
        ("192.0.2.1", "ssh_password"),
        ("192.0.2.2", "ssh_password"),
        ("192.0.2.3", "ssh_password"),
    ]
    first, second = (json.loads(line) for line in calls.read_text().splitlines())
    matches = ["SYSLOG_IDENTIFIER=sshd", "SYSLOG_IDENTIFIER=sshd-session"]
    assert first == ["--follow", "--output=json", "--no-pager", "--lines=0", *matches]
    assert second == [
        "--follow",
        "--output=json",
        "--no-pager",
        "--after-cursor=s=abc;i=3",
        *matches,
    ]
