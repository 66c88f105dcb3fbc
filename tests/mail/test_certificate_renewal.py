"""A renewed certificate for the mail host is served without any other change: the real
identity, dns and mail services, the mail service running Postfix, Dovecot and rspamd.

certs renews a certificate in place (same files, new contents), and the self-signed stand-in
the mail servers use until certs has one is made anew the same way. Nothing in the mail
configuration changes then, yet Postfix and Dovecot must load the new files: after the next
round of the sync, IMAPS and submission (STARTTLS) present the new certificate.
"""

from __future__ import annotations

import asyncio
import hashlib
import smtplib
import socket
import ssl
import time

import pytest

from libs.tls import self_signed_pem_apart
from services.mail.render import Layout
from tests.support.mail import World

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"


def _any_cert() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _imaps_cert(port: int) -> str:
    with (
        socket.create_connection((HOST, port), timeout=10) as raw,
        _any_cert().wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def _submission_cert(port: int) -> str:
    with smtplib.SMTP(HOST, port, timeout=10) as s:
        s.starttls(context=_any_cert())
        der = s.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def _fingerprint(pem: str) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


async def test_a_certificate_renewed_in_place_is_served_after_the_next_round(
    world: World,
) -> None:
    w = world
    assert w.mail.ports is not None
    ports = w.mail.ports
    lay = Layout(w.mail.root)
    before = await asyncio.to_thread(_imaps_cert, ports.imaps)
    assert before == _fingerprint(lay.fallback_cert.read_text())
    assert await asyncio.to_thread(_submission_cert, ports.submission) == before

    # renewed in place: the same files, a new certificate for the same name
    cert_pem, key_pem = await self_signed_pem_apart([f"mail.{w.domain}"], 30)
    lay.fallback_key.write_text(key_pem)
    lay.fallback_cert.write_text(cert_pem)
    after = _fingerprint(cert_pem)
    assert after != before

    status = await w.mail.ask("status", {"wait": True})  # one round of the sync
    assert status["last_error"] is None, status
    deadline = time.monotonic() + 20
    while True:
        served = (
            await asyncio.to_thread(_imaps_cert, ports.imaps),
            await asyncio.to_thread(_submission_cert, ports.submission),
        )
        if served == (after, after):
            break
        assert time.monotonic() < deadline, f"still serving the old certificate: {served}"
        await asyncio.sleep(0.2)
