"""Sieve on the worker's servers: a person keeps a filter over ManageSieve (STARTTLS, then their
password) and Dovecot's LMTP runs it at delivery, so mail to `user+tag@` lands in their mailbox
and a rule files it by the tag; a wrong password or a broken script is refused.

The tests use alice's mailbox and leave it as they found it: no script, no News folder. Whichever
test comes first starts the worker's servers (rspamd compiles its hyperscan cache, 10+ s): the
module is `slow`.
"""

from __future__ import annotations

import contextlib
import imaplib
import time
from collections.abc import Iterator

import pytest

from tests.mail.serverskit import ALICE, DOMAIN, MailStack, ManageSieve, client_tls, message

pytestmark = pytest.mark.slow

NAME = "homeport-test"
NEWS = """\
require ["envelope", "fileinto", "mailbox", "subaddress"];
# mail to alice+news@ goes to News, made on first use
if envelope :detail "to" "news" {
  fileinto :create "News";
}
"""
BROKEN = """\
require ["fileinto"];
if header :contains "subject" "news" {
  fileinto "News"
}
"""


def _signed_in(stack: MailStack) -> ManageSieve:
    """Alice on ManageSieve, over TLS and signed in."""
    c = stack.managesieve()
    try:
        c.starttls(client_tls())
        answer = c.authenticate(ALICE.login, ALICE.password)
        assert answer.status == "OK", answer
    except BaseException:
        c.close()
        raise
    return c


def _activate(stack: MailStack, script: str) -> None:
    with _signed_in(stack) as c:
        answer = c.putscript(NAME, script)
        assert answer.status == "OK", answer
        answer = c.command("SETACTIVE", NAME)
        assert answer.status == "OK", answer
        assert c.logout().status == "OK"


def _subjects(stack: MailStack, folder: str) -> list[str] | None:
    """The subjects in alice's `folder`, or None when there is no such folder."""
    box = stack.imap(ALICE)
    try:
        status, _ = box.select(f'"{folder}"', readonly=True)
        if status != "OK":
            return None
        _, found = box.search(None, "ALL")
        subjects = []
        for num in found[0].split():
            _, data = box.fetch(num, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            part = data[0]
            assert isinstance(part, tuple)
            subjects.append(part[1].decode().partition(":")[2].strip())
        return subjects
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            box.logout()


def _wait_in(stack: MailStack, folder: str, subject: str, deadline: float = 30) -> None:
    end = time.monotonic() + deadline
    while subject not in (_subjects(stack, folder) or []):
        if time.monotonic() > end:
            raise AssertionError(
                f"no message {subject!r} in alice's {folder} within {deadline:.0f} s;"
                f" dovecot says:\n{stack.servers.log_tail('dovecot', 30)}"
            )
        time.sleep(0.2)


@pytest.fixture
def alice_sieve(stack: MailStack) -> Iterator[MailStack]:
    """The worker's servers; after the test alice has no Sieve script and no News folder."""
    yield stack
    with _signed_in(stack) as c:
        answer = c.command("SETACTIVE", "")
        assert answer.status == "OK", answer
        for name in c.scripts():
            answer = c.command("DELETESCRIPT", name)
            assert answer.status == "OK", answer
        assert c.scripts() == {}
        assert c.logout().status == "OK"
    box = stack.imap(ALICE)
    try:
        if box.list('""', "News")[1] != [None]:
            status, text = box.delete("News")
            assert status == "OK", text
    finally:
        box.logout()


def test_managesieve_signs_in_over_tls_only_and_keeps_the_active_script(
    alice_sieve: MailStack,
) -> None:
    # from another address than the server's: Dovecot counts a client on its own address as
    # secured (as it would a webmail on the same host), and lets it sign in without TLS
    with alice_sieve.managesieve(source="127.0.0.7") as c:
        assert "Pigeonhole" in c.capabilities["IMPLEMENTATION"]
        assert "STARTTLS" in c.capabilities
        assert c.capabilities["SASL"] == ""
        answer = c.authenticate(ALICE.login, ALICE.password)
        assert (answer.status, answer.code) == ("NO", "ENCRYPT-NEEDED"), answer
        assert c.logout().status == "OK"
    with alice_sieve.managesieve(source="127.0.0.7") as c:
        c.starttls(client_tls())
        assert "STARTTLS" not in c.capabilities
        assert "PLAIN" in c.capabilities["SASL"].split()
        extensions = set(c.capabilities["SIEVE"].split())
        assert {"envelope", "fileinto", "mailbox", "subaddress"} <= extensions
        answer = c.authenticate(ALICE.login, ALICE.password)
        assert answer.status == "OK", answer
        assert c.putscript(NAME, NEWS).status == "OK"
        assert c.scripts() == {NAME: False}
        assert c.command("SETACTIVE", NAME).status == "OK"
        assert c.scripts() == {NAME: True}
        assert c.getscript(NAME) == NEWS
        answer = c.command("DELETESCRIPT", NAME)  # not the active one
        assert (answer.status, answer.code) == ("NO", "ACTIVE"), answer
        assert c.logout().status == "OK"


def test_plus_news_lands_in_the_mailbox_and_the_script_files_it_into_news(
    alice_sieve: MailStack,
) -> None:
    stack = alice_sieve
    _activate(stack, NEWS)
    assert _subjects(stack, "News") is None  # made by the script's fileinto :create
    news = message("list@outside.test", f"alice+news@{DOMAIN}")
    other = message("friend@outside.test", f"alice+other@{DOMAIN}")
    plain = message("friend@outside.test", ALICE.address)
    for m in (news, other, plain):
        assert stack.inbound(m) == {}
    _wait_in(stack, "News", str(news["Subject"]))
    stack.fetch(ALICE, str(other["Subject"]))
    stack.fetch(ALICE, str(plain["Subject"]))
    assert stack.absent(ALICE, str(news["Subject"]), wait=0)
    assert _subjects(stack, "News") == [str(news["Subject"])]


def test_a_wrong_password_is_refused(alice_sieve: MailStack) -> None:
    before = len(alice_sieve.auth.calls)
    with alice_sieve.managesieve(source="127.0.0.6") as c:
        c.starttls(client_tls())
        answer = c.authenticate(ALICE.login, "not the password")
        assert answer.status == "NO", answer
        assert "failed" in answer.text.lower()
        assert c.command("LISTSCRIPTS").status == "NO"  # not signed in
        assert c.logout().status == "OK"
    calls = alice_sieve.auth.calls[before:]
    assert calls == [{"user": ALICE.login, "ip": "127.0.0.6", "service": "sieve"}]


def test_a_script_with_a_syntax_error_is_refused_and_the_active_one_stays(
    alice_sieve: MailStack,
) -> None:
    stack = alice_sieve
    _activate(stack, NEWS)
    with _signed_in(stack) as c:
        for name in (NAME, "broken"):
            answer = c.putscript(name, BROKEN)
            assert answer.status == "NO", answer
            assert f"{name}: line 4: error: expected end of command ';'" in answer.text, answer
        assert c.scripts() == {NAME: True}
        assert c.getscript(NAME) == NEWS
        assert c.logout().status == "OK"
    news = message("list@outside.test", f"alice+news@{DOMAIN}")
    assert stack.inbound(news) == {}
    _wait_in(stack, "News", str(news["Subject"]))


def test_scripts_that_would_send_mail_are_refused_or_keep_the_message(
    alice_sieve: MailStack,
) -> None:
    """Servers rendered without the mail service's endpoint for what Sieve sends (the
    worker's servers run without the service; with it: tests/mail/test_sieve_send.py): an
    away message is refused at PUTSCRIPT with the reason; a redirect (part of Sieve itself,
    so it cannot be refused there) is not done and the message is kept in the inbox, never
    lost."""
    stack = alice_sieve
    away = 'require ["vacation"];\nvacation :days 1 "I am away";\n'
    redirect = 'redirect "someone@outside.test";\n'
    with _signed_in(stack) as c:
        answer = c.putscript("away", away)
        assert answer.status == "NO" and "vacation" in answer.text, answer
        assert c.scripts() == {}
        assert c.logout().status == "OK"
    _activate(stack, redirect)
    msg = message("list@outside.test", ALICE.address)
    assert stack.inbound(msg) == {}
    stack.fetch(ALICE, str(msg["Subject"]))
