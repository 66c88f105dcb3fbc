"""Postfix, Dovecot and rspamd as services/mail/servers.py runs them, seen by mail clients: who
may send what, where mail lands, what is refused and why (SECURITY.md "Mail"), and the adapter
itself: a refused configuration never replaces the running one, a killed server comes back.

Every test here needs the worker's servers, whose first start compiles rspamd's hyperscan cache
(10+ s): the module is `slow`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import grp
import os
import pwd
import shutil
import signal
import smtplib
import socket
import ssl
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import dkim
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from deploy.embedded import free_ports
from services.mail.errors import MailConfigRefused, MailServersError
from services.mail.model import Mailbox, MailDomain, MailModel, Relay, ServersSettings
from services.mail.render import TLS_CIPHERS, RenderedFile, render
from services.mail.servers import _SIGN_IN_SIDE, MailServers, _children, _ensure_dir
from tests.mail.serverskit import (
    ALICE,
    BOB,
    CAROL,
    CAROL_QUOTA,
    DOMAIN,
    LISTED_IP,
    OTHER,
    SELECTOR,
    Account,
    MailStack,
    client_tls,
    message,
)

pytestmark = pytest.mark.slow

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def _subject(m: email.message.Message) -> str:
    return str(m["Subject"])


# -- sending and reading as a signed-in person --------------------------------------------


def test_submission_delivers_and_imaps_reads_it_back(stack: MailStack) -> None:
    msg = message(ALICE.address, BOB.address, body="a note from alice\n")
    assert stack.submit(ALICE, msg) == {}
    [raw] = stack.fetch(BOB, _subject(msg))
    got = email.message_from_bytes(raw)
    assert got["From"] == ALICE.address
    assert "a note from alice" in got.get_payload()
    assert stack.ready()
    # ours, not a system-wide Postfix, Dovecot or rspamd: our children on our ports
    ours = _descendants([os.getpid()])
    for server in ("postfix", "dovecot", "rspamd"):
        assert stack.servers.master_pid(server) in ours, server
    with stack.smtp(stack.settings.smtp_port) as s:
        code, banner = s.ehlo()
    assert code == 250 and banner.startswith(f"mail.{DOMAIN}".encode())


def test_auth_is_offered_only_after_starttls(stack: MailStack) -> None:
    with stack.smtp(stack.settings.submission_port) as s:
        s.ehlo()
        assert s.has_extn("starttls")
        assert not s.has_extn("auth")
        with pytest.raises(smtplib.SMTPException):
            s.login(ALICE.login, ALICE.password)
    with stack.smtp(stack.settings.submission_port) as s:
        s.starttls(context=client_tls())
        s.ehlo()
        assert s.has_extn("auth")
        assert "PLAIN" in s.esmtp_features["auth"].upper()


def test_implicit_tls_submission_and_managesieve_answer(stack: MailStack) -> None:
    msg = message(ALICE.address, BOB.address)
    with smtplib.SMTP_SSL(
        stack.host, stack.settings.submissions_port, context=client_tls(), timeout=30
    ) as s:
        s.login(ALICE.login, ALICE.password)
        assert s.send_message(msg) == {}
    stack.fetch(BOB, _subject(msg))
    with socket.create_connection((stack.host, stack.settings.managesieve_port), 10) as c:
        greeting = c.makefile("rb").readline()
    assert greeting.startswith(b'"IMPLEMENTATION"')


def _handshake(port: int, ctx: ssl.SSLContext, starttls: bool) -> tuple[str, str, bytes]:
    """(TLS version, cipher, the server's certificate in DER) of a handshake on `port`."""
    with socket.create_connection(("127.0.0.1", port), 10) as raw:
        if starttls:
            f = raw.makefile("rb")
            f.readline()
            raw.sendall(b"EHLO client.test\r\n")
            while not f.readline().startswith(b"250 "):
                pass
            raw.sendall(b"STARTTLS\r\n")
            assert f.readline().startswith(b"220")
        with ctx.wrap_socket(raw) as tls:
            version, cipher = tls.version(), tls.cipher()
            der = tls.getpeercert(binary_form=True)
            assert version is not None and cipher is not None and der is not None
            return version, cipher[0], der


@pytest.mark.parametrize("port", ["imaps_port", "submission_port", "smtp_port"])
def test_tls_is_1_2_or_later_with_aead_ciphers_and_an_ecdsa_certificate(
    stack: MailStack, port: str
) -> None:
    number = getattr(stack.settings, port)
    starttls = port != "imaps_port"
    version, _, der = _handshake(number, client_tls(), starttls)
    assert version == "TLSv1.3"
    cert = x509.load_der_x509_certificate(der)
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert f"mail.{DOMAIN}" in cert.subject.rfc4514_string()
    tls12 = client_tls()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    version, cipher, _ = _handshake(number, tls12, starttls)
    assert version == "TLSv1.2"
    assert cipher in TLS_CIPHERS.split(":")
    cbc = client_tls()
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(number, cbc, starttls)


def test_submission_without_auth_is_refused(stack: MailStack) -> None:
    with stack.smtp(stack.settings.submission_port) as s:
        s.starttls(context=client_tls())
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            s.send_message(message(ALICE.address, BOB.address))
    [(code, _)] = e.value.recipients.values()
    assert 500 <= code < 600


def test_wrong_password_is_refused_and_the_endpoint_saw_the_client(stack: MailStack) -> None:
    before = len(stack.auth.calls)
    with stack.smtp(stack.settings.submission_port, source="127.0.0.3") as s:
        s.starttls(context=client_tls())
        s.ehlo()
        s.user, s.password = ALICE.login, "not the password"
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.auth("PLAIN", s.auth_plain)
    assert e.value.smtp_code == 535
    calls = stack.auth.calls[before:]
    assert {"user": "alice", "ip": "127.0.0.3", "service": "smtp"} in calls
    # the same person with the right password from elsewhere is not locked out
    assert stack.submit(ALICE, message(ALICE.address, BOB.address)) == {}


def test_wrong_passwords_in_a_row_are_answered_at_once_when_no_wait_is_asked(
    stack: MailStack,
) -> None:
    # The worker's servers run with auth_failure_delay 0 (HP_MAIL_AUTH_FAILURE_DELAY=0): no
    # wait at all, so Dovecot's own growing wait for an address that keeps failing is off too.
    # With it, the 2nd to 5th failures here would wait 2, 4, 8 and 15 s (29 s).
    started = time.monotonic()
    for i in range(5):
        with stack.smtp(stack.settings.submission_port, source="127.0.0.5") as s:
            s.starttls(context=client_tls())
            s.ehlo()
            s.user, s.password = ALICE.login, f"not the password {i}"
            with pytest.raises(smtplib.SMTPAuthenticationError):
                s.auth("PLAIN", s.auth_plain)
    assert time.monotonic() - started < 12


def test_the_growing_wait_for_wrong_passwords_stays_unless_no_wait_is_asked() -> None:
    def conf(delay: float) -> str:
        settings = ServersSettings(
            root=Path("/srv/hp-mail"), auth_token="t" * 32, auth_failure_delay=delay
        )
        files = render(MailModel(hostname="mail.example.org"), settings, Path("/srv/g"))
        return files["dovecot/dovecot.conf"].data.decode()

    assert "auth_failure_delay = 2000 msecs" in conf(2.0)
    assert "anvil-auth-penalty" not in conf(2.0)  # Dovecot's default: the penalty on
    assert "anvil-auth-penalty" not in conf(0.5)
    off = conf(0)
    assert "auth_failure_delay = 0 msecs" in off
    assert "unix_listener anvil-auth-penalty {\n    mode = 0\n  }" in off


def test_sending_as_someone_else_is_refused_as_an_alias_accepted(stack: MailStack) -> None:
    for sender in (BOB.address, "alice@elsewhere.test"):
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:  # refused at RCPT
            stack.submit(ALICE, message(sender, CAROL.address))
        [(code, text)] = e.value.recipients.values()
        assert code == 553
        assert f"<{sender}>: Sender address rejected: not owned by user".encode() in text
    for sender in (f"sales@{DOMAIN}", f"alice@{OTHER}"):
        msg = message(sender, BOB.address)
        assert stack.submit(ALICE, msg) == {}
        stack.fetch(BOB, _subject(msg))


def test_submitted_mail_carries_a_dkim_signature_that_verifies(stack: MailStack) -> None:
    msg = message(ALICE.address, BOB.address, body="signed, sealed, delivered\n")
    stack.submit(ALICE, msg)
    [raw] = stack.fetch(BOB, _subject(msg))
    assert b"DKIM-Signature:" in raw
    signature = email.message_from_bytes(raw)["DKIM-Signature"]
    assert f"d={DOMAIN};" in signature.replace(" ", "")
    assert "a=rsa-sha256" in signature.replace(" ", "")
    key = serialization.load_pem_private_key(stack.dkim_pem.encode(), None).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    txt = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
    asked: list[bytes] = []

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        asked.append(name)
        return txt if name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode() else b""

    assert dkim.verify(raw, dnsfunc=dnsfunc)
    assert asked == [f"{SELECTOR}._domainkey.{DOMAIN}.".encode()]
    tampered = raw.replace(b"signed, sealed", b"signed, opened")
    assert not dkim.verify(tampered, dnsfunc=dnsfunc)


# -- mail from the world (port 25) --------------------------------------------------------


def test_no_open_relay(stack: MailStack) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        stack.inbound(message("someone@outside.test", "victim@elsewhere.test"))
    [(code, text)] = e.value.recipients.values()
    assert 500 <= code < 600, text
    assert b"Relay access denied" in text


def test_mail_from_outside_claiming_a_local_sender_is_refused(stack: MailStack) -> None:
    for sender in (ALICE.address, f"nobody@{DOMAIN}"):
        with pytest.raises((smtplib.SMTPSenderRefused, smtplib.SMTPRecipientsRefused)) as e:
            stack.inbound(message(sender, BOB.address))
        err = e.value
        code = (
            err.smtp_code
            if isinstance(err, smtplib.SMTPSenderRefused)
            else next(iter(err.recipients.values()))[0]
        )
        assert 500 <= code < 600


def test_mail_from_outside_showing_a_local_from_address_is_refused(stack: MailStack) -> None:
    """The envelope sender is the outsider's own, but the From: people see is alice's and
    nothing (DMARC: SPF or DKIM of example.test) vouches for it."""
    forged = message("friend@outside.test", BOB.address)
    forged.replace_header("From", f"Alice <{ALICE.address}>")
    with pytest.raises(smtplib.SMTPDataError) as e:
        stack.inbound(forged, sender="friend@outside.test")
    assert e.value.smtp_code == 554 and b"DMARC" in e.value.smtp_error, e.value
    assert stack.absent(BOB, _subject(forged))
    # the same From: signed in, as alice herself, goes through
    own = message(ALICE.address, BOB.address)
    assert stack.submit(ALICE, own) == {}
    stack.fetch(BOB, _subject(own))


def test_plus_tag_alias_and_catch_all_deliver(stack: MailStack) -> None:
    tagged = message("friend@outside.test", f"bob+lists@{DOMAIN}")
    to_alias = message("friend@outside.test", f"sales@{DOMAIN}")
    to_catch_all = message("friend@outside.test", f"anything-{uuid.uuid4().hex[:6]}@{OTHER}")
    for m in (tagged, to_alias, to_catch_all):
        assert stack.inbound(m) == {}
    stack.fetch(BOB, _subject(tagged))
    stack.fetch(ALICE, _subject(to_alias))
    stack.fetch(BOB, _subject(to_alias))
    stack.fetch(BOB, _subject(to_catch_all))
    # no catch-all on the first domain: an unknown address there is refused
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        stack.inbound(message("friend@outside.test", f"nobody-here@{DOMAIN}"))
    [(code, _)] = e.value.recipients.values()
    assert code == 550


def _count(stack: MailStack, server: str, text: str) -> int:
    return stack.servers.log_tail(server, 500).count(text)


def _logged(stack: MailStack, server: str, text: str, before: int, within: float = 10.0) -> bool:
    """Whether `server` logs `text` once more than `before` times within `within` seconds:
    rspamd writes a message's symbols once it has answered the milter, so the line may come a
    moment after the SMTP refusal (a loaded CI machine saw it missing from the tail read at
    once)."""
    end = time.monotonic() + within
    while _count(stack, server, text) <= before:
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def test_gtube_from_outside_is_rejected(stack: MailStack) -> None:
    msg = message("spammer@outside.test", BOB.address, body=f"buy now\n{GTUBE}\n")
    before = _count(stack, "rspamd", "GTUBE")
    with pytest.raises(smtplib.SMTPDataError) as e:
        stack.inbound(msg)
    assert e.value.smtp_code == 554
    assert _logged(stack, "rspamd", "GTUBE", before)
    assert stack.absent(BOB, _subject(msg), wait=1)


def test_client_listed_in_the_dnsbl_is_refused(stack: MailStack) -> None:
    listed = message("someone@outside.test", BOB.address)
    before = _count(stack, "rspamd", "HOMEPORT_DNSBL_1")
    with pytest.raises(smtplib.SMTPDataError) as e:
        stack.inbound(listed, source=LISTED_IP)
    assert e.value.smtp_code == 554
    assert _logged(stack, "rspamd", "HOMEPORT_DNSBL_1", before)
    clean = message("someone@outside.test", BOB.address)
    assert stack.inbound(clean, source="127.0.0.4") == {}
    stack.fetch(BOB, _subject(clean))
    assert stack.absent(BOB, _subject(listed), wait=1)


def test_over_quota_mail_is_refused_with_a_reason(stack: MailStack) -> None:
    line = "x" * 70 + "\n"
    big = line * (CAROL_QUOTA * 6 // 10 // len(line))  # 60 % of the quota
    first = message("friend@outside.test", CAROL.address, body=big)
    assert stack.inbound(first) == {}
    stack.fetch(CAROL, _subject(first))
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:  # at RCPT: the SIZE it announced
        stack.inbound(message("friend@outside.test", CAROL.address, body=big))
    [(code, text)] = e.value.recipients.values()
    assert code == 552
    assert text.startswith(b"5.2.2 ") and text.endswith(b"Mailbox is full")
    # a small one still fits
    small = message("friend@outside.test", CAROL.address)
    assert stack.inbound(small) == {}
    stack.fetch(CAROL, _subject(small))


# -- the adapter --------------------------------------------------------------------------


def _break_postfix(files: dict[str, RenderedFile]) -> None:
    main = files["postfix/main.cf"]
    files["postfix/main.cf"] = replace(main, data=main.data + b"this line has no equals sign\n")


def _break_postfix_master(files: dict[str, RenderedFile]) -> None:
    master = files["postfix/master.cf"]
    files["postfix/master.cf"] = replace(master, data=master.data + b"x inet q - y - - smtpd\n")


def _break_dovecot(files: dict[str, RenderedFile]) -> None:
    conf = files["dovecot/dovecot.conf"]
    files["dovecot/dovecot.conf"] = replace(conf, data=conf.data + b"no_such_setting = 1\n")


def _break_rspamd(files: dict[str, RenderedFile]) -> None:
    files["rspamd/local.d/actions.conf"] = RenderedFile(b"reject = { unclosed\n")


@pytest.mark.parametrize(
    ("server", "edit"),
    [
        ("postfix", _break_postfix),
        ("postfix", _break_postfix_master),
        ("dovecot", _break_dovecot),
        ("rspamd", _break_rspamd),
    ],
)
def test_a_refused_configuration_leaves_the_running_one(
    stack: MailStack, server: str, edit: Callable[[dict[str, RenderedFile]], None]
) -> None:
    live = stack.servers.live
    generations = sorted(stack.servers.lay.generations.iterdir())
    pids = stack.servers.pids()
    changed = replace(stack.model, dnsbl=())
    stack.renderer.edit = edit
    with pytest.raises(MailConfigRefused) as e:
        stack.apply(changed)
    assert e.value.server == server
    assert stack.servers.live == live
    assert stack.servers.model == stack.model
    assert sorted(stack.servers.lay.generations.iterdir()) == generations  # staging removed
    assert stack.servers.pids() == pids
    msg = message(ALICE.address, BOB.address)
    assert stack.submit(ALICE, msg) == {}
    stack.fetch(BOB, _subject(msg))


def test_an_invalid_value_is_refused_before_anything_is_written(stack: MailStack) -> None:
    live = stack.servers.live
    before = sorted(stack.servers.lay.generations.iterdir())
    bad = replace(stack.model, domains=(*stack.model.domains, MailDomain("bad domain.test")))
    with pytest.raises(MailConfigRefused) as e:
        stack.apply(bad)
    assert e.value.server == "postfix"
    assert "bad domain.test" in str(e.value)
    assert stack.servers.live == live
    assert sorted(stack.servers.lay.generations.iterdir()) == before


def test_a_change_is_swapped_in_every_server_reloads_and_the_one_before_is_kept(
    stack: MailStack,
) -> None:
    first = stack.servers.live
    assert first is not None
    pids = stack.servers.pids()
    dave = Account("dave", "dave's password", f"dave@{DOMAIN}")
    stack.auth.accounts["dave"] = dave
    changed = replace(
        stack.model,
        mailboxes=(*stack.model.mailboxes, Mailbox(dave.address, dave.login, "u-dave")),
        aliases={**stack.model.aliases, f"david@{DOMAIN}": (dave.address,)},
        senders={**stack.model.senders, dave.address: ("dave",)},
        dnsbl=(),
    )
    # Dovecot's sign-in side before the change (IMAP sign-ins in the base model started them)
    stack.imap(ALICE).logout()
    dovecot = stack.servers.pids()["dovecot"]
    old_sign_in = [pid for pid, title in _children(dovecot) if _SIGN_IN_SIDE.search(title)]
    assert old_sign_in, _children(dovecot)
    try:
        before = time.time()
        second = stack.apply(changed)
        assert second != first
        # written now, dated back: Postfix would read a main.cf newer than a second again and
        # again, 0.3 s apart, until it aged (1-2.5 s of every check, start and reload)
        main = (second / "postfix" / "main.cf").stat()
        assert main.st_ctime >= before - 1 and main.st_mtime <= before - 2
        # once apply returns, no process of the old configuration takes a sign-in
        assert not [pid for pid in old_sign_in if Path(f"/proc/{pid}").exists()]
        assert os.readlink(stack.servers.lay.conf) == f"generations/{second.name}"
        assert {p.name for p in stack.servers.lay.generations.iterdir()} == {
            first.name,
            second.name,
        }
        assert stack.servers.pids() == pids  # reloaded, not restarted
        # Postfix knows the new address, Dovecot the new mailbox, rspamd no DNSBL any more
        msg = message("friend@outside.test", f"david@{DOMAIN}")
        assert stack.inbound(msg, source=LISTED_IP) == {}
        stack.fetch(dave, _subject(msg))
        reply = message(dave.address, ALICE.address)
        assert stack.submit(dave, reply) == {}
        stack.fetch(ALICE, _subject(reply))
        # the same model again: nothing new to check or reload
        assert stack.apply(changed) == second
    finally:
        del stack.auth.accounts["dave"]


def test_a_server_not_reloaded_keeps_reading_its_own_generation(stack: MailStack) -> None:
    """Changes of Postfix's maps alone reload Postfix only; Dovecot still reads the users file
    of the generation it was loaded with, so that one is kept however many come after."""
    pids = stack.servers.pids()
    for n in range(3):
        aliases = {**stack.model.aliases, f"extra{n}@{DOMAIN}": (BOB.address,)}
        stack.apply(replace(stack.model, aliases=aliases))
    assert stack.servers.pids() == pids
    msg = message("friend@outside.test", f"extra2@{DOMAIN}")
    assert stack.inbound(msg) == {}
    stack.fetch(BOB, _subject(msg))  # signs in: Dovecot finds bob in its users file


def test_a_relay_is_rendered_checked_and_its_password_kept_private(stack: MailStack) -> None:
    relayed = replace(
        stack.model,
        relay=Relay("smtp.relay.test", 465, "tls", username="me@relay.test", password="p: w"),
    )
    gen = stack.apply(relayed)
    main = (gen / "postfix" / "main.cf").read_text()
    assert "relayhost = [smtp.relay.test]:465" in main
    assert "smtp_tls_security_level = encrypt" in main
    assert "smtp_tls_wrappermode = yes" in main
    secret = gen / "postfix" / "relay_password"
    st = secret.stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o600, 0)
    assert secret.read_text() == "[smtp.relay.test]:465 me@relay.test:p: w\n"
    assert "p: w" not in main
    assert "p: w" not in stack.servers.log_tail("postfix", 200)
    # local mail still goes straight to the mailboxes
    msg = message(ALICE.address, BOB.address)
    assert stack.submit(ALICE, msg) == {}
    stack.fetch(BOB, _subject(msg))


def test_secrets_are_readable_only_by_the_server_that_needs_them(stack: MailStack) -> None:
    live = stack.servers.live
    assert live is not None
    for rel, mode, user, group in (
        ("dovecot/auth.lua", 0o640, "root", "dovecot"),
        ("dovecot/users", 0o640, "root", "dovecot"),
        (f"rspamd/dkim/{DOMAIN}.{SELECTOR}.key", 0o600, "_rspamd", None),
    ):
        st = (live / rel).stat()
        assert st.st_mode & 0o777 == mode, rel
        assert pwd.getpwuid(st.st_uid).pw_name == user, rel
        if group is not None:
            assert grp.getgrgid(st.st_gid).gr_name == group, rel
    assert stack.settings.auth_token in (live / "dovecot/auth.lua").read_text()
    for server in ("postfix", "dovecot", "rspamd"):
        assert stack.settings.auth_token not in stack.servers.log_tail(server, 200)
    key = (stack.servers.lay.fallback_key).stat()
    assert (key.st_mode & 0o777, key.st_uid) == (0o600, 0)


# -- supervision --------------------------------------------------------------------------


def _settings(root: Path, nameserver: str) -> ServersSettings:
    ports = free_ports(6)
    return ServersSettings(
        root=root,
        smtp_port=ports[0],
        submission_port=ports[1],
        submissions_port=ports[2],
        imaps_port=ports[3],
        managesieve_port=ports[4],
        milter_port=ports[5],
        auth_url="http://127.0.0.1:9/auth",
        auth_token="t" * 32,
        nameservers=(nameserver,),
    )


def _descendants(pids: Iterable[int]) -> set[int]:
    """`pids` and every process under them."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parent[int(entry.name)] = int(stat[1])
    found = set(pids)
    grew = True
    while grew:
        more = {p for p, pp in parent.items() if pp in found} - found
        found |= more
        grew = bool(more)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _started(pid: int) -> str | None:
    """When `pid` started (field 22 of /proc/<pid>/stat): tells a process from a later one
    that got its number again (the other test worker starts many)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _snapshot(pids: Iterable[int]) -> dict[int, str | None]:
    """`pids` with their start times now."""
    return {p: _started(p) for p in pids}


def _still_running(known: dict[int, str | None], within: float = 5.0) -> list[int]:
    """Those of `known` (a snapshot) still alive, the same processes, after `within` seconds
    at most: a worker may take a moment to end after its master."""
    end = time.monotonic() + within
    while True:
        left = [p for p, t in known.items() if t is not None and _started(p) == t and _alive(p)]
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.1)


def _copy_hyperscan_cache(src: Path, dst: Path) -> None:
    """rspamd's compiled hyperscan cache from the worker's servers: no 10 s compile again."""
    dst.mkdir()
    for f in src.iterdir():
        if ".hs" in f.name and f.is_file():
            shutil.copy2(f, dst / f.name)
            st = f.stat()
            os.chown(dst / f.name, st.st_uid, st.st_gid)


async def test_a_killed_server_is_restarted_and_all_stop_at_exit(
    tmp_root: Path, mail_stack: MailStack
) -> None:
    root = Path(tempfile.mkdtemp(prefix="mail-kill-", dir=tmp_root))
    settings = _settings(root, mail_stack.settings.nameservers[0])
    _copy_hyperscan_cache(mail_stack.settings.root / "rspamd-db", root / "rspamd-db")
    model = replace(mail_stack.model, dnsbl=())
    try:
        async with MailServers(settings) as servers:
            await servers.apply(model)
            assert await servers.ready()
            for server in ("dovecot", "postfix", "rspamd"):
                pid = servers.master_pid(server)
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                end = time.monotonic() + 60
                while not (servers.master_pid(server) not in (None, pid) and await servers.ready()):
                    assert time.monotonic() < end, f"{server} was not restarted"
                    await asyncio.sleep(0.2)
            # stopped (mail turned off), then started again by the next apply
            running = _snapshot(_descendants(servers.pids().values()))
            await servers.stop()
            assert not await servers.ready()
            assert not _still_running(running)
            await servers.apply(model)
            assert await servers.ready()
            running = _snapshot(_descendants(servers.pids().values()))
            assert len(running) > 10  # the masters and their workers
        assert servers.pids() == {}
        left = _still_running(running)
        assert not left, f"processes left running: {left}"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_link_in_place_of_a_servers_folder_is_refused_not_followed(tmp_path: Path) -> None:
    """Root makes the servers' folders and gives them to the servers' users: a link swapped in
    for one (by a server's user gone bad) must not make root change what it points to."""
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "store"
    link.symlink_to(target)
    with pytest.raises(MailServersError, match="not a folder"):
        _ensure_dir(link, 0o755, 0, 0)
    assert target.stat().st_mode & 0o7777 == 0o700
