"""The wire contract of the mail service: mail domains, extra addresses, quotas, app passwords,
block lists; the views of a domain, of a person's mailbox and of the servers.

Callers: the apps service (`register_app`, `register_client`, `remove_app` for an app's
`sendmail` and `mailclient` addons), the notify service (`send`: the platform's own mail), the
backup service (`snapshot`, `forget_snapshot`: the mail store in every full backup), the
gateway (everything else: administrators manage domains and addresses, a person their
own app passwords; the gateway's route table decides who may call what). The service checks
what only it knows: that dns manages the domain, that the accounts and groups exist, that an
address is free.
"""

from __future__ import annotations

from libs.contracts import Contract
from libs.contracts.common import uuid
from libs.contracts.dns import DOMAIN
from libs.contracts.schema import array, boolean, integer, nullable, obj, string

__all__ = [
    "CONTRACT",
    "FORWARD_PATTERN",
    "LOCAL_PART",
    "LOCAL_PART_PATTERN",
    "MAX_ALIAS_USERS",
    "MAX_DNSBL",
    "MAX_FORWARD",
    "MAX_QUOTA",
    "MAX_SEND_TO",
    "MAX_SPF_TERMS",
    "RECIPIENT_PATTERN",
    "SENDER_PATTERN",
    "SNAPSHOTS_FOLDER",
    "SPF_TERMS_PATTERN",
]

# Letters, digits and . _ - (no leading or trailing dot, no '+': it separates a tag).
LOCAL_PART_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$"
SENDER_PATTERN = (
    r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?"
    r"@[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
# Where a mailbox forwards to: an address as SENDER_PATTERN has it, in any case (the service
# lower-cases it), its domain with a dot and a last label that begins with a letter (as
# Postfix's configuration takes it, services/mail/render.py).
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
FORWARD_PATTERN = (
    r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,62}[A-Za-z0-9])?"
    rf"@({_LABEL}\.)+[A-Za-z]([A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?$"
)
# Where the platform's own mail may go: a dot-atom local part (RFC 5322 atext, at most 64)
# and a domain as FORWARD_PATTERN has it; ASCII only (the servers do not speak SMTPUTF8), and
# nothing that could end a header.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
RECIPIENT_PATTERN = (
    rf"^(?=[^@]{{1,64}}@){_ATEXT}+(\.{_ATEXT}+)*"
    rf"@({_LABEL}\.)+[A-Za-z]([A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?$"
)
# What a relay's provider asks its customers to add to their SPF record: 1 to MAX_SPF_TERMS
# mechanisms, one space apart, each `include:`, `a:` or `mx:` with a domain, or `ip4:`/`ip6:`
# with an address or network (the service checks the addresses and the domain names).
_SPF_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"  # _spf.provider.net is usual
_SPF_DOMAIN = rf"({_SPF_LABEL}\.)+[A-Za-z]([A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?"
_SPF_TERM = rf"((include|a|mx):{_SPF_DOMAIN}|ip4:[0-9./]{{7,18}}|ip6:[0-9A-Fa-f:./]{{2,49}})"
MAX_SPF_TERMS = 5
SPF_TERMS_PATTERN = rf"^{_SPF_TERM}( {_SPF_TERM}){{0,{MAX_SPF_TERMS - 1}}}$"
# One line of a header: no control character (CR, LF, NUL...) nor a Unicode line break.
_HEADER_TEXT = r"^[^\x00-\x1f\x7f\x85\u2028\u2029]*$"
# Where the `snapshot` command writes: <the mail root>/SNAPSHOTS_FOLDER/<snapshot_id>/, which
# the backup service reads (its HP_MAIL_DIR is that mail root).
SNAPSHOTS_FOLDER = "snapshots"
MAX_ALIAS_USERS = 100
MAX_SEND_TO = 50
MAX_FORWARD = 5
MAX_DNSBL = 20
MAX_QUOTA = 1 << 50  # 1 PiB: beyond any disk; a bigger number is a typo

LOCAL_PART = string(
    maxLength=64,
    pattern=LOCAL_PART_PATTERN,
    description="the part before @: lower-case letters, digits, '.', '_' or '-' (no '+')",
)
_USER_ID = uuid(description="an account id (UUID)")
_APP_ID = uuid(description="an app id (UUID)")
_BY_DOMAIN = obj({"domain": DOMAIN}, required=["domain"])
_BY_USER = obj({"user_id": _USER_ID}, required=["user_id"])
_ZONE = string(
    maxLength=253,
    pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$",
    description="a DNS block list zone, e.g. zen.spamhaus.org",
)

CONTRACT = Contract(
    "mail",
    commands={
        "enable_domain": _BY_DOMAIN,
        "disable_domain": _BY_DOMAIN,
        # a new DKIM key beside the signing one; it signs once DNS serves it (409 while one waits)
        "rotate_dkim": _BY_DOMAIN,
        "set_catch_all": obj(
            {"domain": DOMAIN, "user_id": nullable(_USER_ID)}, required=["domain", "user_id"]
        ),
        "set_address": obj(
            {
                "domain": DOMAIN,
                "local_part": LOCAL_PART,
                "kind": string(enum=["alias", "list"]),
                "user_ids": array(_USER_ID, maxItems=MAX_ALIAS_USERS),
                "group_id": nullable(uuid(description="a group id (UUID)")),
            },
            required=["domain", "local_part", "kind"],
        ),
        "remove_address": obj(
            {"domain": DOMAIN, "local_part": LOCAL_PART}, required=["domain", "local_part"]
        ),
        "set_quota": obj(
            {
                "user_id": _USER_ID,
                "quota_bytes": nullable(
                    integer(minimum=1 << 20, maximum=MAX_QUOTA, description="bytes, 1 MiB or more")
                ),
            },
            required=["user_id", "quota_bytes"],
        ),
        "create_app_password": obj(
            {
                "user_id": _USER_ID,
                "label": string(
                    minLength=1,
                    maxLength=100,
                    pattern=r"^[^\x00-\x1f\x7f]*$",
                    description="what it is for, e.g. phone (1 to 100 characters)",
                ),
            },
            required=["user_id", "label"],
        ),
        # Mail to the mailbox goes on to `to` (own or administrator; the service refuses the
        # mailbox's own addresses, local addresses nobody receives, the same address twice).
        "set_forwarding": obj(
            {
                "user_id": _USER_ID,
                "to": array(
                    string(
                        maxLength=254,
                        pattern=FORWARD_PATTERN,
                        description="an address, here or elsewhere, e.g. kim@example.net",
                    ),
                    minItems=1,
                    maxItems=MAX_FORWARD,
                    description=f"where mail goes on to (1 to {MAX_FORWARD} addresses)",
                ),
                "keep_copy": boolean(description="the mailbox keeps a copy of each message"),
            },
            required=["user_id", "to", "keep_copy"],
        ),
        "clear_forwarding": _BY_USER,
        "revoke_app_password": obj(
            {"user_id": _USER_ID, "password_id": uuid(description="an app password id")},
            required=["user_id", "password_id"],
        ),
        "set_dnsbl": obj({"zones": array(_ZONE, maxItems=MAX_DNSBL)}, required=["zones"]),
        # Outgoing mail through a smart host: checked (connection, TLS, sign-in) before kept.
        "set_relay": obj(
            {
                "host": string(
                    maxLength=253,
                    pattern=r"^[A-Za-z0-9]([A-Za-z0-9.:-]{0,251}[A-Za-z0-9])?$",
                    description="the relay's host name or address, e.g. smtp.example.net",
                ),
                "port": integer(minimum=1, maximum=65535, description="usually 587 or 465"),
                "tls": string(enum=["starttls", "tls"], description="STARTTLS, or TLS at once"),
                "username": nullable(string(maxLength=256, pattern=r"^[^\x00-\x20\x7f:]+$")),
                "password": nullable(
                    string(maxLength=256, writeOnly=True, pattern=r"^[^\x00-\x1f\x7f]+$")
                ),
                # published in every mail domain's SPF record while the relay is set
                "spf": nullable(
                    string(
                        maxLength=300,
                        pattern=SPF_TERMS_PATTERN,
                        description="what the relay's provider asks you to add to your SPF "
                        "record, e.g. include:spf.provider.net (up to 5 terms, one space apart)",
                    )
                ),
                # a test message goes there through the relay first; refused: nothing kept
                "test_to": nullable(
                    string(
                        maxLength=254,
                        pattern=RECIPIENT_PATTERN,
                        description="where a test message goes first, e.g. me@example.net",
                    )
                ),
            },
            required=["host", "port", "tls"],
        ),
        "clear_relay": obj({}),
        # The apps service, for an app with the `sendmail` addon (actor "system" only).
        "register_app": obj(
            {
                "app_id": _APP_ID,
                "sender": string(
                    maxLength=254,
                    pattern=SENDER_PATTERN,
                    description="the address the app sends as, e.g. blog.app@example.org",
                ),
                "network": string(maxLength=43, description="the app's network (CIDR)"),
                "password": string(
                    minLength=32,
                    maxLength=128,
                    pattern=r"^[A-Za-z0-9_-]+$",
                    description="the password the app already has (an app installed earlier)",
                ),
            },
            required=["app_id", "sender", "network"],
        ),
        # The apps service, for an app with the `mailclient` addon (webmail; "system" only).
        "register_client": obj(
            {
                "app_id": _APP_ID,
                "network": string(maxLength=43, description="the app's network (CIDR)"),
            },
            required=["app_id", "network"],
        ),
        "remove_app": obj({"app_id": _APP_ID}, required=["app_id"]),
        # The notify service (actor "system" only): the platform's own mail, through the local
        # servers when mail is on, else the relay; `unavailable` when there is neither.
        # Answers {via: "local" | "relay", message_id, refused: [addresses refused]}.
        "send": obj(
            {
                "to": array(
                    string(maxLength=254, pattern=RECIPIENT_PATTERN, description="an address"),
                    minItems=1,
                    maxItems=MAX_SEND_TO,
                    description=f"the recipients (1 to {MAX_SEND_TO})",
                ),
                "subject": string(
                    minLength=1,
                    maxLength=300,
                    pattern=_HEADER_TEXT,
                    description="one line of 1 to 300 characters, no control characters",
                ),
                "text": string(maxLength=200_000, description="the plain-text body"),
                "html": nullable(string(maxLength=500_000, description="the HTML body")),
                "from_name": nullable(
                    string(
                        maxLength=100,
                        pattern=_HEADER_TEXT,
                        description="the sender's name, e.g. Homeport (one line, no control"
                        " characters)",
                    )
                ),
            },
            required=["to", "subject", "text"],
        ),
        # The backup service (actor "system" only): a snapshot of the mail store in
        # <mail root>/snapshots/<snapshot_id>/ for it to read (services/mail/snapshots.py);
        # answers {mailboxes, files, bytes}. Then forgotten once stored.
        "snapshot": obj(
            {"snapshot_id": uuid(description="the backup's id for it (UUID)")},
            required=["snapshot_id"],
        ),
        "forget_snapshot": obj(
            {"snapshot_id": uuid(description="a snapshot's id (UUID)")},
            required=["snapshot_id"],
        ),
    },
    queries={
        "domains": obj({}),
        "domain": _BY_DOMAIN,
        "mailbox": _BY_USER,
        # wait: answer after a round of the sync that began after this query (all changes
        # made before it are then in the servers' configuration, or in last_error)
        "status": obj({"wait": boolean()}),
        "relay": obj({}),
        # every mailbox: address, quota, and what it holds as Dovecot counts it (admin)
        "mailboxes": obj({}),
        "dnsbl": obj({}),
    },
)
