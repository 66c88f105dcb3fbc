"""Fixtures of the mail servers tests: Postfix, Dovecot and rspamd, one set per xdist worker on
free loopback ports (tests/mail/serverskit.py), their DNS the test PowerDNS so nothing leaves
loopback."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.mail.serverskit import LISTED_IP, MailStack, servers_missing
from tests.support.mail import World, mail_on
from tests.support.pdns import PdnsServer, PdnsZone, create_zone
from tests.support.servers import need_server


@pytest.fixture(scope="session")
def mail_stack(tmp_root: Path, pdns: PdnsServer) -> Iterator[MailStack]:
    """Postfix, Dovecot and rspamd for this xdist worker, configured with `base_model`; the
    DNSBL zone lists LISTED_IP only."""
    missing = servers_missing()
    if missing:
        need_server("mail servers", RuntimeError(missing))
    zone = f"bl{uuid.uuid4().hex[:10]}.test"
    create_zone(pdns, zone)
    reverse = ".".join(reversed(LISTED_IP.split(".")))
    pdns.api(
        "PATCH",
        f"/api/v1/servers/localhost/zones/{zone}.",
        {
            "rrsets": [
                {
                    "name": f"{reverse}.{zone}.",
                    "type": "A",
                    "ttl": 60,
                    "changetype": "REPLACE",
                    "records": [{"content": "127.0.0.2", "disabled": False}],
                }
            ]
        },
    )
    root = Path(tempfile.mkdtemp(prefix="mail-", dir=tmp_root))
    stack = MailStack(root, f"127.0.0.1:{pdns.dns_port}", zone)
    try:
        stack.start()
    except BaseException:
        stack.stop()
        raise
    yield stack
    stack.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def stack(mail_stack: MailStack) -> Iterator[MailStack]:
    """The worker's servers; a test that applies another model gets the base one back after."""
    yield mail_stack
    mail_stack.renderer.edit = None
    if mail_stack.servers.model != mail_stack.model:
        mail_stack.apply(mail_stack.model)


@pytest.fixture
async def world(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    pdns: PdnsServer,
    pdns_zone: PdnsZone,
) -> AsyncIterator[World]:
    """The real identity, dns and mail services, the mail service running Postfix, Dovecot
    and rspamd (their DNS: the test PowerDNS), mail on for the test zone (a file with another
    world defines its own)."""
    async with mail_on(
        monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, pdns=pdns, zone=pdns_zone
    ) as w:
        yield w
