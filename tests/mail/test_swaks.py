"""The worker's Postfix, Dovecot and rspamd with swaks as the client, as an administrator
would try them by hand (issue 17 names it): a signed-in submission over STARTTLS is delivered
and read back over IMAP; a relay attempt from outside is refused at RCPT; a submission without
signing in is refused."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest

from tests.mail.serverskit import ALICE, BOB, MailStack
from tests.support.servers import need_server

pytestmark = pytest.mark.slow


def _swaks(stack: MailStack, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    swaks = shutil.which("swaks")
    if swaks is None:
        need_server("swaks", RuntimeError("swaks is not installed (make deps installs it)"))
    argv = [swaks, "--server", f"{stack.host}:{port}", "--helo", "client.test", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_swaks_submits_signed_in_and_the_mail_arrives(stack: MailStack) -> None:
    subject = f"by swaks {uuid.uuid4().hex[:8]}"
    done = _swaks(
        stack,
        stack.settings.submission_port,
        "--tls",
        "--auth", "PLAIN", "--auth-user", BOB.login, "--auth-password", BOB.password,
        "--from", BOB.address, "--to", ALICE.address,
        "--header", f"Subject: {subject}", "--body", "sent with swaks",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    [raw] = stack.fetch(ALICE, subject)
    assert b"sent with swaks" in raw


def test_swaks_relay_attempt_and_unsigned_submission_are_refused(stack: MailStack) -> None:
    relay = _swaks(
        stack,
        stack.settings.smtp_port,
        "--from", "someone@outside.test", "--to", "victim@elsewhere.test",
    )  # fmt: skip
    assert relay.returncode == 24, relay.stdout  # every recipient refused at RCPT
    assert "Relay access denied" in relay.stdout
    unsigned = _swaks(
        stack,
        stack.settings.submission_port,
        "--tls",
        "--from", BOB.address, "--to", "victim@elsewhere.test",
    )  # fmt: skip
    assert unsigned.returncode in (23, 24), unsigned.stdout  # refused at MAIL or RCPT
    assert " 5" in unsigned.stdout  # a permanent refusal (5xx), not a temporary one
